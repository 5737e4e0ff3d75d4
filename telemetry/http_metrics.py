"""The API's request latency histogram, observed once per HTTP request by :mod:`telemetry.access`.

Served with the other families on the API's ``/metrics`` (:mod:`telemetry.metrics`). Its labels are
bounded: ``method`` (the HTTP methods the API knows, else ``other``), ``route`` (the route
template, such as ``/v1/contacts/{contact_id}``, never the raw path; ``unmatched`` for a path no
route serves) and ``status``."""

from __future__ import annotations

from prometheus_client import Histogram

# an API answer takes from a fraction of a millisecond (a contact from the view store) to seconds
# (a report over the archive)
REQUEST_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
API_REQUEST_DURATION = Histogram(
    "scorestream_api_request_duration_seconds",
    "Time from an HTTP request's arrival to the end of its answer, by method, route template and status.",
    ["method", "route", "status"],
    buckets=REQUEST_SECONDS,
)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
