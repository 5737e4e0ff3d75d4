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
from kafka_io.partitioner import partition_for
from schemas.settings import Settings
from schemas.state import decode_batch, envelope_for
from streams.agents import Outbox
from streams.app import create_app
from streams.sends import BatchedSends, PendingSends
from tests.factories import make_event


@dataclass
class FakeTopic:
    name: str

    def get_topic_name(self) -> str:
        return self.name


@dataclass
class FakeKafkaProducer:
    sent: list[tuple[str, bytes | None, bytes, Any, int | None]] = field(default_factory=list)

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None, partition: int | None = None
    ) -> Any:
        self.sent.append((topic, key, value, headers, partition))
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


@dataclass(eq=False)
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
    sends.add(triggers, b"c-1", b"{4}", partition=3)
    (item,) = app.producer.buffer.items
    assert isinstance(item, PendingSends) and item.message.channel is item

    async def buffer_task() -> None:  # what Faust's buffer task does with an item
        await item.message.channel.publish_message(item, wait=False)

    asyncio.run(buffer_task())
    assert app.producer.kafka.sent == [
        ("triggers", b"c-1", b"{1}", None, None),
        ("triggers", b"c-2", b"{2}", None, None),
        ("events.deadletter", None, b"raw", [("scorestream.reason", b"invalid_json")], None),
        ("triggers", b"c-1", b"{4}", None, 3),
    ]
    sends.add(triggers, b"c-3", b"{3}")  # the item was taken: the next batch opens another
    assert len(app.producer.buffer.items) == 2 and app.producer.buffer.items[1].records == [
        ("triggers", b"c-3", b"{3}", None, None)
    ]
    assert (sends.records, sends.items) == (5, 2)


def test_an_apps_batched_sends_are_found_from_its_topics() -> None:
    app = FakeApp()
    sends = BatchedSends.of(app)
    assert BatchedSends.of(app) is sends
    assert BatchedSends.for_topic(Topic(app)) is sends
    assert BatchedSends.for_topic(Topic(FakeApp())) is None  # an app that never made them
    assert BatchedSends.for_topic(FakeTopic("no app")) is None


@dataclass
class Topic:
    app: Any


@pytest.mark.kafka
def test_batched_records_land_on_the_partitions_send_soon_chose_and_are_flushed(kafka_bootstrap: str) -> None:
    ns = f"sends-{uuid.uuid4().hex[:8]}"
    settings = Settings(kafka_bootstrap=kafka_bootstrap, app_id=ns, topic_triggers=f"{ns}-triggers")
    keys = [f"contact-{i}".encode() for i in range(200)]

    async def go() -> dict[str, list[tuple[bytes, int, bytes]]]:
        w = create_app(settings)
        assert w.sends is not None and BatchedSends.for_topic(w.contacts_topic) is w.sends
        await w.app.producer.start()
        try:
            for key in keys:  # the old path, to the private topic (same partitions)
                w.private_triggers.send_soon(key=key, value=b"{}")
            for i in range(0, len(keys), 50):  # four batches
                for key in keys[i : i + 50]:
                    w.send_trigger(key, {"at_ms": 0, "key": key.decode()})
                await asyncio.sleep(0)
            out = Outbox(settings.partitions)  # the pipeline's records: one per partition, same sends
            for key in keys:
                out.add(w.contacts_topic, key.decode(), envelope_for(make_event(user_id=key.decode())))
            out.flush()
            await w.app.producer.flush()  # what every commit waits for
            assert w.sends.records == len(keys) + settings.partitions and w.sends.items <= 5
        finally:
            await w.app.producer.stop()
        return await read(
            kafka_bootstrap, [settings.topic_triggers, settings.private_triggers_topic, settings.contacts_topic]
        )

    placed = asyncio.run(go())
    batched = {key: partition for key, partition, _ in placed[settings.topic_triggers]}
    per_record = {key: partition for key, partition, _ in placed[settings.private_triggers_topic]}
    assert len(placed[settings.topic_triggers]) == len(keys)  # every trigger, one record each
    assert batched == per_record and sorted(batched) == sorted(keys)
    assert len(set(batched.values())) == settings.partitions
    internal = placed[settings.contacts_topic]  # one record per partition, its keys' items in it
    assert sorted(partition for _, partition, _ in internal) == list(range(settings.partitions))
    for _, partition, value in internal:
        assert [item.key for item in decode_batch(value).items] == [
            k.decode() for k in keys if partition_for(k, settings.partitions) == partition
        ]


async def read(bootstrap: str, topics: list[str]) -> dict[str, list[tuple[bytes, int, bytes]]]:
    """Topic -> (key, partition, value) of every record there now."""
    c = consumer(Settings(kafka_bootstrap=bootstrap), *topics, auto_offset_reset="earliest", group_id=None)
    await c.start()
    out: dict[str, list[tuple[bytes, int, bytes]]] = {t: [] for t in topics}
    try:
        quiet = 0
        while quiet < 3:
            fetched = await c.getmany(timeout_ms=500)
            quiet = 0 if fetched else quiet + 1
            for tp, records in fetched.items():
                for r in records:
                    assert r.key is not None and r.value is not None
                    out[tp.topic].append((r.key, tp.partition, r.value))
    finally:
        await c.stop()
    return out
