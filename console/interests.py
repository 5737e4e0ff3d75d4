"""The console's interests page: the product categories rising in the event archive, this window
against the one before (``GET /v1/reports/interests``, by calling its route function with the same
dependencies, so the page and the JSON cannot disagree)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from api import deps
from api.routers import interests as interest_routes
from console import charts
from console.pages import attempt, page
from console.session import PREFIX, ViewerDep
from schemas.api_interests import InterestsReportOut

router = APIRouter(prefix=PREFIX)
NAV = f"{PREFIX}/interests"
WINDOWS = ("7d", "14d", "30d")
SHOWN = 25


@router.get("/interests")
async def interests(request: Request, who: ViewerDep) -> Response:
    """Categories rising: interest points per category this window against the previous one."""
    window = request.query_params.get("window", "7d")
    context: dict[str, Any] = {"title": "Interests", "windows": WINDOWS, "window": window}
    if window not in WINDOWS:
        return page(
            request, who, "interests.html", nav=NAV, status=400, error=f"window: one of {', '.join(WINDOWS)}", **context
        )
    model = await deps.active_model(request)
    if model.interests is None:
        return page(request, who, "interests.html", nav=NAV, report=None, problem=None, no_section=True, **context)
    report, problem = await attempt(
        interest_routes.interests_report(
            await deps.analytics(request), model, await deps.clock(request), window=window, limit=SHOWN
        )
    )
    if report is not None:
        context |= chart_context(report)
    return page(request, who, "interests.html", nav=NAV, report=report, problem=problem, **context)


def chart_context(report: InterestsReportOut) -> dict[str, Any]:
    rising = [c for c in report.categories if c.change > 0][:10]
    return {
        "chart": charts.bars([c.category for c in rising], [c.change for c in rising], title="Rise in interest points")
        if rising
        else None,
        "api": f"/v1/reports/interests?window={report.window_days:g}d",
    }
