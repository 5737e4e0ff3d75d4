"""Bulk restore of the tables' RocksDB partitions from their changelogs: each worker its own share.

Faust rebuilds a table from its changelog one record at a time (a ``Message``, an ``Event``, a
queue hop and the recovery loop's bookkeeping per record): about 10k records/s on this hardware,
so a worker on a fresh disk needed minutes for a million contacts. Faust skips what is already
in a partition's RocksDB: every partition database stores the changelog offset it has applied
(``__faust\\0offset__``) and recovery replays only the records after it (a warm start).

**At assignment time** (:class:`ShareRestore`, installed by :func:`install`): when a rebalance
assigns this worker table partitions, actives and (``SCORESTREAM_STANDBY_REPLICAS`` > 0)
standbys, the partitions it does not hold up to date yet are read from their database's offset to
the changelog's current end with a plain aiokafka consumer (no group, no commits; all those
partitions at once) and written in RocksDB write batches, each batch carrying its offset, through
the **store's own database handle** (``Store._db_for_partition``: the handle Faust opens for the
partition anyway; RocksDB allows one open per process, so a second handle would fail on its lock).
The rebalance callback (the table manager's ``on_rebalance``, wrapped) only takes the assignment:
it runs inside Faust's ``on_partitions_assigned``, after every revocation callback (Faust's own
flush, and the write-behind cache's flushes on revocation and assignment, ``streams/state_cache.py``
hooked in ``streams/transport.py``'s consumer, which run before the app's callbacks), with the
flow stopped; but aiokafka sends no heartbeats during it, so the restore runs at the start of
Faust's recovery pass that follows (its first wait), interruptible by a newer rebalance, and then
gives Faust's recovery the offsets the databases store, from which it replays the few records
written since. So N workers hold 1/N of the state each (plus standbys), and a partition that
moves is restored in bulk by its new owner. The changelog stays the source of truth.

Which partitions: those assigned now that this worker has not restored (to the end read at the
time) and kept assigned since (``settled``). A partition it keeps across rebalances is written by
this worker itself and is left to Faust's recovery, which replays only what is past its stored
offset (``ContiguousOffsetTable``, streams/transport.py: the offset moves only contiguously, so
another writer's records are never skipped). A restore that fails, or stops receiving records
for ``STALL_S`` (a broker problem), gives the rest of its partitions to Faust's recovery, which carries
on from the offsets reached (each batch stored its own), and they are restored in bulk again at
the next rebalance; a worker told to stop stops restoring.

**Revoked partitions** stay on disk: reassigned soon (a peer restarting, a rolling deploy, the
chaos test's kills), the worker replays only what was written meanwhile. A partition not
assigned to this worker for ``SCORESTREAM_RELEASED_KEEP_S`` is dropped (its database closed and
its directory deleted; :meth:`ShareRestore.drop_released`, at each rebalance and every
``DROP_CHECK_S`` from the worker), so the disk holds the worker's share once the group is stable; databases left by an
earlier run (e.g. from when every worker held every partition) count from the first assignment.

:func:`restore_tables` restores every partition of some tables before a worker starts (tests,
tools). ``SCORESTREAM_RESTORE_TABLES=false`` leaves all recovery to Faust.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from rocksdict import WriteBatch

from kafka_io import clients
from kafka_io.clients import KafkaConnection
from schemas.settings import Settings

log = logging.getLogger(__name__)

OFFSET_KEY = b"__faust\0offset__"  # faust.stores.rocksdb.Store.offset_key
STALL_S = 30.0  # a restore receiving nothing this long leaves the rest to Faust's recovery
DROP_CHECK_S = 60.0  # how often the worker looks for released partitions to drop


@dataclass(frozen=True)
class TableFiles:
    """Where one table's partitions live, and how Faust opens them."""

    changelog_topic: str
    partition_path: Callable[[int], Path]
    open_db: Callable[[Path], Any]


@dataclass
class RestoreStats:
    records: int = 0
    partitions: int = 0
    seconds: float = 0.0
    stalled: list[TopicPartition] = field(default_factory=list)
    written: set[TopicPartition] = field(default_factory=set)  # partitions that received records


def _persisted_offset(db: Any) -> int | None:
    raw = db.get(OFFSET_KEY)
    return int(raw) if raw is not None else None


def _write(db: Any, records: list[Any]) -> None:
    """One write batch: ``records`` in order (``None`` values delete), and their last offset unless
    the database already stores a later one (its offset never moves back)."""
    batch = WriteBatch(raw_mode=True)
    for record in records:
        if record.value is None:
            batch.delete(record.key)
        else:
            batch.put(record.key, record.value)
    persisted = _persisted_offset(db)
    if persisted is None or records[-1].offset > persisted:
        batch.put(OFFSET_KEY, str(records[-1].offset).encode())
    db.write(batch)


def start_offsets(dbs: Mapping[TopicPartition, Any], ends: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Where each partition's restore starts (after its database's offset), for those behind their end."""
    starts = {}
    for tp, db in dbs.items():
        persisted = _persisted_offset(db)
        start = persisted + 1 if persisted is not None else 0
        if start < ends.get(tp, 0):
            starts[tp] = start
    return starts


async def restore_partitions(
    consumer: AIOKafkaConsumer,
    dbs: Mapping[TopicPartition, Any],
    ends: Mapping[TopicPartition, int],
    should_stop: Callable[[], bool] = lambda: False,
) -> RestoreStats:
    """Apply each partition of ``dbs`` from its database's offset to ``ends[tp]``, all at once.

    Returns the records applied and, in ``stalled``, the partitions not brought to their end
    (nothing received for ``STALL_S``, or ``should_stop()``): they are consistent up to the offset
    they store, and Faust's recovery carries on from there."""
    stats = RestoreStats()
    starts = start_offsets(dbs, ends)
    if not starts:
        return stats
    consumer.assign(list(starts))
    for tp, start in starts.items():
        consumer.seek(tp, start)
    pending = set(starts)
    idle_since = time.monotonic()
    while pending:
        if should_stop() or time.monotonic() - idle_since > STALL_S:
            stats.stalled = sorted(pending)
            break
        fetched = await consumer.getmany(*pending, timeout_ms=1000, max_records=10_000)
        for tp, records in fetched.items():
            if records:
                _write(dbs[tp], records)
                stats.records += len(records)
                stats.written.add(tp)
                idle_since = time.monotonic()
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
                consumer.pause(tp)
                stats.partitions += 1
    return stats


def restore_consumer(kafka: KafkaConnection | Settings) -> AIOKafkaConsumer:
    # not kafka_io.reader: a restore starts at each database's offset, writes whole fetches as
    # RocksDB write batches, and fails on a record it cannot write rather than skip it
    return clients.consumer(
        kafka,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )


async def restore_tables(kafka: KafkaConnection | Settings, tables: list[TableFiles]) -> RestoreStats:
    """Bring every partition database of ``tables`` up to its changelog's current end (each
    database opened, restored and closed here: no worker may have it open)."""
    stats = RestoreStats()
    started = time.perf_counter()
    consumer = restore_consumer(kafka)
    await consumer.start()
    try:
        for table in tables:
            tps = await clients.partitions_of(consumer, [table.changelog_topic])
            if not tps:  # first start: no changelog yet
                log.info("restore: no changelog %s yet", table.changelog_topic)
                continue
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                path = table.partition_path(tp.partition)
                path.parent.mkdir(parents=True, exist_ok=True)
                db = table.open_db(path)
                try:
                    done = await restore_partitions(consumer, {tp: db}, ends)
                finally:
                    db.close()
                if done.stalled:
                    raise RuntimeError(f"restore of {tp} stalled below offset {ends[tp]}")
                stats.records += done.records
                stats.partitions += 1
    finally:
        await consumer.stop()
    stats.seconds = time.perf_counter() - started
    return stats


# --- each worker its share, at assignment time ---------------------------------------------------


@dataclass(frozen=True)
class Share:
    """What one rebalance means for the partitions a worker holds (:func:`plan`)."""

    restore: list[TopicPartition]  # assigned, not held up to date: restore in bulk
    settled: frozenset[TopicPartition]  # held up to date and still assigned
    released: dict[TopicPartition, float]  # not assigned, with the time since when


def plan(
    assigned: Iterable[TopicPartition],
    changelogs: Collection[str],
    settled: Collection[TopicPartition],
    released: Mapping[TopicPartition, float],
    on_disk: Iterable[TopicPartition],
    now: float,
) -> Share:
    """The pure part of a rebalance: which of the changelog partitions ``assigned`` (actives and
    standbys) to restore, which stay settled, and which partitions on disk are now released
    (since ``now``, or since when they already were)."""
    mine = {TopicPartition(tp.topic, tp.partition) for tp in assigned if tp.topic in changelogs}
    kept = frozenset(tp for tp in settled if tp in mine)
    still = {tp: since for tp, since in released.items() if tp not in mine}
    for tp in [*settled, *on_disk]:
        if tp not in mine:
            still.setdefault(tp, now)
    return Share(restore=sorted(mine - kept), settled=kept, released=still)


def due(released: Mapping[TopicPartition, float], keep_s: float, now: float) -> list[TopicPartition]:
    """The released partitions kept for ``keep_s`` already: to drop from disk."""
    return sorted(tp for tp, since in released.items() if now - since >= keep_s)


class ShareRestore:
    """Restores the partitions a rebalance assigns to this worker, in bulk, through Faust's stores.

    ``stores``: the RocksDB store (``table.data``) of each table, by changelog topic;
    ``partitions``: how many partitions each changelog has (to find databases left on disk)."""

    def __init__(
        self,
        kafka: KafkaConnection | Settings,
        stores: Mapping[str, Any],
        partitions: int,
        keep_s: float,
        should_stop: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kafka = kafka
        self.stores = dict(stores)
        self.partitions = partitions
        self.keep_s = keep_s
        self.should_stop = should_stop
        self.clock = clock
        self.settled: frozenset[TopicPartition] = frozenset()
        self.released: dict[TopicPartition, float] = {}
        self.restoring = False
        self.consumer: AIOKafkaConsumer | None = None
        self.pending: list[TopicPartition] = []  # assigned, to restore before Faust's recovery
        self.restored: list[TopicPartition] = []  # what the last restore read

    def on_disk(self) -> list[TopicPartition]:
        return [
            TopicPartition(topic, p)
            for topic, store in self.stores.items()
            for p in range(self.partitions)
            if store.partition_path(p).exists()
        ]

    def _db(self, tp: TopicPartition) -> Any:
        store = self.stores[tp.topic]
        store.partition_path(tp.partition).parent.mkdir(parents=True, exist_ok=True)
        # the handle Faust's store keeps for the partition (opened now if it is not yet)
        return store._db_for_partition(tp.partition)

    def on_assigned(self, assigned: Iterable[TopicPartition]) -> list[TopicPartition]:
        """Take the new assignment ``assigned`` (every partition of this member): what to restore
        (kept in ``pending`` for :meth:`restore_pending`), what is released, and drop what is due."""
        share = plan(assigned, self.stores, self.settled, self.released, self.on_disk(), self.clock())
        self.settled, self.released, self.pending = share.settled, share.released, share.restore
        self.drop_released()
        return share.restore

    async def restore_pending(self) -> RestoreStats:
        """Restore the partitions the last assignment gave this worker that it does not hold up to
        date (:meth:`on_assigned`); those that stall or fail are left to Faust's recovery."""
        todo, self.pending = self.pending, []
        if not todo or self.should_stop():
            return RestoreStats()
        self.restoring = True
        started = time.perf_counter()
        try:
            consumer = await self._consumer()
            ends = await consumer.end_offsets(todo)
            dbs = {tp: self._db(tp) for tp in todo}
            stats = await restore_partitions(consumer, dbs, ends, self.should_stop)
            consumer.unsubscribe()  # idle until the next rebalance: no fetches
            for tp in stats.written:
                # to SST files: the memtables would otherwise keep what was restored in memory
                # (up to 3 x 64 MiB per partition database) with its write-ahead log on disk
                dbs[tp].flush()
        except Exception:  # the bulk path is a shortcut: Faust's recovery is the sure one
            log.warning("restore failed: %s left to Faust's recovery", todo, exc_info=True)
            await self.close()
            stats = RestoreStats(stalled=list(todo))
        except BaseException:  # cancelled (another rebalance, a stop): the next assignment says what is left
            self.pending = todo
            raise
        finally:
            self.restoring = False
        stats.seconds = time.perf_counter() - started
        self.settled = self.settled | (set(todo) - set(stats.stalled))
        log.info(
            "restored %d changelog records into %d of %d newly held table partitions in %.1f s",
            stats.records,
            len(todo) - len(stats.stalled),
            len(todo),
            stats.seconds,
        )
        if stats.stalled:
            log.warning("restore stalled or stopped: %s left to Faust's recovery", stats.stalled)
        self.restored = todo
        return stats

    def persisted_offset(self, tp: TopicPartition) -> int | None:
        return _persisted_offset(self.stores[tp.topic]._db_for_partition(tp.partition))

    async def _consumer(self) -> AIOKafkaConsumer:
        """The restore's consumer, started at the first restore and kept (starting one costs about a
        second on a busy host, on every rebalance that moves a partition)."""
        if self.consumer is None:
            consumer = restore_consumer(self.kafka)
            await consumer.start()
            self.consumer = consumer
        return self.consumer

    async def close(self) -> None:
        if self.consumer is not None:
            consumer, self.consumer = self.consumer, None
            await consumer.stop()

    def drop_released(self) -> list[Path]:
        """Close and delete the databases of partitions released ``keep_s`` ago or more; returns
        their paths. Not while a restore runs (it may hold one of them)."""
        if self.restoring:
            return []
        dropped = []
        for tp in due(self.released, self.keep_s, self.clock()):
            store = self.stores[tp.topic]
            db = store._dbs.pop(tp.partition, None)
            if db is not None:
                with contextlib.suppress(Exception):  # already closed
                    db.close()
            path = Path(store.partition_path(tp.partition))
            shutil.rmtree(path, ignore_errors=True)
            del self.released[tp]
            dropped.append(path)
        if dropped:
            log.info("dropped %d table partitions no longer assigned to this worker: %s", len(dropped), dropped)
        return dropped


def install(app: Any, tables: Iterable[Any], kafka: KafkaConnection | Settings, keep_s: float) -> ShareRestore:
    """Hook a :class:`ShareRestore` of ``tables`` into ``app``'s rebalances.

    In the rebalance callback (the table manager's ``on_rebalance``, before Faust's stores and
    recovery see the new assignment) it only takes the assignment: the callback runs inside
    aiokafka's group join, with the member's heartbeats stopped, so a restore of many seconds
    there would outlive the session timeout and the member would be expelled (it was: a second
    worker joining 200k contacts made the group rebalance again and again). The restore itself
    runs first in Faust's recovery pass, which follows the callback with heartbeats going: the
    pass's first wait (``Recovery._wait``, its ``stream_recovery_delay`` sleep) restores the
    pending partitions, interrupted like any recovery step by a newer rebalance or a stop, and
    then sets the recovery's start offsets of the restored partitions to what their databases
    now store (Faust read them in the callback). A rebalance Faust ignores (a newer one began)
    is ignored."""
    tables = list(tables)
    stores = {table.changelog_topic.get_topic_name(): table.data for table in tables}
    partitions = max(t.partitions or app.conf.topic_partitions for t in tables)
    share = ShareRestore(kafka, stores, partitions, keep_s, lambda: bool(app.should_stop))
    manager = app.tables
    faust_on_rebalance: Callable[..., Awaitable[None]] = manager.on_rebalance
    hooked: list[Any] = []

    async def on_rebalance(assigned: Any, revoked: Any, newly_assigned: Any, generation_id: int = 0) -> None:
        if generation_id == app.consumer_generation_id:
            share.on_assigned(assigned)
            if not hooked:
                hooked.append(hook_recovery(manager.recovery, share))
        await faust_on_rebalance(assigned, revoked, newly_assigned, generation_id)

    async def close(_app: Any, **_kwargs: Any) -> None:
        await share.close()

    manager.on_rebalance = on_rebalance
    app.on_before_shutdown.connect(close)
    return share


def hook_recovery(recovery: Any, share: ShareRestore) -> Any:
    """Run ``share``'s pending restore at the first wait of Faust's next recovery pass (see :func:`install`)."""
    faust_wait: Callable[..., Awaitable[None]] = recovery._wait

    async def wait(coro: Any, timeout: Any = None) -> None:  # noqa: ASYNC109 Faust's signature
        if share.pending:
            try:
                await faust_wait(share.restore_pending())
            except BaseException:
                if asyncio.iscoroutine(coro):
                    coro.close()  # not awaited: the pass is over
                raise
            restored, share.restored = share.restored, []
            for tp in restored:
                stored = share.persisted_offset(tp)
                for offsets in (recovery.active_offsets, recovery.standby_offsets):
                    if tp in offsets and stored is not None:
                        offsets[tp] = stored
        await faust_wait(coro, timeout=timeout)

    recovery._wait = wait
    return recovery


__all__ = [
    "DROP_CHECK_S",
    "OFFSET_KEY",
    "RestoreStats",
    "Share",
    "ShareRestore",
    "TableFiles",
    "due",
    "hook_recovery",
    "install",
    "plan",
    "restore_partitions",
    "restore_tables",
]
