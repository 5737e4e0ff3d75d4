"""How the API reads the ClickHouse archive (:mod:`analytics.reports`) for the analytics routes: the
CRM's sync list and a contact's history (:mod:`api.routers.contacts`), and the reports (funnel,
RFM, personas, forecast; :mod:`api.routers.reports`).

Where the archive is read from (:func:`analytics_store`):

- embedded chDB with the sink in this process (the default): the sink's chDB engine, once the
  sink has applied the migrations. chDB allows one process per data directory, so the API, which
  owns it, is the only reader; the engine serves several clients at once, so queries run on
  clients of their own, not on the sink's, and a long report does not hold up its inserts
  (``python -m bench.report_beside_sink``: an insert sent during a 5.5-13 s report took 7-37 ms,
  against the report's whole length, 5.3-10.2 s, when both shared one client and thread);
- a ClickHouse server: clients of this process's own (queries only; the sink, wherever it runs,
  applies the migrations);
- embedded chDB run by another process (``SCORESTREAM_SINK_IN_API=false``): unavailable here.

At most ``SCORESTREAM_REPORTS_MAX_CONCURRENT`` queries run at once (:class:`Archive`: one
:class:`~analytics.client.Store`, a client and its thread, per query allowed), so reports cannot
take every core from the sink and the API; one more is refused at once, 503 ``busy`` with
``Retry-After`` (the server's capacity, not the caller's quota: a 429 is a key's rate limit).

Unavailable, not migrated yet or unreachable: 503 ``not_ready``. Bad parameters: 422.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, error_name_from_body

from analytics.client import Store, clickhouse_url, embedded
from analytics.reports import InvalidParameter
from api.errors import ApiError
from schemas.api import Problem
from schemas.settings import Settings
from schemas.times import DAY_MS
from schemas.times import ms_of as _ms
from scorestream import Model
from sink.service import Sink

log = logging.getLogger(__name__)
T = TypeVar("T")
StoreGetter = Callable[[], Awaitable[Store]]
SERVER_SETTLE_MS = 5_000  # sync list: rows younger than this are held back (inserts still in flight)
DEFAULT_FUNNEL_DAYS = 90
# ClickHouse errors that mean "the archive is not there yet" (no migrations applied), not a bug
NOT_MIGRATED = {"UNKNOWN_TABLE", "UNKNOWN_DATABASE", "UNKNOWN_IDENTIFIER", "NO_SUCH_COLUMN_IN_TABLE"}
# the answers every analytics route may give besides its own (the OpenAPI document lists them)
ERRORS: dict[int | str, dict[str, Any]] = {422: {"model": Problem}, 503: {"model": Problem}}


class AnalyticsUnavailable(ApiError):
    """The archive cannot be read from this process (now, or in this configuration): 503 ``not_ready``."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "not_ready", message)


BUSY_RETRY_AFTER_S = 1


class Archive:
    """How this process reads the archive, at most ``limit`` queries at once: ``url``'s read
    stores (each its own client and thread, made on first use), leased one per query
    (:meth:`lease`); ``ready`` raises :class:`AnalyticsUnavailable` while the archive cannot be
    read. Calling it is a ``StoreGetter`` (the first read store)."""

    def __init__(self, url: str | None, limit: int, ready: Callable[[], None] = lambda: None) -> None:
        self.url, self.limit, self._ready = url, limit, ready
        self._stores: list[Store] = []
        self._free: list[Store] = []
        self.running = 0

    def _store(self) -> Store:
        self._ready()
        if self._free:
            return self._free.pop()
        assert self.url is not None  # ready() refuses without one
        store = Store(self.url)
        self._stores.append(store)
        return store

    async def __call__(self) -> Store:
        store = self._store()
        self._free.append(store)
        return store

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Store]:
        """A read store for one query: 503 ``busy`` (``Retry-After``) when ``limit`` already run."""
        self._ready()  # AnalyticsUnavailable is an ApiError: 503 not_ready
        if self.running >= self.limit:
            raise ApiError(
                503,
                "busy",
                f"this API process already runs {self.limit} archive queries (SCORESTREAM_REPORTS_MAX_CONCURRENT); "
                "retry shortly",
                headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
            )
        store = self._store()
        self.running += 1
        try:
            yield store
        finally:
            self.running -= 1
            self._free.append(store)

    async def close(self) -> None:
        """Close the read stores (their clients and threads)."""
        stores, self._stores, self._free = self._stores, [], []
        for store in stores:
            await store.close()


def analytics_store(settings: Settings, sink: Sink | None) -> Archive:
    """How this process reaches the archive (see the module docstring)."""
    limit = settings.reports_max_concurrent
    if sink is not None:

        def migrated() -> None:
            if not sink.migrated.is_set():
                raise AnalyticsUnavailable("the analytics archive is starting (migrations not applied yet)")

        return Archive(sink.store.url, limit, migrated)
    url = clickhouse_url(settings)
    if embedded(url):

        def elsewhere() -> None:
            raise AnalyticsUnavailable(
                "analytics is not available in this API process: its embedded chDB is opened by another "
                "process (set SCORESTREAM_SINK_IN_API to run the sink here, or point SCORESTREAM_CLICKHOUSE_URL "
                "at a ClickHouse server)"
            )

        return Archive(None, limit, elsewhere)
    return Archive(url, limit)


@asynccontextmanager
async def _got(analytics: StoreGetter) -> AsyncIterator[Store]:
    yield await analytics()


async def answer(analytics: StoreGetter, query: Callable[[Store], Awaitable[T]]) -> T:
    """``query`` run on the archive (an :class:`Archive`'s leased store, or what a plain getter
    gives); what keeps it from answering mapped to the API's errors (unavailable here, unreachable
    or not migrated: 503 ``not_ready``; too many queries at once: 503 ``busy``; a bad parameter: 422)."""
    lease = analytics.lease() if isinstance(analytics, Archive) else _got(analytics)
    async with lease as store:
        try:
            return await query(store)
        except InvalidParameter as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        except OperationalError as exc:
            log.warning("analytics: ClickHouse unreachable: %s", exc)
            raise ApiError(503, "not_ready", "the analytics archive is unreachable; retry shortly") from None
        except DatabaseError as exc:
            if (getattr(exc, "name", None) or error_name_from_body(str(exc))) not in NOT_MIGRATED:
                raise
            log.warning("analytics: the archive is not migrated yet: %s", exc)
            raise ApiError(503, "not_ready", "the analytics archive is not set up yet (migrations pending)") from None


def valid(check: Callable[..., T], *args: Any) -> T:
    """``check(*args)``; its :class:`~analytics.reports.InvalidParameter` is a 422 ``invalid_request``."""
    try:
        return check(*args)
    except InvalidParameter as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None


def window(
    from_: datetime | None, to: datetime | None, default_days: int | None, now_ms: int
) -> tuple[int | None, int]:
    """The window ``[from, to)`` in epoch ms: ``to`` defaults to now, ``from`` to ``default_days``
    before ``to`` (or none); 422 unless ``from`` is before ``to``."""
    to_ms = now_ms if to is None else _ms(to)
    from_ms = _ms(from_) if from_ is not None else (to_ms - default_days * DAY_MS if default_days else None)
    if from_ms is not None and from_ms >= to_ms:
        raise ApiError(422, "invalid_request", "from: must be before to")
    return from_ms, to_ms


def matches(model: Model, name: str) -> bool:
    """Whether ``name`` (a version or a name) names ``model``, as ``reports.model_filter_sql`` does."""
    return model.version == name or model.version.startswith(name + "@")


def model_of(name: str, active: Model, live: Iterable[Any]) -> Model:
    """The model that decays and bands the as-of scores of model ``name`` (a version or a name):
    the active one, else a live namespace's (``live``: their readers) running it, else (a retired
    model) the active one."""
    if matches(active, name):
        return active
    for readers in live:
        if matches(readers.model, name):
            found: Model = readers.model
            return found
    return active


def names(raw: str | None) -> tuple[str, ...]:
    """The comma-separated names of a query parameter."""
    return tuple(s.strip() for s in raw.split(",") if s.strip()) if raw else ()
