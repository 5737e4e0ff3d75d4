"""Reading topics from the beginning: to their end, or following them for ever.

One reader for every "replica of a topic" in scorestream: the API's contacts, accounts, population,
webhook subscriptions and deliveries replicas, the worker's population model and models registry,
the analytics sink's view of the registry. A :class:`TopicReader` is a group-less consumer (nothing
committed) assigned every partition of its topics, from the beginning.

The per-record policy, stated once (:func:`apply_or_skip`): a record the reader's ``apply`` fails
on is logged with its coordinates (``topic[partition] offset``), counted in :data:`unreadable`
under the reader's label, and skipped; one record never stops a reader. Broker errors are not
records: they reach the caller (:func:`follow` reports them and starts again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from kafka_io.clients import KafkaConnection, consumer, partitions_of
from schemas.settings import Settings

log = logging.getLogger(__name__)

unreadable: Counter[str] = Counter()
"""Records this process's readers skipped because ``apply`` failed on them, by reader label."""

READ_OPTIONS: dict[str, Any] = {
    "group_id": None,
    "enable_auto_commit": False,
    # the reset that assign() starts must not move the position past the seek to the beginning
    "auto_offset_reset": "earliest",
}


def apply_or_skip(apply: Callable[[Any], None], record: Any, label: str) -> bool:
    """``apply(record)``; False if it failed (the record is then logged, counted and skipped)."""
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
            extra={"topic": record.topic, "partition": record.partition, "offset": record.offset},  # JSON fields
        )
        return False
    return True


class TopicReader:
    """Every partition of ``topics`` from the beginning, each record handed to ``apply(record)``.

    ``start``, then :meth:`assign` (False while the first topic does not exist), then
    :meth:`read_to_end` and/or :meth:`read_more`; ``stop`` at the end (``async with`` does both
    ends). ``options`` are the consumer's (``fetch_max_wait_ms``, fetch sizes)."""

    def __init__(
        self,
        kafka: KafkaConnection | Settings,
        topics: Sequence[str],
        apply: Callable[[Any], None],
        label: str,
        *,
        poll_ms: int = 1000,
        after_fetch: Callable[[], None] | None = None,
        **options: Any,
    ) -> None:
        self.topics = list(topics)
        self.apply = apply
        self.label = label
        self.poll_ms = poll_ms
        self.after_fetch = after_fetch  # called once the records of a fetch were applied
        self.skipped = 0  # records apply failed on
        self.partitions: list[TopicPartition] = []
        self._consumer: AIOKafkaConsumer = consumer(kafka, **{**READ_OPTIONS, **options})

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def __aenter__(self) -> TopicReader:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def assign(self, positions: Mapping[tuple[str, int], int] | None = None) -> bool:
        """Assign every partition of the topics that exist, at their beginning (or at the offset
        ``positions`` gives for ``(topic, partition)``); False (nothing assigned) while the first
        topic does not exist."""
        found = await partitions_of(self._consumer, self.topics)
        if not any(tp.topic == self.topics[0] for tp in found):
            return False
        self.partitions = found
        self._consumer.assign(found)
        await self._consumer.seek_to_beginning(*found)
        for tp in found:
            if (at := (positions or {}).get((tp.topic, tp.partition))) is not None:
                self._consumer.seek(tp, at)
        return True

    async def read_to_end(self) -> None:
        """Apply every record up to the end offsets the partitions have now."""
        ends = await self._consumer.end_offsets(self.partitions)
        while [tp for tp in self.partitions if await self._consumer.position(tp) < ends[tp]]:
            await self.read_more()

    async def read_more(self) -> int:
        """Apply what one fetch brings (waiting up to ``poll_ms`` for it); returns the count."""
        fetched = await self._consumer.getmany(timeout_ms=self.poll_ms, max_records=10_000)
        count = 0
        for records in fetched.values():
            for record in records:
                if not apply_or_skip(self.apply, record, self.label):
                    self.skipped += 1
                count += 1
        if self.after_fetch is not None:
            self.after_fetch()
        return count


async def read_topic(
    kafka: KafkaConnection | Settings,
    topic: str,
    apply: Callable[[bytes | None, bytes | None], None],
    *,
    until_end: bool = False,
) -> None:
    """Feed every record of ``topic``, from the beginning, to ``apply(key, value)``: up to the end
    offsets it had at the start (``until_end``: a topic that does not exist is empty), or for ever
    (waiting for the topic to exist). Skipped records are counted under the topic's name."""
    reader = TopicReader(kafka, [topic], lambda r: apply(r.key, r.value), topic, fetch_max_wait_ms=500)
    async with reader:
        while not await reader.assign():
            if until_end:
                return
            await asyncio.sleep(1.0)
        if until_end:
            await reader.read_to_end()
            return
        while True:
            await reader.read_more()


class Follower(Protocol):
    """What :func:`follow` reports to: the last error (None when reading) and the catch-up event."""

    error: str | None
    caught_up: asyncio.Event


async def follow(
    follower: Follower,
    kafka: KafkaConnection | Settings,
    topics: Sequence[str],
    apply: Callable[[Any], None],
    label: str,
    fetch_max_wait_ms: int,
    *,
    absent_is_empty: bool = False,
    positions: Callable[[], Mapping[tuple[str, int], int]] | None = None,
    after_fetch: Callable[[], None] | None = None,
) -> None:
    """Read ``topics`` (every partition, from the beginning) into ``apply(record)`` for ever.

    The first topic must exist before reading starts (the others are read if they exist);
    ``follower.caught_up`` is set once every partition reached the end offset it had at the start.
    ``absent_is_empty``: while the first topic does not exist, the follower counts as caught up
    (with nothing: a topic no one has written yet) instead of waiting; it is read once it appears.
    Broker errors are reported in ``follower.error`` and reading starts again after a second.
    ``positions()``, asked at every (re)start, gives the offsets to resume partitions from instead
    of their beginning (a reader that keeps what it applied on disk); ``after_fetch()`` is called
    once the records of each fetch were applied (to write them as one batch).
    """
    while True:
        reader = TopicReader(
            kafka,
            topics,
            apply,
            label,
            poll_ms=100,
            after_fetch=after_fetch,
            fetch_max_wait_ms=fetch_max_wait_ms,
            max_partition_fetch_bytes=4 << 20,
            isolation_level="read_uncommitted",
        )
        try:
            await reader.start()
            await _follow(reader, follower, absent_is_empty, positions)
        except asyncio.CancelledError:
            raise
        except (KafkaError, OSError) as exc:
            follower.error = f"{type(exc).__name__}: {exc}"
            log.warning("%s failed (%s); retrying in 1 s", label, follower.error)
            await asyncio.sleep(1.0)
        finally:
            await reader.stop()


async def _follow(
    reader: TopicReader,
    follower: Follower,
    absent_is_empty: bool,
    positions: Callable[[], Mapping[tuple[str, int], int]] | None = None,
) -> None:
    while not await reader.assign(None if positions is None else positions()):
        if absent_is_empty:
            follower.error = None
            follower.caught_up.set()
        else:
            follower.error = f"waiting for topic {reader.topics[0]}"
        await asyncio.sleep(1.0)
    follower.error = None
    started = time.monotonic()
    await reader.read_to_end()
    if not follower.caught_up.is_set():
        follower.caught_up.set()
        log.info("%s caught up in %.1f s", reader.label, time.monotonic() - started)
    while True:
        await reader.read_more()
