"""Batch delivery for Faust: one stream event per fetched batch of a partition, not per record.

Faust's consumer hands every record to the conductor one at a time (a ``Message``, an ``Event``,
a queue hop, an ack and a couple of tasks each): about 6k records/s on this hardware however
little the agent does. For the topics registered as *batched*, :class:`BatchingConsumer`
delivers each ``getmany`` batch of a partition to the agent's channel as **one** event whose
value is the list of raw records. Everything else in Faust is unchanged: agents, tables and
their changelogs, recovery, rebalancing, flow control, offset commits.

Offsets stay correct: the batch's last record is the event's message; the offsets before it are
registered as a commit gap, so the commit can pass them only when that message is acked, i.e.
after the agent has processed the whole batch (at-least-once, as before). (Faust keeps gaps in
an interval tree rebuilt on every insertion: 18% of the worker's time at 1k events/s under
py-spy, when batches are small. Acking every offset directly instead stalled commits of the
table-writing agents; not understood yet, so the gap route stays.)

Records fetched during a rebalance wait for its end (a patch around Faust, whose issue #596 is
this race). At the end of a rebalance Faust's recovery resumes the source partitions, seeks them
to their committed offsets and only then calls ``flow_control.resume()``, which empties every
agent's channel queue; nothing seeks again after it. Records fetched between that seek and the
clearing went to the queues and were dropped, and the consumer's position had passed them:
they were lost until the next restart. A worker restarted on a fresh disk with events waiting
lost about one run in four this way (up to 2,842 records of 3,000 in one run; e2e
``test_worker_on_a_fresh_disk_restores_its_tables_and_carries_on``). So while
``app.rebalancing`` is set, only the changelog partitions being recovered are delivered; the
records of any other partition are not, and the partition is set back to the first of them,
unless its position moved since they were fetched (Faust's seek to the committed offsets then
decides where it resumes). They are fetched again once the rebalance is over. Standby
changelog partitions wait too: the same clearing empties the changelog queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar, cast

import faust
from aiokafka.errors import IllegalStateError
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from mode.utils.queues import ThrowableQueue

from streams.errors import WorkerError
from telemetry import metrics

log = logging.getLogger(__name__)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: int = 1500

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust hard-codes a 1.5 s long poll; a partition whose buffered records were drained
        # can wait for it before its next fetch. Latency is set here instead.
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class BatchingConsumer(faust_aiokafka.Consumer):
    """aiokafka consumer whose drain loop delivers batched topics one batch at a time."""

    batched_topics: frozenset[str] = frozenset()
    fetch_max_wait_ms: int = 1500
    producer_buffer_max: int = 20_000

    def _new_consumer_thread(self) -> Any:
        thread_class = type("BoundConsumerThread", (_ConsumerThread,), {"fetch_max_wait_ms": self.fetch_max_wait_ms})
        return thread_class(self, loop=self.loop, beacon=self.beacon)

    async def _seek_assigned_to_committed(self, attempts: int = 5) -> None:
        """Seek every partition assigned *now* to its committed offset (the records just fetched
        were dropped: flow is stopped for a rebalance).

        aiokafka seeks partition by partition, awaiting each committed offset; a partition the
        rebalance revokes meanwhile raises ``IllegalStateError`` and the partitions after it are
        left where they were, past the dropped records. That happened when the broker came back
        after a SIGKILL and the group's members had expired (``tests/e2e/test_chaos.py``): uncaught
        it crashed the worker; ignored (as Faust's own ``getmany`` does) 104 of 1,634 contacts
        lost events. So seek again, over the new assignment, until one pass succeeds; if the
        assignment keeps changing, crash (a restarted worker reads from the committed offsets)."""
        for attempt in range(1, attempts + 1):
            if not self.assignment():  # nothing to seek (aiokafka would assert)
                return
            try:
                await self.perform_seek()
                return
            except IllegalStateError as exc:
                if attempt == attempts:
                    raise
                log.warning("seek to committed offsets: %s; again over the current assignment", exc)
                await asyncio.sleep(0.1)

    async def _drain_messages(self, fetcher: Any) -> None:  # noqa: C901 Faust's method, whole to diff with upstream  # pragma: no cover - exercised end to end
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        app = self.app
        batched = type(self).batched_topics
        acquire_flow_control = app.flow_control.acquire
        wait_until_producer_ebb = self._wait_producer_ebb
        tp_index = app.topics._tp_index
        recovery = app.tables.recovery
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)
                if records is None or self.should_stop or not self.flow_active:
                    if records is not None and not self.flow_active:
                        await self._seek_assigned_to_committed()
                    continue
                generation_id = app.consumer_generation_id
                held_back = False
                for tp, tp_records in records.items():
                    if app.consumer_generation_id != generation_id or not self.flow_active:
                        break
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    r_offset = get_read_offset(tp)
                    fresh = [r for r in tp_records if r_offset is None or r.offset >= r_offset]
                    if not fresh:
                        continue
                    if app.rebalancing and tp not in recovery.active_tps:
                        # the end of the rebalance would clear them from the queues (module docstring)
                        await self._fetch_again_later(tp, fresh[0].offset, fresh[-1].offset)
                        held_back = True
                        continue
                    app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    if r_offset and fresh[0].offset - r_offset > 1 and app.topics.acks_enabled_for(tp.topic):
                        # offsets with no record (compaction, transaction markers) must not stall commits
                        await self._add_gap(tp, r_offset + 1, fresh[0].offset - 1)
                    if tp.topic in batched:
                        await acquire_flow_control()
                        await wait_until_producer_ebb()
                        await self._deliver_batch(tp, fresh, tp_index.get(tp, ()))
                        set_read_offset(tp, fresh[-1].offset)
                    else:  # table changelogs (recovery, standbys) and other plain topics
                        await self.wait_first(
                            self._deliver_each(tp, fresh, callback, set_read_offset), self.suspend_flow.wait()
                        )
                    if self._commit_every is not None and self._n_acked >= self._commit_every:  # type: ignore[has-type]
                        self._n_acked = 0
                        await self.commit()
                self.diag.unset_flag(CONSUMER_FETCHING)
                if held_back:  # the rebalance ends within milliseconds: do not refetch in a tight loop
                    await asyncio.sleep(HOLD_BACK_PAUSE_S)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        """Faust's commit, after the app's state flushers wrote what they hold (and so released
        the input records they held: their offsets become committable in this commit, whose
        producer flush then waits for the records the flushers queued)."""
        started = time.perf_counter()
        for flusher in _flushers(self.app):
            flusher.before_commit()
        committed = cast(bool, await super().commit(topics, start_new_transaction))
        metrics.COMMIT.observe(time.perf_counter() - started)
        return committed

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """The state flushers write first: Faust then forgets the revoked partitions' acks."""
        for flusher in _flushers(self.app):
            flusher.partitions_revoked(revoked)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        for flusher in _flushers(self.app):
            flusher.partitions_assigned()
        await super().on_partitions_assigned(assigned, generation_id)

    async def _fetch_again_later(self, tp: TP, first: int, last: int) -> None:
        """Records ``first``..``last`` of ``tp`` were fetched and will not be delivered now: set the
        partition back to ``first`` in the consumer's thread (where aiokafka runs)."""
        thread: Any = self._thread
        await thread.call_thread(rewind, thread._ensure_consumer(), tp, first, last)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust's ``_add_gap`` without its ``merge_overlaps()``, which rebuilt the partition's whole
        interval tree on every call: with a gap per delivered batch, and more of them waiting
        when commits lag, that grew to most of the worker's time under live traffic (py-spy).
        The gaps added here never overlap (each covers offsets of one fetched batch, or the
        offsets between two batches), which is all the commit's offset walk needs."""
        committed = self._committed_offset[tp]
        if committed is not None:
            offset_from = max(offset_from, committed + 1)
        if offset_from <= offset_to:
            self._gap[tp].addi(offset_from, offset_to + 1)

    async def _wait_producer_ebb(self) -> None:
        """Back-pressure from the producer buffer (table changelog and ``send_soon`` records).

        Faust's own ``wait_until_ebb`` waits for 100 more messages as soon as 100 are queued, and
        gives up after any 0.1 s gap: a batch that updates a few thousand keys queues a few
        thousand changelog records, so it stalled every fetch. Here fetching pauses only above
        ``producer_buffer_max`` queued messages and resumes below half of it.
        """
        buffer = self.app.producer.buffer
        high = type(self).producer_buffer_max
        if buffer.size <= high:
            return
        # polled: the buffer's ``message_sent`` event would wake this task once per sent message
        while buffer.size > high // 2:  # noqa: ASYNC110
            await asyncio.sleep(0.002)

    async def _deliver_each(self, tp: TP, records: list[Any], callback: Any, set_read_offset: Any) -> None:
        """Records one at a time, as Faust does, but under one ``wait_first`` per fetched batch:
        Faust races every record against a flow suspension with four new tasks, which made
        table recovery from a changelog run at a few thousand records/s. A suspension still
        stops delivery between records; the read offset is that of the last record delivered."""
        for i, record in enumerate(records, 1):
            await callback(self._to_message(tp, record))
            set_read_offset(tp, record.offset)
            if i % 1000 == 0:
                await asyncio.sleep(0)  # let the tasks consuming these records run

    async def _deliver_batch(self, tp: TP, records: list[Any], channels: Any) -> None:
        carrier = self._to_message(tp, records[-1])
        if len(records) > 1:
            # the offsets before the carrier are committable only once the carrier is acked
            await self._add_gap(tp, records[0].offset, records[-1].offset - 1)
        if not channels:
            carrier.ack(self)
            return
        carrier.incref(len(channels))
        self.track_message(carrier)
        event = faust.Event(self.app, carrier.key, records, carrier.headers, carrier)
        for channel in channels:
            await channel.put(event)


HOLD_BACK_PAUSE_S = 0.01


class StateFlusher(Protocol):
    """State held in memory whose input records stay unacknowledged until it is written
    (:class:`streams.state_cache.StateCache`): told before each offset commit, on partition
    revocation (before Faust forgets the revoked partitions' acknowledgements), on assignment,
    and when the app stops (before Faust's last commit and the tables' close)."""

    def before_commit(self) -> None: ...

    def partitions_revoked(self, revoked: set[TP]) -> None: ...

    def partitions_assigned(self) -> None: ...

    def stopping(self) -> None: ...


def _flushers(app: Any) -> list[StateFlusher]:
    return cast(list[StateFlusher], getattr(app, "state_flushers", []))


async def rewind(consumer: Any, tp: Any, first: int, last: int) -> bool:
    """Seek ``consumer`` (an aiokafka consumer) back to ``first`` for ``tp`` if its position is
    still past ``last``, i.e. nothing has moved it since records ``first``..``last`` were handed
    out. A position at or before ``last`` was set by a seek since (Faust's, to the committed
    offset), which already decides where reading resumes. Returns whether it sought.

    No await between reading the position and seeking while the position is valid, so another
    seek in the thread cannot slip in between."""
    try:
        if await consumer.position(tp) <= last:
            return False
        consumer.seek(tp, first)
    except IllegalStateError:  # no longer assigned: its next owner reads from the committed offset
        return False
    return True


class SnapshotFlushBuffer(ProducerBuffer):
    """Faust's producer buffer with a flush that waits for what was queued before it, and only that.

    Faust flushes this buffer before every offset commit, and its flush waited until the buffer
    was *empty*: under steady load agents keep queueing changelog records, so a commit could wait
    tens of seconds (measured: 32 s at 3k events/s) and offsets fell ever further behind. Faust's
    flush also gave up after any 0.1 s without a send, letting a commit pass messages not yet
    produced. This one counts: a flush returns once every message queued before it has been
    handed to the Kafka producer, whose own flush then waits for their acks.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.queued = 0
        self.handed_over = 0

    def put(self, fut: Any) -> None:
        self.queued += 1
        super().put(fut)

    async def _send_pending(self, fut: Any) -> None:
        await super()._send_pending(fut)
        self.handed_over += 1

    async def flush(self) -> None:
        target = self.queued
        while self.handed_over < target:
            if self.should_stop:
                raise RuntimeError("producer buffer stopped with messages still queued")
            self.message_sent.clear()
            # woken by each send; the timeout only re-checks should_stop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.message_sent.wait(), timeout=1.0)


class BatchingProducer(faust_aiokafka.Producer):
    """Faust's aiokafka producer with :class:`SnapshotFlushBuffer` as its buffer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.threaded_producer is None, "producer_threaded is not supported"
        self.buffer = SnapshotFlushBuffer(loop=self.loop, beacon=self.beacon)
        self.buffer.app = self.app


class BatchingTransport(faust_aiokafka.Transport):
    Consumer = BatchingConsumer
    Producer = BatchingProducer


class ChangelogQueue(ThrowableQueue):
    """The queue between the consumer and table recovery, with a cheap ``get`` when not empty.

    Faust's recovery loop takes every changelog record with ``asyncio.wait_for(queue.get(), 5)``,
    which on Python 3.11 wraps the coroutine in a new task: a task per record, the largest cost
    of rebuilding a table (py-spy). ``get`` here hands back an already-resolved future when a
    record is waiting (``wait_for`` then creates no task) and the usual coroutine otherwise.
    """

    def get(self) -> Any:
        if not self.empty():
            ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            ready.set_result(self.get_nowait())
            return ready
        return super().get()


class ContiguousOffsetTable(faust.Table):
    """Faust's table whose partition databases store a changelog offset only when every record
    up to it is in the database.

    Each partition database stores the changelog offset it has applied, and its next recovery
    (after a rebalance, at a start) reads the changelog only after it. Faust also stores the
    offset of every record the worker itself writes, once the broker acknowledges it, as if no
    one else could have written before it. Two workers do write one changelog partition at the
    same time after a broker outage that outlives their group memberships: the worker that
    rejoins first is assigned every partition at once, while the other, not yet aware that it
    lost its own, still folds and writes for one to three seconds (seen in
    ``tests/e2e/test_chaos.py`` runs: their writes interleave on the changelog). The second
    worker then stored offsets past the first one's writes, and when it got its partitions back
    its recovery skipped them: a contact the first worker folded newer events into would miss
    them from then on, since the committed offsets are past those events. Here a worker's own
    write moves the stored offset only if it directly follows it; otherwise the offset stays,
    and the next recovery reads what was written since, in the changelog's order (the order the
    API's replica reads too). Nothing changes while a worker is the only writer.
    """

    def _on_changelog_sent(self, fut: Any) -> None:
        if self.app.in_transaction:  # exactly-once stores offsets at commit (not used here)
            super()._on_changelog_sent(fut)
            return
        res = fut.result()
        tp = res.topic_partition
        persisted = self.data.persisted_offset(tp)
        if res.offset == (-1 if persisted is None else persisted) + 1:
            self.data.set_persisted_offset(tp, res.offset)


class ScorestreamApp(faust.App):
    """A Faust app whose consumer batches delivery for the topics named in ``batched_topics``."""

    state_flushers: list[StateFlusher]

    def __init__(
        self,
        *args: Any,
        batched_topics: frozenset[str] = frozenset(),
        fetch_max_wait_ms: int = 1500,
        producer_buffer_max: int = 20_000,
        **kwargs: Any,
    ) -> None:
        consumer_class = type(
            "BoundBatchingConsumer",
            (BatchingConsumer,),
            {
                "batched_topics": batched_topics,
                "fetch_max_wait_ms": fetch_max_wait_ms,
                "producer_buffer_max": producer_buffer_max,
            },
        )
        self._transport_class = type("BoundBatchingTransport", (BatchingTransport,), {"Consumer": consumer_class})
        kwargs.setdefault("Table", ContiguousOffsetTable)
        super().__init__(*args, **kwargs)
        self.state_flushers = []

    def _new_transport(self) -> Any:
        return cast(Any, self._transport_class)(self.conf.broker_consumer, self)

    def add_state_flusher(self, flusher: StateFlusher) -> None:
        """Have ``flusher`` write its state before commits, on rebalances and at stop."""
        self.state_flushers.append(flusher)

    async def on_stop(self) -> None:
        for flusher in self.state_flushers:
            flusher.stopping()
        await super().on_stop()

    def use_fast_changelog_queue(self) -> None:
        """Install :class:`ChangelogQueue` as the tables' changelog queue (before any table exists)."""
        tables: Any = self.tables
        assert tables._changelog_queue is None, "the changelog queue is already in use"
        tables._changelog_queue = ChangelogQueue(
            maxsize=self.conf.stream_buffer_maxsize, flow_control=self.flow_control, clear_on_resume=True
        )


def record_ms(record: Any) -> int:
    """Kafka record timestamp in ms (aiokafka records carry ms, Faust messages seconds)."""
    ts = record.timestamp
    return int(ts * 1000) if isinstance(ts, float) else int(ts or 0)


def records_of(event: Any) -> list[Any]:
    """The raw records an agent received: the batch, or the single record of a plain event."""
    value = event.value
    return value if isinstance(value, list) else [event.message]


# Faust's producer refuses a record above ``producer_max_request_size`` (1,000,000 bytes by
# default) by crashing its buffer task, which stops the worker; every record scorestream writes
# (internal batches, changelog values, dead letters) stays below this, with room for key and headers.
MAX_RECORD_BYTES = 900_000


T = TypeVar("T")


class TooLarge(WorkerError, ValueError):
    """A value that cannot be written as one Kafka record (see :data:`MAX_RECORD_BYTES`)."""


def encode_chunks(
    items: list[T],
    encode_chunk: Callable[[list[T]], bytes],
    refuse: Callable[[T, Exception], None],
    max_items: int,
    max_bytes: int = MAX_RECORD_BYTES,
) -> Iterator[tuple[list[T], bytes]]:
    """``items`` as encoded records of at most ``max_items`` items and ``max_bytes`` bytes.

    A chunk that does not encode, or encodes too large, is halved until it does; an item that
    fails alone goes to ``refuse`` with the reason, and every other item is still written (one bad
    item never costs the others)."""
    for start in range(0, len(items), max_items):
        todo = [items[start : start + max_items]]
        while todo:
            chunk = todo.pop()
            try:
                value = encode_chunk(chunk)
                if len(value) > max_bytes:
                    raise TooLarge(f"{len(value)} bytes; a record holds at most {max_bytes}")
            except Exception as exc:
                if len(chunk) == 1:
                    refuse(chunk[0], exc)
                else:
                    half = len(chunk) // 2
                    todo += [chunk[half:], chunk[:half]]  # the first half is popped (written) first
                continue
            yield chunk, value


def exception_name(exc: BaseException) -> str:
    """``module.Class`` of an exception (builtins bare), as the dead-letter header carries it."""
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
