"""How many records topics hold (a consumer group's lag is :func:`kafka_io.promotion.group_lag`)."""

from __future__ import annotations

from kafka_io.clients import KafkaConnection
from kafka_io.topics import offsets
from schemas.settings import Settings


async def records_in(kafka: KafkaConnection | Settings, topics: list[str]) -> int:
    """Records ever written to ``topics`` (their end offsets, summed)."""
    ends, _ = await offsets(kafka, topics)
    return sum(ends.values())
