"""Interests: a contact's interest profile from the namespace's replica (decayed to now), and the
categories rising in the event archive (``GET /v1/reports/interests``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from analytics import interests as report
from api import archive
from api.bodies import LimitedRoute
from api.deps import ActiveModel, Analytics, Clock, ReadScope, ReadyReaders
from api.errors import ApiError
from schemas.api import Problem
from schemas.api_interests import InterestsOut, InterestsReportOut, interests_out
from schemas.times import DAY_MS
from scorestream import Model
from scorestream.rules.common import parse_duration_ms
from scorestream.rules.interests import InterestRules

router = APIRouter(tags=["interests"], route_class=LimitedRoute)


def rules_of(model: Model) -> InterestRules:
    rules = model.interests
    if rules is None:
        raise ApiError(404, "not_found", f"model {model.version} keeps no interests (no 'interests' section)")
    return rules


@router.get(
    "/v1/contacts/{contact_id}/interests",
    response_model=InterestsOut,
    responses={404: {"model": Problem}, 503: {"model": Problem}},
)
async def get_interests(contact_id: str, readers: ReadyReaders, clock: Clock) -> InterestsOut:
    """A contact's interest profile (by user id, anonymous id or email): the top categories, brands
    and products by affinity decayed to now, and the products seen but not bought."""
    rules = rules_of(readers.model)
    entry = readers.replica.find(contact_id)
    if entry is None:
        raise ApiError(404, "not_found", f"no contact with id, anonymous id or email {contact_id!r}")
    return interests_out(entry.view, rules, clock())


@router.get(
    "/v1/reports/interests", response_model=InterestsReportOut, dependencies=ReadScope, responses=archive.ERRORS
)
async def interests_report(
    analytics: Analytics,
    model: ActiveModel,
    clock: Clock,
    window: Annotated[str, Query(description="The window's length, e.g. `7d` (and the previous one's).")] = "7d",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> InterestsReportOut:
    """Categories rising: each category's interest points in the window ending now against the
    window before it (the active model's `interests` rules over the event archive), the largest
    rise first."""
    rules = rules_of(model)
    try:
        window_ms = parse_duration_ms(window, "window")
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from exc
    if window_ms > 366 * DAY_MS:
        raise ApiError(422, "invalid_request", "window: at most 366d")
    now = clock()
    return await archive.answer(analytics, lambda store: report.rising(store, rules, now, window_ms, limit))
