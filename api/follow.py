"""Following Kafka topics from the beginning, for ever: the API's in-memory replicas.

The contacts replica, the accounts replica and the population reader all do the same: wait for
their topic, read every partition from the beginning, hand each record to their ``apply``, say
when they have caught up with the end offsets seen at start, and start again after a broker error.
A record ``apply`` fails on is logged with its coordinates, counted (:data:`unreadable`) and
skipped (the API has no producer to dead-letter it); a reader whose task dies anyway reports it
in :attr:`Following.failure`, and ``/readyz`` answers 503 with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)


class Follower(Protocol):
    """What :func:`follow` reports to: the last error (None when reading) and the catch-up event."""

    error: str | None
    caught_up: asyncio.Event


unreadable: Counter[str] = Counter()
"""Records the API's followers skipped because they could not read them, by follower label."""


def task_failure(task: asyncio.Task[Any] | None) -> str | None:
    """Why a follower's task (which runs until cancelled) is no longer running: its name and
    exception, or None while it runs (or after it was cancelled by ``stop``)."""
    if task is None or not task.done() or task.cancelled():
        return None
    exc = task.exception()
    if exc is None:
        return f"{task.get_name()}: stopped"
    return f"{task.get_name()}: {type(exc).__name__}: {exc}"


class Following:
    """``start``/``stop`` for a reader whose :meth:`follow` runs until cancelled (a mixin:
    subclasses are dataclasses with a ``_task`` field)."""

    _task: asyncio.Task[None] | None

    @property
    def failure(self) -> str | None:
        """Set if the reader's task died (``/readyz`` then answers 503 with it)."""
        return task_failure(self._task)

    async def follow(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self._task = asyncio.create_task(self.follow(), name=type(self).__name__)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def follow(
    reader: Follower,
    bootstrap: str,
    topics: Sequence[str],
    apply: Callable[[Any], None],
    label: str,
    fetch_max_wait_ms: int,
    *,
    absent_is_empty: bool = False,
) -> None:
    """Read ``topics`` (every partition, from the beginning) into ``apply(record)`` for ever.

    The first topic must exist before reading starts (the others are read if they exist);
    ``reader.caught_up`` is set once every partition reached the end offset it had at the start.
    ``absent_is_empty``: while the first topic does not exist, the reader counts as caught up (with
    nothing: a topic no one has written yet) instead of waiting; it is read once it appears.
    Broker errors are reported in ``reader.error`` and reading starts again after a second.
    """
    while True:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_max_wait_ms,
            max_partition_fetch_bytes=4 << 20,
            isolation_level="read_uncommitted",
        )
        try:
            await consumer.start()
            await _consume(consumer, reader, topics, apply, label, absent_is_empty)
        except asyncio.CancelledError:
            raise
        except (KafkaError, OSError) as exc:
            reader.error = f"{type(exc).__name__}: {exc}"
            log.warning("%s failed (%s); retrying in 1 s", label, reader.error)
            await asyncio.sleep(1.0)
        finally:
            await consumer.stop()


async def _consume(
    consumer: AIOKafkaConsumer,
    reader: Follower,
    topics: Sequence[str],
    apply: Callable[[Any], None],
    label: str,
    absent_is_empty: bool,
) -> None:
    partitions: list[TopicPartition] = []
    while not partitions:
        cluster = await consumer._client.fetch_all_metadata()
        for topic in topics:
            found = cluster.partitions_for_topic(topic) or set()
            partitions += [TopicPartition(topic, p) for p in sorted(found)]
        if not any(tp.topic == topics[0] for tp in partitions):
            partitions = []
            if absent_is_empty:
                reader.error = None
                reader.caught_up.set()
            else:
                reader.error = f"waiting for topic {topics[0]}"
            await asyncio.sleep(1.0)
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    ends = await consumer.end_offsets(partitions)
    pending = {tp for tp, end in ends.items() if end > 0}
    reader.error = None
    started = time.monotonic()
    while True:
        batches = await consumer.getmany(timeout_ms=100, max_records=10_000)
        for records in batches.values():
            for record in records:
                try:
                    apply(record)
                except Exception as exc:  # one record it cannot read never stops the reader
                    unreadable[label] += 1
                    log.error(
                        "%s: unreadable record %s[%s] %s skipped (%s: %s)",
                        label,
                        record.topic,
                        record.partition,
                        record.offset,
                        type(exc).__name__,
                        exc,
                    )
        if pending:
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        if not pending and not reader.caught_up.is_set():
            reader.caught_up.set()
            log.info("%s caught up in %.1f s", label, time.monotonic() - started)
