"""A ``forget`` command (a regulation erased the delivery's contact, issue 18): the dispatcher
drops the delivery from memory (its lane goes on), never sends or retries it again, turns the
record an attempt in flight would write into a tombstone, writes a tombstone once more, makes no
new delivery for the same id from a trigger read again, and commits the command once its
tombstone is written. A trigger the privacy list restricts (an erased contact's past, a suppressed
one's from the suppression on) makes no delivery at all. Recovery and scans skip a tombstoned delivery (``Selection``). The producer
and consumer are the fakes of ``test_service_isolation``; the real broker and process:
``tests/e2e/test_erase_api.py``."""

from __future__ import annotations

import asyncio
from typing import cast

import orjson
from aiokafka import TopicPartition

from dispatcher.schedule import Entry, Selection, new_delivery
from dispatcher.sender import Answer
from dispatcher.service import now_ms
from schemas.webhooks import DELIVERY_DECODER, CommandRecord, DeliveryRecord, encode
from scorestream.delivery import delivery_id
from scorestream.privacy import Restriction, contact_key
from tests.dispatcher.test_service_isolation import NOW, SETTINGS, FakeProducer, dispatcher, rec, trigger

DELIVERIES, COMMANDS = SETTINGS.deliveries_topic, SETTINGS.commands_topic


def pending(i: int, now: int, key: str = "u-1") -> DeliveryRecord:
    return new_delivery(
        delivery_id=f"d{i}", subscription_id="wh_1", kind="stage.changed", key=key, partition=0, seq=i,
        body=orjson.dumps({"contact_id": key}).decode(), now_ms=now, trigger_id=f"t{i}",
    )  # fmt: skip


def written(producer: FakeProducer) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of what went to the deliveries topic (a tombstone's value is None)."""
    return [(k, cast(bytes | None, v)) for _, k, v, _ in producer.to(DELIVERIES)]


def forget(delivery: str, offset: int) -> dict[TopicPartition, list[object]]:
    cmd = CommandRecord(
        op="forget", subscription_id="wh_1", request_id="erase_r1", requested_ms=0, delivery_id=delivery
    )
    return {TopicPartition(COMMANDS, 0): [rec(COMMANDS, offset, encode(cmd), key=b"wh_1")]}


def test_a_queued_delivery_is_dropped_its_lane_goes_on_and_a_tombstone_is_written() -> None:
    d, producer, consumer = dispatcher()
    now = now_ms()
    d.queue.add(Entry.of(pending(1, now), now))
    d.queue.add(Entry.of(pending(2, now), now))

    async def go() -> list[Entry]:
        await d._handle(forget("d1", 7))
        await asyncio.gather(*d._background)
        await d._commit_commands()
        return d.queue.take_due(now_ms())

    started = asyncio.run(go())
    assert [e.id for e in started] == ["d2"]  # d1 never starts; the lane's next one does
    assert "d1" not in d.queue.entries
    assert written(producer) == [(b"d1", None)]
    assert consumer.committed[TopicPartition(COMMANDS, 0)] == 8  # done once its tombstone is written
    assert d.stats["forgotten"] == 1


def test_an_attempt_in_flight_ends_in_a_tombstone_and_is_not_retried() -> None:
    d, producer, _ = dispatcher()
    now = now_ms()
    first = pending(1, now)
    d.queue.add(Entry.of(first, now))
    d.queue.add(Entry.of(pending(2, now), now))

    async def go() -> list[Entry]:
        (started,) = d.queue.take_due(now)
        d._in_flight[started.id] = started
        answered = asyncio.Event()
        release = asyncio.Event()

        async def post(sub: object, record: object, at: int) -> Answer:
            answered.set()
            await release.wait()
            return Answer(outcome="http_error", latency_ms=1.0, status_code=500)  # would be retried

        setattr(d, "_post", post)  # noqa: B010 (the instance's, not the class's)
        attempt = asyncio.create_task(d._attempt(started))
        await answered.wait()
        await d._handle(forget("d1", 3))  # the forget arrives while the request is out
        release.set()
        await attempt
        await asyncio.gather(*d._background)
        return d.queue.take_due(now_ms() + 60_000)

    later = asyncio.run(go())
    assert [e.id for e in later] == ["d2"]  # no retry of d1; the lane went on
    sent = written(producer)
    assert sent and all(v is None for k, v in sent if k == b"d1")  # never its record again
    assert d.queue.entries.keys() == {"d2"}


def test_a_trigger_read_again_makes_no_delivery_of_a_forgotten_id() -> None:
    d, producer, _ = dispatcher()
    body = trigger(1)
    triggers = SETTINGS.topic_triggers
    did = delivery_id(orjson.loads(body)["id"], "wh_1")

    async def go() -> None:
        await d._handle(forget(did, 1))
        await asyncio.gather(*d._background)
        d._seen[0] = type(d._seen[0])(100)  # the partition's seen ids lost (a new owner's recovery)
        await d._handle({TopicPartition(triggers, 0): [rec(triggers, 40, body)]})

    asyncio.run(go())
    assert written(producer) == [(did.encode(), None)]


def test_recovery_skips_a_tombstoned_delivery() -> None:
    now = now_ms()
    selection = Selection(10, skip=lambda _: False, recovery=True)
    for offset, (did, value) in enumerate(
        [("d1", encode(pending(1, now))), ("d2", encode(pending(2, now, key="u-2"))), ("d1", None)]
    ):
        selection.offer(offset, did, value)
    taken = [r.id for picked in selection.result().values() for r, _ in picked.records]
    assert taken == ["d2"]


def test_a_trigger_of_an_erased_contact_makes_no_delivery_but_new_collection_does() -> None:
    d, producer, _ = dispatcher()
    d.privacy.privacy.put(contact_key("u-1"), Restriction("r1", erased_before_ms=NOW + 2))
    triggers = SETTINGS.topic_triggers
    batch = {TopicPartition(triggers, 0): [rec(triggers, 1, trigger(1)), rec(triggers, 2, trigger(3))]}
    asyncio.run(d._handle(batch))  # trigger(n) happened at NOW + n, for u-1
    made = [DELIVERY_DECODER.decode(cast(bytes, v)) for _, v in written(producer)]
    assert [orjson.loads(r.body)["data"]["after"] for r in made] == ["s3"]  # after the erasure only
    assert d.stats["restricted_triggers"] == 1
    d.privacy.privacy.put(contact_key("u-1"), Restriction("r2", suppressed_from_ms=NOW))
    asyncio.run(d._handle({TopicPartition(triggers, 0): [rec(triggers, 3, trigger(4))]}))
    assert len(written(producer)) == 1 and d.stats["restricted_triggers"] == 2
