"""How far a consumer group is behind: its committed offsets against the topics' end offsets."""

from __future__ import annotations

from dataclasses import dataclass

from kafka_io.clients import KafkaConnection
from kafka_io.topics import offsets
from schemas.settings import Settings


@dataclass
class Lag:
    total: int
    committed: int

    @property
    def remaining(self) -> int:
        return self.total - self.committed


async def group_lag(kafka: KafkaConnection | Settings, group: str, topics: list[str]) -> Lag:
    """End offsets vs the group's committed offsets over ``topics``."""
    ends, committed = await offsets(kafka, topics, group)
    done = sum(
        min(committed[tp].offset, end) for tp, end in ends.items() if tp in committed and committed[tp].offset >= 0
    )
    return Lag(total=sum(ends.values()), committed=done)


async def records_in(kafka: KafkaConnection | Settings, topics: list[str]) -> int:
    """Records ever written to ``topics`` (their end offsets, summed)."""
    ends, _ = await offsets(kafka, topics)
    return sum(ends.values())
