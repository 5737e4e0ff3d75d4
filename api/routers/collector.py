"""The collector's routes (Segment's HTTP Tracking API), declared for the OpenAPI document and for
requests the full stack serves. They hand every request to the process's
:class:`~collector.service.Collector` (``app.state.collector``), whose logic lives in
:mod:`collector.service`; :class:`api.app.ScorestreamApi` normally sends these paths to it
directly, without FastAPI's stack."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response

from api.deps import CollectorDep
from collector.service import PATHS, ClientGone

SUMMARIES = {
    "/v1/track": "Record an action (Segment track)",
    "/v1/identify": "Tie a user to their traits (Segment identify)",
    "/v1/page": "Record a page view (Segment page)",
    "/v1/screen": "Record a mobile screen view (Segment screen)",
    "/v1/group": "Tie a user to an account (Segment group)",
    "/v1/alias": "Merge two identities (Segment alias)",
    "/v1/batch": "Up to 2,500 messages of any type (Segment batch)",
}
DESCRIPTION = (
    "Segment HTTP Tracking API. Auth: a write key as the Basic-auth user name (empty password) or "
    '`writeKey` in the body; no API key. 200 `{"success": true}` once Kafka acknowledged the records; '
    "400 invalid or over a limit, 401 write key, 403 `channel_not_allowed` (a channel the write key may not "
    "send to), 429 / 503 with Retry-After."
)
BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}
router = APIRouter()


def endpoint_for(path: str) -> Callable[..., Awaitable[Response]]:
    """The route of ``path``: the collector's answer to any method (a ``POST``, a CORS preflight, 405)."""

    async def collect(request: Request, collector: CollectorDep) -> Response:
        try:
            reply = await collector.respond(request.method, path, request.headers.raw, request.receive)
        except ClientGone:
            return Response(status_code=499)
        return Response(reply.body, reply.status, headers={k.decode(): v.decode() for k, v in reply.headers})

    return collect


for _path in sorted(PATHS):
    _endpoint = endpoint_for(_path)
    router.add_api_route(
        _path,
        _endpoint,
        methods=["POST"],
        tags=["collector"],
        summary=SUMMARIES.get(_path, f"alias of {_path}"),
        description=DESCRIPTION,
        include_in_schema=_path in SUMMARIES,
        openapi_extra=BODY,
        response_model=None,
        name=f"collect_{_path.rsplit('/', 1)[-1]}",
    )
    router.add_api_route(
        _path,
        _endpoint,
        methods=["OPTIONS", "GET", "HEAD", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
        name=f"collect_other_{_path.rsplit('/', 1)[-1]}",
    )
