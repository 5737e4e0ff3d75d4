"""The console's analytics pages: the funnel, customer value (the RFM grid and each cell's
contacts), and personas x stages with the revenue forecast.

Every number is the API's: each page calls the JSON route's own function (``api.routers.reports``'
``funnel_report``, ``rfm_report``, ``personas_report``, ``forecast_report``; ``api.routers.contacts``'
``list_contacts`` for a cell's contacts) with the same dependencies and the same defaults, so a page
and ``GET /v1/reports/...`` with the same parameters cannot disagree. What this module adds is
presentation: parsing the forms, the heat map's shades, the chart, the links.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from api import deps
from api.routers import contacts as contact_routes
from api.routers import reports as report_routes
from console import charts
from console.contacts import contact_path
from console.pages import attempt, fragment, page
from console.session import PREFIX, ViewerDep
from schemas.api_analytics import (
    ContactListOut,
    ForecastOut,
    FunnelOut,
    PersonasOut,
    RfmCellOut,
    RfmReportOut,
)
from schemas.value import ChurnReportOut
from scorestream import Model
from scorestream.rules.value import segment_of

router = APIRouter(prefix=PREFIX)  # the whole path in each route: what audit lines and tests name

FUNNEL = f"{PREFIX}/funnel"
VALUE = f"{PREFIX}/value"
PIPELINE = f"{PREFIX}/pipeline"
CELL_PAGE_SIZE = 25
MAX_CELL_PAGE = 100
SHADES = 5  # heat map shades above "empty"
MAX_TEXT = 200  # longest model name or stage list accepted from a form
DEFAULT_LOOKBACK_DAYS = 180.0  # GET /v1/reports/forecast's default
FRAGMENT_HEADER = "x-console-fragment"  # console.js sends it with a data-load request


class BadInput(ValueError):
    """A form value the page cannot use; its message is shown beside the form."""


# --- parsing the forms -------------------------------------------------------------------------


def parse_moment(raw: str | None, field: str, end: bool = False) -> datetime | None:
    """A form's date (``2026-12-01``: midnight UTC; as the end of a range, the next midnight, so the
    day is included) or an ISO 8601 instant (as is); None when empty."""
    text = (raw or "").strip()
    if not text:
        return None
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC) + (timedelta(days=1) if end else timedelta())
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"{field}: {text[:40]!r} is not a date (YYYY-MM-DD)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_score(raw: str | None, field: str) -> int:
    """An R or F score, 1 to 5."""
    try:
        value = int((raw or "").strip())
    except ValueError:
        raise BadInput(f"{field}: a score from 1 to 5 is needed") from None
    if not 1 <= value <= 5:
        raise BadInput(f"{field}: a score from 1 to 5 is needed, not {value}")
    return value


def parse_lookback(raw: str | None) -> float:
    """The forecast's lookback in days: more than 0, at most 3650 (the API's bounds)."""
    text = (raw or "").strip()
    if not text:
        return DEFAULT_LOOKBACK_DAYS
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"lookback: {text[:20]!r} is not a number of days") from None
    if not 0 < value <= 3650 or math.isnan(value):
        raise BadInput("lookback: between 1 and 3650 days")
    return value


def short(raw: str | None, field: str) -> str | None:
    text = (raw or "").strip()
    if len(text) > MAX_TEXT:
        raise BadInput(f"{field}: too long")
    return text or None


def api_query(path: str, params: dict[str, Any]) -> str:
    """The API request that answers the same numbers (shown on the page)."""
    given = {k: v for k, v in params.items() if v not in (None, "")}
    return path + ("?" + urlencode(given, safe=":,@") if given else "")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- presentation helpers ----------------------------------------------------------------------


def shade(value: float, top: float) -> int:
    """0 for nothing, else 1..SHADES: shade k holds the values in ``(top (k-1)/SHADES, top k/SHADES]``."""
    if value <= 0 or top <= 0:
        return 0
    return max(1, min(SHADES, math.ceil(SHADES * value / top)))


def legend(top: float, whole: bool) -> list[tuple[int, float, float]]:
    """The heat map's legend: (shade, lowest, highest) of each shade holding a possible value;
    ``whole``: counts (whole numbers: each shade's first and last count)."""
    out: list[tuple[int, float, float]] = []
    for k in range(1, SHADES + 1):
        low, high = top * (k - 1) / SHADES, top * k / SHADES
        if whole:
            first, last = math.floor(low) + 1, math.floor(high)
            if first <= last:
                out.append((k, first, last))
        elif top > 0:
            out.append((k, low, high))
    return out


def model_choices(request: Request) -> list[str]:
    """The live namespaces' model versions (the active one first), for the funnel's model menu."""
    namespaces = getattr(request.app.state, "namespaces", None)
    live = namespaces.live() if namespaces is not None else []
    return [str(readers.model.version) for readers in live]


def currency(model: Model) -> str:
    return str(model.value.base_currency)


# --- the funnel --------------------------------------------------------------------------------


@router.get("/funnel")
async def funnel(request: Request, who: ViewerDep) -> Response:
    """Contacts per stage, conversion, time in stage and velocity: ``GET /v1/reports/funnel``."""
    q = request.query_params
    mode: Literal["cumulative", "sequential"] = "sequential" if q.get("mode") == "sequential" else "cumulative"
    form = {"from": q.get("from", ""), "to": q.get("to", ""), "model": q.get("model", ""), "mode": mode}
    model = await deps.active_model(request)
    context: dict[str, Any] = {"form": form, "models": model_choices(request), "title": "Funnel"}
    try:
        if q.get("mode") not in (None, "", "cumulative", "sequential"):
            raise BadInput("mode: cumulative or sequential")
        start, end = parse_moment(q.get("from"), "from"), parse_moment(q.get("to"), "to", end=True)
        chosen, stages = short(q.get("model"), "model"), short(q.get("stages"), "stages")
    except BadInput as exc:
        return page(request, who, "funnel.html", nav=FUNNEL, status=400, error=str(exc), **context)
    report, problem = await attempt(
        report_routes.funnel_report(
            await deps.analytics(request),
            model,
            await deps.clock(request),
            model_=chosen,
            from_=start,
            to=end,
            stages=stages,
            mode=mode,
        )
    )
    if report is not None:
        params = {"from": iso(report.from_), "to": iso(report.to), "model": chosen, "stages": stages, "mode": mode}
        context |= funnel_context(report) | {"api": api_query("/v1/reports/funnel", params)}
        if not form["from"]:
            form["from"] = report.from_.date().isoformat()
        if not form["to"]:
            form["to"] = (report.to - timedelta(milliseconds=1)).date().isoformat()
    return page(request, who, "funnel.html", nav=FUNNEL, report=report, problem=problem, **context)


def funnel_context(report: FunnelOut) -> dict[str, Any]:
    steps = report.stages
    labels = [s.stage for s in steps]
    return {
        "chart": charts.bars(labels, [s.reached for s in steps], title="Contacts reaching each stage"),
        "first": steps[0] if steps else None,
        "last": steps[-1] if steps else None,
        "empty": not any(s.reached or s.entered for s in steps),
    }


# --- customer value ----------------------------------------------------------------------------


async def _rfm(request: Request) -> RfmReportOut:
    return await report_routes.rfm_report(
        await deps.analytics(request), await deps.active_model(request), await deps.active_population(request)
    )


async def _churn(request: Request) -> ChurnReportOut:
    return await report_routes.churn_risk_report(
        await deps.analytics(request),
        await deps.active_model(request),
        await deps.active_population(request),
        await deps.clock(request),
    )


@router.get("/value")
async def value(request: Request, who: ViewerDep) -> Response:
    """The R x F grid as a heat map, the segments: ``GET /v1/reports/rfm``."""
    by = request.query_params.get("by", "contacts")
    model = await deps.active_model(request)
    if by not in ("contacts", "revenue"):
        return page(
            request,
            who,
            "message.html",
            nav=VALUE,
            status=400,
            title="Cannot show that",
            message="Colour the grid by contacts or by revenue (by=contacts or by=revenue).",
        )
    report, problem = await attempt(_rfm(request))
    context: dict[str, Any] = {"by": by, "currency": currency(model), "title": "Customer value"}
    context["churn"], context["churn_problem"] = await attempt(_churn(request))
    if report is not None:
        context |= grid_context(report, by)
    return page(request, who, "value.html", nav=VALUE, report=report, problem=problem, **context)


def grid_context(report: RfmReportOut, by: str) -> dict[str, Any]:
    """The grid as rows (R 5..1) of cells (F 1..5), each with its shade; the legend."""
    measure = (lambda c: float(c.contacts)) if by == "contacts" else (lambda c: c.revenue)
    top = max((measure(c) for c in report.grid), default=0.0)
    rows: list[tuple[int, list[tuple[RfmCellOut, int]]]] = []
    for r in range(5, 0, -1):
        cells = sorted((c for c in report.grid if c.r == r), key=lambda c: c.f)
        rows.append((r, [(c, shade(measure(c), top)) for c in cells]))
    return {"rows": rows, "legend": legend(top, by == "contacts"), "top": top}


def cell_href(r: int, f: int, size: int, cursor: str | None = None, number: int = 1) -> str:
    params: dict[str, Any] = {"r": r, "f": f}
    if size != CELL_PAGE_SIZE:
        params["limit"] = size
    if cursor:
        params |= {"cursor": cursor, "page": number}
    return f"{VALUE}/cell?{urlencode(params)}"


def parse_size(raw: str | None) -> int:
    """Customers per page of a cell's list: 1 to MAX_CELL_PAGE (default CELL_PAGE_SIZE)."""
    text = (raw or "").strip()
    if not text:
        return CELL_PAGE_SIZE
    if not text.isdigit() or not 1 <= int(text) <= MAX_CELL_PAGE:
        raise BadInput(f"limit: from 1 to {MAX_CELL_PAGE} customers a page")
    return int(text)


@router.get("/value/cell")
async def value_cell(request: Request, who: ViewerDep) -> Response:
    """A cell's contacts, a page at a time: ``GET /v1/contacts?rfm_r=..&rfm_f=..`` (the CRM's sync
    list). A fragment for the value page's script; a page of its own without it."""
    q = request.query_params
    whole = request.headers.get(FRAGMENT_HEADER) != "1"
    try:
        r, f = parse_score(q.get("r"), "r"), parse_score(q.get("f"), "f")
        cursor, size = short(q.get("cursor"), "cursor"), parse_size(q.get("limit"))
        number = max(1, int(q.get("page") or 1))
    except (BadInput, ValueError) as exc:
        message = str(exc) if isinstance(exc, BadInput) else "page: a page number is needed"
        if whole:
            return page(request, who, "message.html", status=400, title="Cannot list that", message=message)
        response = fragment(request, who, "value_cell_part.html", error=message)
        response.status_code = 400
        return response
    model = await deps.active_model(request)
    listed, problem = await attempt(
        contact_routes.list_contacts(
            await deps.analytics(request),
            model,
            await deps.clock(request),
            await deps.active_population(request),
            cursor=cursor,
            limit=size,
            rfm_r=r,
            rfm_f=f,
        )
    )
    context = cell_context(model, r, f, size, cursor, number, listed) | {"problem": problem}
    if whole:
        return page(request, who, "value_cell.html", nav=VALUE, title=f"Customers R {r} · F {f}", **context)
    return fragment(request, who, "value_cell_part.html", **context)


def cell_context(
    model: Model, r: int, f: int, size: int, cursor: str | None, number: int, listed: ContactListOut | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"rfm_r": r, "rfm_f": f, "limit": size, "cursor": cursor}
    more = listed is not None and listed.has_more
    return {
        "r": r,
        "f": f,
        "segment": segment_of(r, f, model.value.segments),
        "listed": listed,
        "number": number,
        "first_row": (number - 1) * size + 1,
        "next_href": cell_href(r, f, size, listed.next_cursor, number + 1) if more and listed else None,
        "first_href": cell_href(r, f, size) if cursor else None,
        "api": api_query("/v1/contacts", params),
        "currency": currency(model),
        "link": contact_path,
    }


# --- personas and forecast ---------------------------------------------------------------------


@router.get("/pipeline")
async def pipeline(request: Request, who: ViewerDep) -> Response:
    """Personas x stages (``GET /v1/reports/personas``) and the revenue forecast with the rates and
    the value it used, contacts and accounts (``GET /v1/reports/forecast``)."""
    raw = request.query_params.get("lookback_days")
    model = await deps.active_model(request)
    context: dict[str, Any] = {"lookback": raw or "", "currency": currency(model), "title": "Personas & forecast"}
    try:
        lookback = parse_lookback(raw)
    except BadInput as exc:
        return page(request, who, "pipeline.html", nav=PIPELINE, status=400, error=str(exc), **context)
    analytics, clock = await deps.analytics(request), await deps.clock(request)
    personas, personas_problem = await attempt(report_routes.personas_report(analytics, model, clock))
    forecast, forecast_problem = await attempt(
        report_routes.forecast_report(analytics, model, clock, lookback_days=lookback, model_=None)
    )
    if model.groups:  # the score groups' bands (GET /v1/reports/groups)
        context["groups"], context["groups_problem"] = await attempt(
            report_routes.groups_report(analytics, model, clock)
        )
    context["lookback"] = raw or f"{lookback:g}"
    if personas is not None:
        context |= matrix_context(personas)
    if forecast is not None:
        context |= forecast_context(forecast)
    context["api"] = api_query("/v1/reports/forecast", {"lookback_days": raw and f"{lookback:g}"})
    return page(
        request,
        who,
        "pipeline.html",
        nav=PIPELINE,
        personas=personas,
        personas_problem=personas_problem,
        forecast=forecast,
        forecast_problem=forecast_problem,
        **context,
    )


def key_of(name: str | None) -> str:
    """A persona or stage in a ``data-k`` name (``none``: no persona, no stage)."""
    return "none" if name is None else name


def matrix_context(report: PersonasOut) -> dict[str, Any]:
    """Personas x stages: rows of (persona, [(stage, cell or None, shade)])."""
    cells = {(c.persona, c.stage): c for c in report.cells}
    top = max((c.contacts for c in report.cells), default=0)
    matrix = [
        (
            p,
            [
                (s, cells.get((p, s)), shade(cells[(p, s)].contacts, top) if (p, s) in cells else 0)
                for s in report.stages
            ],
        )
        for p in report.personas
    ]
    return {"matrix": matrix, "key_of": key_of}


def forecast_context(report: ForecastOut) -> dict[str, Any]:
    labels: Sequence[str] = [s.stage for s in report.stages]
    revenue = [round(s.expected_revenue) for s in report.stages]  # the chart's labels: whole units
    chart = charts.bars(labels, revenue, title="Expected revenue by stage") if any(revenue) else ""
    return {"forecast_chart": chart}
