"""ClickHouse migrations against real chDB: applied in order, once, idempotent, safe to race."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from analytics.client import Store
from analytics.migrations import Migration, MigrationError, default_directory, load, migrate

TABLES = {
    "events",
    "sink_rejects",
    "triggers",
    "stage_transitions",
    "stage_transitions_mv",
    "webhook_deliveries",
    "score_ledger",
    "contacts",
    "account_changes",
    "schema_migrations",
}


async def tables(store: Store) -> set[str]:
    rows = await store.query("SELECT name FROM system.tables WHERE database = currentDatabase()")
    return {str(r[0]) for r in rows}


async def recorded(store: Store) -> list[tuple[int, int]]:
    rows = await store.query("SELECT version, count() FROM schema_migrations FINAL GROUP BY version ORDER BY version")
    return [(int(v), int(n)) for v, n in rows]


def test_statements_are_split_at_line_ends_and_comments_dropped() -> None:
    m = Migration(
        1, "x", "-- a comment; with a semicolon\nCREATE TABLE a (x String COMMENT 'p;q') ENGINE = Log;\n\nSELECT 1;"
    )
    assert m.statements() == ["CREATE TABLE a (x String COMMENT 'p;q') ENGINE = Log", "SELECT 1"]


def test_the_bundled_files_have_consecutive_versions() -> None:
    versions = [m.version for m in load()]
    assert versions == list(range(1, len(versions) + 1)) and len(versions) >= 4


def test_applied_once_in_order_and_again_harmlessly(chdb_url: str) -> None:
    async def go() -> None:
        store = Store(chdb_url)
        try:
            versions = [m.version for m in load()]
            assert await migrate(store) == versions
            assert await tables(store) == TABLES
            assert await migrate(store) == []
            # every statement is idempotent: running them all again changes nothing
            assert await migrate(store, force=True) == versions
            assert await recorded(store) == [(v, 1) for v in versions]
            assert await tables(store) == TABLES
        finally:
            await store.close()

    asyncio.run(go())


def test_two_processes_racing_apply_the_same_result(chdb_url: str) -> None:
    """Two clients at once (as two sinks starting against one server): both succeed, one record
    per version."""

    async def go() -> None:
        first, second = Store(chdb_url), Store(chdb_url)
        try:
            results = await asyncio.gather(migrate(first), migrate(second))
            versions = [m.version for m in load()]
            assert sorted(set(results[0]) | set(results[1])) == versions
            assert await recorded(first) == [(v, 1) for v in versions]
            assert await tables(second) == TABLES
        finally:
            await first.close()
            await second.close()

    asyncio.run(go())


def test_a_changed_file_is_refused_and_a_new_one_applied(chdb_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "clickhouse"
    shutil.copytree(default_directory(), directory)

    async def go() -> None:
        store = Store(chdb_url)
        try:
            await migrate(store, directory)
            (directory / "0099_extra.sql").write_text(
                "ALTER TABLE events ADD COLUMN IF NOT EXISTS note String DEFAULT '';\n"
            )
            assert await migrate(store, directory) == [99]
            columns = await store.query("SELECT name FROM system.columns WHERE table = 'events' AND name = 'note'")
            assert columns == [("note",)]
            first = sorted(directory.glob("0001_*.sql"))[0]
            first.write_text(first.read_text() + "\n-- edited\n")
            with pytest.raises(MigrationError, match="changed after it was applied"):
                await migrate(store, directory)
        finally:
            await store.close()

    asyncio.run(go())


def test_badly_named_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_x.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_<name>\.sql"):
        load(tmp_path)
    (tmp_path / "1_x.sql").unlink()
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="used by two files"):
        load(tmp_path)
