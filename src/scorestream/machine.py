"""Machine traffic in e-mail: which of a contact's opens and clicks a machine made.

A click is judged by the *other* events of its message (its delivery, its first open, the clicks
around it), which may arrive later than it. So, as for consent (:func:`scorestream.state.consent_denied`),
nothing is decided when an event arrives: the contact keeps a small log of its e-mail facts
(:class:`EmailFact`: instant, message id, kind, message key, link, user-agent class) and
:func:`verdicts` reads the whole log whenever points are computed. The verdicts are a function of
the set of facts, so the same events in any order, batching or number of copies give the same
verdicts, and a late delivery re-decides the clicks before it. The signals (the model file's
``machine_traffic``, :mod:`scorestream.rules.machine`), per message:

- ``click_all_links``: ``links`` or more distinct links clicked within ``within`` of each other
  (a security gateway following every link): every click of that burst;
- ``click_before_open``: a click earlier than the message's delivery or its first open;
- ``click_within``: a click within ``click_within`` after the delivery or the first open;
- ``proxy_opens``: an open from a privacy proxy's user agent (Apple Mail Privacy Protection),
  within ``within`` of the delivery when that is set and the delivery known, else any;
- ``patterns``: predicates over the event (``user_agent``, ``event``, ``properties.*``): any event.

**Bounds**: the log keeps the facts at most ``retention_ms`` (the model's ``fold_after``) older
than its newest one and at most :data:`MAX_FACTS` of the newest, by ``(instant, message id)``:
both are functions of the set of facts. A click judged against a delivery or open older than
that is judged by the facts still kept.

Pure and stdlib only.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable
from typing import NamedTuple

from scorestream.events import Event
from scorestream.rules.machine import CLICKED, DELIVERED, OPENED, PATTERN, PROXY, MachineRules

MAX_FACTS = 256
"""E-mail facts kept per contact (the newest)."""
MAX_KEY = 64
"""Longest message key kept as given; a longer one is kept as its digest."""


class EmailFact(NamedTuple):
    """One e-mail event as the verdicts need it (part of the contact's state)."""

    ts: int
    mid: str
    kind: str  # DELIVERED, OPENED or CLICKED
    key: str  # the message ("" unknown)
    link: str  # a click's link, as a short digest ("" none)
    agent: str  # PROXY, PATTERN or ""


class MachineNote(NamedTuple):
    """What the explanation shows of a rule's machine events: how many of its kept hits a machine
    made, the latest one's instant and why it was judged so."""

    rule_id: str
    hits: int
    last_ms: int
    reason: str


def _order(fact: EmailFact) -> tuple[int, str]:
    return (fact.ts, fact.mid)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=6).hexdigest()


def fact_of(event: Event, rules: MachineRules) -> EmailFact | None:
    """The e-mail fact an event is, None for any other event."""
    kind = rules.kind_of(event)
    if kind is None:
        return None
    props = event.properties
    key = rules.message_key(props)
    if len(key) > MAX_KEY:
        key = "#" + _digest(key)
    link = ""
    if kind == CLICKED:
        url = props.get("link_url") or props.get("link_id") or props.get("url")
        link = _digest(str(url)) if url is not None and str(url) else ""
    return EmailFact(event.timestamp_ms, event.message_id, kind, key, link, rules.agent_of(event, kind))


def add_facts(log: list[EmailFact], facts: Iterable[EmailFact], retention_ms: int) -> list[EmailFact]:
    """``log`` with ``facts`` added (a message id already there counts once), kept sorted by
    ``(instant, message id)`` and within the bounds (see the module docstring)."""
    added = False
    known = {f.mid for f in log}  # a message id seen at any instant: a duplicate
    for fact in facts:
        if fact.mid in known:
            continue
        known.add(fact.mid)
        log.insert(bisect_left(log, (fact.ts, fact.mid), key=_order), fact)
        added = True
    if added and log:
        horizon = log[-1].ts - retention_ms
        first = bisect_left(log, (horizon, ""), key=_order)
        first = max(first, len(log) - MAX_FACTS)
        if first > 0:
            del log[:first]
    return log


def merge_logs(target: list[EmailFact], source: Iterable[EmailFact], retention_ms: int) -> list[EmailFact]:
    """Both contacts' facts (a merge), within the bounds."""
    return add_facts(target, [EmailFact(*f) for f in source], retention_ms)


def _seconds(ms: int) -> str:
    return f"{round(ms / 1000, 1):g} s"


def verdicts(log: list[EmailFact], rules: MachineRules) -> dict[str, str]:
    """Message id -> why a machine made that e-mail event, for the events of ``log`` judged so.

    A function of the set of facts in the log (it is sorted by ``(instant, message id)``)."""
    out: dict[str, str] = {}
    by_key: dict[str, list[EmailFact]] = {}
    for fact in log:
        if fact.agent == PATTERN:
            out[fact.mid] = "user agent or event matches a machine pattern"
        if fact.key:
            by_key.setdefault(fact.key, []).append(fact)
        elif fact.agent == PROXY:
            out.setdefault(fact.mid, "opened by a privacy proxy")
    for facts in by_key.values():
        if len(facts) > 1 or facts[0].agent == PROXY:  # one fact alone: only a proxy's open says anything
            _judge_message(facts, rules, out)
    return out


def _judge_message(facts: list[EmailFact], rules: MachineRules, out: dict[str, str]) -> None:
    """The verdicts on one message's facts (in time order)."""
    delivered = next((f.ts for f in facts if f.kind == DELIVERED), None)
    opened = next((f.ts for f in facts if f.kind == OPENED), None)
    for fact in facts:
        if fact.kind == OPENED and fact.agent == PROXY and fact.mid not in out:
            within = rules.proxy_within_ms
            if within is None or delivered is None:
                out[fact.mid] = "opened by a privacy proxy"
            elif abs(fact.ts - delivered) <= within:
                out[fact.mid] = f"opened by a privacy proxy {_seconds(abs(fact.ts - delivered))} from delivery"
    clicks = [f for f in facts if f.kind == CLICKED]
    if not clicks:
        return
    if rules.all_links is not None:
        _bursts(clicks, rules.all_links, rules.all_links_within_ms, delivered, out)
    for click in clicks:
        if click.mid in out:
            continue
        reason = _click_reason(click.ts, delivered, opened, rules)
        if reason is not None:
            out[click.mid] = reason


def _bursts(clicks: list[EmailFact], links: int, within: int, delivered: int | None, out: dict[str, str]) -> None:
    """Every click of a window of ``within`` holding ``links`` or more distinct links."""
    n = len(clicks)
    j = 0
    for i in range(n):
        j = max(j, i)
        while j + 1 < n and clicks[j + 1].ts - clicks[i].ts <= within:
            j += 1
        window = clicks[i : j + 1]
        distinct = {c.link for c in window if c.link}
        if len(distinct) < links:
            continue
        start = delivered if delivered is not None and delivered <= clicks[i].ts else None
        span = clicks[j].ts - (start if start is not None else clicks[i].ts)
        after = " of delivery" if start is not None else ""
        reason = f"{len(distinct)} links clicked within {_seconds(span)}{after}"
        for click in window:
            out.setdefault(click.mid, reason)


def _click_reason(ts: int, delivered: int | None, opened: int | None, rules: MachineRules) -> str | None:
    if rules.before_open:
        if delivered is not None and ts < delivered:
            return "clicked before the message was delivered"
        if opened is not None and ts < opened:
            return "clicked before the message was opened"
    within = rules.click_within_ms
    if within is not None:
        if delivered is not None and 0 <= ts - delivered <= within:
            return f"clicked {_seconds(ts - delivered)} after delivery"
        if opened is not None and 0 <= ts - opened <= within:
            return f"clicked {_seconds(ts - opened)} after the first open"
    return None


def notes(hits: Iterable[tuple[int, str, tuple[str, ...]]], found: dict[str, str]) -> list[MachineNote]:
    """Per rule (rule id order), the kept hits a machine made (``found``: :func:`verdicts`): how
    many, the latest one's instant and its reason."""
    if not found:
        return []
    per_rule: dict[str, tuple[int, int, str]] = {}
    for ts, mid, rule_ids in hits:
        reason = found.get(mid)
        if reason is None:
            continue
        for rule_id in rule_ids:
            count, _, _ = per_rule.get(rule_id, (0, 0, ""))
            per_rule[rule_id] = (count + 1, ts, reason)  # hits are in time order: the latest wins
    return [MachineNote(k, c, last, why) for k, (c, last, why) in sorted(per_rule.items())]


def reclassified(before: dict[str, str], after: dict[str, str], log: list[EmailFact]) -> int | None:
    """The earliest instant of a fact whose verdict changed between ``before`` and ``after`` (a
    late fact re-judged it), None when none did: the lifecycle walk goes again from there (0, from
    its anchor, when the fact left the log)."""
    if before == after:
        return None
    for fact in log:  # in time order
        if before.get(fact.mid) != after.get(fact.mid):
            return fact.ts
    return 0


__all__ = [
    "CLICKED",
    "DELIVERED",
    "MAX_FACTS",
    "OPENED",
    "EmailFact",
    "MachineNote",
    "add_facts",
    "fact_of",
    "merge_logs",
    "notes",
    "reclassified",
    "verdicts",
]
