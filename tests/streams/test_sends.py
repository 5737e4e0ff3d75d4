"""Triggers and dead letters in batches (``streams.sends``): one producer-buffer item per batch,
put into the buffer with the batch's first record; still one Kafka record each, on the partitions
Faust's ``send_soon`` chose, covered by the producer's flush (what a commit waits for)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from kafka_io.clients import consumer
from schemas.settings import Settings
from streams.app import create_app
from streams.sends import BatchedSends, PendingSends


@dataclass
class FakeTopic:
    name: str

    def get_topic_name(self) -> str:
        return self.name


@dataclass
class FakeKafkaProducer:
    sent: list[tuple[str, bytes | None, bytes, Any]] = field(default_factory=list)

    async def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None) -> Any:
        self.sent.append((topic, key, value, headers))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@dataclass
class FakeBuffer:
    items: list[Any] = field(default_factory=list)

    def put(self, item: Any) -> None:
        self.items.append(item)


@dataclass
class FakeProducer:
    buffer: FakeBuffer = field(default_factory=FakeBuffer)
    kafka: FakeKafkaProducer = field(default_factory=FakeKafkaProducer)

    def _ensure_producer(self) -> FakeKafkaProducer:
        return self.kafka


@dataclass
class FakeApp:
    producer: FakeProducer = field(default_factory=FakeProducer)


def test_a_batch_of_records_is_one_buffer_item_queued_with_its_first_record() -> None:
    app = FakeApp()
    sends = BatchedSends(app)
    triggers, dead = FakeTopic("triggers"), FakeTopic("events.deadletter")
    sends.add(triggers, b"c-1", b"{1}")
    assert len(app.producer.buffer.items) == 1  # in the buffer before the batch is acknowledged
    sends.add(triggers, b"c-2", b"{2}")
    sends.add(dead, None, b"raw", [("scorestream.reason", b"invalid_json")])
    (item,) = app.producer.buffer.items
    assert isinstance(item, PendingSends) and item.message.channel is item

    async def buffer_task() -> None:  # what Faust's buffer task does with an item
        await item.message.channel.publish_message(item, wait=False)

    asyncio.run(buffer_task())
    assert app.producer.kafka.sent == [
        ("triggers", b"c-1", b"{1}", None),
        ("triggers", b"c-2", b"{2}", None),
        ("events.deadletter", None, b"raw", [("scorestream.reason", b"invalid_json")]),
    ]
    sends.add(triggers, b"c-3", b"{3}")  # the item was taken: the next batch opens another
    assert len(app.producer.buffer.items) == 2 and app.producer.buffer.items[1].records == [
        ("triggers", b"c-3", b"{3}", None)
    ]
    assert (sends.records, sends.items) == (4, 2)


@pytest.mark.kafka
def test_batched_triggers_land_on_the_partitions_send_soon_chose_and_are_flushed(kafka_bootstrap: str) -> None:
    ns = f"sends-{uuid.uuid4().hex[:8]}"
    settings = Settings(kafka_bootstrap=kafka_bootstrap, app_id=ns, topic_triggers=f"{ns}-triggers")
    keys = [f"contact-{i}".encode() for i in range(200)]

    async def go() -> dict[str, dict[bytes, set[int]]]:
        w = create_app(settings)
        assert w.sends is not None
        await w.app.producer.start()
        try:
            for key in keys:  # the old path, to the private topic (same partitions)
                w.private_triggers.send_soon(key=key, value=b"{}")
            for i in range(0, len(keys), 50):  # four batches
                for key in keys[i : i + 50]:
                    w.send_trigger(key, {"at_ms": 0, "key": key.decode()})
                await asyncio.sleep(0)
            await w.app.producer.flush()  # what every commit waits for
            assert w.sends.records == len(keys) and w.sends.items <= 4
        finally:
            await w.app.producer.stop()
        return await read(kafka_bootstrap, [settings.topic_triggers, settings.private_triggers_topic])

    placed = asyncio.run(go())
    batched, per_record = placed[settings.topic_triggers], placed[settings.private_triggers_topic]
    assert sorted(batched) == sorted(keys)  # every trigger, one record each
    assert all(len(p) == 1 for p in batched.values())
    assert batched == per_record
    assert len({p for ps in batched.values() for p in ps}) == settings.partitions


async def read(bootstrap: str, topics: list[str]) -> dict[str, dict[bytes, set[int]]]:
    """Topic -> key -> the partitions its records are on (the records there now)."""
    c = consumer(Settings(kafka_bootstrap=bootstrap), *topics, auto_offset_reset="earliest", group_id=None)
    await c.start()
    out: dict[str, dict[bytes, set[int]]] = {t: {} for t in topics}
    try:
        quiet = 0
        while quiet < 3:
            fetched = await c.getmany(timeout_ms=500)
            quiet = 0 if fetched else quiet + 1
            for tp, records in fetched.items():
                for r in records:
                    assert r.key is not None
                    out[tp.topic].setdefault(r.key, set()).add(tp.partition)
    finally:
        await c.stop()
    return out
