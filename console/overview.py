"""The console's front page (``GET /console``): the pipeline right now, contacts per stage, the top
movers of the last hour and the live feed of triggers.

Where each number comes from (the same function as the API's JSON, never a second computation):

- Right now (:mod:`console.live`, refreshed every ~2 s by server-sent events,
  ``GET /console/live/figures``): events/s, dead letters and consumer lag from the Kafka offsets
  the process samples while someone watches; contacts: the archive's active contacts
  (:func:`analytics.overview.active_contacts`, ``contacts`` of ``GET /v1/reports/overview``, the
  sum of the stage table), counted by the shared sampler every ~10 s. Not the replica's count
  (``GET /v1/models``): it holds every profile ever made, merged ones included (an anonymous
  visitor who later signs in is two), which reads as more people than there are.
- Contacts per stage and top movers: :func:`analytics.overview.overview` through
  :func:`api.archive.answer`, the body of ``GET /v1/reports/overview``.
- Triggers: the public triggers topic (:class:`console.live.TriggerFeed`), the last ones on load,
  new ones pushed by ``GET /console/live/triggers``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse
from starlette.responses import Response

from analytics import overview as report
from api import archive
from api.deps import ActiveModel, Analytics, Clock, NamespacesDep
from api.namespaces import Namespaces
from console import charts
from console import format as fmt
from console.live import SAMPLE_S, Live, Sample, TriggerItem
from console.pages import attempt, page, templates
from console.session import PREFIX, ViewerDep
from schemas.api_overview import OverviewOut

router = APIRouter(prefix=PREFIX)  # the whole path in each route: what audit lines and tests name
NAV = PREFIX
PING_S = 15  # a comment line on an idle stream, so proxies keep it open
FIGURES_URL = f"{PREFIX}/live/figures"
TRIGGERS_URL = f"{PREFIX}/live/triggers"
NO_BUFFERING = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def live(request: Request) -> Live:
    found: Live = request.app.state.console_live
    return found


def active_profiles(namespaces: Namespaces) -> int:
    """Contacts in this API's replica of the active namespace (``GET /v1/models``), merged ones
    included: zero means the worker never wrote one (nothing arrived yet)."""
    return next((m.contacts for m in namespaces.models_out().models if m.role == "active"), 0)


def figures(sample: Sample | None, contacts: int | None) -> dict[str, dict[str, Any]]:
    """The overview's live figures, ``name -> {value, text}`` (what ``console.js`` puts into each
    ``<data data-k=name>``); a figure not known yet has value None and shows a dash."""

    def figure(value: float | int | None, text: str) -> dict[str, Any]:
        return {"value": value, "text": text}

    s = sample or Sample(at_ms=0)
    contacts = s.contacts if s.contacts is not None else contacts
    rate = None if s.events_per_s is None else round(s.events_per_s, 1)
    return {
        "events-per-s": figure(rate, fmt.number(rate, 1)),
        "contacts": figure(contacts, fmt.number(contacts)),
        "deadletters": figure(s.deadletters, fmt.number(s.deadletters)),
        "deadletters-hour": figure(s.deadletters_last_hour, fmt.number(s.deadletters_last_hour)),
        "lag": figure(s.lag, fmt.number(s.lag)),
        "source-records": figure(s.source_records, fmt.number(s.source_records)),
    }


def what_happened(item: TriggerItem) -> str:
    """A trigger in words: ``moved from lead to MQL``, ``engagement rose above 60``..."""
    before, after = item.before, item.after
    if item.type in ("stage.changed", "account.stage_changed"):
        return f"moved from {before} to {after}" if before else f"entered {after}"
    if item.type == "score.threshold_crossed" and isinstance(after, dict):
        threshold = fmt.number(after.get("threshold"), 1)
        return f"engagement {'rose above' if after.get('above') else 'fell below'} {threshold}"
    if item.type == "rfm.segment_changed":
        return f"RFM segment {before} → {after}" if before else f"RFM segment {after}"
    if item.type == "customer.churn_risk_changed":
        return f"churn risk {before} → {after}" if before and after else f"churn risk {after or 'unknown'}"
    if item.type == "contact.disqualified" and isinstance(after, dict):
        flags = ", ".join(str(f) for f in after.get("flags") or ())
        return f"disqualified{f' ({flags})' if flags else ''}"
    if isinstance(after, dict) and "timer" in after:
        return f"{after['timer']} (in {after.get('stage') or 'no stage'})"
    return item.rule or item.type


def trigger_html(item: TriggerItem, now: int) -> str:
    """One feed item (an ``<li>``), as the page renders it on load and the stream sends it."""
    return templates.env.get_template("overview_trigger.html").render(item=item, what=what_happened(item), now_ms=now)


async def overview_of(analytics: archive.StoreGetter, model: Any, now: int) -> OverviewOut:
    """``GET /v1/reports/overview``'s body (its defaults: the last hour, 10 movers)."""
    return await archive.answer(analytics, lambda store: report.overview(store, model, now))


@router.get("")
async def overview_page(
    request: Request,
    viewer: ViewerDep,
    analytics: Analytics,
    model: ActiveModel,
    clock: Clock,
    namespaces: NamespacesDep,
) -> Response:
    now = clock()
    body, problem = await attempt(overview_of(analytics, model, now))
    feed = live(request).feed
    recent = await feed.recent()
    sample = live(request).pulse.recent()
    contacts = body.contacts if body is not None else None
    stages = body.stages if body is not None else []
    chart = charts.bars([s.stage or "(none)" for s in stages], [s.contacts for s in stages])
    nothing_yet = not contacts and active_profiles(namespaces) == 0 and not recent
    return page(
        request,
        viewer,
        "overview.html",
        nav=NAV,
        title="Overview",
        report=body,
        problem=problem,
        chart=chart,
        figures=figures(sample, contacts),
        error=sample.error if sample else None,
        triggers=[(item, what_happened(item)) for item in recent],
        nothing_yet=nothing_yet,
        namespace=namespaces.active().namespace,
        figures_url=FIGURES_URL,
        triggers_url=TRIGGERS_URL,
    )


@router.get("/live/figures")
async def live_figures(
    request: Request, viewer: ViewerDep, namespaces: NamespacesDep, analytics: Analytics
) -> Response:
    """Server-sent events: the right-now figures as JSON, every ~2 s, while the page is open."""
    pulse = live(request).pulse

    async def count() -> int:
        return await archive.answer(analytics, report.active_contacts)

    async def events() -> AsyncIterator[dict[str, str]]:
        async with pulse.watch(namespaces.active().namespace, count):
            seen = pulse.samples - (pulse.latest is not None)  # a sample taken already is sent at once
            while not live(request).stopping:
                sample = await pulse.next_sample(seen, SAMPLE_S * 3)
                if live(request).stopping:
                    return
                if sample is None or pulse.samples == seen:
                    continue  # no sample yet, or none new (a slow broker): the page keeps what it shows
                seen = pulse.samples
                yield {"data": orjson.dumps(figures(sample, None)).decode()}

    return EventSourceResponse(events(), ping=PING_S, headers=NO_BUFFERING)


@router.get("/live/triggers")
async def live_triggers(request: Request, viewer: ViewerDep, clock: Clock) -> Response:
    """Server-sent events: each new trigger as an ``<li>`` for the feed, newest first."""
    feed = live(request).feed

    async def events() -> AsyncIterator[dict[str, str]]:
        with feed.subscribe() as queue:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), PING_S)
                except TimeoutError:
                    if live(request).stopping:
                        return
                    continue
                if item is None:  # the feed stopped (the API is stopping)
                    return
                yield {"data": trigger_html(item, clock())}

    return EventSourceResponse(events(), ping=PING_S, headers=NO_BUFFERING)
