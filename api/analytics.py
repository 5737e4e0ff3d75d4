"""The analytics routes: the CRM's sync list, a contact's score and stage history, and the reports
(funnel, RFM, personas, forecast), read from the ClickHouse archive (:mod:`analytics.reports`).

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
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar, cast

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, error_name_from_body
from fastapi import APIRouter, FastAPI, Query

from analytics import reports
from analytics.client import Store, clickhouse_url, embedded
from analytics.reports import ContactFilter, InvalidParameter
from schemas.api import ErrorBody
from schemas.api_analytics import ContactListOut, ForecastOut, FunnelOut, HistoryOut, PersonasOut, RfmReportOut
from schemas.settings import Settings
from schemas.times import DAY_MS
from schemas.times import ms_of as _ms
from scorestream import Model
from sink.service import Sink

log = logging.getLogger(__name__)
T = TypeVar("T")
StoreGetter = Callable[[], Awaitable[Store]]
ErrorFactory = Callable[[int, str, str], Exception]
SERVER_SETTLE_MS = 5_000  # sync list: rows younger than this are held back (inserts still in flight)
DEFAULT_FUNNEL_DAYS = 90
# ClickHouse errors that mean "the archive is not there yet" (no migrations applied), not a bug
NOT_MIGRATED = {"UNKNOWN_TABLE", "UNKNOWN_DATABASE", "UNKNOWN_IDENTIFIER", "NO_SUCH_COLUMN_IN_TABLE"}


class AnalyticsUnavailable(Exception):
    """The archive cannot be read from this process (now, or in this configuration)."""


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


def _matches(model: Model, name: str) -> bool:
    """Whether ``name`` (a version or a name) names ``model``, as ``reports.model_filter_sql`` does."""
    return model.version == name or model.version.startswith(name + "@")


def _names(raw: str | None) -> tuple[str, ...]:
    return tuple(s.strip() for s in raw.split(",") if s.strip()) if raw else ()


def mount_analytics(
    app: FastAPI,
    store_getter: StoreGetter,
    model: Model,
    dependencies: Sequence[Any],
    clock: Callable[[], int],
    error: ErrorFactory,
) -> None:
    """Add the sync list, the history and the reports to ``app`` behind ``dependencies`` (the API
    keys). The store is asked for per request through ``app.state.analytics`` (``store_getter``
    unless a test replaces it); ``app.state.replica``, ``app.state.population`` and
    ``app.state.model``, when there, resolve contact ids, give the RFM boundaries and the model
    (the active namespace's: they follow promotions)."""
    app.state.analytics = store_getter

    def active_model() -> Model:
        """The active namespace's model (``app.state.model`` follows promotions), else ``model``."""
        current = getattr(app.state, "model", None)
        return current if isinstance(current, Model) else model

    errors: dict[int | str, dict[str, Any]] = {422: {"model": ErrorBody}, 503: {"model": ErrorBody}}
    router = APIRouter(dependencies=list(dependencies), responses=errors)

    async def answer(query: Callable[[Store], Awaitable[T]]) -> T:
        try:
            store = await app.state.analytics()
        except AnalyticsUnavailable as exc:
            raise error(503, "not_ready", str(exc)) from None
        try:
            return await query(store)
        except InvalidParameter as exc:
            raise error(422, "invalid_request", str(exc)) from None
        except OperationalError as exc:
            log.warning("analytics: ClickHouse unreachable: %s", exc)
            raise error(503, "not_ready", "the analytics archive is unreachable; retry shortly") from None
        except DatabaseError as exc:
            if (getattr(exc, "name", None) or error_name_from_body(str(exc))) not in NOT_MIGRATED:
                raise
            log.warning("analytics: the archive is not migrated yet: %s", exc)
            raise error(503, "not_ready", "the analytics archive is not set up yet (migrations pending)") from None

    def valid(check: Callable[..., T], *args: Any) -> T:
        try:
            return check(*args)
        except InvalidParameter as exc:
            raise error(422, "invalid_request", str(exc)) from None

    def window(from_: datetime | None, to: datetime | None, default_days: int | None) -> tuple[int | None, int]:
        to_ms = clock() if to is None else _ms(to)
        from_ms = _ms(from_) if from_ is not None else (to_ms - default_days * DAY_MS if default_days else None)
        if from_ms is not None and from_ms >= to_ms:
            raise error(422, "invalid_request", "from: must be before to")
        return from_ms, to_ms

    @router.get(
        "/v1/contacts",
        response_model=ContactListOut,
        tags=["contacts"],
    )
    async def list_contacts(
        stage: Annotated[str | None, Query(description="Stage(s), comma-separated.")] = None,
        min_engagement: Annotated[
            float | None, Query(description="Engagement decayed to now (as the contact route shows it) at least this.")
        ] = None,
        segment: Annotated[str | None, Query(description="The RFM segment the worker last assigned.")] = None,
        flag: Annotated[str | None, Query(description="Contacts carrying this flag (e.g. `job_seeker`).")] = None,
        updated_since: Annotated[datetime | None, Query(description="Changed at or after (ISO 8601).")] = None,
        status: Annotated[
            Literal["active", "all"], Query(description="`all` also lists merged and deleted contacts.")
        ] = "active",
        cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> ContactListOut:
        """The CRM's sync list from the archive, in the order changes reached it (about the order of
        change): page with `next_cursor`; keep the last one and ask again later for what changed
        since. A contact changed again after it was listed comes again; none is skipped."""
        filters = ContactFilter(
            stages=_names(stage),
            min_engagement=min_engagement,
            segment=segment or None,
            flag=flag or None,
            updated_since_ms=None if updated_since is None else _ms(updated_since),
            include_removed=status == "all",
        )

        after = reports.START if not cursor else valid(reports.decode_cursor, cursor)

        async def query(store: Store) -> ContactListOut:
            settle = 0 if store.embedded else SERVER_SETTLE_MS
            return await reports.contact_list(store, active_model(), filters, after, limit, clock(), settle)

        return await answer(query)

    @router.get(
        "/v1/contacts/{contact_id}/history",
        response_model=HistoryOut,
        tags=["contacts"],
        responses={404: {"model": ErrorBody}},
    )
    async def contact_history(
        contact_id: str,
        from_: Annotated[datetime | None, Query(alias="from", description="Window start (default: all).")] = None,
        to: Annotated[datetime | None, Query(description="Window end, exclusive (default: now).")] = None,
        as_of: Annotated[
            datetime | None, Query(description="The instant of the as-of view (default: the window end).")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=10_000, description="Most rows of each list.")] = 1000,
        model_: Annotated[
            str | None,
            Query(
                alias="model",
                description="The model whose history this is: a live namespace (its model's version), a version "
                "(`name@hash`) or a name (every version of it); default: the active model's version. After a promotion the archive holds both models' "
                "histories of the same period; `GET /v1/models` lists the versions.",
            ),
        ] = None,
    ) -> HistoryOut:
        """Why a contact scores what it does under one model (`model`, default the active one): every
        change of its scores (with the rules and events behind it) and its stage changes in the window,
        and its scores as they were at `as_of` (what the CRM saw when it last synced). By user id,
        anonymous id or email. The stage changes are those the model announced: after a promotion,
        the new model's from the promotion's cut on (its ledger rows show its stages before it)."""
        from_ms, to_ms = window(from_, to, None)
        at = to_ms if as_of is None else _ms(as_of)
        active = active_model()
        chosen = model_ or active.version
        namespaces = getattr(app.state, "namespaces", None)
        for readers in namespaces.live() if model_ and namespaces is not None else ():
            if getattr(readers, "namespace", None) == model_:  # a namespace's name: its model's version
                chosen = readers.model.version
        scoring = model_of(chosen, active)

        async def query(store: Store) -> HistoryOut:
            found = _replica_id(contact_id)
            if found is None:
                found = await reports.resolve_contact(store, contact_id)
            if found is None:
                raise error(
                    404, "not_found", f"no contact with id, anonymous id or email {contact_id!r} in the archive"
                )
            return await reports.history(store, scoring, found, from_ms, to_ms, at, limit, chosen)

        return await answer(query)

    def model_of(name: str, active: Model) -> Model:
        """The model that decays and bands the as-of scores of model ``name`` (a version or a name):
        the active one, else a live namespace's running it, else (a retired model) the active one."""
        if _matches(active, name):
            return active
        namespaces = getattr(app.state, "namespaces", None)
        for readers in namespaces.live() if namespaces is not None else ():
            if _matches(readers.model, name):
                return cast(Model, readers.model)
        return active

    def _replica_id(ident: str) -> str | None:
        replica = getattr(app.state, "replica", None)
        if replica is None or not replica.caught_up.is_set():
            return None
        entry = replica.find(ident)
        return None if entry is None else str(entry.state.contact_id)

    @router.get(
        "/v1/reports/funnel",
        response_model=FunnelOut,
        tags=["reports"],
    )
    async def funnel_report(
        model_: Annotated[
            str | None, Query(alias="model", description="A model version (`name@hash`) or name; default: all.")
        ] = None,
        from_: Annotated[datetime | None, Query(alias="from", description="Default: 90 days before `to`.")] = None,
        to: Annotated[datetime | None, Query(description="Exclusive; default: now.")] = None,
        stages: Annotated[
            str | None, Query(description="Comma-separated; default: the model's stages up to the customer stage.")
        ] = None,
        mode: Annotated[Literal["cumulative", "sequential"], Query()] = "cumulative",
    ) -> FunnelOut:
        """Per stage: contacts that entered it in the window, how many of the funnel reached it
        (`cumulative`: entering it or a later stage counts; `sequential`: entering it, in order),
        conversion from the previous step, median time in the stage and median time from the first
        step (velocity)."""
        from_ms, to_ms = window(from_, to, DEFAULT_FUNNEL_DAYS)
        assert from_ms is not None
        names = list(_names(stages)) or reports.default_funnel(active_model())

        valid(reports.check_stages, names, active_model())

        async def query(store: Store) -> FunnelOut:
            return await reports.funnel(
                store, active_model(), names, from_ms, to_ms, mode == "sequential", model_ or None
            )

        return await answer(query)

    @router.get(
        "/v1/reports/rfm",
        response_model=RfmReportOut,
        tags=["reports"],
    )
    async def rfm_report() -> RfmReportOut:
        """The R x F grid of the customers (contacts and revenue per cell) under the population's
        current quintile boundaries, and the segment sizes."""
        population = getattr(app.state, "population", None)
        current = getattr(population, "model", None)
        bounds = getattr(current, "boundaries", None)
        return await answer(lambda store: reports.rfm(store, active_model(), bounds))

    @router.get(
        "/v1/reports/personas",
        response_model=PersonasOut,
        tags=["reports"],
    )
    async def personas_report() -> PersonasOut:
        """Persona x stage: active contacts per cell, with their mean engagement (decayed to now) and fit."""
        return await answer(lambda store: reports.personas(store, active_model(), clock()))

    @router.get(
        "/v1/reports/forecast",
        response_model=ForecastOut,
        tags=["reports"],
    )
    async def forecast_report(
        lookback_days: Annotated[float, Query(gt=0, le=3650, description="History the rates are taken from.")] = 180,
        model_: Annotated[
            str | None,
            Query(
                alias="model",
                description="Count transitions of this model only (a version or a name; default: every model's); "
                "the accounts' current stages are read from this model's rows (default: the active model's version).",
            ),
        ] = None,
    ) -> ForecastOut:
        """Revenue expected from the open pipeline: contacts per open stage x the share of contacts
        that entered that stage in the lookback and have become customers since x the value of a
        new customer; with the rates and the value it used. Beside it, `accounts`: the B2B accounts
        pipeline forecast the same way per account (open accounts per account stage x the share that
        became customer accounts x the value of a new customer account, its members' revenue).
        The top-level totals are the contacts pipeline's only and do not include `accounts`: an
        account converts when one of its members orders, and its revenue is its members' orders,
        which the contacts pipeline already forecasts; adding the two would count it twice."""
        lookback = int(lookback_days * DAY_MS)
        return await answer(lambda store: reports.forecast(store, active_model(), clock(), lookback, model_ or None))

    app.include_router(router)
