"""The API process's app: its parts in ``app.state``, their lifespan, the error handlers, and one
router per resource (``api/routers/``): health, contacts, models, accounts, the collector,
webhooks and reports. Every route but health and the collector's needs an API key holding the
route's scope (``read``, ``write`` or ``admin``: :mod:`api.keys`), within its rate limit
(:mod:`api.limits`); the collector takes write keys. The routes read what they need through
:mod:`api.deps`. ``/docs``, ``/redoc`` and ``/openapi.json`` are off in production unless
``SCORESTREAM_API_DOCS``.

The contact, account and model routes answer from the active model namespace, or from the one
named by ``?model=`` (a namespace or a model version; see :mod:`api.namespaces`)."""

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send

from api import deps
from api.account_replica import AccountReplica
from api.archive import Archive, analytics_store
from api.errors import ApiError, api_error, install_error_handlers
from api.keys import KeyRing
from api.limits import RateLimits
from api.namespaces import Namespaces, Readers
from api.population_reader import PopulationReader
from api.regulations import Namespace, RegulationService
from api.replica import Replica
from api.routers import ROUTERS, contacts
from api.webhook_backend import WebhookBackend
from api.webhook_store import LazyProducer
from collector.service import Collector, Publisher, collector_for
from console import routes as console
from kafka_io.clients import KafkaConnection
from schemas.api import Problem
from schemas.model_file import load_model
from schemas.settings import Settings
from scorestream import Model
from sink.service import Sink
from telemetry.access import ROUTE, RequestTelemetry

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


CONTACT_PATH = re.compile(r"^/v1/contacts/(?P<contact_id>[^/]+)$")  # Starlette's pattern for the route
CONTACT_ROUTE = "/v1/contacts/{contact_id}"  # its template (the latency histogram's label)
FastGet = Callable[[Scope, str], Awaitable[Response]]


class ScorestreamApi(FastAPI):
    """FastAPI with a direct path for ``GET /v1/contacts/{id}``, the hot route.

    FastAPI's per-request machinery (middleware stack, routing, dependency solving) cost more CPU
    than the lookup itself. A single-contact ``GET`` is dispatched straight to ``fast_get``
    (:meth:`direct_get`), which runs the route's own dependencies, endpoint and error handler
    (the same functions, in the same order), so status, headers and body are those of the
    declared route; ``tests/api`` compares the two paths. Everything else, including any request
    ``fast_get`` fails on with an unexpected error, goes through the full stack (which then
    answers and logs as usual). The declared route stays for the OpenAPI document and as that
    fallback. The collector's paths go straight to the :class:`~collector.service.Collector` (an
    ASGI app) the same way; its declared routes call the same handler. The full stack also serves
    every request while the app has middleware or dependency overrides, or FastAPI's
    OpenTelemetry instrumentation is on, and a contact ``GET`` with a query string (``?model=``
    names another namespace than the active one). :attr:`telemetry` wraps all of them (request id,
    access log line, latency histogram: :mod:`telemetry.access`), so it needs no middleware.
    """

    fast_get: FastGet | None = None
    collector: Collector | None = None
    telemetry = RequestTelemetry()  # create_api: the settings' (access log, metrics)
    _otel_cached = False
    _otel_checked = -1.0

    def _otel_on(self) -> bool:
        """Whether FastAPI's OpenTelemetry instrumentation is on; asked at most once a second
        (the question reads the environment and three global providers)."""
        now = time.monotonic()
        if now - self._otel_checked >= 1.0:
            self._otel_cached = self._native_telemetry.enabled()
            self._otel_checked = now
        return self._otel_cached

    def _plain(self, scope: Scope) -> bool:
        """Whether nothing in the full stack would change how this request is served."""
        return (
            not scope.get("root_path")
            and not self.root_path
            and not self.user_middleware
            and not self.dependency_overrides
            and not self._otel_on()
        )

    async def direct_get(self, scope: Scope, contact_id: str) -> Response:
        """:func:`api.routers.contacts.get_contact` of the active namespace (a request without a
        query string), with its dependencies and the :class:`~api.errors.ApiError` handler."""
        scope["app"] = self  # as Starlette sets it for the full stack: the dependencies read app.state
        conn = HTTPConnection(scope)
        try:
            readers = await deps.ready_readers(conn, await deps.bearer(conn))
            return await contacts.get_contact(contact_id, readers, await deps.clock(conn))
        except ApiError as exc:
            return await api_error(conn, exc)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every HTTP request through :attr:`telemetry` (request id, access log, latency: it wraps
        all three paths), then :meth:`dispatch`."""
        if scope["type"] == "http":
            await self.telemetry.serve(scope, receive, send, self.dispatch)
        else:
            await super().__call__(scope, receive, send)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The collector's paths, the direct contact path, else the full stack."""
        if (
            self.collector is not None
            and scope["type"] == "http"
            and scope["path"] in self.collector.paths
            and self._plain(scope)
        ):
            scope[ROUTE] = scope["path"]
            await self.collector(scope, receive, send)
            return
        if (
            self.fast_get is not None
            and scope["type"] == "http"
            and scope["method"] == "GET"
            and not scope.get("query_string")
            and (match := CONTACT_PATH.match(scope["path"])) is not None
            and self._plain(scope)
        ):
            try:
                response = await self.fast_get(scope, match["contact_id"])
            except Exception:
                log.debug("direct path failed; answering through the full stack", exc_info=True)
            else:
                scope[ROUTE] = CONTACT_ROUTE
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_api(
    settings: Settings,
    model: Model | None = None,
    replica: Replica | None = None,
    clock: Callable[[], int] = now_ms,
    fast_path: bool = True,
    population: PopulationReader | None = None,
    accounts: AccountReplica | None = None,
    webhooks: WebhookBackend | None = None,
    publisher: Publisher | None = None,
    sink: Sink | None = None,
    regulations: RegulationService | None = None,
) -> FastAPI:
    """Build the API. ``model`` (the default namespace's while the registry has no record of it;
    default: ``settings.model``), ``replica``, ``population`` and ``accounts`` are the default
    namespace's (``settings.app_id``); the other namespaces' readers are built as the models
    registry names them. The readers, ``webhooks``, the collector's ``publisher`` and ``clock`` are
    injectable for tests; ``fast_path=False`` serves every request through FastAPI's full stack
    (see :class:`ScorestreamApi`). ``sink``: the analytics sink this process runs in its lifespan
    (embedded chDB: the API process owns it; see :mod:`sink.service`). ``regulations``: the
    regulation service (:mod:`api.regulations`; default: one on the settings' topics)."""
    model = model or load_model(settings.model)
    default = Readers.build(
        settings.in_namespace(settings.app_id), model, replica=replica, accounts=accounts, population=population
    )
    docs = settings.env != "production" if settings.api_docs is None else settings.api_docs
    app = ScorestreamApi(
        title="scorestream",
        version="1",
        description="Real-time engagement and fit scores for contacts, read from a replica of the worker's state.",
        lifespan=_lifespan,
        responses={code: {"model": Problem} for code in (401, 403, 422, 429)},
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    state = app.state
    state.settings, state.clock, state.sink = settings, clock, sink
    state.api_keys = KeyRing(settings.api_key_entries())
    state.rate_limits = RateLimits(settings.rate_limits())
    if settings.env == "production":
        state.api_keys.warn_unscoped()
    state.webhooks = webhooks or WebhookBackend.from_settings(settings)
    state.collector = collector_for(settings, publisher, clock)
    state.event_writer = LazyProducer(KafkaConnection.of(settings))  # manual adjustments (api.routers.adjustments)
    state.analytics = analytics_store(settings, sink)

    def on_active(readers: Readers) -> None:
        """``app.state``'s readers are the active namespace's (the analytics routes use them)."""
        state.replica, state.model = readers.replica, readers.model
        state.population, state.accounts = readers.population, readers.accounts

    state.namespaces = Namespaces(settings, default, on_active)
    state.regulations = regulations or RegulationService(
        settings,
        lambda: [Namespace(r.namespace, r.replica) for r in state.namespaces.live()],
        archive=state.analytics,
        delivery_log=getattr(state.webhooks, "deliveries", None),
        clock=clock,
        ready=lambda: (
            state.namespaces.caught_up.is_set() and all(r.replica.caught_up.is_set() for r in state.namespaces.live())
        ),
    )
    # the collector drops what the privacy list restricts: the service's, current the instant it writes
    state.collector.privacy = state.regulations.privacy_list
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    console.install(app)
    app.telemetry = RequestTelemetry.from_settings(settings)
    if fast_path:
        app.fast_get = app.direct_get
        app.collector = state.collector
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the process's parts (the namespaces' readers, the webhook backend, the collector's
    producer, the analytics sink when it runs here) and stop them in reverse."""
    state = app.state
    await state.namespaces.start()
    await state.webhooks.start()
    await state.collector.start()
    if state.sink is not None:
        await state.sink.start()
    await state.regulations.start()
    # the collector publishes nothing before the privacy list is read (the service reads it)
    state.collector.privacy_ready = state.regulations.caught_up
    try:
        yield
    finally:
        await state.console_live.stop()
        await state.regulations.stop()
        if isinstance(state.analytics, Archive):  # its read clients (tests may put a plain getter there)
            await state.analytics.close()
        if state.sink is not None:
            await state.sink.stop()
        await state.collector.stop()
        await state.event_writer.stop()
        await state.webhooks.stop()
        await state.namespaces.stop()
