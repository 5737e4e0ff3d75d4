"""The ClickHouse connection: one client per process, used from one thread.

clickhouse-connect's client is synchronous, and its chDB backend (``chdb://``) runs ClickHouse inside
this process: one chDB engine per process, one process per data directory (a second one fails to
lock it), and its client must not be used from several threads at once. :class:`Store` keeps the
one client and a single worker thread; every call goes through that thread, in order, so the event
loop never waits on ClickHouse and calls never overlap. The same code and SQL serve a ClickHouse
server (``http(s)://``): the client is then an HTTP client.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from schemas.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
Connect = Callable[[str], Client]


def clickhouse_url(settings: Settings) -> str:
    """The configured ClickHouse URL; by default embedded chDB in ``<data_dir>/clickhouse``."""
    if settings.clickhouse_url is not None:
        return settings.clickhouse_url.get_secret_value()
    return f"chdb://{(settings.data_dir / 'clickhouse').resolve()}"


def embedded(url: str) -> bool:
    """Whether ``url`` names embedded chDB (this process would own the data directory)."""
    return url.startswith("chdb:")


def sink_in_api(settings: Settings) -> bool:
    """Whether the API process runs the sink: as configured, else exactly when chDB is embedded."""
    if settings.sink_in_api is not None:
        return settings.sink_in_api
    return embedded(clickhouse_url(settings))


def redacted(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def chdb_database(url: str) -> str | None:
    """The database a ``chdb:///path?database=name`` URL names (None: ``default``)."""
    values = parse_qs(urlsplit(url).query).get("database")
    return values[0] if values else None


def connect(url: str) -> Client:
    """A clickhouse-connect client for ``url``.

    ``chdb:///path[?database=name]``: embedded chDB; the directory and the database are created
    when missing (this process owns them). ``http(s)://user:password@host:port/database``: a
    server; the database must exist (an operator creates it, with the grants the sink needs).
    """
    if embedded(url):
        path = Path(urlsplit(url).path)
        path.mkdir(parents=True, exist_ok=True)
        database = chdb_database(url)
        if database is not None and database != "default":
            bootstrap = clickhouse_connect.get_client(dsn=f"chdb://{path}")
            try:
                bootstrap.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
            finally:
                bootstrap.close()
        return clickhouse_connect.get_client(dsn=url)
    # no HTTP session: calls are serialised by the Store anyway, and a session would make two
    # overlapping calls (a timed-out one still running server-side) fail with "session is locked"
    return clickhouse_connect.get_client(
        dsn=url, autogenerate_session_id=False, connect_timeout=5, send_receive_timeout=120
    )


class Store:
    """The process's ClickHouse client behind one worker thread.

    The client is created on first use (in the thread), so a ClickHouse that is down when the
    process starts only fails the calls, which callers retry. After a call fails the client is
    dropped and created again by the next call (a server restart or a broken connection heals).
    """

    def __init__(self, url: str, connect: Connect = connect) -> None:
        self.url = url
        self._connect = connect
        self._client: Client | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._lock = threading.Lock()  # belt and braces: the executor has one thread

    @property
    def embedded(self) -> bool:
        return embedded(self.url)

    def _call(self, fn: Callable[[Client], T]) -> T:
        with self._lock:
            if self._client is None:
                self._client = self._connect(self.url)
                log.info("connected to ClickHouse at %s", redacted(self.url))
            try:
                return fn(self._client)
            except Exception:
                if not self.embedded:  # a chDB engine has no connection to heal; keep it
                    self._drop()
                raise

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                log.debug("closing the ClickHouse client failed", exc_info=True)

    async def run(self, fn: Callable[[Client], T]) -> T:
        """Run ``fn(client)`` in the ClickHouse thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn)

    async def insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str | None = None
    ) -> None:
        """Insert ``rows`` into ``table``; ``token`` makes a retried insert of the same rows a
        no-op (ClickHouse's insert deduplication, enabled per table by its migration)."""
        settings = {"insert_deduplication_token": token} if token else None

        def go(client: Client) -> None:
            client.insert(table, list(rows), column_names=list(columns), settings=settings)

        await self.run(go)

    async def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """The rows of a SELECT."""

        def go(client: Client) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in client.query(sql, parameters=parameters).result_rows]

        return await self.run(go)

    async def query_named(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The rows of a SELECT, each as a dict by column name (its alias where it has one)."""

        def go(client: Client) -> list[dict[str, Any]]:
            return list(client.query(sql, parameters=parameters).named_results())

        return await self.run(go)

    async def command(self, sql: str) -> None:
        def go(client: Client) -> None:
            client.command(sql)

        await self.run(go)

    async def close(self) -> None:
        """Close the client (in its thread) and stop the thread."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_sync)
        self._executor.shutdown(wait=True)

    def close_sync(self) -> None:
        self._executor.submit(self._close_sync).result()
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        with self._lock:
            self._drop()
