"""``GET /metrics``: the API process's Prometheus metrics (:mod:`telemetry.metrics`), the HTTP
collector's and the embedded analytics sink's included; with several API processes, the sum of
all of them. No API key (a scraper has none): open, or behind ``SCORESTREAM_METRICS_TOKEN``
(``Authorization: Bearer <token>``) when that is set; 404 with ``SCORESTREAM_METRICS_ENABLED=false``.
Not in the OpenAPI document: it is for Prometheus, not for the API's clients."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.bodies import LimitedRoute
from api.deps import SettingsDep
from api.errors import ApiError
from telemetry import metrics

router = APIRouter(tags=["metrics"], route_class=LimitedRoute)


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request, settings: SettingsDep) -> Response:
    """The Prometheus text exposition of this process (of every API process)."""
    if not settings.metrics_enabled:
        raise ApiError(404, "not_found", "metrics are off (SCORESTREAM_METRICS_ENABLED=false)")
    if settings.metrics_token is not None:
        expected = f"Bearer {settings.metrics_token.get_secret_value()}".encode()
        if not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
            raise ApiError(401, "unauthorized", "GET /metrics needs Authorization: Bearer <SCORESTREAM_METRICS_TOKEN>")
    metrics.announce("api", settings.app_id)
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)
