"""Health: ``/healthz`` (the process is up) and ``/readyz`` (it can answer); no API key (``/readyz``'s
``detail`` only for a caller with a valid key, any scope: it names topics, counts and errors)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from api.bodies import LimitedRoute
from api.deps import NamespacesDep, Webhooks, bearer, caller
from api.follow import Following
from kafka_io.reader import unreadable as unreadable_records
from schemas.api import Health

router = APIRouter(tags=["health"], route_class=LimitedRoute)


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(conn: HTTPConnection, namespaces: NamespacesDep, webhooks: Webhooks) -> Any:
    """Ready once the models registry has been read, the active namespace's replicas (contacts,
    accounts, the population model) and the webhook subscriptions have caught up with their
    topics, and a worker of the active namespace has recovered its tables. The webhook delivery
    log is reported but not waited for (its routes answer 503 until it has caught up), and so
    are the shadow namespaces (``GET /v1/models``). A reader whose task died (its name and
    exception in ``detail.failed``) makes it 503 whatever else holds; records a reader could
    not read and skipped are counted in ``detail.unreadable_records``. ``detail`` is empty
    unless the request carries a valid API key (any scope)."""
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
        "contacts": len(replica.store),
        "view_store": replica.store.role,  # memory, or on disk: writer (follows the topics) or secondary
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
    ready = not failed and caught_up and bool(replica.ready_workers)
    # the key is read here, not declared: the route stays public in the OpenAPI document
    shown = detail if caller(conn, await bearer(conn)) is not None else {}
    if ready:
        return Health(status="ready", detail=shown)
    return JSONResponse(Health(status="not_ready", detail=shown).model_dump(), status_code=503)
