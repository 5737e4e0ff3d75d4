"""What the privacy gate costs an event, in process, beside the contract's decode it follows.

Every door decides each decoded event against the privacy list (``scorestream.privacy``:
``PrivacyList.decide``): one ``if`` while the list is empty; with entries, a SHA-256 of each of
the event's identifiers (user id, anonymous id, an alias's previous id, an email trait) and a
dict lookup. Measured on a realistic mix of source messages (identified and anonymous pages and
tracks, identifies with an email, an alias), alternating rounds, best of each:

* ``decode_us``: the contract's ``schemas.events.decode`` alone (ingest's and the collector's
  per-event work before the gate);
* ``gate_empty_us`` / ``gate_us``: what the check adds to an event with the list empty, and with
  ``entries`` restricted subject keys none of these events match (the common case: the list holds
  other people);
* ``gate_hit_us``: the same when the event's person is restricted (it is then dropped);
* ``gate_cold_us``: the same for identifiers seen for the first time (each one's SHA-256 computed;
  ``subject_key`` remembers the last 32,768, so live traffic's returning ids cost a lookup);
* ``gate_share``: ``gate_us`` over ``decode_us``.

``python -m bench.privacy_gate`` prints the figures; ``bench.run --only privacy_gate`` records them.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson

from schemas.events import decode
from scorestream import Event
from scorestream.privacy import PrivacyList, Restriction, _subject_key, subject_key

T0 = 1_790_000_000_000


def messages(n: int, people: int = 3000) -> list[bytes]:
    """``n`` source messages of ``people`` users (and ``5 / 3 * people`` anonymous ids): a third
    anonymous, a tenth identifies with an email, some aliases."""
    out: list[bytes] = []
    visitors = people * 5 // 3
    for i in range(n):
        base: dict[str, Any] = {
            "messageId": f"m-{i}",
            "timestamp": f"2026-09-21T14:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
            "anonymousId": f"anon-{i % visitors}",
        }
        if i % 10 == 0:
            body = {
                **base,
                "type": "identify",
                "userId": f"user-{i % people}",
                "traits": {"email": f"person{i % people}@example.com", "name": "A Person", "title": "CTO"},
            }
        elif i % 97 == 0:
            body = {**base, "type": "alias", "userId": f"user-{i % people}", "previousId": f"anon-{i % visitors}"}
        elif i % 3 == 0:
            body = {**base, "type": "page", "name": "Pricing", "properties": {"path": "/pricing", "url": "https://x/p"}}
        else:
            body = {
                **base,
                "type": "track",
                "userId": f"user-{i % people}",
                "event": "Email Opened",
                "properties": {"campaign": "autumn"},
            }
        out.append(orjson.dumps(body))
    return out


def restricted(entries: int) -> PrivacyList:
    """``entries`` subject keys of other people (none of :func:`messages`'), as a mix of kinds."""
    privacy = PrivacyList()
    for i in range(entries):
        kind = ("user", "anonymous", "email")[i % 3]
        value = f"gone{i}@example.com" if kind == "email" else f"gone-{i}"
        privacy.put(subject_key(kind, value), Restriction("reg", suppressed_from_ms=T0))  # type: ignore[arg-type]
    return privacy


def _per_event(raws: list[bytes], privacy: PrivacyList | None) -> float:
    """Seconds per event of decode, then (``privacy`` given) the gate as ingest asks it."""
    started = time.perf_counter()
    if privacy is None:
        for raw in raws:
            decode(raw, "web", T0)
    else:
        for raw in raws:
            event = decode(raw, "web", T0)
            if privacy.entries and privacy.decide(event, T0) is not None:
                continue
    return (time.perf_counter() - started) / len(raws)


def _decide_only(events: list[Event], privacy: PrivacyList) -> float:
    started = time.perf_counter()
    dropped = 0
    for event in events:
        if privacy.entries and privacy.decide(event, T0) is not None:
            dropped += 1
    return (time.perf_counter() - started) / len(events)


def measure(n: int = 20_000, rounds: int = 7, entries: int = 10_000) -> dict[str, Any]:
    raws = messages(n)
    events = [decode(raw, "web", T0) for raw in raws]
    empty, other = PrivacyList(), restricted(entries)
    everyone = PrivacyList(dict(other.entries))
    for event in events:  # every event's user (or anonymous) id restricted: each one a hit
        kind, value = ("user", event.user_id) if event.user_id else ("anonymous", event.anonymous_id or "")
        everyone.put(subject_key(kind, value), Restriction("reg", suppressed_from_ms=T0))  # type: ignore[arg-type]
    unique = [decode(raw, "web", T0) for raw in messages(n, people=n)]  # every id new
    bare, with_empty, with_other = [], [], []
    decide_empty, decide_other, decide_hit, decide_cold = [], [], [], []
    for _ in range(rounds):
        bare.append(_per_event(raws, None))
        with_empty.append(_per_event(raws, empty))
        with_other.append(_per_event(raws, other))
        decide_empty.append(_decide_only(events, empty))
        decide_other.append(_decide_only(events, other))
        decide_hit.append(_decide_only(events, everyone))
    for _ in range(rounds):  # after the others: the cache forgets their ids here
        _subject_key.cache_clear()
        decide_cold.append(_decide_only(unique, other))
    decode_s = min(bare)
    gate_s = min(decide_other)
    return {
        "decode_us": round(decode_s * 1e6, 3),
        "decode_and_gate_empty_us": round(min(with_empty) * 1e6, 3),
        "decode_and_gate_us": round(min(with_other) * 1e6, 3),
        "gate_empty_us": round(min(decide_empty) * 1e6, 3),
        "gate_us": round(gate_s * 1e6, 3),
        "gate_hit_us": round(min(decide_hit) * 1e6, 3),
        "gate_cold_us": round(min(decide_cold) * 1e6, 3),
        "gate_share": round(gate_s / decode_s, 3),
        "entries": entries,
        "events_per_round": n,
        "rounds": rounds,
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
