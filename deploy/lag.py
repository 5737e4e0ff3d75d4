"""How far a consumer group is behind: its committed offsets against the topics' end offsets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    ends, committed = await _offsets(bootstrap, topics, group)
    done = sum(
        min(committed[tp].offset, end) for tp, end in ends.items() if tp in committed and committed[tp].offset >= 0
    )
    return Lag(total=sum(ends.values()), committed=done)


async def records_in(bootstrap: str, topics: list[str]) -> int:
    """Records ever written to ``topics`` (their end offsets, summed)."""
    ends, _ = await _offsets(bootstrap, topics)
    return sum(ends.values())


async def _offsets(
    bootstrap: str, topics: list[str], group: str | None = None
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, Any]]:
    """The end offset of every partition of ``topics``, and ``group``'s committed offsets (none
    without a group)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group) if group is not None else {}
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(tps)), committed
    finally:
        await consumer.stop()
