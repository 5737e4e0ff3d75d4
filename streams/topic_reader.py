"""Reading a one-partition topic from its beginning: the worker's followers of the population
model and of the models registry."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)
unreadable: Counter[str] = Counter()
"""Records skipped because ``apply`` failed on them, by topic."""


async def read_topic(
    bootstrap: str, topic: str, apply: Callable[[bytes | None, bytes | None], None], *, until_end: bool = False
) -> None:
    """Feed every record of the one-partition ``topic``, from the beginning, to ``apply(key,
    value)``: up to the end offset it had at the start (``until_end``), or for ever."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=500,
        auto_offset_reset="earliest",  # the reset assign() starts must not move past the seek
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while not (until_end and await consumer.position(tp) >= end):
            for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                try:
                    apply(record.key, record.value)
                except Exception as exc:  # one record it cannot read never stops the follower
                    unreadable[topic] += 1
                    log.error(
                        "%s[0] %d: unreadable record skipped (%s: %s)", topic, record.offset, type(exc).__name__, exc
                    )
    finally:
        await consumer.stop()
