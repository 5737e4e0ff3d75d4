"""The webhook dispatcher's per-record isolation (``dispatcher.service``), without a broker.

A trigger or command record it cannot read or handle is dead-lettered (original bytes, reason,
exception class, coordinates) before the batch's offsets are committed, and every other record of
the batch is handled; an unreadable subscription or delivery record is logged, counted and
skipped. The producer and consumer are fakes that record what is sent and committed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

import orjson
import pytest
from aiokafka import TopicPartition

import scorestream.delivery
from dispatcher import service as dispatcher_service
from dispatcher.schedule import Entry, SeenIds, Selection, new_delivery
from dispatcher.sender import Answer
from dispatcher.service import Dispatcher, now_ms
from schemas.settings import Settings
from schemas.webhooks import DELIVERY_DECODER, SigningSecret, SubscriptionRecord, encode
from scorestream.triggers import make_trigger
from tests.factories import consumer_record

NOW = 1_800_000_000_000
SETTINGS = Settings()


@dataclass
class Meta:
    offset: int


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, dict[str, bytes]]] = []

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Meta]:
        self.sent.append((topic, key, value, dict(headers or [])))
        fut: asyncio.Future[Meta] = asyncio.get_running_loop().create_future()
        fut.set_result(Meta(len(self.sent)))
        return fut

    async def send_and_wait(self, *args: Any, **kwargs: Any) -> Meta:
        return await (await self.send(*args, **kwargs))

    def to(self, topic: str) -> list[tuple[str, bytes | None, bytes, dict[str, bytes]]]:
        return [s for s in self.sent if s[0] == topic]


class FakeConsumer:
    def __init__(self) -> None:
        self.committed: dict[TopicPartition, int] = {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)


def rec(topic: str, offset: int, value: bytes | None, key: bytes | None = b"u-1") -> Any:
    return consumer_record(topic, offset, value, key, timestamp=NOW)


def trigger(n: int) -> bytes:
    body = make_trigger(
        "stage.changed", at_ms=NOW + n, model_version="m@1", contact_id="u-1", before="lead", after=f"s{n}"
    )
    return orjson.dumps(body)


def dispatcher() -> tuple[Dispatcher, FakeProducer, FakeConsumer]:
    d = Dispatcher(SETTINGS)
    producer, consumer = FakeProducer(), FakeConsumer()
    d._producer = cast(Any, producer)
    d._consumer = cast(Any, consumer)
    d._owned = {0}
    d._seen[0] = SeenIds(100)
    sub = SubscriptionRecord(
        id="wh_1", url="https://example.com/h", events=["*"], secrets=[SigningSecret("s" * 32, NOW)],
        created_ms=NOW, updated_ms=NOW,
    )  # fmt: skip
    d._apply_subscription(b"wh_1", encode(sub), 0)
    return d, producer, consumer


def test_a_bad_trigger_or_command_is_dead_lettered_and_the_others_handled(monkeypatch: pytest.MonkeyPatch) -> None:
    d, producer, consumer = dispatcher()
    real = scorestream.delivery.trigger_payload

    def payload(t: dict[str, Any]) -> bytes:  # a bug that strikes one trigger
        if t["after"] == "s2":
            raise OverflowError("cannot render")
        return real(t)

    monkeypatch.setattr(dispatcher_service, "trigger_payload", payload)
    triggers, commands = SETTINGS.topic_triggers, SETTINGS.commands_topic
    batch = {
        TopicPartition(triggers, 0): [
            rec(triggers, 10, trigger(1)),
            rec(triggers, 11, b"{not json"),
            rec(triggers, 12, trigger(2)),
            rec(triggers, 13, orjson.dumps({"type": "x"})),  # no id
            rec(triggers, 14, trigger(3)),
        ],
        TopicPartition(commands, 0): [rec(commands, 5, b"\x00 not a command")],
    }
    asyncio.run(d._handle(batch))

    deliveries = producer.to(SETTINGS.deliveries_topic)
    assert len(deliveries) == 2  # triggers 1 and 3
    dead = producer.to(SETTINGS.topic_deadletter)
    found = [
        (
            h["scorestream.reason"].decode(),
            h["scorestream.exception"].decode(),
            h["scorestream.source.topic"].decode(),
            int(h["scorestream.source.offset"]),
        )
        for _, _, _, h in dead
    ]
    assert found == [
        ("unreadable_trigger", "dispatcher.service.Unhandled", triggers, 11),
        ("processing_error", "OverflowError", triggers, 12),
        ("unreadable_trigger", "dispatcher.service.Unhandled", triggers, 13),
        ("unreadable_command", "dispatcher.service.Unhandled", commands, 5),
    ]
    assert [v for _, _, v, _ in dead][:2] == [b"{not json", trigger(2)]  # the original bytes
    assert consumer.committed[TopicPartition(triggers, 0)] == 15  # the batch is done
    assert d.stats["dead_lettered"] == 4


def test_unreadable_subscriptions_and_deliveries_are_skipped_and_counted() -> None:
    d, _, _ = dispatcher()
    d._apply_subscription(b"wh_2", b"\xc1garbage", 1)
    d._apply_subscription(b"\xff", b"{}", 2)
    assert list(d.subs) == ["wh_1"] and d.stats["unreadable_subscriptions"] == 2

    selection = Selection(10, skip=lambda _: False, recovery=True)
    d._offer(selection, 0, rec(SETTINGS.deliveries_topic, 3, b"\xc1 not a delivery", key=b"d1"), "d1")
    assert d.stats["unreadable_deliveries"] == 1
    assert selection.result() == {}


def test_a_failure_inside_an_attempt_settles_the_delivery_and_frees_its_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    d, producer, _ = dispatcher()

    async def post(sub: Any, record: Any, now: int) -> Answer:
        return Answer(outcome="success", latency_ms=1.0, status_code=200)

    def after_attempt(*args: Any, **kwargs: Any) -> Any:  # a bug in the dispatcher, not the receiver
        raise AttributeError("a bug after the answer")

    monkeypatch.setattr(d, "_post", post)
    monkeypatch.setattr(dispatcher_service, "after_attempt", after_attempt)
    now = now_ms()
    first, second = (
        new_delivery(
            delivery_id=f"d{i}", subscription_id="wh_1", kind="stage.changed", key="u-1", partition=0, seq=i,
            body="{}", now_ms=now, trigger_id=f"t{i}",
        )
        for i in (1, 2)
    )  # fmt: skip
    d.queue.add(Entry.of(first, now))
    d.queue.add(Entry.of(second, now))

    async def go() -> list[Entry]:
        (started,) = d.queue.take_due(now)  # the lane's head only
        d._in_flight[started.id] = started
        await d._attempt(started)
        await asyncio.gather(*d._background)
        return d.queue.take_due(now_ms())

    after = asyncio.run(go())
    assert [e.id for e in after] == ["d2"]  # the lane went on
    written = [DELIVERY_DECODER.decode(v) for _, _, v, _ in producer.to(SETTINGS.deliveries_topic)]
    assert [(r.id, r.status) for r in written] == [("d1", "failed")]
    assert "dispatcher error: AttributeError" in str(written[0])
    assert d.stats["attempt_errors"] == 1 and "d1" not in d._in_flight
