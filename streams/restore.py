"""Bulk restore of the tables' RocksDB partitions from their changelog topics, before Faust starts.

Faust rebuilds a table from its changelog one record at a time (a ``Message``, an ``Event``, a
queue hop and the recovery loop's bookkeeping per record): about 10k records/s on this hardware,
so a worker on a fresh disk needed minutes for a million contacts. Faust skips what is already
in a partition's RocksDB: every partition database stores the changelog offset it has applied
(``__faust\\0offset__``) and recovery replays only the records after it (a warm start).

:func:`restore_tables` makes every start warm. Before the worker joins its group it reads each
changelog partition from the partition database's offset to the end with a plain aiokafka
consumer (no group, no commits) and writes the records in RocksDB write batches, each batch
carrying its offset, through Faust's own store options. Faust then opens the databases and
recovers the few records written since. Nothing else changes: the changelog stays the source of
truth. A partition that cannot be brought to its end within ``STALL_S`` fails the start (a
supervisor restarts the worker) instead of being left half-done.

With several workers each restores every partition, so each holds the whole table on disk and
a rebalance moves no state; ``SCORESTREAM_RESTORE_TABLES=false`` leaves recovery to Faust.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from rocksdict import WriteBatch

from kafka_io import clients
from kafka_io.clients import KafkaConnection
from schemas.settings import Settings

log = logging.getLogger(__name__)

OFFSET_KEY = b"__faust\0offset__"  # faust.stores.rocksdb.Store.offset_key
STALL_S = 30.0


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


def _persisted_offset(db: Any) -> int | None:
    raw = db.get(OFFSET_KEY)
    return int(raw) if raw is not None else None


async def _restore_partition(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, db: Any) -> int:
    """Apply ``tp`` from the database's persisted offset to ``end``; returns the records applied."""
    persisted = _persisted_offset(db)
    start = persisted + 1 if persisted is not None else 0
    if start >= end:
        return 0
    consumer.assign([tp])
    consumer.seek(tp, start)
    applied = 0
    idle_since = time.monotonic()
    while True:
        fetched = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
        records = fetched.get(tp, [])
        if not records and time.monotonic() - idle_since > STALL_S:
            # fail the start rather than leave this partition to Faust's recovery with the
            # others warm: a stalled read is a broker problem the operator should see (the mix
            # itself is covered: tests/e2e/test_recovery.py, identity bulk-restored only)
            raise RuntimeError(f"restore of {tp} stalled at {await consumer.position(tp)} below offset {end}")
        if records:
            batch = WriteBatch(raw_mode=True)
            for record in records:
                if record.value is None:
                    batch.delete(record.key)
                else:
                    batch.put(record.key, record.value)
            batch.put(OFFSET_KEY, str(records[-1].offset).encode())
            db.write(batch)
            applied += len(records)
            idle_since = time.monotonic()
        if await consumer.position(tp) >= end:
            return applied


async def restore_tables(kafka: KafkaConnection | Settings, tables: list[TableFiles]) -> RestoreStats:
    """Bring every partition database of ``tables`` up to its changelog's current end."""
    stats = RestoreStats()
    started = time.perf_counter()
    # not kafka_io.reader: a restore starts at each database's offset, writes whole fetches as
    # RocksDB write batches, and fails on a record it cannot write rather than skip it
    consumer = clients.consumer(
        kafka,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
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
                    applied = await _restore_partition(consumer, tp, ends[tp], db)
                finally:
                    db.close()
                stats.records += applied
                stats.partitions += 1
                log.info("restore: %s: %d records, now at offset %d", tp, applied, ends[tp])
    finally:
        await consumer.stop()
    stats.seconds = time.perf_counter() - started
    return stats


def restore_before_start(kafka: KafkaConnection | Settings, tables: list[TableFiles]) -> RestoreStats:
    """Run :func:`restore_tables` on a loop of its own (the worker's loop does not exist yet)."""
    loop = asyncio.new_event_loop()
    try:
        stats = loop.run_until_complete(restore_tables(kafka, tables))
    finally:
        loop.close()
    log.info(
        "restored %d changelog records into %d table partitions in %.1f s",
        stats.records,
        stats.partitions,
        stats.seconds,
    )
    return stats


def table_files(table: Any) -> TableFiles:
    """The :class:`TableFiles` of a Faust table backed by its RocksDB store."""
    store = table.data
    return TableFiles(
        changelog_topic=table.changelog_topic.get_topic_name(),
        partition_path=store.partition_path,
        open_db=store.rocksdb_options.open,
    )


__all__ = ["OFFSET_KEY", "RestoreStats", "TableFiles", "restore_before_start", "restore_tables", "table_files"]
