"""Versioned ClickHouse migrations: ``deploy/clickhouse/NNNN_<name>.sql``, applied in order at start.

The rules they keep:

- A file is applied once: ``schema_migrations`` records its version, name and checksum. An
  applied file whose text changed is refused (write a new file instead).
- Every statement is idempotent (``CREATE ... IF NOT EXISTS``, ``ADD COLUMN IF NOT EXISTS``, ...),
  so a file interrupted half-way is simply applied again, and two processes starting at once
  against one server (two sinks, a sink and an API) may both apply it: the outcome is the same,
  and ``schema_migrations`` (a ReplacingMergeTree keyed by version) keeps one row.
- Statements end with ``;`` at the end of a line; lines starting with ``--`` are comments.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from analytics.client import Store

log = logging.getLogger(__name__)
FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
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


class MigrationError(RuntimeError):
    pass


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
        lines = [line for line in self.sql.splitlines() if not line.lstrip().startswith("--")]
        text = "\n".join(lines)
        return [s.strip() for s in re.split(r";[ \t]*(?:\n|$)", text) if s.strip()]


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
        for statement in migration.statements():
            await store.command(statement)
        if recorded is None:
            await store.insert(
                "schema_migrations",
                ["version", "name", "checksum", "applied_at"],
                [[migration.version, migration.name, migration.checksum, int(time.time() * 1000)]],
            )
            log.info("applied ClickHouse migration %04d_%s", migration.version, migration.name)
        ran.append(migration.version)
    return ran
