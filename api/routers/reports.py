"""Reports from the archive: the funnel, the RFM grid, churn-risk bands, personas x stages and the revenue forecast.

Read as :mod:`api.archive` says (unavailable, not migrated yet or unreachable: 503 ``not_ready``;
bad parameters: 422), with the active namespace's model (it follows promotions).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from analytics import churn, groups, reports
from analytics.client import Store
from api import archive
from api.bodies import LimitedRoute
from api.deps import ActiveModel, ActivePopulation, Analytics, Clock, ReadScope
from api.errors import ApiError
from schemas.api_analytics import ForecastOut, FunnelOut, GroupsReportOut, PersonasOut, RfmReportOut
from schemas.times import DAY_MS
from schemas.value import ChurnReportOut

router = APIRouter(
    prefix="/v1/reports", tags=["reports"], dependencies=ReadScope, responses=archive.ERRORS, route_class=LimitedRoute
)


@router.get("/funnel", response_model=FunnelOut)
async def funnel_report(
    analytics: Analytics,
    model: ActiveModel,
    clock: Clock,
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
    from_ms, to_ms = archive.window(from_, to, archive.DEFAULT_FUNNEL_DAYS, clock())
    assert from_ms is not None
    names = list(archive.names(stages)) or reports.default_funnel(model)

    archive.valid(reports.check_stages, names, model)

    async def query(store: Store) -> FunnelOut:
        return await reports.funnel(store, model, names, from_ms, to_ms, mode == "sequential", model_ or None)

    return await archive.answer(analytics, query)


@router.get("/rfm", response_model=RfmReportOut)
async def rfm_report(analytics: Analytics, model: ActiveModel, population: ActivePopulation) -> RfmReportOut:
    """The R x F grid of the customers (contacts and revenue per cell) under the population's
    current quintile boundaries, and the segment sizes."""
    current = getattr(population, "model", None)
    bounds = getattr(current, "boundaries", None)
    return await archive.answer(analytics, lambda store: reports.rfm(store, model, bounds))


@router.get("/churn-risk", response_model=ChurnReportOut)
async def churn_risk_report(
    analytics: Analytics, model: ActiveModel, population: ActivePopulation, clock: Clock
) -> ChurnReportOut:
    """The customers per churn-risk band (Low, Medium, High by the model file's `value.churn_risk`)
    under the current BG/NBD fit, with their number, share, mean risk and revenue at risk (their
    historic net revenue). 503 `not_fitted` before the first CLV fit."""
    fit = getattr(getattr(population, "model", None), "fit", None)
    if fit is None:
        raise ApiError(503, "not_fitted", "no CLV model has been fitted yet: see GET /v1/models/clv")
    now = clock()
    return await archive.answer(analytics, lambda store: churn.churn_report(store, fit, model.value.clv, now))


@router.get("/personas", response_model=PersonasOut)
async def personas_report(
    analytics: Analytics,
    model: ActiveModel,
    clock: Clock,
    group: Annotated[
        str | None, Query(description="A score group: each cell's mean score of it too (`avg_group_score`).")
    ] = None,
) -> PersonasOut:
    """Persona x stage: active contacts per cell, with their mean engagement (decayed to now) and fit
    (and, with `group`, their mean score of that score group)."""
    chosen = archive.valid(reports.check_group, group, model)
    return await archive.answer(analytics, lambda store: reports.personas(store, model, clock(), chosen))


@router.get("/groups", response_model=GroupsReportOut)
async def groups_report(
    analytics: Analytics,
    model: ActiveModel,
    clock: Clock,
    stage: Annotated[str | None, Query(description="Only contacts in these stage(s), comma-separated.")] = None,
) -> GroupsReportOut:
    """Per score group of the active model: its active contacts with points, their mean score now
    and how they spread over the group's bands (scores decayed to now at the group's half-life,
    clamped by its `max`, as `GET /v1/contacts/{id}` shows them), and the contacts without points."""
    stages = archive.names(stage)
    return await archive.answer(analytics, lambda store: groups.groups_report(store, model, clock(), stages))


@router.get("/forecast", response_model=ForecastOut)
async def forecast_report(
    analytics: Analytics,
    model: ActiveModel,
    clock: Clock,
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
    return await archive.answer(
        analytics, lambda store: reports.forecast(store, model, clock(), lookback, model_ or None)
    )
