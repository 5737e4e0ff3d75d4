"""The load generator on the real broker: the rate it was asked for, every record where the
default partitioner puts its key."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner

from bench.harness import create_topic
from bench.load import generate
from kafka_io import clients
from kafka_io.clients import KafkaConnection

pytestmark = pytest.mark.kafka


async def _read_all(bootstrap: str, topics: list[str], expect: int) -> list[tuple[str, int, bytes | None]]:
    consumer = clients.consumer(KafkaConnection(bootstrap), *topics, auto_offset_reset="earliest")
    await consumer.start()
    out: list[tuple[str, int, bytes | None]] = []
    try:
        for _ in range(100):
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                out += [(tp.topic, tp.partition, r.key) for r in records]
            if len(out) >= expect:
                break
    finally:
        await consumer.stop()
    return out


def test_the_generator_keeps_its_rate_and_the_keys_partitions(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = {channel: f"load-{channel}-{suffix}" for channel in ("web", "email", "store")}
    for topic in topics.values():
        asyncio.run(create_topic(kafka_bootstrap, topic, partitions=3))
    got = asyncio.run(generate(kafka_bootstrap, topics, rate=400, seconds=2.0, seed=1))
    # open-loop: what came due in the time it ran (generous margins: the machine is shared)
    assert 0.8 * 400 * got["seconds"] <= got["sent"] <= 400 * got["seconds"] + 2
    records = asyncio.run(_read_all(kafka_bootstrap, list(topics.values()), int(got["sent"])))
    assert len(records) == got["sent"]
    assert {topic for topic, _, _ in records} <= set(topics.values())
    assert all(partition == DefaultPartitioner()(key, [0, 1, 2], None) for _, partition, key in records)
