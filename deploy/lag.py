"""How far a consumer group is behind: its committed offsets against the topics' end offsets."""

from __future__ import annotations

from kafka_io.clients import KafkaConnection
from kafka_io.promotion import Lag, group_lag
from kafka_io.topics import offsets
from schemas.settings import Settings

__all__ = ["Lag", "group_lag", "records_in"]  # group_lag and Lag live in kafka_io.promotion (the promotion checks)


async def records_in(kafka: KafkaConnection | Settings, topics: list[str]) -> int:
    """Records ever written to ``topics`` (their end offsets, summed)."""
    ends, _ = await offsets(kafka, topics)
    return sum(ends.values())
