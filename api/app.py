"""FastAPI app: contacts, batch get, accounts, model, webhooks, health, the analytics reads and
reports (``api.analytics``), and the HTTP collector (``collector.service``). Every route but health
and the collector's needs an API key; the collector takes write keys.

The contact, account and model routes answer from the active model namespace, or from the one
named by ``?model=`` (a namespace or a model version; see :mod:`api.namespaces`)."""

import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send

from api.accounts import AccountReplica, mount_accounts
from api.analytics import analytics_store, mount_analytics
from api.follow import Following
from api.follow import unreadable as unreadable_records
from api.namespaces import Namespaces, Readers, UnknownModel
from api.population import PopulationReader
from api.replica import Decoded, Replica
from api.webhooks import WebhookBackend, mount_webhooks
from collector.service import Collector, Publisher, collector_for, mount_collector
from schemas.api import (
    BatchGetIn,
    BatchGetOut,
    ContactOut,
    ErrorBody,
    Health,
    ModelOut,
    ModelsOut,
    model_out,
)
from schemas.model_file import load_model
from schemas.settings import Settings
from schemas.value import ClvModelOut
from scorestream import Model
from sink.service import Sink

log = logging.getLogger(__name__)
JSON = "application/json"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def now_ms() -> int:
    return int(time.time() * 1000)


CONTACT_PATH = re.compile(r"^/v1/contacts/(?P<contact_id>[^/]+)$")  # Starlette's pattern for the route
FastGet = Callable[[Scope, str], Awaitable[Response]]
ModelParam = Annotated[
    str | None,
    Query(
        alias="model",
        description="A model namespace or model version (`name@hash`), as `GET /v1/models` lists them; "
        "default: the active one.",
    ),
]


class ScorestreamApi(FastAPI):
    """FastAPI with a direct path for ``GET /v1/contacts/{id}``, the hot route.

    FastAPI's per-request machinery (middleware stack, routing, dependency solving) cost more CPU
    than the lookup itself. A single-contact ``GET`` is dispatched straight to ``fast_get``, which
    runs the route's own dependency, endpoint and error handler (the same functions, in the same
    order), so status, headers and body are those of the declared route; ``tests/api`` compares
    the two paths. Everything else, including any request ``fast_get`` fails on with an unexpected
    error, goes through the full stack (which then answers and logs as usual). The declared route
    stays for the OpenAPI document and as that fallback. The collector's paths go straight to the
    :class:`~collector.service.Collector` (an ASGI app) the same way; its declared routes call the
    same handler. The full stack also serves every request while the app has middleware or
    dependency overrides, or FastAPI's OpenTelemetry instrumentation is on, and a contact ``GET``
    with a query string (``?model=`` names another namespace than the active one).
    """

    fast_get: FastGet | None = None
    collector: Collector | None = None
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.collector is not None
            and scope["type"] == "http"
            and scope["path"] in self.collector.paths
            and self._plain(scope)
        ):
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
) -> FastAPI:
    """Build the API. ``model`` (the default namespace's while the registry has no record of it;
    default: ``settings.model``), ``replica``, ``population`` and ``accounts`` are the default
    namespace's (``settings.app_id``); the other namespaces' readers are built as the models
    registry names them. The readers, ``webhooks``, the collector's ``publisher`` and ``clock`` are
    injectable for tests; ``fast_path=False`` serves every request through FastAPI's full stack
    (see :class:`ScorestreamApi`). ``sink``: the analytics sink this process runs in its lifespan
    (embedded chDB: the API process owns it; see :mod:`sink.service`)."""
    model = model or load_model(settings.model)
    default = Readers.build(
        settings.in_namespace(settings.app_id), model, replica=replica, accounts=accounts, population=population
    )
    webhooks = webhooks or WebhookBackend.from_settings(settings)
    collector = collector_for(settings, publisher, clock)
    keys = [k.get_secret_value().encode() for k in settings.api_keys]
    bearer = HTTPBearer(auto_error=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await namespaces.start()
        await webhooks.start()
        await collector.start()
        if sink is not None:
            await sink.start()
        try:
            yield
        finally:
            if sink is not None:
                await sink.stop()
            await collector.stop()
            await webhooks.stop()
            await namespaces.stop()

    app = ScorestreamApi(
        title="scorestream",
        version="1",
        description="Real-time engagement and fit scores for contacts, read from a replica of the worker's state.",
        lifespan=lifespan,
        responses={401: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    )

    def on_active(readers: Readers) -> None:
        """``app.state``'s readers are the active namespace's (the analytics routes use them)."""
        app.state.replica = readers.replica
        app.state.model = readers.model
        app.state.population = readers.population
        app.state.accounts = readers.accounts

    namespaces = Namespaces(settings, default, on_active)
    app.state.namespaces = namespaces
    app.state.webhooks = webhooks
    app.state.sink = sink

    def check_key(creds: HTTPAuthorizationCredentials | None) -> None:
        if not keys:
            raise ApiError(401, "unauthorized", "no API keys are configured (set SCORESTREAM_API_KEYS)")
        if creds is None or creds.scheme.lower() != "bearer":
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <api key>'")
        given = creds.credentials.encode()
        if not any(hmac.compare_digest(given, k) for k in keys):
            raise ApiError(401, "unauthorized", "unknown API key")

    # Dependencies are ``async def`` (a plain ``def`` is run in the threadpool, per request) and the
    # contact routes have one (authorisation, then readiness): each dependency costs per request.
    async def authorise(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        check_key(creds)

    def pick(name: str | None) -> Readers:
        try:
            return namespaces.pick(name)
        except UnknownModel as exc:
            raise ApiError(404, "unknown_model", str(exc)) from None

    async def authorised_readers(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)], model_: ModelParam = None
    ) -> Readers:
        check_key(creds)
        return pick(model_)

    async def ready_readers(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)], model_: ModelParam = None
    ) -> Readers:
        check_key(creds)
        readers = pick(model_) if model_ else namespaces.active()
        if not readers.replica.caught_up.is_set():
            of = f" of model namespace {readers.namespace}" if model_ else ""
            raise ApiError(503, "not_ready", f"the API is still loading contact state{of}; retry shortly")
        return readers

    @app.exception_handler(ApiError)
    async def _api_error(_: Request | None, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, "invalid_request", f"{where}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    Ready = Annotated[Readers, Depends(ready_readers)]
    Authorised = Annotated[Readers, Depends(authorised_readers)]

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    async def readyz() -> Any:
        """Ready once the models registry has been read, the active namespace's replicas (contacts,
        accounts, the population model) and the webhook subscriptions have caught up with their
        topics, and a worker of the active namespace has recovered its tables. The webhook delivery
        log is reported but not waited for (its routes answer 503 until it has caught up), and so
        are the shadow namespaces (``GET /v1/models``). A reader whose task died (its name and
        exception in ``detail.failed``) makes it 503 whatever else holds; records a reader could
        not read and skipped are counted in ``detail.unreadable_records``."""
        active = namespaces.active()
        replica, accounts, population = active.replica, active.accounts, active.population
        caught_up = (
            namespaces.caught_up.is_set()
            and replica.caught_up.is_set()
            and accounts.caught_up.is_set()
            and population.caught_up.is_set()
            and webhooks.store.caught_up.is_set()
        )
        detail = {
            "namespace": active.namespace,
            "registry_caught_up": namespaces.caught_up.is_set(),
            "replica_caught_up": replica.caught_up.is_set(),
            "accounts_caught_up": accounts.caught_up.is_set(),
            "population_caught_up": population.caught_up.is_set(),
            "webhooks_caught_up": webhooks.store.caught_up.is_set(),
            "deliveries_caught_up": webhooks.deliveries.caught_up.is_set(),
            "contacts": len(replica.states),
            "workers_ready": replica.ready_workers,
            "error": namespaces.error or active.error or webhooks.store.error,
            "unreadable_records": dict(unreadable_records),
        }
        # a reader whose task died no longer follows its topic: what it serves goes stale
        failed = namespaces.failures() + [
            f for r in (webhooks.store, webhooks.deliveries) if isinstance(r, Following) and (f := r.failure)
        ]
        if failed:
            detail["failed"] = failed
            detail["error"] = "reader stopped: " + "; ".join(failed)
            return JSONResponse(Health(status="not_ready", detail=detail).model_dump(), status_code=503)
        if caught_up and replica.ready_workers:
            return Health(status="ready", detail=detail)
        return JSONResponse(Health(status="not_ready", detail=detail).model_dump(), status_code=503)

    @app.get(
        "/v1/contacts/{contact_id}",
        response_model=ContactOut,
        tags=["contacts"],
        responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    async def get_contact(contact_id: str, readers: Ready) -> Response:
        """A contact by user id, anonymous id or email, with scores decayed to now."""
        entry = readers.replica.find(contact_id)
        if entry is None:
            raise ApiError(404, "not_found", f"no contact with id, anonymous id or email {contact_id!r}")
        return Response(readers.renderer.contact_json(entry, clock()), media_type=JSON)

    @app.post(
        "/v1/contacts:batchGet",
        response_model=BatchGetOut,
        tags=["contacts"],
        responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    async def batch_get(body: BatchGetIn, readers: Ready) -> Response:
        """Up to 1000 contacts at once (CRM sync); unknown ids are listed in ``not_found``."""
        now = clock()
        found: list[Decoded] = []
        missing: list[str] = []
        replica = readers.replica
        for ident in body.ids:
            entry = replica.find(ident)
            if entry is None:
                missing.append(ident)
            else:
                found.append(entry)
        return Response(readers.renderer.batch_json(found, missing, now), media_type=JSON)

    async def fast_get(scope: Scope, contact_id: str) -> Response:
        """``get_contact`` of the active namespace (a request without a query string)."""
        try:
            readers = await ready_readers(await bearer(HTTPConnection(scope)))
            return await get_contact(contact_id, readers)
        except ApiError as exc:
            return await _api_error(None, exc)

    if fast_path:
        app.fast_get = fast_get

    @app.get("/v1/model", response_model=ModelOut, tags=["model"], responses={404: {"model": ErrorBody}})
    async def get_model(readers: Authorised) -> ModelOut:
        """The active scoring model (or the one of ``model``) and its version id."""
        return model_out(readers.model)

    @app.get("/v1/models", response_model=ModelsOut, dependencies=[Depends(authorise)], tags=["model"])
    async def list_models() -> ModelsOut:
        """Every live model namespace: the active one (what the API answers with by default and the
        public triggers carry) and the shadows (``?model=<namespace>``), with their model version,
        when they were registered and promoted, and how far this API has read their state."""
        return namespaces.models_out()

    @app.get(
        "/v1/models/clv",
        response_model=ClvModelOut,
        tags=["model"],
        responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    async def get_clv_model(readers: Authorised) -> Any:
        """The CLV model fitted on the customer population (BG/NBD, Gamma-Gamma) and the RFM quintile
        boundaries. 503 ``not_fitted`` until the first successful fit."""
        population = readers.population
        body = population.clv_model_body()
        if body is None:
            current = population.model
            seen = "no population model yet" if current is None else f"{current.customers} customers so far"
            reason = "" if current is None or current.fit_error is None else f" ({current.fit_error})"
            return _error(
                503,
                "not_fitted",
                f"no CLV model has been fitted yet: {seen}{reason}; the population is refreshed every "
                f"{settings.population_interval_s:g} s",
                headers={"Retry-After": str(max(1, round(settings.population_interval_s)))},
            )
        return body

    async def account_readers(model_: ModelParam = None) -> tuple[AccountReplica, Model]:
        readers = pick(model_)
        return readers.accounts, readers.model

    mount_accounts(app, account_readers, [Depends(authorise)], clock)
    mount_collector(app, collector)
    if fast_path:
        app.collector = collector
    mount_webhooks(app, webhooks, settings, [Depends(authorise)], clock, ApiError)
    mount_analytics(app, analytics_store(settings, sink), model, [Depends(authorise)], clock, ApiError)
    return app
