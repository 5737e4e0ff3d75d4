"""The webhook dispatcher's pure parts (no broker): state changes of a delivery, the queue's
order and limits, what a scan of a deliveries partition brings back; and one attempt over real
HTTP to a local receiver (the SSRF guard refuses before connecting)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from dispatcher.schedule import (
    Entry,
    Revive,
    Scheduler,
    SeenIds,
    Selection,
    after_attempt,
    new_delivery,
    revived,
    settled,
)
from dispatcher.sender import Connector, Refused, Sender
from schemas.webhooks import MAX_ATTEMPTS_KEPT, AttemptRecord, DeliveryRecord, encode
from scorestream.delivery import TEST_TYPE, parse_retry_after
from tests.webhook_receiver import Receiver, hang

NOW = 1_800_000_000_000
SCHEDULE = (1.0, 10.0)


def delivery(
    did: str = "msg_a",
    sub: str = "wh_1",
    key: str = "u1",
    seq: int = 0,
    partition: int = 0,
    kind: str = "stage.changed",
) -> DeliveryRecord:
    return new_delivery(
        delivery_id=did,
        subscription_id=sub,
        kind=kind,
        key=key,
        partition=partition,
        seq=seq,
        body='{"type":"stage.changed"}',
        now_ms=NOW,
        trigger_id=None if kind == TEST_TYPE else f"trg_{did}",
    )


def attempt(outcome: str = "http_error", status: int | None = 500, manual: bool = False) -> AttemptRecord:
    return AttemptRecord(at_ms=NOW, outcome=outcome, latency_ms=3.0, status_code=status, manual=manual)  # type: ignore[arg-type]


# --- state changes -------------------------------------------------------------------------------


def test_a_failed_attempt_is_retried_on_schedule_then_dead_lettered() -> None:
    d = delivery()
    d1, due1 = after_attempt(d, attempt(), schedule=SCHEDULE, draw=0.5, retry_after_s=None, now_ms=NOW)
    assert d1.status == "pending" and due1 == NOW + 1000 and d1.next_attempt_ms == due1
    assert (d1.attempt_count, d1.scheduled_attempts) == (1, 1)
    d2, due2 = after_attempt(d1, attempt(), schedule=SCHEDULE, draw=0.5, retry_after_s=None, now_ms=NOW)
    assert due2 == NOW + 10_000
    d3, due3 = after_attempt(d2, attempt(), schedule=SCHEDULE, draw=0.5, retry_after_s=None, now_ms=NOW)
    assert due3 is None and d3.status == "failed" and d3.next_attempt_ms is None
    assert d3.reason is not None and "retry schedule spent after 3 attempts" in d3.reason and "HTTP 500" in d3.reason
    assert [a.status_code for a in d3.attempts] == [500, 500, 500]


def test_success_settles_and_410_fails_without_retry() -> None:
    ok, due = after_attempt(
        delivery(), attempt("success", 200), schedule=SCHEDULE, draw=0.5, retry_after_s=None, now_ms=NOW
    )
    assert (ok.status, due, ok.reason) == ("succeeded", None, None)
    gone, due = after_attempt(
        delivery(), attempt("gone", 410), schedule=SCHEDULE, draw=0.5, retry_after_s=None, now_ms=NOW
    )
    assert gone.status == "failed" and due is None and "410" in (gone.reason or "")


def test_retry_after_replaces_the_scheduled_delay() -> None:
    d, due = after_attempt(delivery(), attempt(status=429), schedule=SCHEDULE, draw=0.0, retry_after_s=42, now_ms=NOW)
    assert due == NOW + 42_000 and d.status == "pending"


def test_a_manual_attempt_of_a_settled_delivery_does_not_restart_the_schedule() -> None:
    failed = settled(delivery(), "failed", "retry schedule spent", NOW)
    again, due = after_attempt(
        failed, attempt(manual=True), schedule=SCHEDULE, draw=0.5, retry_after_s=None, now_ms=NOW, once=True
    )
    assert again.status == "failed" and due is None and again.scheduled_attempts == 0
    assert again.attempts[-1].manual and "manual retry failed" in (again.reason or "")
    won, _ = after_attempt(
        failed, attempt("success", 204), schedule=SCHEDULE, draw=0.5, retry_after_s=None, now_ms=NOW, once=True
    )
    assert won.status == "succeeded"


def test_revived_gets_a_fresh_schedule_and_keeps_counting_attempts() -> None:
    d = delivery()
    for _ in range(3):
        d, _ = after_attempt(d, attempt(), schedule=SCHEDULE, draw=0.5, retry_after_s=None, now_ms=NOW)
    assert d.status == "failed"
    back = revived(d, NOW + 5)
    assert (back.status, back.scheduled_attempts, back.attempt_count, back.reason) == ("pending", 0, 3, None)
    assert back.next_attempt_ms == NOW + 5
    again, due = after_attempt(back, attempt(), schedule=SCHEDULE, draw=0.5, retry_after_s=None, now_ms=NOW)
    assert due == NOW + 1000 and again.attempt_count == 4


def test_attempts_kept_are_the_latest() -> None:
    d = delivery()
    for _ in range(MAX_ATTEMPTS_KEPT + 5):
        d, _ = after_attempt(d, attempt(), schedule=(0.0,) * 100, draw=0.5, retry_after_s=None, now_ms=NOW)
    assert len(d.attempts) == MAX_ATTEMPTS_KEPT and d.attempt_count == MAX_ATTEMPTS_KEPT + 5


def test_retry_after_header_forms() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("120", now) == 120.0
    when = datetime.fromtimestamp(now, tz=UTC) + timedelta(seconds=90)
    assert parse_retry_after(format_datetime(when, usegmt=True), now) == pytest.approx(90.0)
    past = datetime.fromtimestamp(now, tz=UTC) - timedelta(seconds=90)
    assert parse_retry_after(format_datetime(past, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


# --- the queue -----------------------------------------------------------------------------------


def ids(entries: list[Entry]) -> list[str]:
    return [e.id for e in entries]


def test_one_lane_goes_in_seq_order_and_waits_for_its_head() -> None:
    q = Scheduler(concurrency=10)
    for seq in (5, 3, 9):
        q.add(Entry.of(delivery(f"m{seq}", seq=seq), NOW))
    first = q.take_due(NOW)
    assert ids(first) == ["m3"]
    assert q.take_due(NOW) == []  # the lane is busy
    failed, due = after_attempt(first[0].record, attempt(), schedule=SCHEDULE, draw=0.5, retry_after_s=None, now_ms=NOW)
    q.finish(first[0], failed, due, NOW)
    assert q.take_due(NOW + 999) == []  # m3 waits for its retry; m5 waits behind it
    retry = q.take_due(NOW + 1000)
    assert ids(retry) == ["m3"]
    ok, _ = after_attempt(
        retry[0].record, attempt("success", 200), schedule=SCHEDULE, draw=0.5, retry_after_s=None, now_ms=NOW
    )
    q.finish(retry[0], ok, None, NOW + 1000)
    assert ids(q.take_due(NOW + 1000)) == ["m5"]
    assert "m3" not in q.entries and q.queued(0, "wh_1") == 2


def test_keys_and_subscriptions_do_not_wait_on_each_other() -> None:
    q = Scheduler(concurrency=2)
    for i in range(4):
        q.add(Entry.of(delivery(f"dead{i}", sub="wh_dead", key=f"k{i}", seq=i), NOW))
        q.add(Entry.of(delivery(f"ok{i}", sub="wh_ok", key=f"k{i}", seq=i), NOW))
    started = q.take_due(NOW)
    by_sub = {s: [e for e in started if e.subscription_id == s] for s in ("wh_dead", "wh_ok")}
    assert len(by_sub["wh_dead"]) == 2 and len(by_sub["wh_ok"]) == 2  # concurrency per subscription
    # the dead subscriber's attempts hang; the healthy one's finish and its next ones start
    for e in by_sub["wh_ok"]:
        q.finish(e, settled(e.record, "succeeded", None, NOW), None, NOW)
    nxt = q.take_due(NOW)
    assert sorted(ids(nxt)) == ["ok2", "ok3"]
    assert q.in_flight["wh_dead"] == 2


def test_an_answer_frees_the_subscription_slot_but_the_lane_waits_for_the_record() -> None:
    q = Scheduler(concurrency=1)
    q.add(Entry.of(delivery("a1", key="a", seq=1), NOW))
    q.add(Entry.of(delivery("a2", key="a", seq=2), NOW))
    q.add(Entry.of(delivery("b1", key="b", seq=3), NOW))
    (first,) = q.take_due(NOW)
    assert first.id == "a1" and q.take_due(NOW) == []  # one slot
    q.answered(first)  # answered; its record is being written
    assert ids(q.take_due(NOW)) == ["b1"]  # the slot serves another lane, not a2
    q.finish(first, settled(first.record, "succeeded", None, NOW), None, NOW)
    assert q.take_due(NOW) == []  # b1 holds the slot
    q.finish(q.entries["b1"], settled(q.entries["b1"].record, "succeeded", None, NOW), None, NOW)
    assert ids(q.take_due(NOW)) == ["a2"] and q.in_flight["wh_1"] == 1


def test_a_lower_seq_added_later_goes_first_and_manual_retry_brings_forward() -> None:
    q = Scheduler(concurrency=5)
    late = Entry.of(msgspec_replace(delivery("m7", seq=7), next_attempt_ms=NOW + 60_000), NOW)
    q.add(late)
    q.add(Entry.of(delivery("m2", seq=2), NOW))  # a revived older delivery of the same lane
    assert ids(q.take_due(NOW)) == ["m2"]
    q.finish(q.entries["m2"], settled(q.entries["m2"].record, "succeeded", None, NOW), None, NOW)
    assert q.take_due(NOW) == []  # m7 is due in a minute
    assert q.bring_forward("m7", NOW)
    started = q.take_due(NOW)
    assert ids(started) == ["m7"] and started[0].manual
    assert not q.bring_forward("unknown", NOW)


def test_a_retry_asked_while_in_flight_comes_right_after() -> None:
    q = Scheduler(concurrency=5)
    q.add(Entry.of(delivery("m1"), NOW))
    (e,) = q.take_due(NOW)
    assert q.bring_forward("m1", NOW)
    failed, due = after_attempt(e.record, attempt(), schedule=(300.0,), draw=0.5, retry_after_s=None, now_ms=NOW)
    q.finish(e, failed, due, NOW)
    again = q.take_due(NOW)
    assert ids(again) == ["m1"] and again[0].manual


def test_test_sends_and_once_retries_have_lanes_of_their_own_and_do_not_count() -> None:
    q = Scheduler(concurrency=5)
    q.add(Entry.of(delivery("m1", key="wh_1", seq=3), NOW))
    q.add(Entry.of(delivery("t1", key="wh_1", seq=1, kind=TEST_TYPE), NOW))
    q.add(Entry.once_for(settled(delivery("old", seq=0), "failed", "spent", NOW), NOW))
    assert sorted(ids(q.take_due(NOW))) == ["m1", "old", "t1"]
    assert q.queued(0, "wh_1") == 1


def test_dropping_a_partition_forgets_it_and_late_finishes_are_harmless() -> None:
    q = Scheduler(concurrency=5)
    q.add(Entry.of(delivery("a", partition=0), NOW))
    q.add(Entry.of(delivery("b", partition=1, key="u2"), NOW))
    started = {e.id: e for e in q.take_due(NOW)}
    assert q.drop_partition(0) == 1
    q.finish(started["a"], settled(started["a"].record, "succeeded", None, NOW), None, NOW)
    assert set(q.entries) == {"b"} and q.in_flight["wh_1"] == 1 and q.queued(0, "wh_1") == 0


def test_waiting_of_and_removal_watch() -> None:
    q = Scheduler(concurrency=1)
    for i in range(3):
        q.add(Entry.of(delivery(f"m{i}", key=f"k{i}", seq=i), NOW))
    (busy,) = q.take_due(NOW)
    waiting = q.waiting_of("wh_1")
    assert busy not in waiting and len(waiting) == 2
    q.watch(0)
    q.remove(waiting[0])
    assert q.removed_since_watch(0) == {waiting[0].id}
    assert q.unwatch(0) == {waiting[0].id}


def test_seen_ids_are_bounded_and_keep_the_latest() -> None:
    seen = SeenIds(3)
    assert all(seen.add(f"m{i}") for i in range(5))
    assert not seen.add("m4") and "m1" not in seen and len(seen) == 3


# --- scans ---------------------------------------------------------------------------------------


def msgspec_replace(record: DeliveryRecord, **changes: object) -> DeliveryRecord:
    import msgspec

    return msgspec.structs.replace(record, **changes)


Rec = tuple[DeliveryRecord, bool] | tuple[str, None]  # (record, parked mark) or (id, tombstone)


def feed(sel: Selection, records: Sequence[Rec], hints: bool = True) -> None:
    for offset, (r, parked) in enumerate(records):
        if isinstance(r, str):
            sel.offer(offset, r, None)
        elif hints:
            sel.offer(offset, r.id, encode(r), r.subscription_id, r.status, bool(parked))
        else:
            sel.offer(offset, r.id, encode(r))


def P(r: DeliveryRecord) -> tuple[DeliveryRecord, bool]:  # a parked record
    return (r, True)


def H(r: DeliveryRecord) -> tuple[DeliveryRecord, bool]:  # written while held in memory
    return (r, False)


def test_recovery_takes_every_held_delivery_at_its_latest_record() -> None:
    a, b, c = delivery("a", seq=1), delivery("b", seq=2, key="u2"), delivery("c", seq=3, key="u3")
    a_retry = msgspec_replace(a, attempt_count=1, next_attempt_ms=NOW + 5000)
    sel = Selection(10, skip=lambda d: False, recovery=True)
    feed(sel, [H(a), H(b), H(c), H(a_retry), H(settled(b, "succeeded", None, NOW)), ("c", None)])
    picked = sel.result()["wh_1"]
    assert [(r.id, r.next_attempt_ms) for r, _ in picked.records] == [("a", NOW + 5000)]
    assert picked.parked_from is None and picked.revive_from is None


def test_recovery_without_headers_reads_the_records() -> None:
    a, b = delivery("a", seq=1), delivery("b", seq=2, key="u2")
    sel = Selection(10, skip=lambda d: False, recovery=True)
    feed(sel, [H(a), H(b), H(settled(a, "failed", "x", NOW))], hints=False)
    assert [r.id for r, _ in sel.result()["wh_1"].records] == ["b"]


def test_parked_deliveries_come_back_oldest_first_within_room() -> None:
    records = [P(delivery(f"m{i}", seq=100 + i, key=f"k{i}")) for i in range(6)]
    sel = Selection({"wh_1": 3}, skip=lambda d: d == "m0")
    feed(sel, records)
    picked = sel.result()["wh_1"]
    assert [r.id for r, _ in picked.records] == ["m1", "m2", "m3"]
    assert picked.parked_from == 4  # m4's record: the next scan starts there


def test_recovery_keeps_held_ones_and_parks_beyond_the_limit() -> None:
    held = [H(delivery(f"h{i}", seq=i, key=f"k{i}")) for i in range(2)]
    parked = [P(delivery(f"p{i}", seq=10 + i, key=f"k{i}")) for i in range(3)]
    sel = Selection(3, skip=lambda d: False, recovery=True)
    feed(sel, [*held, *parked])
    picked = sel.result()["wh_1"]
    assert [r.id for r, _ in picked.records] == ["h0", "h1", "p0"] and picked.parked_from == 3


def test_a_refill_ignores_deliveries_that_were_held_in_memory() -> None:
    # d1 was parked, then brought back and attempted (held records), then settled: stale once read
    d1, d2 = delivery("d1", seq=1), delivery("d2", seq=2, key="u2")
    sel = Selection(5, skip=lambda d: False)
    feed(sel, [P(d1), P(d2), H(msgspec_replace(d1, attempt_count=1)), H(delivery("x", seq=3, key="u3"))])
    assert [r.id for r, _ in sel.result()["wh_1"].records] == ["d2"]


def test_stale_parked_records_cannot_stall_refills() -> None:
    # the room is 1: the stale d1 holds it while d2 is read, d2 is refused, d1 then proves stale.
    d1, d2, d3 = delivery("d1", seq=1), delivery("d2", seq=2, key="u2"), delivery("d3", seq=3, key="u3")
    log: list[Rec] = [P(d1), P(d2), P(d3), H(settled(d1, "succeeded", None, NOW))]
    first = Selection(1, skip=lambda d: False)
    feed(first, log)
    picked = first.result()["wh_1"]
    assert picked.records == [] and picked.parked_from == 1
    second = Selection(1, skip=lambda d: False)  # the next scan starts at the refused record
    for offset, (r, parked) in enumerate(log[1:], start=1):
        assert not isinstance(r, str)
        second.offer(offset, r.id, encode(r), r.subscription_id, r.status, bool(parked))
    assert [r.id for r, _ in second.result()["wh_1"].records] == ["d2"]


def test_after_refusing_one_a_scan_takes_no_later_one_even_when_room_frees() -> None:
    a, b, c, d = (delivery(x, seq=i, key=x) for i, x in enumerate("abcd"))
    sel = Selection(2, skip=lambda _: False)
    feed(sel, [P(a), P(b), P(c), H(settled(a, "succeeded", None, NOW)), P(d)])
    picked = sel.result()["wh_1"]
    assert [r.id for r, _ in picked.records] == ["b"] and picked.parked_from == 2


def test_a_lower_seq_evicts_the_highest() -> None:
    sel = Selection(2, skip=lambda _: False)
    feed(sel, [P(delivery("x9", seq=9, key="x")), P(delivery("y8", seq=8, key="y")), P(delivery("z1", seq=1, key="z"))])
    picked = sel.result()["wh_1"]
    assert [r.id for r, _ in picked.records] == ["z1", "y8"] and picked.parked_from == 0


def test_a_scan_revives_failed_deliveries_since_a_time_and_before_an_offset() -> None:
    old = msgspec_replace(settled(delivery("old", seq=1), "failed", "spent", NOW), created_ms=NOW - 10_000)
    recent = settled(delivery("recent", seq=2, key="u2"), "failed", "spent", NOW)
    other = settled(delivery("other", sub="wh_2", seq=3), "failed", "spent", NOW)
    later = settled(delivery("later", seq=4, key="u4"), "failed", "spent", NOW)
    sel = Selection(10, skip=lambda _: False, revive={"wh_1": Revive(NOW - 1000, until=3)})
    feed(sel, [H(old), H(recent), H(other), H(later)])
    result = sel.result()
    assert [(r.id, rv) for r, rv in result["wh_1"].records] == [("recent", True)]
    assert result["wh_1"].revive_from is None and "wh_2" not in result


def test_revived_ones_fill_the_room_oldest_record_first_and_say_where_to_go_on() -> None:
    failed = [H(settled(delivery(f"f{i}", seq=50 - i, key=f"k{i}"), "failed", "spent", NOW)) for i in range(4)]
    sel = Selection(2, skip=lambda _: False, revive={"wh_1": Revive(0)})
    feed(sel, failed)
    picked = sel.result()["wh_1"]
    assert [r.id for r, _ in picked.records] == ["f0", "f1"] and picked.revive_from == 2


def test_recovery_takes_test_sends_and_scans_of_some_subscriptions_only() -> None:
    t = delivery("t", key="wh_1", seq=0, kind=TEST_TYPE)
    sel = Selection(0, skip=lambda _: False, subscriptions=["wh_1"], recovery=True)
    feed(sel, [H(t), P(delivery("m", seq=5)), P(delivery("n", sub="wh_2", seq=6))])
    result = sel.result()
    assert [r.id for r, _ in result["wh_1"].records] == ["t"] and result["wh_1"].parked_from == 1
    assert "wh_2" not in result


# --- one attempt over HTTP -------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def test_the_guard_connects_to_vetted_addresses_only() -> None:
    opened: list[tuple[str, int, object]] = []

    async def resolver(host: str, port: int) -> list[str]:
        return {"mixed.example": ["10.0.0.7", "93.184.216.34"], "private.example": ["127.0.0.1", "169.254.169.254"]}[
            host
        ]

    async def opener(host: str, port: int, **kwargs: object) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        opened.append((host, port, kwargs["server_hostname"]))
        raise ConnectionRefusedError("recorded only")

    async def go() -> None:
        guard = Connector(allow_private=False, resolver=resolver, opener=opener)
        with pytest.raises(Refused, match="loopback"):
            await guard.open("https", "private.example", 443)
        assert opened == []
        with pytest.raises(ConnectionRefusedError):
            await guard.open("https", "mixed.example", 443)
        # the vetted IP itself (no second lookup), the name kept for TLS
        assert opened == [("93.184.216.34", 443, "mixed.example")]

    asyncio.run(go())


def test_the_guard_refuses_ipv6_wrappings_of_private_addresses_at_connect_time() -> None:
    """DNS rebinding: the name passed at subscription time; at connect time it answers addresses
    that wrap a private IPv4 address (or a deprecated or opaque IPv6 prefix)."""
    opened: list[str] = []
    wrapped = {
        "nat64.example": "64:ff9b::7f00:1",
        "nat64-local.example": "64:ff9b:1::a00:1",
        "compatible.example": "::7f00:1",
        "mapped.example": "::ffff:169.254.169.254",
        "siit.example": "::ffff:0:7f00:1",
        "6to4.example": "2002:0a00:0001::1",
        "teredo.example": "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "site-local.example": "fec0::1",
    }

    async def resolver(host: str, port: int) -> list[str]:
        return [wrapped[host]] if host in wrapped else ["64:ff9b::5db8:d70e"]  # NAT64 of a public address

    async def opener(host: str, port: int, **kwargs: object) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        opened.append(host)
        raise ConnectionRefusedError("recorded only")

    async def go() -> list[str]:
        guard = Connector(allow_private=False, resolver=resolver, opener=opener)
        reasons = []
        for host in wrapped:
            with pytest.raises(Refused) as refused:
                await guard.open("https", host, 443)
            reasons.append(str(refused.value))
        assert opened == []
        with pytest.raises(ConnectionRefusedError):
            await guard.open("https", "dns64.example", 443)
        assert opened == ["64:ff9b::5db8:d70e"]
        return reasons

    reasons = asyncio.run(go())
    assert [r.split(": ", 1)[1] for r in reasons] == [
        "127.0.0.1 is a loopback address (embedded in 64:ff9b::7f00:1)",
        "64:ff9b:1::a00:1 is in 64:ff9b:1::/48 (local-use NAT64)",
        "::7f00:1 is in ::/96 (IPv4-compatible, deprecated)",
        "169.254.169.254 is a link-local address (embedded in ::ffff:a9fe:a9fe)",
        "::ffff:0:7f00:1 is in ::ffff:0:0:0/96 (SIIT IPv4-translated)",
        "10.0.0.1 is a private address (embedded in 2002:a00:1::1)",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2 is in 2001::/32 (Teredo)",
        "fec0::1 is in fec0::/10 (site-local, deprecated)",
    ]


def test_an_attempt_to_a_loopback_address_is_refused_before_connecting(receiver: Receiver) -> None:
    async def go() -> None:
        sender = Sender(2.0, 1024, allow_private=False)
        try:
            answer = await sender.post(receiver.url("/x"), {"webhook-id": "msg_1"}, b"{}")
        finally:
            await sender.aclose()
        assert answer.outcome == "refused" and "loopback" in (answer.error or "")

    asyncio.run(go())
    assert receiver.received == []


def test_an_attempt_reads_a_bounded_answer_and_follows_no_redirect(receiver: Receiver) -> None:
    receiver.rules["/moved"] = lambda req, seen: (302, {"location": receiver.url("/ok")})
    receiver.rules["/busy"] = lambda req, seen: (503, {"retry-after": "7"})

    async def go() -> None:
        sender = Sender(2.0, 5, allow_private=True)
        try:
            ok = await sender.post(receiver.url("/ok"), {"webhook-id": "msg_1"}, b'{"a":1}')
            moved = await sender.post(receiver.url("/moved"), {"webhook-id": "msg_2"}, b"{}")
            busy = await sender.post(receiver.url("/busy"), {"webhook-id": "msg_3"}, b"{}")
        finally:
            await sender.aclose()
        assert (ok.outcome, ok.status_code, ok.response) == ("success", 200, '{"ok"')
        assert (moved.outcome, moved.status_code) == ("http_error", 302)
        assert (busy.outcome, busy.retry_after_s) == ("http_error", 7.0)

    asyncio.run(go())
    assert [r.path for r in receiver.received] == ["/ok", "/moved", "/busy"]
    assert (
        receiver.received[0].body == b'{"a":1}'
        and receiver.received[0].headers["user-agent"] == "scorestream-webhooks/1"
    )


def test_an_attempt_times_out_and_a_closed_port_is_a_connection_error(receiver: Receiver) -> None:
    receiver.rules["/slow"] = hang(3.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]

    async def go() -> None:
        sender = Sender(0.3, 1024, allow_private=True)
        try:
            slow = await sender.post(receiver.url("/slow"), {}, b"{}")
            refused = await sender.post(f"http://127.0.0.1:{closed}/", {}, b"{}")
        finally:
            await sender.aclose()
        assert slow.outcome == "timeout" and slow.latency_ms < 2000
        assert refused.outcome == "connection_error"

    asyncio.run(go())


def test_keep_alive_connections_are_reused_and_a_dropped_one_is_replaced() -> None:
    """A receiver that answers the first request of each connection and drops the connection
    on the second one, unanswered (as one closing idle connections does)."""
    connections: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(0)
        writers.append(writer)
        me = len(connections) - 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                connections[me] += 1
                if connections[me] > 1:
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    async def go() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sender = Sender(2.0, 1024, allow_private=True)
        try:
            first = await sender.post(f"http://127.0.0.1:{port}/a", {}, b"{}")
            second = await sender.post(f"http://127.0.0.1:{port}/a?x=1", {}, b"{}")
        finally:
            await sender.aclose()
            for writer in writers:
                writer.close()
            server.close()
            await server.wait_closed()
            await asyncio.sleep(0.05)
        assert (first.outcome, second.outcome) == ("success", "success")
        assert (first.response, second.response) == ("ok", "ok")
        assert connections == [2, 1]  # the second request went out on the kept connection, then again

    asyncio.run(go())


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for ``localhost`` and its key (the test's own CA of one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_https_is_verified_against_the_host_name_while_connecting_to_the_vetted_address(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    receiver = Receiver(tls=server).start()
    trusting = ssl.create_default_context(cafile=str(cert))

    async def go() -> tuple[Any, Any, Any]:
        addresses: list[str] = []

        async def resolver(host: str, port: int) -> list[str]:
            addresses.append(host)
            return ["127.0.0.1"]

        trusted = Sender(2.0, 1024, True, Connector(True, resolver=resolver, ssl_context=trusting))
        default = Sender(2.0, 1024, True, Connector(True, resolver=resolver))
        try:
            ok = await trusted.post(receiver.url("/tls"), {"webhook-id": "msg_tls"}, b"{}")
            unknown_ca = await default.post(receiver.url("/tls"), {"webhook-id": "msg_untrusted"}, b"{}")
            # the certificate names localhost: reaching the same address as 127.0.0.1 must fail the check
            wrong_name = await trusted.post(f"https://127.0.0.1:{receiver.port}/tls", {"webhook-id": "msg_ip"}, b"{}")
        finally:
            await trusted.aclose()
            await default.aclose()
        assert addresses[0] == "localhost", "the name was resolved by the guard, then the vetted address dialled"
        return ok, unknown_ca, wrong_name

    try:
        ok, unknown_ca, wrong_name = asyncio.run(go())
    finally:
        receiver.stop()
    assert (ok.outcome, ok.status_code) == ("success", 200)
    assert unknown_ca.outcome == "connection_error" and "CERTIFICATE_VERIFY_FAILED" in (unknown_ca.error or "")
    assert wrong_name.outcome == "connection_error"
    assert [r.headers["webhook-id"] for r in receiver.received] == ["msg_tls"]
    assert receiver.received[0].headers["host"].startswith("localhost")
