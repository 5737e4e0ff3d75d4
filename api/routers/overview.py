"""The overview report: contacts per stage and the top movers (the console's front page shows the
same, :mod:`console.overview`).

Read as :mod:`api.archive` says (unavailable, not migrated yet or unreachable: 503 ``not_ready``;
bad parameters: 422), with the active namespace's model (it follows promotions).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from analytics import overview, reports
from api import archive
from api.bodies import LimitedRoute
from api.deps import ActiveModel, Analytics, Clock, ReadScope
from schemas.api_overview import OverviewOut

router = APIRouter(
    prefix="/v1/reports", tags=["reports"], dependencies=ReadScope, responses=archive.ERRORS, route_class=LimitedRoute
)


@router.get("/overview", response_model=OverviewOut)
async def overview_report(
    analytics: Analytics,
    model: ActiveModel,
    clock: Clock,
    window_minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60, description="The movers' window.")] = 60,
    movers: Annotated[int, Query(ge=0, le=100, description="How many movers.")] = overview.DEFAULT_MOVERS,
    group: Annotated[
        str | None, Query(description="A score group: rank the movers by the rise of its score instead.")
    ] = None,
) -> OverviewOut:
    """Active contacts per stage now (the model's stage order), and the contacts whose engagement
    rose most over the window (default the last hour): engagement now (decayed to now) minus
    engagement at the window's start (the last score of the active model's ledger before it,
    decayed to then; 0 for a contact new since), largest rise first."""
    window_ms = window_minutes * 60_000
    chosen = archive.valid(reports.check_group, group, model)
    return await archive.answer(
        analytics, lambda store: overview.overview(store, model, clock(), window_ms, movers, chosen)
    )
