"""ClickHouse migrations against real chDB: applied in order, once, idempotent, safe to race."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from analytics import migrations
from analytics.client import Store
from analytics.migrations import Migration, MigrationError, Step, default_directory, load, migrate, run_step
from analytics.rows import ACCOUNT_COLUMNS, LEDGER_COLUMNS
from tests.analytics.archive import NOW, ledger_row
from tests.factories import HOUR

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


# --- guarded steps (-- when: / -- expect:) -----------------------------------------------------


def test_when_lines_guard_the_next_statement_and_expect_lines_are_collected() -> None:
    m = Migration(
        1,
        "x",
        "-- when: SELECT 1\nCREATE TABLE a (x UInt8) ENGINE = Log;\nSELECT 2;\n"
        "-- expect: SELECT 3\nSELECT\n-- when: SELECT 4\n  5;",
    )
    assert m.steps() == [
        Step("CREATE TABLE a (x UInt8) ENGINE = Log", "SELECT 1"),
        Step("SELECT 2"),
        Step("SELECT\n  5", "SELECT 4"),
    ]
    assert m.statements() == ["CREATE TABLE a (x UInt8) ENGINE = Log", "SELECT 2", "SELECT\n  5"]
    assert m.expectations() == ["SELECT 3"]
    with pytest.raises(MigrationError, match="two `-- when:`"):
        Migration(1, "x", "-- when: SELECT 1\n-- when: SELECT 2\nSELECT 3;").steps()
    with pytest.raises(MigrationError, match="guards no statement"):
        Migration(1, "x", "SELECT 1;\n-- when: SELECT 2\n").steps()


def test_guarded_steps_run_in_their_state_only(chdb_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_b = "SELECT count() = 0 FROM system.tables WHERE database = currentDatabase() AND name = 'b'"
    (tmp_path / "0001_a.sql").write_text(
        "CREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = MergeTree ORDER BY x;\n"
        f"-- when: {no_b}\n"
        "INSERT INTO a VALUES (1);\n"
        "-- renames c to b, then fails: as if another process had taken the step meanwhile\n"
        f"-- when: {no_b}\n"
        "RENAME TABLE c TO b, nowhere TO d;\n"
    )

    async def go() -> None:
        store = Store(chdb_url)
        try:
            await store.command("CREATE TABLE c (x UInt8) ENGINE = Log")
            assert await migrate(store, tmp_path) == [1]  # the failed step's condition no longer holds
            assert await store.query("SELECT count() FROM a") == [(1,)]
            assert await migrate(store, tmp_path, force=True) == [1]
            assert await store.query("SELECT count() FROM a") == [(1,)]  # guarded out: b exists
            await store.command("DROP TABLE b")
            with pytest.raises(Exception, match="doesn't exist"):  # failed, and its condition still holds
                await migrate(store, tmp_path, force=True)
            assert await store.query("SELECT count() FROM a") == [(2,)]
            # an expectation that stays false: applied APPLY_ATTEMPTS times, then refused
            (tmp_path / "0002_b.sql").write_text("INSERT INTO a VALUES (3);\n-- expect: SELECT count() > 100 FROM a\n")
            monkeypatch.setattr(migrations, "APPLY_ATTEMPTS", 3)
            with pytest.raises(MigrationError, match="after 3 attempts"):
                await migrate(store, tmp_path)
            assert await store.query("SELECT count() FROM a WHERE x = 3") == [(3,)]
        finally:
            await store.close()

    asyncio.run(go())


# --- 0006: kafka_topic in the ledger's and account changes' sorting keys -----------------------

REBUILT = {"score_ledger": "contact_id", "account_changes": "account_id"}


def before_0006(tmp_path: Path) -> Path:
    """The bundled migrations up to 0005 (an archive of the previous release)."""
    return bundled_up_to(tmp_path, 5)


def bundled_up_to(tmp_path: Path, last: int) -> Path:
    """The bundled migrations up to version ``last``."""
    directory = tmp_path / f"up_to_{last}"
    if not directory.exists():
        directory.mkdir()
        for path in default_directory().glob("*.sql"):
            if int(path.name[:4]) <= last:
                shutil.copy(path, directory / path.name)
    return directory


# the ledger's columns before 0007 (the rows the 0006 tests load into the old layouts)
OLD_LEDGER_COLUMNS = tuple(c for c in LEDGER_COLUMNS if c != "groups")


def ledger(contact: str, at: int, topic: str, offset: int, engagement: float, inserted: int) -> list[Any]:
    row = dict(
        zip(LEDGER_COLUMNS, ledger_row(contact, at, engagement, 10.0, "lead", offset, ["r"], ["m"]), strict=True)
    )
    row.update(kafka_topic=topic, model_version=f"{topic}@1", inserted_at=inserted)
    return [row[c] for c in (*OLD_LEDGER_COLUMNS, "inserted_at")]


def account(account_id: str, at: int, topic: str, offset: int, engagement: float, inserted: int) -> list[Any]:
    values = [account_id, at, "lead", engagement, "warm", 20.0, "B", 3, 1, 0, ["exec"], f"{topic}@1"]
    return [*values, topic, 0, offset, at, inserted]


async def load_old_layout(store: Store) -> None:
    """Rows as the previous release's sink left them: re-reads, and rows of two namespaces' changelogs
    with the same contact (account), instant, partition and offset, not merged yet."""
    ledger_columns = [*OLD_LEDGER_COLUMNS, "inserted_at"]
    account_columns = [*ACCOUNT_COLUMNS, "inserted_at"]
    rows = [ledger(f"c{i}", NOW + i * HOUR, "a-contacts-changelog", i, float(i), NOW + i) for i in range(20)]
    await store.insert("score_ledger", ledger_columns, rows)
    await store.insert("score_ledger", ledger_columns, rows[5:10])  # re-read
    other = [ledger(f"c{i}", NOW + i * HOUR, "b-contacts-changelog", i, 100.0 + i, NOW + 50 + i) for i in range(3)]
    await store.insert("score_ledger", ledger_columns, other)
    accounts = [account("acct", NOW + i * HOUR, "a-accounts-changelog", i, float(i), NOW + i) for i in range(4)]
    await store.insert("account_changes", account_columns, accounts)
    await store.insert("account_changes", account_columns, [account("acct", NOW, "b-accounts-changelog", 0, 7.0, NOW)])


async def contents(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every distinct row of the two tables, every column."""
    return {t: sorted(await store.query(f"SELECT DISTINCT * FROM {t}"), key=repr) for t in REBUILT}


async def assert_rebuilt(store: Store, before: dict[str, list[tuple[Any, ...]]]) -> None:
    keys = dict(
        await store.query(
            "SELECT name, sorting_key FROM system.tables WHERE database = currentDatabase() AND name IN "
            "('score_ledger', 'account_changes')"
        )
    )
    assert keys == {t: f"{k}, at, kafka_topic, kafka_partition, kafka_offset" for t, k in REBUILT.items()}
    assert await tables(store) == TABLES  # no staging table left
    assert await contents(store) == before  # every row, inserted_at included
    # both namespaces' rows of one contact, instant and offset survive FINAL and merges
    for table in REBUILT:
        await store.command(f"OPTIMIZE TABLE {table} FINAL")
    assert await store.query(
        "SELECT kafka_topic, engagement FROM score_ledger FINAL WHERE contact_id = 'c1' ORDER BY kafka_topic"
    ) == [("a-contacts-changelog", 1.0), ("b-contacts-changelog", 101.0)]
    assert await store.query(
        "SELECT kafka_topic, engagement FROM account_changes FINAL WHERE kafka_offset = 0 ORDER BY kafka_topic"
    ) == [("a-accounts-changelog", 0.0), ("b-accounts-changelog", 7.0)]
    assert await store.query("SELECT count() FROM score_ledger FINAL") == [(23,)]


def test_0006_rebuilds_the_tables_with_every_row(chdb_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        store = Store(chdb_url)
        try:
            await migrate(store, before_0006(tmp_path))
            await load_old_layout(store)
            before = await contents(store)
            # the old key: the two namespaces' rows of c1 are one row under FINAL
            assert await store.query("SELECT count() FROM score_ledger FINAL WHERE contact_id = 'c1'") == [(1,)]
            assert await migrate(store, bundled_up_to(tmp_path, 6)) == [6]
            await assert_rebuilt(store, before)
            # applied again (every step guarded): nothing moves
            assert await migrate(store, bundled_up_to(tmp_path, 6), force=True) == list(range(1, 7))
            await assert_rebuilt(store, before)
            # the sink's new rows differing only in the topic both stay
            await store.insert("score_ledger", OLD_LEDGER_COLUMNS, [ledger("z", NOW, "a", 1, 1.0, 0)[:-1]])
            await store.insert("score_ledger", OLD_LEDGER_COLUMNS, [ledger("z", NOW, "b", 1, 2.0, 0)[:-1]])
            await store.command("OPTIMIZE TABLE score_ledger FINAL")
            found = await store.query("SELECT kafka_topic FROM score_ledger FINAL WHERE contact_id = 'z' ORDER BY 1")
            assert found == [("a",), ("b",)]
        finally:
            await store.close()

    asyncio.run(go())


def test_0006_interrupted_anywhere_is_finished_by_applying_it_again(chdb_path: Path, tmp_path: Path) -> None:
    """A crash after any of its statements (and in the middle of a copy): the next start applies
    the file again and ends in the same state, every row there."""
    (migration,) = [m for m in load() if m.version == 6]
    steps = migration.steps()
    up_to_5 = before_0006(tmp_path)

    async def interrupted(done: int, half_copied: bool) -> None:
        store = Store(f"chdb://{chdb_path}?database=t_{uuid.uuid4().hex[:12]}")
        try:
            await migrate(store, up_to_5)
            await load_old_layout(store)
            before = await contents(store)
            for step in steps[:done]:
                await run_step(store, migration, step)
            if half_copied:  # the first copy stopped half-way
                await store.command("INSERT INTO score_ledger_0006 SELECT * FROM score_ledger WHERE kafka_offset < 10")
            assert await migrate(store, bundled_up_to(tmp_path, 6)) == [6]
            await assert_rebuilt(store, before)
        finally:
            await store.close()

    async def go() -> None:
        for done in range(len(steps) + 1):
            await interrupted(done, False)
        await interrupted(1, True)

    asyncio.run(go())


def test_0006_applied_by_two_processes_at_once(chdb_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        first, second = Store(chdb_url), Store(chdb_url)
        try:
            await migrate(first, before_0006(tmp_path))
            await load_old_layout(first)
            before = await contents(first)
            up_to_6 = bundled_up_to(tmp_path, 6)
            results = await asyncio.gather(migrate(first, up_to_6), migrate(second, up_to_6))
            assert sorted(set(results[0]) | set(results[1])) == [6]
            await assert_rebuilt(second, before)
            assert await recorded(first) == [(m.version, 1) for m in load() if m.version <= 6]
        finally:
            await first.close()
            await second.close()

    asyncio.run(go())


# --- 0007: score groups ---------------------------------------------------------------------------


def test_0007_adds_the_group_scores_and_keeps_the_rows(chdb_url: str, tmp_path: Path) -> None:
    """Rows written before it read with no group (an empty map); rows after it carry theirs; applied
    again, nothing changes."""

    async def go() -> None:
        store = Store(chdb_url)
        try:
            await migrate(store, bundled_up_to(tmp_path, 6))
            await store.insert("score_ledger", OLD_LEDGER_COLUMNS, [ledger("old", NOW, "a", 1, 1.0, 0)[:-1]])
            assert 7 in await migrate(store)
            row = ledger("new", NOW, "a", 2, 2.0, 0)[:-1]
            await store.insert("score_ledger", [*OLD_LEDGER_COLUMNS, "groups"], [[*row, {"hardware": 12.5}]])
            found = await store.query("SELECT contact_id, groups FROM score_ledger FINAL ORDER BY contact_id")
            assert found == [("new", {"hardware": 12.5}), ("old", {})]
            assert await migrate(store, force=True) == [m.version for m in load()]
            types = dict(
                await store.query(
                    "SELECT table, type FROM system.columns WHERE database = currentDatabase() AND name = 'groups'"
                )
            )
            assert types == {t: "Map(LowCardinality(String), Float64)" for t in ("contacts", "score_ledger")}
        finally:
            await store.close()

    asyncio.run(go())
