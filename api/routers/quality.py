"""Journey facts and score quality from the archive: ``GET /v1/contacts/{id}/journey``,
``GET /v1/reports/journey`` and ``GET /v1/reports/score-quality`` (:mod:`analytics.journey_facts`,
:mod:`analytics.score_quality`). Read as :mod:`api.archive` says (unavailable, not migrated yet or
unreachable: 503 ``not_ready``; bad parameters: 422)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from analytics import journey_facts, reports
from analytics import score_quality as sq
from analytics.client import Store
from api import archive
from api.bodies import LimitedRoute
from api.deps import ActiveModel, Analytics, Clock, NamespacesDep, ReadScope
from api.errors import ApiError
from schemas.api import Problem
from schemas.api_quality import JourneyOut, JourneyReportOut, ScoreQualityOut
from scorestream import Model

router = APIRouter(tags=["reports"], dependencies=ReadScope, responses=archive.ERRORS, route_class=LimitedRoute)
DEFAULT_QUALITY_DAYS = 90


@router.get("/v1/contacts/{contact_id}/journey", response_model=JourneyOut, responses={404: {"model": Problem}})
async def contact_journey(contact_id: str, analytics: Analytics, model: ActiveModel) -> JourneyOut:
    """A contact's way to its first order: touches (track, page and screen events) before it by
    channel, and days from its first touch to it; a free order counts. By user id, anonymous id or
    email; the events of contacts merged into it are its own."""

    async def query(store: Store) -> JourneyOut:
        found = await reports.resolve_contact(store, contact_id)
        if found is None:
            raise ApiError(404, "not_found", f"no contact with id, anonymous id or email {contact_id!r} in the archive")
        return await journey_facts.journey(store, found, model.value.order_events)

    return await archive.answer(analytics, query)


@router.get("/v1/reports/journey", response_model=JourneyReportOut)
async def journey_report(
    analytics: Analytics,
    model: ActiveModel,
    clock: Clock,
    from_: Annotated[datetime | None, Query(alias="from", description="Default: 90 days before `to`.")] = None,
    to: Annotated[datetime | None, Query(description="Exclusive; default: now.")] = None,
    min_n: Annotated[int, Query(ge=1, le=10_000, description="Smallest group given a distribution.")] = (
        journey_facts.DEFAULT_MIN_N
    ),
) -> JourneyReportOut:
    """The buyers whose first order is in the window: touches before it and days to it (median,
    quartiles, p90, histogram), overall, by persona, by current stage and by the channel of the
    first touch; each channel's touches; the share whose first touch was offline (a store)."""
    from_ms, to_ms = archive.window(from_, to, DEFAULT_QUALITY_DAYS, clock())
    assert from_ms is not None
    orders = model.value.order_events

    async def query(store: Store) -> JourneyReportOut:
        return await journey_facts.journey_report(store, from_ms, to_ms, min_n, orders)

    return await archive.answer(analytics, query)


def evaluated(name: str | None, active: Model, namespaces: Any) -> list[sq.Evaluated]:
    """The models to evaluate: ``name`` (a namespace, a version or a model name) alone, else the
    active namespace's model and every live shadow beside it."""
    live = list(namespaces.live())
    active_ns = getattr(live[0], "namespace", None) if live else None
    if name:
        for readers in live:
            if name in (getattr(readers, "namespace", None), readers.model.version):
                role = "active" if readers is live[0] else "shadow"
                return [sq.Evaluated(readers.model.version, readers.model, readers.namespace, role)]
        return [sq.Evaluated(name, archive.model_of(name, active, live), None, "chosen")]
    out = [sq.Evaluated(active.version, active, active_ns, "active")]
    out += [sq.Evaluated(r.model.version, r.model, r.namespace, "shadow") for r in live[1:]]
    return out


def with_group(models: list[sq.Evaluated], group: str | None) -> list[sq.Evaluated]:
    """``models`` judged by the score group ``group`` (422 when the first model has no such group;
    a shadow without it is left out)."""
    if not group:
        return models
    archive.valid(reports.check_group, group, models[0].model)
    out = []
    for m in models:
        found = m.model.group(group)
        if found is not None:
            out.append(replace(m, group=found))
    return out


@router.get("/v1/reports/score-quality", response_model=ScoreQualityOut)
async def score_quality_report(
    analytics: Analytics,
    model: ActiveModel,
    namespaces: NamespacesDep,
    clock: Clock,
    model_: Annotated[
        str | None,
        Query(
            alias="model",
            description="A namespace, model version or name; default: the active model and every live shadow.",
        ),
    ] = None,
    from_: Annotated[datetime | None, Query(alias="from", description="Default: 90 days before `to`.")] = None,
    to: Annotated[datetime | None, Query(description="Exclusive; default: `horizon` before now.")] = None,
    horizon: Annotated[str, Query(description="How long after t the outcome counts: `30d`, `12h`, `2w`.")] = "30d",
    every: Annotated[str | None, Query(description="Between snapshot instants; default: the horizon.")] = None,
    outcome: Annotated[str, Query(description="`order` or `stage:<name>`.")] = "order",
    group: Annotated[
        str | None,
        Query(description="A score group: judge its score (and grade by its bands) instead of the overall one."),
    ] = None,
    min_n: Annotated[int, Query(ge=1, le=100_000, description="Smallest group given a rate.")] = sq.DEFAULT_MIN_N,
) -> ScoreQualityOut:
    """Does the score predict? For the contacts scored at each snapshot instant t of the period,
    the share that ordered (or entered the stage) within the horizon after t: by grade, by score
    decile and by stage at t, with the lift over the base rate, ROC AUC (Mann-Whitney, ties half)
    and a calibration table (mean score and observed rate per decile); for the active model and
    each live shadow, compared group by group. Too little data: null figures with `n` and a note."""
    now = clock()
    horizon_ms = archive.valid(sq.parse_duration, "horizon", horizon)
    every_ms = archive.valid(sq.parse_duration, "every", every) if every else horizon_ms
    chosen = archive.valid(sq.parse_outcome, outcome, model)
    default_to = now - horizon_ms
    from_ms, to_ms = archive.window(from_, to, DEFAULT_QUALITY_DAYS, default_to)
    assert from_ms is not None
    models = with_group(evaluated(model_, model, namespaces), group)
    archive.valid(sq.snapshots, from_ms, to_ms, every_ms, horizon_ms, now)

    async def query(store: Store) -> ScoreQualityOut:
        return await sq.score_quality(store, models, chosen, from_ms, to_ms, horizon_ms, every_ms, now, min_n)

    return await archive.answer(analytics, query)
