"""FastAPI app: contacts, batch get, model, health. Every route but health needs an API key."""

import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.replica import Replica
from schemas.api import (
    BatchGetIn,
    BatchGetOut,
    ContactOut,
    ErrorBody,
    Health,
    ModelOut,
    contact_out,
    model_out,
)
from schemas.model_file import load_model
from schemas.settings import Settings
from scorestream import Model

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def now_ms() -> int:
    return int(time.time() * 1000)


def create_api(
    settings: Settings, model: Model | None = None, replica: Replica | None = None, clock: Callable[[], int] = now_ms
) -> FastAPI:
    """Build the API. ``replica`` and ``clock`` are injectable for tests."""
    model = model or load_model(settings.model)
    replica = replica or Replica(
        bootstrap=settings.kafka_bootstrap,
        changelog_topic=settings.changelog_topic("contacts"),
        status_topic=settings.status_topic,
    )
    keys = [k.get_secret_value().encode() for k in settings.api_keys]
    bearer = HTTPBearer(auto_error=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await replica.start()
        try:
            yield
        finally:
            await replica.stop()

    app = FastAPI(
        title="scorestream",
        version="1",
        description="Real-time engagement and fit scores for contacts, read from a replica of the worker's state.",
        lifespan=lifespan,
        responses={401: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    )
    app.state.replica = replica
    app.state.model = model

    def authorise(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if not keys:
            raise ApiError(401, "unauthorized", "no API keys are configured (set SCORESTREAM_API_KEYS)")
        if creds is None or creds.scheme.lower() != "bearer":
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <api key>'")
        given = creds.credentials.encode()
        if not any(hmac.compare_digest(given, k) for k in keys):
            raise ApiError(401, "unauthorized", "unknown API key")

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
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

    def require_ready() -> None:
        if not replica.caught_up.is_set():
            raise ApiError(503, "not_ready", "the API is still loading contact state; retry shortly")

    guarded: list[Any] = [Depends(authorise), Depends(require_ready)]

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    async def readyz() -> Any:
        """Ready once the replica has caught up with the table and a worker has recovered its tables."""
        detail = {
            "replica_caught_up": replica.caught_up.is_set(),
            "contacts": len(replica.states),
            "workers_ready": replica.ready_workers,
            "error": replica.error,
        }
        if replica.caught_up.is_set() and replica.ready_workers:
            return Health(status="ready", detail=detail)
        return JSONResponse(Health(status="not_ready", detail=detail).model_dump(), status_code=503)

    @app.get(
        "/v1/contacts/{contact_id}",
        response_model=ContactOut,
        dependencies=guarded,
        tags=["contacts"],
        responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    async def get_contact(contact_id: str) -> ContactOut:
        """A contact by user id, anonymous id or email, with scores decayed to now."""
        state = replica.lookup(contact_id)
        if state is None:
            raise ApiError(404, "not_found", f"no contact with id, anonymous id or email {contact_id!r}")
        return contact_out(state, model, clock())

    @app.post("/v1/contacts:batchGet", response_model=BatchGetOut, dependencies=guarded, tags=["contacts"])
    async def batch_get(body: BatchGetIn) -> BatchGetOut:
        """Up to 1000 contacts at once (CRM sync); unknown ids are listed in ``not_found``."""
        now = clock()
        found: list[ContactOut] = []
        missing: list[str] = []
        for ident in body.ids:
            state = replica.lookup(ident)
            if state is None:
                missing.append(ident)
            else:
                found.append(contact_out(state, model, now))
        return BatchGetOut(contacts=found, not_found=missing)

    @app.get("/v1/model", response_model=ModelOut, dependencies=[Depends(authorise)], tags=["model"])
    async def get_model() -> ModelOut:
        """The active scoring model and its version id."""
        return model_out(model)

    return app
