"""The API's errors: one root, :class:`ApiError`, answered as RFC 9457 problem details.

Every error the API answers on purpose is an :class:`ApiError`, answered with its status as
``application/problem+json`` (``WWW-Authenticate: Bearer`` on a 401, and the error's own
``headers``, e.g. ``Retry-After``)::

    {"type": "/problems/not_found", "title": "Not found", "status": 404,
     "detail": "no contact with id, anonymous id or email 'x'", "instance": "/v1/contacts/x",
     "code": "not_found", "request_id": "8c3f..."}

``type`` is ``/problems/<code>``, a page the API serves (:mod:`api.routers.problems`) saying what
the code means, from :data:`PROBLEM_TYPES`; ``code`` is the same stable machine code, for clients
that branch on it; ``instance`` the request's path; ``request_id`` the request's id
(:data:`telemetry.context.request_id`, also in the ``X-Request-ID`` header and the log lines).
An invalid request (422 ``invalid_request``) lists every error in ``errors``: each with
``detail``, ``type`` (pydantic's), ``loc`` and a JSON pointer into the body (``pointer``) or the
parameter's name and where it is (``parameter``, ``in``). :class:`ApiError` is an
:class:`rfc9457.Problem` (``title``, ``type``, ``detail``, ``status``, extension members), so
:meth:`~rfc9457.Problem.marshal` writes the body's core::

    ApiError                      status, code, message (a route raises it directly)
    ├── InvalidRequest            422 invalid_request with ``errors`` (FastAPI's validation errors)
    ├── UnknownModel              404 unknown_model: ``?model=`` names no live namespace (api.namespaces)
    ├── AnalyticsUnavailable      503 not_ready: the archive cannot be read from here (api.archive)
    ├── WriteFailed               503 unavailable: a webhook topic write failed (api.webhook_store)
    ├── NotVisible                503 unavailable: a webhook write not read back in time (api.webhook_store)
    ├── StoreError                503 not_ready: the view store cannot be read or written as asked (api.view_store)
    └── StepFailed                a regulation's step that did not complete: its store's detail, never answered (api.regulations)

The webhook routes catch the last two to say what was being written (and to answer anyway when
the answer shows a new signing secret); the analytics routes map the archive's own errors (bad
parameters, ClickHouse unreachable or not migrated, too many queries at once) in one place,
:func:`api.archive.answer`. FastAPI's and Starlette's own refusals are answered the same way: an
unknown path 404 ``not_found``, a wrong method 405 ``method_not_allowed`` (with ``Allow``), a body
that cannot be read 400 ``bad_request``. Anything else is a bug: 500 ``internal_error``, whose body
says nothing of the exception but its request id; the traceback is logged with it.
:func:`problem_openapi` makes the OpenAPI document say all this.

The Segment-compatible collector (``/v1/track``, ``/v1/batch``, ...) answers in Segment's shape,
not this one (:mod:`collector.service`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from rfc9457 import Problem
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

from schemas.api import Problem as ProblemModel
from schemas.api import ValidationProblem
from telemetry.context import request_id

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "/problems/"  # a code's type URI is this and the code (relative: resolved against the API)


@dataclass(frozen=True)
class ProblemType:
    """What a code means: its ``title`` (the same for every occurrence), the usual ``status``, and
    ``about`` (what happened and what to do), the text of its ``/problems/<code>`` page."""

    title: str
    status: int
    about: str


PROBLEM_TYPES: dict[str, ProblemType] = {
    "bad_request": ProblemType(
        "Bad request",
        400,
        "The request could not be read (a body that is not what its content type says, a "
        "malformed header). Fix the request; retrying it unchanged fails the same way.",
    ),
    "unauthorized": ProblemType(
        "Unauthorized",
        401,
        "No API key, or one the API does not know. Send `Authorization: Bearer <api key>` "
        "(the answer carries `WWW-Authenticate: Bearer`).",
    ),
    "insufficient_scope": ProblemType(
        "Insufficient scope",
        403,
        "The API key is valid but lacks the scope the route needs (`read`, `write` or "
        "`admin`; the detail names it). Use a key with that scope.",
    ),
    "not_found": ProblemType(
        "Not found", 404, "No such resource (contact, account, webhook, delivery), or no route at this path."
    ),
    "unknown_model": ProblemType(
        "Unknown model", 404, "`?model=` names no live model namespace or model version; `GET /v1/models` lists them."
    ),
    "method_not_allowed": ProblemType(
        "Method not allowed", 405, "The route exists but not with this method; the `Allow` header lists its methods."
    ),
    "conflict": ProblemType(
        "Conflict", 409, "The request conflicts with the resource's current state (the detail says how)."
    ),
    "payload_too_large": ProblemType(
        "Payload too large",
        413,
        "The request body is larger than the API reads (`SCORESTREAM_API_MAX_BODY_BYTES`, "
        "1 MiB by default); nothing beyond the limit was read. Send less per request.",
    ),
    "invalid_request": ProblemType(
        "Invalid request",
        422,
        "The path, query or body does not fit the route: `errors` lists every problem, each "
        "with a JSON `pointer` into the body or the `parameter` it concerns, a `detail` and a `type`.",
    ),
    "invalid_url": ProblemType(
        "Invalid webhook URL",
        422,
        "The webhook URL is refused: not HTTPS, credentials in it, or a host that is or "
        "resolves to a loopback, private, link-local or metadata address.",
    ),
    "rate_limited": ProblemType(
        "Too many requests",
        429,
        "The API key spent its request budget for this scope; retry after `Retry-After` "
        "seconds (`RateLimit-*` headers say the limit and when it resets).",
    ),
    "internal_error": ProblemType(
        "Internal server error",
        500,
        "An unexpected error (a bug). The answer says nothing of it but its "
        "`request_id`: the API logged the error with it; quote it when reporting.",
    ),
    "not_ready": ProblemType(
        "Not ready",
        503,
        "What the route reads is still loading (contact state after a start, the webhook "
        "subscriptions) or cannot be reached (the analytics archive); retry shortly.",
    ),
    "not_fitted": ProblemType(
        "Not fitted", 503, "No CLV model has been fitted on the customer population yet; retry after `Retry-After`."
    ),
    "unavailable": ProblemType(
        "Unavailable",
        503,
        "A write could not be completed or confirmed (Kafka unreachable, a change saved but "
        "not read back yet); the detail says which. Retry shortly.",
    ),
    "busy": ProblemType(
        "Busy",
        503,
        "This API process already runs as many archive queries (reports, the sync list, histories) as "
        "it allows (`SCORESTREAM_REPORTS_MAX_CONCURRENT`); retry after `Retry-After` seconds.",
    ),
}
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def type_uri(code: str) -> str:
    """The ``type`` of a code's problems: its page, or ``about:blank`` for a code without one."""
    return TYPE_PREFIX + code if code in PROBLEM_TYPES else "about:blank"


def title_of(code: str, status: int) -> str:
    kind = PROBLEM_TYPES.get(code)
    if kind is not None:
        return kind.title
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class ApiError(Problem):
    """An answer other than success: ``status``, a stable machine-readable ``code``, a ``message``
    (the problem's ``detail``); ``headers`` go out with it (``Retry-After`` on a 429, for example).
    Extension members of the body are ``rfc9457.Problem`` extras (:class:`InvalidRequest`'s ``errors``)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extensions: Any
    ) -> None:
        if status == 422 and "errors" not in extensions:  # every 422 lists its errors, if only this one
            extensions["errors"] = [message_error(code, message)]
        super().__init__(
            title_of(code, status), type_=type_uri(code), detail=message, status=status, code=code, **extensions
        )
        self.args = (message,)
        self.code, self.message = code, message
        self.headers = headers  # sent with the answer

    def __str__(self) -> str:
        return self.message


class InvalidRequest(ApiError):
    """422 ``invalid_request`` listing every error (``errors``: :func:`problem_errors` of FastAPI's)."""

    def __init__(self, errors: Sequence[dict[str, Any]]) -> None:
        listed = problem_errors(errors)
        super().__init__(422, "invalid_request", summary(listed), errors=listed)


def pointer(path: Iterable[Any]) -> str:
    """A JSON pointer (RFC 6901, as a URI fragment) to ``path`` in the body."""
    return "#" + "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def message_error(code: str, message: str) -> dict[str, Any]:
    """The one entry of ``errors`` of a 422 a route raised itself: its message is ``where: what``
    (``body.url: cannot be null``, ``since: must not be in the future``) or, failing that, a whole."""
    where, sep, what = message.partition(": ")
    if not sep or not where or " " in where:
        return {"detail": message, "type": code, "loc": []}
    loc = where.split(".")
    item: dict[str, Any] = {"detail": what, "type": "value_error", "loc": loc}
    if loc[0] == "body":
        item["pointer"] = pointer(loc[1:])
    else:
        item["parameter"] = where
    return item


def problem_errors(errors: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI's (pydantic's) validation errors as the problem's ``errors``: ``detail``, ``type``,
    ``loc`` and a ``pointer`` into the body, or the ``parameter`` and where it is (``in``). The
    rejected input is not repeated (it may hold a secret)."""
    out: list[dict[str, Any]] = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        kind = str(error.get("type", "value_error"))
        item: dict[str, Any] = {"detail": str(error.get("msg", "invalid")), "type": kind, "loc": list(loc)}
        if loc[:1] == ("body",):
            item["pointer"] = "#" if kind == "json_invalid" else pointer(loc[1:])  # json_invalid's loc: a position
        elif len(loc) >= 2:
            item["parameter"], item["in"] = str(loc[1]), str(loc[0])
        out.append(item)
    return out


def where(item: dict[str, Any]) -> str:
    if "pointer" in item:
        return "body" + (item["pointer"][1:].replace("/", ".") if item["pointer"] != "#" else "")
    return str(item.get("parameter", "request"))


def summary(listed: Sequence[dict[str, Any]], shown: int = 5) -> str:
    """The problem's ``detail``: the first errors as ``where: what``, and how many more."""
    if not listed:
        return "invalid request"
    text = "; ".join(f"{where(e)}: {e['detail']}" for e in listed[:shown])
    more = len(listed) - shown
    return text + (f" (and {more} more: see errors)" if more > 0 else "")


def problem_body(exc: ApiError, instance: str | None) -> dict[str, Any]:
    """The ``application/problem+json`` body of ``exc`` (``schemas.api.Problem``)."""
    body = exc.marshal()
    body["detail"] = exc.message
    if instance is not None:
        body["instance"] = instance
    rid = request_id.get()
    if rid:
        body["request_id"] = rid
    return body


def problem_response(exc: ApiError, conn: HTTPConnection | None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.headers:
        headers = {**(headers or {}), **exc.headers}
    instance = None if conn is None else conn.scope.get("path")
    return JSONResponse(problem_body(exc, instance), status_code=exc.status, headers=headers, media_type=PROBLEM_JSON)


async def api_error(conn: HTTPConnection | None, exc: ApiError) -> JSONResponse:
    """The answer to an :class:`ApiError` (the fast path of ``GET /v1/contacts/{id}`` calls it too)."""
    return problem_response(exc, conn)


async def invalid_request(conn: HTTPConnection, exc: RequestValidationError) -> JSONResponse:
    return problem_response(InvalidRequest(exc.errors()), conn)


async def http_error(conn: HTTPConnection, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own refusals (no route, wrong method, an unreadable body)."""
    status = exc.status_code
    code = HTTP_CODES.get(status, "http_error")
    path = conn.scope.get("path", "")
    if status == 404 and exc.detail == HTTPStatus.NOT_FOUND.phrase:
        message = f"no route matches {path}"
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{conn.scope.get('method')} is not allowed on {path}" + (f"; allowed: {allowed}" if allowed else "")
    else:
        message = str(exc.detail)
    return problem_response(ApiError(status, code, message, headers=dict(exc.headers or {}) or None), conn)


async def internal_error(conn: HTTPConnection, exc: Exception) -> JSONResponse:
    """500 for an unexpected exception: logged with its traceback and the request id; the body
    names neither the exception nor its message."""
    rid = request_id.get()
    log.error(
        "unexpected error answering %s %s (request %s)",
        conn.scope.get("method"),
        conn.scope.get("path"),
        rid,
        exc_info=exc,
    )
    message = "an unexpected error occurred" + (f"; quote request id {rid} when reporting it" if rid else "")
    return problem_response(ApiError(500, "internal_error", message), conn)


def install_error_handlers(app: FastAPI) -> None:
    """Answer :class:`ApiError` (and every subclass), FastAPI's own refusals and unexpected
    exceptions as problem details, and make the OpenAPI document say so (:func:`problem_openapi`)."""
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal_error)
    app.openapi = problem_openapi(app)  # type: ignore[method-assign]


# -- the OpenAPI document -------------------------------------------------------------------------
ProblemRef = {"$ref": "#/components/schemas/Problem"}
ValidationRef = {"$ref": "#/components/schemas/ValidationProblem"}
FASTAPI_VALIDATION = "#/components/schemas/HTTPValidationError"


def problem_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` with every error answer as ``application/problem+json``: the responses the
    routes declare with ``schemas.api.Problem`` (FastAPI files them under ``application/json``)
    and FastAPI's own 422 move to that content type, with the ``Problem`` (``ValidationProblem``
    for a 422) schema; the collector's operations list none (Segment's shape, in their description)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = original()  # FastAPI's, cached in app.openapi_schema: completed in place below
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for model in (ProblemModel, ValidationProblem):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in schema.pop("$defs", {}).items():
                schemas.setdefault(name, sub)
            schemas[model.__name__] = schema
        for operations in doc.get("paths", {}).values():
            for operation in operations.values():
                _problem_responses(operation.get("responses", {}), "collector" in operation.get("tags", ()))
        if not _mentions(doc.get("paths", {}), FASTAPI_VALIDATION):
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
        return doc

    return openapi


def _problem_responses(responses: dict[str, Any], segment: bool) -> None:
    """Error answers as problems; a collector's operation (``segment``) loses them instead: its
    errors are Segment's shape, which its description states."""
    for status, response in list(responses.items()):
        content = response.get("content", {})
        schema = content.get("application/json", {}).get("schema", {})
        ref = schema.get("$ref", "")
        if not status.isdigit() or int(status) < 400 or ref not in (ProblemRef["$ref"], FASTAPI_VALIDATION):
            continue
        if segment:
            del responses[status]
            continue
        del content["application/json"]
        content[PROBLEM_JSON] = {"schema": ValidationRef if status == "422" else ProblemRef}
        if response.get("description") in ("Validation Error", "Additional Response"):
            response["description"] = title_of(HTTP_CODES.get(int(status), ""), int(status))


def _mentions(node: Any, ref: str) -> bool:
    if isinstance(node, dict):
        return node.get("$ref") == ref or any(_mentions(v, ref) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(v, ref) for v in node)
    return False
