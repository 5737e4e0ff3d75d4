"""Request body limits on every route of the API (``SCORESTREAM_API_MAX_BODY_BYTES``).

Every router but the collector's is an ``APIRouter(route_class=LimitedRoute)``: the limit lives
in each route's own handler, not in Starlette middleware (which would turn the contact route's
direct path off, see :class:`api.app.ScorestreamApi`), and holds before FastAPI reads a byte:

- a ``Content-Length`` beyond the limit is refused before any of the body is read, on every
  route (one that takes no body too);
- a route that reads a body (FastAPI's ``body_field``) has it read here first, chunk by chunk,
  counting: a chunked body growing past the limit is refused at the chunk that crosses it, the
  rest unread; the body read is then handed to FastAPI as if it came from the client.

The refusal is 413 ``payload_too_large``, a problem like every error (:mod:`api.errors`). The
collector's routes keep Segment's own limits and error shape (500 KB a batch, 32 KB a message:
:mod:`collector.service`). ``GET /v1/contacts/{id}`` on the direct path never reads a body.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive

from api.errors import ApiError

DEFAULT_MAX_BODY_BYTES = 1_048_576
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body is larger than {limit} bytes")


def declared_length(request: Request) -> int | None:
    """The request's ``Content-Length`` (None without one); 400 ``bad_request`` if not a number."""
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise ApiError(400, "bad_request", "Content-Length is not a number") from None
    if length < 0:
        raise ApiError(400, "bad_request", "Content-Length is negative")
    return length


def max_body_bytes(request: Request) -> int:
    settings = getattr(request.app.state, "settings", None)
    return int(getattr(settings, "api_max_body_bytes", DEFAULT_MAX_BODY_BYTES))


async def read_body(receive: Receive, limit: int) -> tuple[list[Message], bool]:
    """The body's messages, refusing it (413) at the chunk that takes it past ``limit``; and
    whether it ended (False: the client left, the last message is its disconnect)."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, False
        size += len(message.get("body", b""))
        if size > limit:
            raise too_large(limit)
        if not message.get("more_body", False):
            return messages, True


def replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` giving ``messages`` (the body already read), then the client's own."""
    pending = list(reversed(messages))

    async def again() -> Message:
        return pending.pop() if pending else await receive()

    return again


class LimitedRoute(APIRoute):
    """An API route whose request body may not exceed ``SCORESTREAM_API_MAX_BODY_BYTES``."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        reads_body = self.body_field is not None

        async def limited(request: Request) -> Response:
            limit = max_body_bytes(request)
            length = declared_length(request)
            if length is not None and length > limit:
                raise too_large(limit)
            if not reads_body:
                return await handler(request)
            messages, _ = await read_body(request.receive, limit)
            return await handler(Request(request.scope, replay(messages, request.receive)))

        return limited
