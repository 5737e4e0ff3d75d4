"""Reading topics from the beginning (``kafka_io.reader``) on a real broker: to the end, following
new records, and past a record ``apply`` fails on (logged, counted, skipped)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.admin import NewTopic

from kafka_io import clients
from kafka_io.clients import KafkaConnection
from kafka_io.reader import TopicReader, follow, read_topic, unreadable

pytestmark = pytest.mark.kafka


def fresh(name: str) -> str:
    return f"kafka-io-{name}-{uuid.uuid4().hex[:8]}"


async def create(kafka: KafkaConnection, topic: str, partitions: int) -> None:
    admin = clients.admin(kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce(kafka: KafkaConnection, topic: str, records: list[tuple[int, bytes]]) -> None:
    producer = clients.producer(kafka, acks="all")
    await producer.start()
    try:
        for partition, value in records:
            await producer.send_and_wait(topic, value, key=value, partition=partition)
    finally:
        await producer.stop()


def collector(seen: list[bytes]) -> Callable[[Any], None]:
    def apply(record: Any) -> None:
        if record.value == b"bad":
            raise ValueError("not a record")
        seen.append(record.value)

    return apply


RECORDS = [(0, b"a0"), (1, b"b0"), (0, b"bad"), (1, b"b1"), (0, b"a1")]


def test_reads_every_partition_to_its_end_and_skips_what_it_cannot_read(kafka_bootstrap: str) -> None:
    kafka, topic = KafkaConnection(kafka_bootstrap), fresh("end")
    seen: list[bytes] = []

    async def go() -> TopicReader:
        await create(kafka, topic, 2)
        await produce(kafka, topic, RECORDS)
        async with TopicReader(kafka, [topic], collector(seen), "test reader") as reader:
            assert await reader.assign()
            await reader.read_to_end()
            return reader

    before = unreadable["test reader"]
    reader = asyncio.run(go())
    assert sorted(seen) == [b"a0", b"a1", b"b0", b"b1"]
    assert [v for v in seen if v.startswith(b"a")] == [b"a0", b"a1"]  # a partition's order is kept
    assert reader.skipped == 1 and unreadable["test reader"] == before + 1


def test_read_topic_reads_to_the_end_or_finds_nothing(kafka_bootstrap: str) -> None:
    kafka, topic = KafkaConnection(kafka_bootstrap), fresh("topic")
    seen: list[bytes | None] = []

    def apply(key: bytes | None, value: bytes | None) -> None:
        if value == b"bad":
            raise KeyError("a bug")
        seen.append(value)

    async def go() -> None:
        await read_topic(kafka, topic, apply, until_end=True)  # no such topic: empty
        assert seen == []
        await create(kafka, topic, 1)
        await produce(kafka, topic, [(0, b"x"), (0, b"bad"), (0, b"y")])
        await read_topic(kafka, topic, apply, until_end=True)

    before = unreadable[topic]
    asyncio.run(go())
    assert seen == [b"x", b"y"] and unreadable[topic] == before + 1


@dataclass
class Follower:
    error: str | None = None
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)


async def until(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_follows_new_records_after_catching_up(kafka_bootstrap: str) -> None:
    kafka, topic = KafkaConnection(kafka_bootstrap), fresh("follow")
    seen: list[bytes] = []
    follower = Follower()

    async def go() -> None:
        await create(kafka, topic, 2)
        await produce(kafka, topic, RECORDS)
        task = asyncio.create_task(follow(follower, kafka, [topic], collector(seen), "test follower", 100))
        try:
            await asyncio.wait_for(follower.caught_up.wait(), 30)
            assert sorted(seen) == [b"a0", b"a1", b"b0", b"b1"]
            await produce(kafka, topic, [(1, b"b2"), (0, b"bad"), (0, b"a2")])
            await until(lambda: len(seen) == 6)
            assert follower.error is None and not task.done()  # the bad record did not stop it
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    before = unreadable["test follower"]
    asyncio.run(go())
    assert sorted(seen) == [b"a0", b"a1", b"a2", b"b0", b"b1", b"b2"]
    assert unreadable["test follower"] == before + 2


def test_a_topic_not_written_yet_is_caught_up_with_nothing_then_read(kafka_bootstrap: str) -> None:
    kafka, topic = KafkaConnection(kafka_bootstrap), fresh("absent")
    seen: list[bytes] = []
    waiting, empty = Follower(), Follower()

    async def go() -> None:
        tasks = [
            asyncio.create_task(follow(waiting, kafka, [topic], collector([]), "test waiting", 100)),
            asyncio.create_task(
                follow(empty, kafka, [topic], collector(seen), "test empty", 100, absent_is_empty=True)
            ),
        ]
        try:
            await asyncio.wait_for(empty.caught_up.wait(), 30)
            assert seen == [] and empty.error is None
            await until(lambda: waiting.error is not None)
            assert waiting.error == f"waiting for topic {topic}" and not waiting.caught_up.is_set()
            await create(kafka, topic, 1)
            await produce(kafka, topic, [(0, b"late")])
            await until(lambda: seen == [b"late"])
            await asyncio.wait_for(waiting.caught_up.wait(), 30)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(go())
