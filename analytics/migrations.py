"""Versioned ClickHouse migrations: ``deploy/clickhouse/NNNN_<name>.sql``, applied in order at start.

The rules they keep:

- A file is applied once: ``schema_migrations`` records its version, name and checksum. An
  applied file whose text changed is refused (write a new file instead).
- Every statement is idempotent (``CREATE ... IF NOT EXISTS``, ``ADD COLUMN IF NOT EXISTS``, ...),
  so a file interrupted half-way is simply applied again, and two processes starting at once
  against one server (two sinks, a sink and an API) may both apply it: the outcome is the same,
  and ``schema_migrations`` (a ReplacingMergeTree keyed by version) keeps one row.
- Statements end with ``;`` at the end of a line; lines starting with ``--`` are comments.

ClickHouse has no conditional DDL, and a rebuild (create a table, copy the rows, swap the names)
is not idempotent statement by statement: swapping twice undoes it. Two comment lines make such a
file safe to apply again, and to apply from two processes at once:

- ``-- when: <SELECT>`` guards the statement it precedes: the statement runs only when the query's
  first value is true (non-zero; no row is false). When the statement fails and the condition no
  longer holds, another process took that step meanwhile: the step is done, not failed.
- ``-- expect: <SELECT>`` states what must hold once the file has been applied. When it does not
  (two processes both took a step that undoes itself, such as a swap), the file is applied again
  after a short random pause, up to :data:`APPLY_ATTEMPTS` times, then :class:`MigrationError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from analytics.client import Store
from analytics.errors import AnalyticsError

log = logging.getLogger(__name__)
FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
WHEN = re.compile(r"^--\s*when:\s*(?P<sql>\S.*)$")
EXPECT = re.compile(r"^--\s*expect:\s*(?P<sql>\S.*)$")
STATEMENT_END = re.compile(r";[ \t]*$")
APPLY_ATTEMPTS = 5
MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


class MigrationError(AnalyticsError, RuntimeError):
    pass


@dataclass(frozen=True)
class Step:
    """A statement, and the condition (a SELECT) it runs under, if any."""

    sql: str
    when: str | None = None


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """The file's statements, comments dropped."""
        return [step.sql for step in self.steps()]

    def steps(self) -> list[Step]:
        """The file's statements with their ``-- when:`` conditions (one at most, anywhere before
        the statement's end)."""
        out: list[Step] = []
        lines: list[str] = []
        when: str | None = None
        for line in self.sql.splitlines():
            stripped = line.strip()
            if stripped.startswith("--"):
                guard = WHEN.match(stripped)
                if guard is not None:
                    if when is not None:
                        raise MigrationError(f"{self.label}: two `-- when:` lines for one statement")
                    when = guard["sql"].strip()
                continue
            lines.append(line)
            if STATEMENT_END.search(line):
                sql = STATEMENT_END.sub("", "\n".join(lines)).strip()
                if sql:
                    out.append(Step(sql, when))
                    when = None
                lines = []
        rest = "\n".join(lines).strip()
        if rest:
            out.append(Step(rest, when))
        elif when is not None:
            raise MigrationError(f"{self.label}: a `-- when:` line guards no statement")
        return out

    def expectations(self) -> list[str]:
        """The ``-- expect:`` queries of the file."""
        out = []
        for line in self.sql.splitlines():
            found = EXPECT.match(line.strip())
            if found is not None:
                out.append(found["sql"].strip())
        return out

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def default_directory() -> Path:
    """``deploy/clickhouse`` (package data of ``deploy``)."""
    return Path(str(resources.files("deploy").joinpath("clickhouse")))


def load(directory: Path | None = None) -> list[Migration]:
    """The migration files of ``directory``, by version; a version used twice is an error."""
    found: dict[int, Migration] = {}
    for path in sorted((directory or default_directory()).glob("*.sql")):
        match = FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_<name>.sql")
        version = int(match["version"])
        if version in found:
            raise MigrationError(f"migration version {version} is used by two files")
        found[version] = Migration(version, match["name"], path.read_text())
    return [found[v] for v in sorted(found)]


async def applied(store: Store) -> dict[int, str]:
    """Version -> checksum of the migrations recorded as applied."""
    rows = await store.query("SELECT version, argMax(checksum, applied_at) FROM schema_migrations GROUP BY version")
    return {int(v): str(c) for v, c in rows}


async def migrate(store: Store, directory: Path | None = None, force: bool = False) -> list[int]:
    """Apply the migrations not applied yet, in order; returns their versions. ``force`` runs
    every statement again (they are idempotent; tests use it to prove that)."""
    await store.command(MIGRATIONS_TABLE)
    done = await applied(store)
    ran: list[int] = []
    for migration in load(directory):
        recorded = done.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name} changed after it was applied "
                "(add a new migration instead)"
            )
        if recorded is not None and not force:
            continue
        await apply(store, migration)
        if recorded is None:
            await store.insert(
                "schema_migrations",
                ["version", "name", "checksum", "applied_at"],
                [[migration.version, migration.name, migration.checksum, int(time.time() * 1000)]],
            )
            log.info("applied ClickHouse migration %04d_%s", migration.version, migration.name)
        ran.append(migration.version)
    return ran


async def holds(store: Store, condition: str) -> bool:
    """Whether a ``-- when:``/``-- expect:`` query's first value is true (no row: false)."""
    rows = await store.query(condition)
    return bool(rows) and bool(rows[0][0])


async def apply(store: Store, migration: Migration, pause_s: float = 0.2) -> None:
    """Run the file's statements (those whose condition holds), then check its expectations; apply
    it again while they fail (another process was applying it at the same time), up to
    :data:`APPLY_ATTEMPTS` times."""
    for attempt in range(1, APPLY_ATTEMPTS + 1):
        for step in migration.steps():
            await run_step(store, migration, step)
        failed = [e for e in migration.expectations() if not await holds(store, e)]
        if not failed:
            return
        if attempt == APPLY_ATTEMPTS:
            raise MigrationError(f"migration {migration.label}: after {attempt} attempts, still not true: {failed[0]}")
        log.warning("migration %s: not done yet (another process applying it?), applying it again", migration.label)
        await asyncio.sleep(random.uniform(0.5, 1.5) * pause_s * attempt)


async def run_step(store: Store, migration: Migration, step: Step) -> None:
    """One statement, if its condition holds; failed while its condition no longer holds, it was
    taken by another process meanwhile: done."""
    if step.when is not None and not await holds(store, step.when):
        return
    try:
        await store.command(step.sql)
    except Exception:
        if step.when is None or await holds(store, step.when):
            raise
        log.info("migration %s: a step was taken by another process meanwhile", migration.label)
