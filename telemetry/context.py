"""The request being served, for the log lines and error bodies written while serving it.

The API's outermost layer sets :data:`request_id` for each HTTP request (from ``X-Request-ID``, or a
new one); everything below reads it (problem bodies, log records) without being handed it."""

from __future__ import annotations

from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("scorestream_request_id", default=None)
