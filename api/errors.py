"""The API's errors: one root, :class:`ApiError`, and the handlers that answer with it.

Every error the API answers on purpose is an :class:`ApiError` and is answered
``{"error": {"code", "message"}}`` with its status (``WWW-Authenticate: Bearer`` on a 401)::

    ApiError                      status, code, message (a route raises it directly)
    ├── UnknownModel              404 unknown_model: ``?model=`` names no live namespace (api.namespaces)
    ├── AnalyticsUnavailable      503 not_ready: the archive cannot be read from here (api.archive)
    ├── WriteFailed               503 unavailable: a webhook topic write failed (api.webhook_store)
    ├── NotVisible                503 unavailable: a webhook write not read back in time (api.webhook_store)
    └── StoreError                503 not_ready: the view store cannot be read or written as asked (api.view_store)

The webhook routes catch the last two to say what was being written (and to answer anyway when
the answer shows a new signing secret); the analytics routes map the archive's own errors (bad
parameters, ClickHouse unreachable or not migrated) in one place, :func:`api.archive.answer`.
FastAPI's own refusals are answered in the same shape: an invalid request is 422
``invalid_request`` (the first error, ``where: what``), an unknown path 404 ``not_found`` and a
wrong method 405 ``method_not_allowed``. Anything else is a bug: 500, logged by the server.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """An answer other than success: ``status``, a stable machine-readable ``code``, a ``message``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers  # sent with the answer (``Retry-After`` on a 429, for example)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The body every error of the API has (``schemas.api.ErrorBody``)."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def api_error(_: Request | None, exc: ApiError) -> JSONResponse:
    """The answer to an :class:`ApiError` (the fast path of ``GET /v1/contacts/{id}`` calls it too)."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.headers:
        headers = {**(headers or {}), **exc.headers}
    return error_response(exc.status, exc.code, exc.message, headers)


async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(422, "invalid_request", f"{where}: {first.get('msg')}")


async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


def install_error_handlers(app: FastAPI) -> None:
    """Answer :class:`ApiError` (and every subclass) and FastAPI's own refusals in the API's shape."""
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
