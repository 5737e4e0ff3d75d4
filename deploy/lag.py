"""How far a consumer group is behind: its committed offsets against the topics' end offsets."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


@dataclass
class Lag:
    total: int
    committed: int

    @property
    def remaining(self) -> int:
        return self.total - self.committed


async def group_lag(bootstrap: str, group: str, topics: list[str]) -> Lag:
    """End offsets vs the group's committed offsets over ``topics``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    ends = await end_offsets(bootstrap, tps)
    done = sum(min(committed[tp].offset, ends[tp]) for tp in tps if tp in committed and committed[tp].offset >= 0)
    return Lag(total=sum(ends.values()), committed=done)


async def end_offsets(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def records_in(bootstrap: str, topics: list[str]) -> int:
    """Records ever written to ``topics`` (their end offsets, summed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    return sum((await end_offsets(bootstrap, tps)).values())
