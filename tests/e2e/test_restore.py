"""The bulk restore of table partitions from a changelog topic (``streams.restore``), on a real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from faust.stores.rocksdb import RocksDBOptions

from bench.harness import create_topic
from kafka_io.clients import KafkaConnection
from streams.restore import OFFSET_KEY, TableFiles, restore_tables


async def _produce(bootstrap: str, topic: str, records: list[tuple[int, bytes, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition, key, value in records:
            await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


def _contents(files: TableFiles, partition: int) -> dict[bytes, bytes]:
    db = files.open_db(files.partition_path(partition))
    try:
        return {k: v for k, v in db.items()}
    finally:
        db.close()


def test_restore_applies_changelog_records_then_only_new_ones(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"restore-{tmp_path.name}"
    asyncio.run(create_topic(kafka_bootstrap, topic, partitions=2))
    # Faust's own options: the databases are the ones Faust's store opens afterwards
    options: Any = RocksDBOptions()
    files = TableFiles(changelog_topic=topic, partition_path=lambda p: tmp_path / f"t-{p}.db", open_db=options.open)
    first = [(0, b"a", b"1"), (0, b"b", b"1"), (1, b"c", b"1"), (0, b"a", b"2"), (0, b"b", None)]
    asyncio.run(_produce(kafka_bootstrap, topic, first))

    stats = asyncio.run(restore_tables(KafkaConnection(kafka_bootstrap), [files]))

    assert (stats.records, stats.partitions) == (5, 2)
    assert _contents(files, 0) == {b"a": b"2", OFFSET_KEY: b"3"}  # b deleted by its tombstone
    assert _contents(files, 1) == {b"c": b"1", OFFSET_KEY: b"0"}

    asyncio.run(_produce(kafka_bootstrap, topic, [(1, b"c", b"2"), (1, b"d", b"1")]))
    again = asyncio.run(restore_tables(KafkaConnection(kafka_bootstrap), [files]))

    assert again.records == 2, "only the records after each partition's stored offset"
    assert _contents(files, 0) == {b"a": b"2", OFFSET_KEY: b"3"}
    assert _contents(files, 1) == {b"c": b"2", b"d": b"1", OFFSET_KEY: b"2"}


def test_restore_skips_a_changelog_that_does_not_exist_yet(kafka_bootstrap: str, tmp_path: Path) -> None:
    options: Any = RocksDBOptions()
    files = TableFiles(
        changelog_topic=f"absent-{tmp_path.name}", partition_path=lambda p: tmp_path / f"{p}.db", open_db=options.open
    )
    stats = asyncio.run(restore_tables(KafkaConnection(kafka_bootstrap), [files]))
    assert (stats.records, stats.partitions) == (0, 0)
    assert not list(tmp_path.iterdir())
