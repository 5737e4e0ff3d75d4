"""End to end: a suppressed person is neither scored nor stored, through every door, until lifted.

The real broker, worker and API (its collector). The privacy list is written straight to its topic
(``<app>.privacy``), as the API's regulation service writes it for a ``SUPPRESS`` regulation (one
entry per identifier of the person: user id, the anonymous id linked to them, their email), so
this test does not depend on the regulations API. After it: events sent to the source topics for
the user (by user id, by the linked anonymous id, by email, and an invalid one) are not scored
and not dead-lettered, while another user's are; messages posted to the collector for them are
answered as accepted and never reach a source topic. Tombstones lift the entries and collection
resumes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from typing import Any

import httpx

from kafka_io import clients
from schemas.regulations import PrivacyEntry, encode_json
from schemas.settings import Settings
from scorestream.privacy import subject_key
from tests.e2e.service import WRITE_KEY, Service
from tests.factories import iso, segment_at

USER, ANON, EMAIL = "sup-user", "sup-anon", "Sup.Person@Example.com"
OTHER = "sup-other"
SETTLE_S = 3.0  # followers apply a privacy record within a fetch (~0.5 s): a generous margin


def now_ms() -> int:
    return int(time.time() * 1000)


def msg(kind: str, mid: str, ts: int, **fields: Any) -> bytes:
    return segment_at(kind, ts, mid, **fields)


def privacy_topic(service: Service) -> str:
    return Settings(app_id=f"ss-{service.suffix}").privacy_topic


def write_privacy(service: Service, entries: dict[str, bytes | None]) -> None:
    async def go() -> None:
        producer = clients.producer(service.kafka, acks="all")
        await producer.start()
        try:
            for key, value in entries.items():
                await producer.send_and_wait(privacy_topic(service), value, key=key.encode(), partition=0)
        finally:
            await producer.stop()

    asyncio.run(go())


KEYS = [subject_key("user", USER), subject_key("anonymous", ANON), subject_key("email", EMAIL)]


def contact(http: httpx.Client, ident: str) -> dict[str, Any] | None:
    r = http.get(f"/v1/contacts/{ident}")
    return r.json() if r.status_code == 200 else None


def seen(http: httpx.Client, ident: str) -> int | None:
    """The contact's last event time (ms), or None while it does not exist."""
    body = contact(http, ident)
    if body is None or body["last_seen"] is None:
        return None
    return int(datetime.fromisoformat(body["last_seen"].replace("Z", "+00:00")).timestamp() * 1000)


def mids_on(service: Service, channel: str, wanted: set[str]) -> set[str]:
    """The message ids of ``wanted`` present on a topic (read to what it holds)."""
    records = service.read_topic(service.topic(channel), expect=10**6, wait_s=3)
    found = set()
    for record in records:
        for mid in wanted:
            if record.value is not None and mid.encode() in record.value:
                found.add(mid)
    return found


def test_a_suppressed_person_is_not_scored_nor_stored_until_lifted(service: Service) -> None:
    run = uuid.uuid4().hex[:8]
    t0 = now_ms() - 3_600_000
    # a person with an anonymous history, identified (linking the anonymous id and the email)
    service.publish(
        [
            ("web", ANON.encode(), msg("track", f"h1-{run}", t0 - 60_000, anonymousId=ANON, event="Demo Requested")),
            (
                "web",
                USER.encode(),
                msg("identify", f"h2-{run}", t0, userId=USER, anonymousId=ANON, traits={"email": EMAIL}),
            ),
            ("web", USER.encode(), msg("page", f"h3-{run}", t0 + 1000, userId=USER, properties={"path": "/pricing"})),
            ("web", OTHER.encode(), msg("page", f"o1-{run}", t0, userId=OTHER, properties={"path": "/"})),
        ]
    )
    with service.client() as http:
        service.wait_for(lambda: (c := contact(http, ANON)) is not None and c["contact_id"] == USER)
        # the anonymous history absorbed (its demo request), the identify and the page folded, and
        # nothing more arriving (the merge's records may trail the events by a few fetches)
        service.wait_for(lambda: {"demo-requested", "pricing-page"} <= set(history(contact(http, USER))[2]))
        service.wait_for(lambda: f"anonymous:{ANON}" in history(contact(http, USER))[1]["merged_ids"])
        service.wait_for(lambda: seen(http, OTHER) is not None)
        before = service.wait_for(lambda: settled(http, USER))
        assert before is not None and before["engagement"]["score"] > 0
        service.wait_for(lambda: (c := contact(http, EMAIL.lower())) is not None and c["contact_id"] == USER)

        # SUPPRESS from now on, every identifier of the person
        suppressed_at = now_ms()
        write_privacy(service, dict.fromkeys(KEYS, encode_json(PrivacyEntry(f"reg-{run}", suppressed_at))))
        time.sleep(SETTLE_S)

        # to the source topics: by user id, by the linked anonymous id alone, by email (a new
        # anonymous id), an invalid one; then another user's, behind them in the same partition
        t1 = now_ms()
        after = {f"a{i}-{run}" for i in range(1, 5)}
        dead_control = f"dc-{run}"
        service.publish(
            ("web", b"gate", raw)
            for raw in (
                msg("page", f"a1-{run}", t1, userId=USER, properties={"path": "/pricing"}),
                msg("track", f"a2-{run}", t1, anonymousId=ANON, event="Demo Requested"),
                msg("identify", f"a3-{run}", t1, anonymousId=f"new-{run}", traits={"email": EMAIL.upper()}),
                msg("track", f"a4-{run}", t1, userId=USER),  # invalid (no event name)
                msg("track", dead_control, t1, userId=OTHER),  # invalid, not suppressed
                msg("page", f"o2-{run}", t1, userId=OTHER, properties={"path": "/pricing"}),
            )
        )
        service.wait_for(lambda: (s := seen(http, OTHER)) is not None and s >= t1)
        time.sleep(SETTLE_S)  # anything wrongly let through would have reached the contact by now
        assert history(contact(http, USER)) == history(before)
        assert contact(http, f"new-{run}") is None  # the identify by email created nothing
        dead = mids_on(service, "dead", {*after, dead_control})
        assert dead == {dead_control}  # the suppressed person's invalid message is not kept

        # through the collector: answered as accepted, published nowhere
        t2 = now_ms() - 1000  # the collector stamps receivedAt (ms) as the event time
        posted = {f"c{i}-{run}" for i in range(1, 4)}
        control = f"cc-{run}"
        batch = {
            "writeKey": WRITE_KEY,
            "batch": [
                {"type": "track", "messageId": f"c1-{run}", "userId": USER, "event": "Demo Requested"},
                {"type": "page", "messageId": f"c2-{run}", "anonymousId": ANON, "properties": {"path": "/"}},
                {"type": "identify", "messageId": f"c3-{run}", "anonymousId": f"x-{run}", "traits": {"email": EMAIL}},
                {"type": "page", "messageId": control, "userId": OTHER, "properties": {"path": "/"}},
            ],
        }
        r = httpx.post(f"{service.url}/v1/batch", json=batch, timeout=15)
        assert r.status_code == 200 and r.json()["accepted"] == 4 and r.json()["rejected"] == []
        single = {"userId": USER, "event": "Demo Requested", "messageId": f"c4-{run}"}
        r = httpx.post(f"{service.url}/v1/track", json=single, auth=(WRITE_KEY, ""), timeout=15)
        assert (r.status_code, r.json()) == (200, {"success": True})
        assert mids_on(service, "web", {*posted, f"c4-{run}", control}) == {control}
        service.wait_for(lambda: (s := seen(http, OTHER)) is not None and s >= t2)
        time.sleep(SETTLE_S)
        assert history(contact(http, USER)) == history(before)

        # UNSUPPRESS: the entries lifted, collection resumes (not the suppressed past)
        write_privacy(service, dict.fromkeys(KEYS))
        time.sleep(SETTLE_S)
        t3 = now_ms()
        resumed = {"userId": USER, "event": "Demo Requested", "messageId": f"r1-{run}", "timestamp": iso(t3)}
        r = httpx.post(f"{service.url}/v1/track", json=resumed, auth=(WRITE_KEY, ""), timeout=15)
        assert r.status_code == 200
        assert mids_on(service, "web", {f"r1-{run}"}) == {f"r1-{run}"}
        service.wait_for(lambda: (s := seen(http, USER)) is not None and s >= t3 - 1000)


def settled(http: httpx.Client, ident: str) -> dict[str, Any] | None:
    """The contact, once two reads a while apart show the same history (else None)."""
    first = contact(http, ident)
    time.sleep(SETTLE_S)
    again = contact(http, ident)
    return again if again is not None and history(first) == history(again) else None


def history(body: dict[str, Any] | None) -> tuple[Any, ...]:
    """What a scored event of the person would change: last seen, identity and the rules that
    scored (their points decay between two reads)."""
    if body is None:
        return (None, None, [])
    return body["last_seen"], body["identity"], sorted(t["rule"] for t in body["engagement"]["top"])
