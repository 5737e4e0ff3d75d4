"""Batch delivery around a rebalance (``streams.transport``), without a broker.

Faust empties every agent's channel queue when a rebalance ends (``flow_control.resume()``), after
its seek to the committed offsets; a batch handed to an agent in between was lost. The drain loop
runs here on a real ``ScorestreamApp`` consumer with the fetch replaced by prepared records.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka.errors import IllegalStateError
from aiokafka.structs import ConsumerRecord, TopicPartition
from faust.types import TP
from faust.types.tuples import RecordMetadata

from streams.transport import ContiguousOffsetTable, ScorestreamApp, rewind

SOURCE = TopicPartition("src", 0)
CHANGELOG = TopicPartition("t-unit-contacts-changelog", 0)


def _record(tp: TopicPartition, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=1_000,
        timestamp_type=0,
        key=b"k",
        value=b"v",
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=1,
        headers=(),
    )


class Drain:
    """One pass of the consumer's drain loop over ``records`` of one partition."""

    def __init__(self, rebalancing: bool) -> None:
        self.app = ScorestreamApp(
            "t-unit", batched_topics=frozenset({SOURCE.topic}), broker="kafka://127.0.0.1:1", store="memory://"
        )
        self.channel: Any = self.app.topic(SOURCE.topic, key_type=bytes, value_type=bytes).clone(is_iterator=True)
        self.app.topics._tp_index[SOURCE].add(self.channel)
        self.app.flow_control.resume()
        self.app.rebalancing = rebalancing
        self.consumer: Any = self.app.consumer
        self.fetched_again: list[tuple[Any, int, int]] = []
        self.handed: list[int] = []  # offsets given to the (changelog) callback

    async def run(self, tp: TopicPartition, offsets: range) -> None:
        consumer = self.consumer
        pending = [({tp: [_record(tp, o) for o in offsets]}, {tp})]

        async def wait_next_records(_timeout: float) -> tuple[Any, Any]:
            if pending:
                return pending.pop()
            consumer._stopped.set()
            return None, None

        async def fetch_again_later(tp: Any, first: int, last: int) -> None:
            self.fetched_again.append((tp, first, last))

        async def callback(message: Any) -> None:
            self.handed.append(message.offset)

        consumer._wait_next_records = wait_next_records
        consumer._fetch_again_later = fetch_again_later
        consumer.callback = callback
        consumer.highwater = lambda tp: offsets[-1] + 1

        class Fetcher:
            _stopped = asyncio.Event()

        try:
            await consumer._drain_messages(Fetcher())
        finally:
            consumer._thread.thread_loop.close()  # made for the consumer's thread, never started here


def test_a_source_batch_fetched_during_a_rebalance_waits_for_its_end() -> None:
    async def scenario() -> Drain:
        drain = Drain(rebalancing=True)
        await drain.run(SOURCE, range(5, 8))
        return drain

    drain = asyncio.run(scenario())
    assert drain.channel.queue.qsize() == 0  # nothing for the end of the rebalance to clear
    assert drain.fetched_again == [(SOURCE, 5, 7)]  # the partition is set back to its first record
    assert drain.consumer._read_offset[SOURCE] is None  # and nothing counts as read


def test_what_the_end_of_a_rebalance_does_to_a_batch_already_delivered() -> None:
    """Why: Faust's ``flow_control.resume()`` drops what the agents have not taken yet, while the
    read offset (and the fetch position) stay past it. Outside a rebalance nothing clears it."""

    async def scenario() -> tuple[Drain, int]:
        drain = Drain(rebalancing=False)
        await drain.run(SOURCE, range(5, 8))
        delivered = drain.channel.queue.qsize()
        drain.app.flow_control.resume()
        return drain, delivered

    drain, delivered = asyncio.run(scenario())
    assert delivered == 1 and drain.fetched_again == []
    assert drain.channel.queue.qsize() == 0
    assert drain.consumer._read_offset[SOURCE] == 7


def test_changelog_records_being_recovered_are_delivered_during_a_rebalance() -> None:
    async def scenario() -> Drain:
        drain = Drain(rebalancing=True)
        drain.app.tables.recovery.active_tps.add(CHANGELOG)
        await drain.run(CHANGELOG, range(0, 3))
        return drain

    drain = asyncio.run(scenario())
    assert drain.handed == [0, 1, 2] and drain.fetched_again == []


class FakeConsumer:
    def __init__(self, position: int | None) -> None:
        self._position = position
        self.sought: list[tuple[Any, int]] = []

    async def position(self, tp: Any) -> int:
        if self._position is None:
            raise IllegalStateError("not assigned")
        return self._position

    def seek(self, tp: Any, offset: int) -> None:
        self.sought.append((tp, offset))


@pytest.mark.parametrize(
    ("position", "sought"),
    [
        (8, [(SOURCE, 5)]),  # just past the records handed out: back to the first
        (11, [(SOURCE, 5)]),  # past them by a gap (compaction, transaction markers): the same
        (5, []),  # moved since (Faust's seek to the committed offset): that seek decides
        (7, []),
        (None, []),  # no longer assigned
    ],
)
def test_rewind_only_a_partition_nothing_moved_since_the_fetch(position: int | None, sought: list[Any]) -> None:
    consumer = FakeConsumer(position)
    assert asyncio.run(rewind(consumer, SOURCE, 5, 7)) is bool(sought)
    assert consumer.sought == sought


class Seeks:
    """The consumer's seek to committed offsets, failing ``failures`` times as a revoked partition does."""

    def __init__(self, failures: int, assigned: set[TopicPartition]) -> None:
        self.app = ScorestreamApp("t-unit", broker="kafka://127.0.0.1:1", store="memory://")
        self.consumer: Any = self.app.consumer
        self.calls = 0
        self.failures = failures

        async def perform_seek() -> None:
            self.calls += 1
            if self.calls <= self.failures:
                raise IllegalStateError(f"No current assignment for partition {SOURCE}")

        self.consumer.perform_seek = perform_seek
        self.consumer.assignment = lambda: assigned

    def run(self) -> None:
        try:
            asyncio.run(self.consumer._seek_assigned_to_committed(attempts=3))
        finally:
            self.consumer._thread.thread_loop.close()


def test_a_seek_a_rebalance_interrupts_is_made_again_over_the_new_assignment() -> None:
    """A partition revoked while aiokafka seeks partition by partition leaves the ones after it
    unsought, past records the drain loop dropped: seek again until one pass succeeds."""
    seeks = Seeks(failures=2, assigned={SOURCE})
    seeks.run()
    assert seeks.calls == 3


def test_a_seek_that_keeps_failing_crashes_the_worker() -> None:
    seeks = Seeks(failures=3, assigned={SOURCE})
    with pytest.raises(IllegalStateError):
        seeks.run()
    assert seeks.calls == 3


def test_nothing_assigned_nothing_to_seek() -> None:
    seeks = Seeks(failures=0, assigned=set())
    seeks.run()
    assert seeks.calls == 0


class Acked:
    """What Faust hands a table's changelog callback once the broker acknowledged a write."""

    def __init__(self, tp: TP, offset: int) -> None:
        self.metadata = RecordMetadata(topic=tp.topic, partition=tp.partition, topic_partition=tp, offset=offset)

    def result(self) -> RecordMetadata:
        return self.metadata


def test_a_worker_stores_the_offset_of_its_own_write_only_when_nothing_was_written_before_it(
    tmp_path: Path,
) -> None:
    """The partition database's stored offset is where its next recovery starts reading. A write
    of another worker (one still writing after a broker outage cost both their group memberships)
    between two of this worker's must not be skipped by it (tests/e2e/test_chaos.py)."""
    app = ScorestreamApp("t-unit", broker="kafka://127.0.0.1:1", store="rocksdb://", datadir=str(tmp_path))
    table: Any = app.Table("contacts", partitions=1, key_type=bytes, value_type=bytes)
    assert isinstance(table, ContiguousOffsetTable)
    tp = TP(table.changelog_topic.get_topic_name(), 0)
    stored = []
    for offset in (0, 1, 2, 4, 5):  # offset 3: another worker's write, not in this database
        table._on_changelog_sent(Acked(tp, offset))
        stored.append(table.persisted_offset(tp))
    assert stored == [0, 1, 2, 2, 2]  # the next recovery reads 3, 4 and 5, in order

    table.data.set_persisted_offset(tp, 5)  # what a recovery that read them stores
    table._on_changelog_sent(Acked(tp, 6))
    assert table.persisted_offset(tp) == 6


def test_faust_own_table_would_skip_it(tmp_path: Path) -> None:
    """Why: Faust stores every acknowledged write's offset, so its next recovery starts past 3."""
    app = ScorestreamApp(
        "t-unit", broker="kafka://127.0.0.1:1", store="rocksdb://", datadir=str(tmp_path), Table=faust.Table
    )
    table: Any = app.Table("contacts", partitions=1, key_type=bytes, value_type=bytes)
    tp = TP(table.changelog_topic.get_topic_name(), 0)
    for offset in (0, 1, 2, 4):
        table._on_changelog_sent(Acked(tp, offset))
    assert table.persisted_offset(tp) == 4
