"""The console's admin pages (keys with the ``admin`` scope only): webhooks and models.

**Webhooks** (``/console/webhooks``): every subscription as ``GET /v1/webhooks`` lists it, its
delivery health from the API's delivery log (the deliveries ``GET /v1/webhooks/{id}/deliveries``
lists: delivered, failed and pending counts, the last success and the last failure), its recent
failures with a Retry button (:meth:`~api.webhook_backend.WebhookBackend.retry`, what ``POST
.../deliveries/{delivery_id}/retry`` calls) and "Retry all failed"
(:meth:`~api.webhook_backend.WebhookBackend.retry_failed`, ``POST .../deliveries:retry-failed``).

**Models** (``/console/models``): the active namespace and each live shadow as ``GET /v1/models``
gives them (:meth:`api.namespaces.Namespaces.models_out`), their engagement distributions and,
for contacts in both, the active stage -> shadow stage matrix; a shadow is promoted with the checks
of ``scorestream promote`` (:func:`kafka_io.promotion.promote_namespace`), refused if the registry
changed since the page was rendered (the form carries the active namespace and the version shown).

The distributions read each namespace's contacts replica: at a million contacts a scan per page
view would take seconds, so the page reads a **sample**, the first :data:`SAMPLE` contacts in the
store's key order (merge forwarding records skipped), kept for :data:`SAMPLE_TTL_MS` per
namespace and model version, and says so. Each score is
:func:`scorestream.view.engagement_of_view` at the request's time, the function the API's renderer
calls for ``GET /v1/contacts/{id}``.

Every route takes :data:`~console.session.AdminDep` (403 HTML page for another key; audited), every
POST :func:`~console.session.checked_form` (same origin, CSRF token), and each action is audited.
After a POST the browser is sent back (303) with a flash code in the query string.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from markupsafe import Markup
from starlette.responses import Response

from api.audit import audit
from api.errors import ApiError
from api.namespaces import Namespaces, Readers
from api.routers.webhooks import list_webhooks
from api.webhook_backend import WebhookBackend
from console import charts
from console import format as fmt
from console.pages import attempt, now_ms, page
from console.session import PREFIX, AdminDep, checked_form
from kafka_io.promotion import DEFAULT_MAX_LAG, Progress, PromotionRefused, namespace_progress, promote_namespace
from schemas.view import decode_view
from schemas.webhooks import DeliveryOut, DeliveryRecord, WebhookOut, delivery_out
from scorestream.view import engagement_of_view, groups_of_view

router = APIRouter(prefix=PREFIX)  # the whole path in each route: what audit lines and tests name

FAILURES_SHOWN = 10  # recent failures listed per subscription
LOG_READ = 1000  # the delivery log keeps the latest 1000 deliveries of each subscription
SAMPLE = 10_000  # contacts read per namespace for the distributions and the matrix
SAMPLE_TTL_MS = 60_000  # a sample is read again after a minute
NO_STAGE = "(none)"
PROGRESS_TIMEOUT_S = 3.0  # a shadow's progress read from Kafka (offsets) at most this long per page view
MAX_ID = 128  # a webhook, delivery or namespace id longer than this is not one

FLASHES = {
    "retry": "Retry queued for delivery {id}: the dispatcher sends it again within seconds.",
    "retry-failed": "Every failed delivery of {id} from the last 24 hours is queued to be sent again.",
    "promoted": "{id} is now the active model. Keep the previous model's workers running until the cut has passed.",
}


# --- webhooks --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Health:
    """A subscription's deliveries in the API's delivery log (its latest :data:`LOG_READ`)."""

    delivered: int = 0
    failed: int = 0
    pending: int = 0
    last_success_ms: int | None = None
    last_failure_ms: int | None = None

    @property
    def total(self) -> int:
        return self.delivered + self.failed + self.pending

    @property
    def success_rate(self) -> float | None:
        done = self.delivered + self.failed
        return None if done == 0 else self.delivered / done


def health_of(records: Iterable[DeliveryRecord]) -> Health:
    """Counts by status (``succeeded`` counts as delivered) and the last successful and failed attempt."""
    counts: Counter[str] = Counter()
    last_ok: int | None = None
    last_bad: int | None = None
    for record in records:
        counts[record.status] += 1
        for tried in record.attempts:
            if tried.outcome == "success":
                last_ok = tried.at_ms if last_ok is None else max(last_ok, tried.at_ms)
            else:
                last_bad = tried.at_ms if last_bad is None else max(last_bad, tried.at_ms)
    return Health(counts["succeeded"], counts["failed"], counts["pending"], last_ok, last_bad)


def failing(record: DeliveryRecord) -> bool:
    """Failed, or pending after a failed attempt (being retried on the schedule)."""
    if record.status == "failed":
        return True
    return record.status == "pending" and bool(record.attempts) and record.attempts[-1].outcome != "success"


def recent_failures(records: Iterable[DeliveryRecord], limit: int = FAILURES_SHOWN) -> list[DeliveryRecord]:
    """The deliveries :func:`failing`, most recently updated first."""
    found = [r for r in records if failing(r)]
    return sorted(found, key=lambda r: (-r.updated_ms, r.id))[:limit]


@dataclass(frozen=True)
class Subscription:
    """One row of the webhooks page."""

    hook: WebhookOut
    health: Health
    failures: list[DeliveryOut]


def backend_of(request: Request) -> WebhookBackend:
    found: WebhookBackend = request.app.state.webhooks
    return found


async def subscriptions(backend: WebhookBackend) -> list[Subscription]:
    """Every subscription (``GET /v1/webhooks``) with its health and recent failures (503 while
    the subscriptions are loading)."""
    hooks = (await list_webhooks(backend)).data
    log_ready = backend.deliveries.caught_up.is_set()
    rows = []
    for hook in hooks:
        records = backend.deliveries.page(hook.id, None, LOG_READ, None) if log_ready else []
        rows.append(Subscription(hook, health_of(records), [delivery_out(r) for r in recent_failures(records)]))
    return rows


def flash_text(flash: str | None, subject: str | None) -> str | None:
    """The message a flash code stands for (an unknown one: nothing)."""
    if flash not in FLASHES:
        return None
    return FLASHES[flash].format(id=(subject or "")[:MAX_ID])


def back_to(path: str, flash: str, subject: str) -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}{path}?{urlencode({'flash': flash, 'id': subject})}", status_code=303)


def action_failed(request: Request, viewer: Any, exc: ApiError, back: str) -> HTMLResponse:
    """An action the API refused (not found, conflict, Kafka away): its message, with a way back."""
    return page(
        request,
        viewer,
        "webhooks_refused.html",
        nav=f"{PREFIX}{back}",
        status=exc.status if 400 <= exc.status < 600 else 400,
        title="Not done",
        message=exc.message,
        back=f"{PREFIX}{back}",
    )


# what comes back after an action (any text: an unknown code shows nothing, an id is cut to MAX_ID)
Flash = Annotated[str | None, Query(description="a flash code: retry, retry-failed, promoted")]
Subject = Annotated[str | None, Query(description="what the flash is about")]


@router.get("/webhooks", response_class=HTMLResponse)
async def webhooks_page(request: Request, viewer: AdminDep, flash: Flash = None, id: Subject = None) -> Response:
    """Every subscription with its delivery health and recent failures."""
    backend = backend_of(request)
    rows, problem = await attempt(subscriptions(backend))
    return page(
        request,
        viewer,
        "webhooks.html",
        nav=f"{PREFIX}/webhooks",
        title="Webhooks",
        rows=rows,
        problem=problem,
        log_ready=backend.deliveries.caught_up.is_set(),
        log_read=LOG_READ,
        flash=flash_text(flash, id),
    )


@router.post("/webhooks/{webhook_id}/deliveries/{delivery_id}/retry")
async def retry_delivery(request: Request, viewer: AdminDep, webhook_id: str, delivery_id: str) -> Response:
    """The Retry button: the same as ``POST /v1/webhooks/{id}/deliveries/{delivery_id}/retry``."""
    await checked_form(request, viewer)
    try:
        done = await backend_of(request).retry(webhook_id[:MAX_ID], delivery_id[:MAX_ID], now_ms(request))
    except ApiError as exc:
        return action_failed(request, viewer, exc, "/webhooks")
    audit(viewer.key, "webhook_retry", webhook_id=webhook_id, delivery_id=delivery_id, request_id=done.request_id)
    return back_to("/webhooks", "retry", delivery_id)


@router.post("/webhooks/{webhook_id}/retry-failed")
async def retry_failed(request: Request, viewer: AdminDep, webhook_id: str) -> Response:
    """ "Retry all failed": the same as ``POST /v1/webhooks/{id}/deliveries:retry-failed`` (the last 24 hours)."""
    await checked_form(request, viewer)
    try:
        done = await backend_of(request).retry_failed(webhook_id[:MAX_ID], now_ms(request))
    except ApiError as exc:
        return action_failed(request, viewer, exc, "/webhooks")
    audit(viewer.key, "webhook_retry_failed", webhook_id=webhook_id, request_id=done.request_id)
    return back_to("/webhooks", "retry-failed", webhook_id)


# --- models ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """What a namespace's first :data:`SAMPLE` contacts show: engagement scores and stages by contact."""

    namespace: str
    model_version: str
    taken_ms: int
    scores: dict[str, float] = field(default_factory=dict)
    stages: dict[str, str] = field(default_factory=dict)
    complete: bool = True  # the store held no more contacts than the sample
    # score groups (the model's engagement.groups): group id -> contact -> the group's score, in model order
    groups: dict[str, dict[str, float]] = field(default_factory=dict)


def take_sample(readers: Readers, now_ms: int, size: int = SAMPLE) -> Sample:
    """Read the first ``size`` contacts of ``readers``' store in key order (blocking: run it in a thread)."""
    store = readers.replica.store
    model = readers.model
    scores: dict[str, float] = {}
    stages: dict[str, str] = {}
    groups: dict[str, dict[str, float]] = {g.id: {} for g in model.groups}
    head = list(islice(iter(store), size + 1))  # one more than the sample: is there more?
    for contact_id in head[:size]:
        raw = store.get(contact_id)
        if raw is None:
            continue
        view = decode_view(raw)
        if view.merged_into is not None:
            continue
        scores[contact_id] = float(engagement_of_view(view, model, now_ms).score)
        stages[contact_id] = view.journey.stage if view.journey is not None else NO_STAGE
        for group in groups_of_view(view, model, now_ms, top=0) if groups else ():
            groups[group.id][contact_id] = float(group.score)
    return Sample(readers.namespace, model.version, now_ms, scores, stages, len(head) <= size, groups)


@dataclass
class Samples:
    """The samples of one API process, by namespace; one read at a time (two page views at once
    read once)."""

    kept: dict[str, Sample] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


async def sample_of(request: Request, readers: Readers) -> Sample:
    """The namespace's sample, read again when older than :data:`SAMPLE_TTL_MS` or its model changed
    (in a thread: some 0.3 s for 10,000 contacts)."""
    samples: Samples = request.app.state.console_model_samples  # made by console.routes.install
    async with samples.lock:
        now = now_ms(request)
        kept = samples.kept.get(readers.namespace)
        if kept is not None and kept.model_version == readers.model.version and now - kept.taken_ms < SAMPLE_TTL_MS:
            return kept
        fresh = await asyncio.to_thread(take_sample, readers, now)
        samples.kept[readers.namespace] = fresh
        return fresh


def nice_step(span: float, bins: int = 12) -> float:
    """A bin width of 1, 2 or 5 times a power of ten giving about ``bins`` bins over ``span``."""
    raw = max(span, 1e-9) / bins
    power = math.pow(10, math.floor(math.log10(raw)))
    return next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)


def quantile(ordered_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted values (the nearest rank below)."""
    return ordered_values[int(q * (len(ordered_values) - 1))]


@dataclass(frozen=True)
class Bins:
    """Histogram bins shared by every namespace: ``count`` bins of ``step`` from ``low``. Scores
    beyond the 1st and 99th percentiles of all samples are counted in the first and last bins (a
    few very high scores would otherwise squeeze everyone else into one bar)."""

    low: float
    step: float
    count: int
    clipped_below: float | None = None  # scores below this are in the first bin
    clipped_above: float | None = None  # scores above this are in the last bin

    def index(self, score: float) -> int:
        return max(0, min(self.count - 1, math.floor((score - self.low) / self.step)))


def bins_of(samples: Sequence[Sample], tail: float = 0.01) -> Bins | None:
    """The bins of :func:`histograms` (None without any score)."""
    values = sorted(s for sample in samples for s in sample.scores.values())
    if not values:
        return None
    lo, hi = quantile(values, tail), quantile(values, 1 - tail)
    if hi <= lo:
        lo, hi = values[0], values[-1]
    step = nice_step(hi - lo)
    low = math.floor(lo / step) * step
    count = max(1, math.floor((hi - low) / step) + 1)
    top = low + count * step
    return Bins(low, step, count, low if values[0] < low else None, top if values[-1] >= top else None)


def histograms(samples: Sequence[Sample], bins: Bins | None) -> dict[str, Sequence[tuple[float, float, float]]]:
    """Per namespace, ``(count, lower, upper)`` of its engagement scores in ``bins`` (the same for
    all, so the distributions compare)."""
    if bins is None:
        return {sample.namespace: [] for sample in samples}
    out: dict[str, Sequence[tuple[float, float, float]]] = {}
    for sample in samples:
        counts = Counter(bins.index(v) for v in sample.scores.values())
        out[sample.namespace] = [
            (float(counts[i]), bins.low + i * bins.step, bins.low + (i + 1) * bins.step) for i in range(bins.count)
        ]
    return out


def band_chart(samples: Sequence[Sample], bins: Bins | None) -> Markup:
    """Contacts per engagement band, a bar per namespace side by side in each band."""
    series = histograms(samples, bins)
    first = next(iter(series.values()), [])
    labels = [fmt.score(low) for _, low, _ in first]  # each band from its label to the next one
    counts = {name: [count for count, _, _ in bands] for name, bands in series.items()}
    return charts.grouped_bars(labels, counts, x_title="engagement score (each band from the value shown)")


@dataclass(frozen=True)
class Summary:
    """A namespace's sampled engagement scores in three figures."""

    median: float | None
    p90: float | None
    mean: float | None


def summary_of(sample: Sample) -> Summary:
    return summary_of_scores(sample.scores.values())


def summary_of_scores(scores: Iterable[float]) -> Summary:
    values = sorted(scores)
    if not values:
        return Summary(None, None, None)
    return Summary(statistics.median(values), quantile(values, 0.9), statistics.fmean(values))


@dataclass(frozen=True)
class Matrix:
    """For contacts in both samples, how many are in each (active stage, shadow stage)."""

    shadow: str
    rows: list[str]
    columns: list[str]
    counts: dict[tuple[str, str], int]
    both: int

    @property
    def moved(self) -> int:
        return sum(n for (a, b), n in self.counts.items() if a != b)


def ordered(stages: set[str], order: Sequence[str]) -> list[str]:
    known = [s for s in order if s in stages]
    return known + sorted(stages - set(known))


def stage_matrix(active: Sample, shadow: Sample, order: Sequence[str]) -> Matrix:
    counts: Counter[tuple[str, str]] = Counter()
    for contact_id, stage in active.stages.items():
        other = shadow.stages.get(contact_id)
        if other is not None:
            counts[(stage, other)] += 1
    rows = ordered({a for a, _ in counts}, order)
    columns = ordered({b for _, b in counts}, order)
    return Matrix(shadow.namespace, rows, columns, dict(counts), sum(counts.values()))


def stage_order(readers: Iterable[Readers]) -> list[str]:
    """The stages of the models' lifecycles, in their order (the active model's first)."""
    order: list[str] = []
    for r in readers:
        lifecycle = r.model.lifecycle
        if lifecycle is not None:
            order += [s for s in lifecycle.stages if s not in order]
    return order


def namespaces_of(request: Request) -> Namespaces:
    found: Namespaces = request.app.state.namespaces
    return found


async def shadow_progress(request: Request, spaces: Namespaces, namespace: str) -> Progress | None:
    """How far a shadow's workers have read (what Promote checks), or None when Kafka cannot say
    within :data:`PROGRESS_TIMEOUT_S` (its worker group has no coordinator until a worker joins)."""
    try:
        async with asyncio.timeout(PROGRESS_TIMEOUT_S):
            return await namespace_progress(request.app.state.settings, namespace, spaces.registry)
    except Exception:  # any failure reads as "unknown"; Promote says why
        return None


async def models_context(request: Request) -> dict[str, Any]:
    spaces = namespaces_of(request)
    out = spaces.models_out()
    live = spaces.live()
    shadows = [r.namespace for r in live[1:]]
    found = await asyncio.gather(*(shadow_progress(request, spaces, n) for n in shadows))
    progress = dict(zip(shadows, found, strict=True))
    samples: list[Sample] = []
    problems: list[str] = []
    for readers in live:
        try:
            samples.append(await sample_of(request, readers))
        except ApiError as exc:  # its store cannot be read now (a closed or unopened replica store)
            samples.append(Sample(readers.namespace, readers.model.version, now_ms(request)))
            problems.append(f"{readers.namespace}: {exc.message}")
    bins = bins_of(samples)
    order = stage_order(live)
    active = samples[0]
    matrices = [stage_matrix(active, s, order) for s in samples[1:]]
    chart = band_chart(samples, bins)
    return {
        "models": out.models,
        "samples": {s.namespace: s for s in samples},
        "summaries": {s.namespace: summary_of(s) for s in samples},
        # per namespace, each score group's summary (model order); a shadow's group is compared with
        # the active model's group of the same id
        "group_summaries": {
            s.namespace: {g: summary_of_scores(v.values()) for g, v in s.groups.items()} for s in samples
        },
        "problems": problems,
        "progress": progress,
        "chart": chart,
        "bins": bins,
        "matrices": matrices,
        "active": spaces.active().namespace,
        "sample_size": SAMPLE,
        "sample_ttl_s": SAMPLE_TTL_MS // 1000,
        "max_lag": DEFAULT_MAX_LAG,
    }


@router.get("/models", response_class=HTMLResponse)
async def models_page(request: Request, viewer: AdminDep, flash: Flash = None, id: Subject = None) -> Response:
    """The active model and the live shadows side by side, and a promote form per shadow."""
    context = await models_context(request)
    return page(
        request, viewer, "models.html", nav=f"{PREFIX}/models", title="Models", flash=flash_text(flash, id), **context
    )


@router.post("/models/promote", response_class=HTMLResponse)
async def promote(request: Request, viewer: AdminDep) -> Response:
    """Promote the shadow the form names, if the registry still shows what the page showed (the
    active namespace, the shadow's model version) and ``scorestream promote``'s checks pass."""
    form = await checked_form(request, viewer)
    namespace, version, active = (str(form.get(name) or "")[:MAX_ID] for name in ("namespace", "version", "active"))
    error: str | None = None
    if not namespace or not version or not active:
        error = "the form names no namespace, model version or active namespace: reload the page and try again"
    else:
        try:
            done = await promote_namespace(
                request.app.state.settings,
                namespace,
                now_ms=now_ms(request),
                max_lag=DEFAULT_MAX_LAG,
                expected_version=version,
                expected_active=active,
            )
        except PromotionRefused as exc:
            error = exc.message
        else:
            if done.promotion is None:
                error = f"{namespace} is already the active model"
    if error is not None:
        audit(viewer.key, "model_promote_refused", namespace=namespace, reason=error)
        context = await models_context(request)
        return page(
            request, viewer, "models.html", nav=f"{PREFIX}/models", status=409, title="Models", error=error, **context
        )
    audit(viewer.key, "model_promoted", namespace=namespace, model_version=version, previous=active)
    return back_to("/models", "promoted", namespace)
