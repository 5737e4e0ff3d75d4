"""The console's score-quality and journey pages: does the score predict what contacts did next (the
active model beside each live shadow: rates by decile and grade, lift, AUC, calibration), and how
many touches and days buyers needed before their first order.

Every number is the API's: each page calls the JSON route's own function
(``api.routers.quality``' ``score_quality_report`` and ``journey_report``) with the same
dependencies, so a page and ``GET /v1/reports/score-quality`` / ``/journey`` cannot disagree.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from api import deps
from api.routers import quality as quality_routes
from console import charts
from console.analytics import FRAGMENT_HEADER, BadInput, api_query, iso, parse_moment, short
from console.pages import attempt, fragment, page
from console.session import PREFIX, ViewerDep
from schemas.api_quality import JourneyReportOut, ScoreQualityOut

router = APIRouter(prefix=PREFIX)  # the whole path in each route: what audit lines and tests name

QUALITY = f"{PREFIX}/score-quality"
JOURNEY = f"{PREFIX}/journey"
HORIZONS = ("7d", "14d", "30d", "60d", "90d")


def outcomes(stages: list[str]) -> list[str]:
    return ["order", *(f"stage:{s}" for s in stages)]


@router.get("/score-quality")
async def score_quality(request: Request, who: ViewerDep) -> Response:
    """Does the score predict? ``GET /v1/reports/score-quality``, active and shadows side by side."""
    q = request.query_params
    model = await deps.active_model(request)
    stages = list(model.lifecycle.stages[1:]) if model.lifecycle is not None else []
    form = {
        "from": q.get("from", ""),
        "to": q.get("to", ""),
        "horizon": q.get("horizon", "30d"),
        "outcome": q.get("outcome", "order"),
        "group": q.get("group", ""),
    }
    context: dict[str, Any] = {
        "form": form,
        "horizons": HORIZONS,
        "outcomes": outcomes(stages),
        "groups": [g.id for g in model.groups],
        "title": "Score quality",
    }
    try:
        if form["horizon"] not in HORIZONS:
            raise BadInput(f"horizon: one of {', '.join(HORIZONS)}")
        if form["outcome"] not in context["outcomes"]:
            raise BadInput("outcome: order or a stage of the model")
        if form["group"] and form["group"] not in context["groups"]:
            raise BadInput("score: the overall engagement or a score group of the model")
        start, end = parse_moment(q.get("from"), "from"), parse_moment(q.get("to"), "to", end=True)
        chosen = short(q.get("model"), "model")
    except BadInput as exc:
        return page(request, who, "score_quality.html", nav=QUALITY, status=400, error=str(exc), **context)
    report, problem = await attempt(
        quality_routes.score_quality_report(
            await deps.analytics(request),
            model,
            await deps.namespaces(request),
            await deps.clock(request),
            model_=chosen,
            from_=start,
            to=end,
            horizon=form["horizon"],
            outcome=form["outcome"],
            group=form["group"] or None,
        )
    )
    if report is not None:
        context |= quality_context(report, chosen)
    return page(request, who, "score_quality.html", nav=QUALITY, report=report, problem=problem, **context)


def quality_context(report: ScoreQualityOut, chosen: str | None) -> dict[str, Any]:
    """Per model: the deciles' observed rates as bars; the API request that answers the same."""
    charts_by_model = {
        m.model: charts.bars(
            [c.key for c in m.deciles],
            [None if c.rate is None else round(100 * c.rate, 1) for c in m.deciles],
            title="Observed rate by score decile (%)",
        )
        for m in report.models
        if any(c.rate is not None for c in m.deciles)
    }
    params = {
        "from": iso(report.from_),
        "to": iso(report.to),
        "horizon": f"{report.horizon_days:g}d",
        "outcome": report.outcome,
        "model": chosen,
        "group": report.group,
    }
    return {"charts": charts_by_model, "api": api_query("/v1/reports/score-quality", params)}


@router.get("/journey")
async def journey(request: Request, who: ViewerDep) -> Response:
    """Touches and days to the first order: ``GET /v1/reports/journey``."""
    q = request.query_params
    form = {"from": q.get("from", ""), "to": q.get("to", "")}
    context: dict[str, Any] = {"form": form, "title": "Journeys"}
    try:
        start, end = parse_moment(q.get("from"), "from"), parse_moment(q.get("to"), "to", end=True)
    except BadInput as exc:
        return page(request, who, "journey.html", nav=JOURNEY, status=400, error=str(exc), **context)
    report, problem = await attempt(
        quality_routes.journey_report(
            await deps.analytics(request),
            await deps.active_model(request),
            await deps.clock(request),
            from_=start,
            to=end,
        )
    )
    if report is not None:
        context |= journey_context(report)
    return page(request, who, "journey.html", nav=JOURNEY, report=report, problem=problem, **context)


def journey_context(report: JourneyReportOut) -> dict[str, Any]:
    def label(lower: float, upper: float | None) -> str:
        if upper is None:
            return f"{lower:g}+"
        return f"{lower:g}" if upper - lower == 1 else f"{lower:g}-{upper - 1:g}"

    touches = report.touches.histogram
    return {
        "chart": charts.bars(
            [label(b.lower, b.upper) for b in touches], [b.count for b in touches], title="Buyers by touches before"
        )
        if report.buyers
        else None,
        "api": api_query("/v1/reports/journey", {"from": iso(report.from_), "to": iso(report.to)}),
    }


@router.get("/journey/contacts/{contact_id:path}")
async def contact_journey(request: Request, who: ViewerDep, contact_id: str) -> Response:
    """One contact's way to its first order (``GET /v1/contacts/{id}/journey``): a fragment for
    the contact page's card (loaded on demand: it reads the archive), a page of its own without
    the script."""
    journey_of = quality_routes.contact_journey(
        contact_id, await deps.analytics(request), await deps.active_model(request)
    )
    j, problem = await attempt(journey_of)
    if request.headers.get(FRAGMENT_HEADER) == "1":
        return fragment(request, who, "journey_contact_part.html", j=j, problem=problem)
    title = "Way to the first order"
    return page(
        request, who, "journey_contact.html", nav=JOURNEY, j=j, problem=problem, contact_id=contact_id, title=title
    )
