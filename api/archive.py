"""How the API reads the ClickHouse archive (:mod:`analytics.reports`) for the analytics routes: the
CRM's sync list and a contact's history (:mod:`api.routers.contacts`), and the reports (funnel,
RFM, personas, forecast; :mod:`api.routers.reports`).

Where the archive is read from (:func:`analytics_store`):

- embedded chDB with the sink in this process (the default): the sink's own
  :class:`~analytics.client.Store`, once the sink has applied the migrations. chDB allows one
  process per data directory, so the API, which owns it, is the only reader; queries and the
  sink's inserts take turns on the store's one thread (a long report delays inserts, never
  scoring);
- a ClickHouse server: a store of this process's own (queries only; the sink, wherever it runs,
  applies the migrations);
- embedded chDB run by another process (``SCORESTREAM_SINK_IN_API=false``): unavailable here.

Unavailable, not migrated yet or unreachable: 503 ``not_ready``. Bad parameters: 422.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, error_name_from_body

from analytics.client import Store, clickhouse_url, embedded
from analytics.reports import InvalidParameter
from api.errors import ApiError
from schemas.api import ErrorBody
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
ERRORS: dict[int | str, dict[str, Any]] = {422: {"model": ErrorBody}, 503: {"model": ErrorBody}}


class AnalyticsUnavailable(ApiError):
    """The archive cannot be read from this process (now, or in this configuration): 503 ``not_ready``."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "not_ready", message)


def analytics_store(settings: Settings, sink: Sink | None) -> StoreGetter:
    """How this process reaches the archive (see the module docstring)."""
    if sink is not None:

        async def from_sink() -> Store:
            if not sink.migrated.is_set():
                raise AnalyticsUnavailable("the analytics archive is starting (migrations not applied yet)")
            return sink.store

        return from_sink
    url = clickhouse_url(settings)
    if embedded(url):

        async def elsewhere() -> Store:
            raise AnalyticsUnavailable(
                "analytics is not available in this API process: its embedded chDB is opened by another "
                "process (set SCORESTREAM_SINK_IN_API to run the sink here, or point SCORESTREAM_CLICKHOUSE_URL "
                "at a ClickHouse server)"
            )

        return elsewhere
    store = Store(url)

    async def server() -> Store:
        return store

    return server


async def answer(analytics: StoreGetter, query: Callable[[Store], Awaitable[T]]) -> T:
    """``query`` run on the archive; what keeps it from answering mapped to the API's errors
    (unavailable here, unreachable or not migrated: 503 ``not_ready``; a bad parameter: 422)."""
    store = await analytics()  # AnalyticsUnavailable is an ApiError: 503 not_ready
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
