"""What the routes read, as FastAPI dependencies, from ``app.state`` (set by :func:`api.app.create_api`).

``app.state`` holds the process's parts: ``settings``, ``clock``, ``api_keys`` (:class:`~api.keys.KeyRing`),
``rate_limits`` (:class:`~api.limits.RateLimits`), ``namespaces``
(every live model namespace's readers, :mod:`api.namespaces`), ``webhooks`` (the
:class:`~api.webhook_backend.WebhookBackend`), ``analytics`` (how the archive is reached,
:func:`api.archive.analytics_store`), ``collector`` and ``sink``; and the active namespace's
readers, ``model``, ``replica``, ``population`` and ``accounts`` (they follow promotions). Tests
inject their readers through ``create_api``'s arguments, or replace an attribute of ``app.state``.

Every route but health's, the docs' and the collector's declares the scope its key needs, through
one of :data:`ReadScope`, :data:`WriteScope`, :data:`AdminScope` (a router's or route's
``dependencies=``) or the readers it takes (:data:`AuthorisedReaders`, :data:`ReadyReaders`: the
read scope); each checks the key (401 / 403, :class:`api.keys.KeyRing`) and spends the key's rate
limit for that scope (429, :class:`api.limits.RateLimits`), and leaves the key in the request's
scope (:data:`API_KEY`) for what comes after (``batchGet`` spends one more per id beyond the first).

Dependencies are ``async def``: a plain ``def`` is run in the threadpool, per request. Each costs
per request, so the contact routes have two: :func:`ready_readers` (authorisation and rate limit,
then the namespace and its readiness, in one) and :func:`clock`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from api.archive import StoreGetter
from api.audit import audit
from api.audit import route_of as audit_route
from api.errors import ApiError
from api.keys import KeyRing
from api.limits import RateLimits
from api.namespaces import Namespaces, Readers
from api.population_reader import PopulationReader
from api.replica import Replica
from api.webhook_backend import WebhookBackend
from api.webhook_store import LazyProducer
from collector.service import Collector
from schemas.api_keys import KeyEntry
from schemas.settings import Settings
from scorestream import Model

bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
ModelParam = Annotated[
    str | None,
    Query(
        alias="model",
        description="A model namespace or model version (`name@hash`), as `GET /v1/models` lists them; "
        "default: the active one.",
    ),
]


API_KEY = "scorestream.api_key"  # the request scope's entry: the caller's KeyEntry, once authorised


def check_key(conn: HTTPConnection, creds: HTTPAuthorizationCredentials | None, scope: str) -> KeyEntry:
    """The caller's key if it holds ``scope`` (else 401 / 403), charged one request of its
    ``scope`` rate limit (else 429); left in the request's scope as :data:`API_KEY`. A request
    without a valid key is charged to its client address when that limit is on (429 beyond)."""
    state = conn.app.state
    try:
        key: KeyEntry = state.api_keys.authorise(creds, scope)
    except ApiError as refused:
        if refused.status == 401:
            state.rate_limits.charge_address(conn.client.host if conn.client else "unknown")
        raise
    state.rate_limits.charge(key, scope)
    conn.scope[API_KEY] = key
    return key


def charge(conn: HTTPConnection, cost: int, scope: str = "read") -> None:
    """Make the authorised caller's request cost ``cost`` of its ``scope`` rate limit in all
    (its dependency spent one already; 429 when over)."""
    key: KeyEntry | None = conn.scope.get(API_KEY)
    if key is not None:  # None: the route's key dependency was overridden (tests)
        limits: RateLimits = conn.app.state.rate_limits
        limits.charge(key, scope, cost, paid=1)


def caller(conn: HTTPConnection, creds: HTTPAuthorizationCredentials | None) -> KeyEntry | None:
    """The valid key ``creds`` presents, any scope, or None (no error: for public routes that
    show more to a caller with a key)."""
    keys: KeyRing = conn.app.state.api_keys
    return keys.find(creds)


async def require_read(conn: HTTPConnection, creds: Credentials) -> None:
    """The request carries an API key with the ``read`` scope (``Authorization: Bearer <key>``)."""
    check_key(conn, creds, "read")


async def require_write(conn: HTTPConnection, creds: Credentials) -> None:
    """The request carries an API key with the ``write`` scope."""
    check_key(conn, creds, "write")


async def require_admin(conn: HTTPConnection, creds: Credentials) -> None:
    """The request carries an API key with the ``admin`` scope; audited (:mod:`api.audit`: the
    key's name, the route's template and method, never the path or the key)."""
    key = check_key(conn, creds, "admin")
    audit(key, "admin_request", route=audit_route(conn), method=conn.scope.get("method"))


async def namespaces(conn: HTTPConnection) -> Namespaces:
    found: Namespaces = conn.app.state.namespaces
    return found


async def readers(conn: HTTPConnection, model_: ModelParam = None) -> Readers:
    """The readers of the namespace ``?model=`` names (404 ``unknown_model``), else the active one's."""
    picked: Readers = conn.app.state.namespaces.pick(model_)
    return picked


async def authorised_readers(conn: HTTPConnection, creds: Credentials, model_: ModelParam = None) -> Readers:
    """:func:`require_read`, then :func:`readers` (one dependency: each costs per request)."""
    check_key(conn, creds, "read")
    return await readers(conn, model_)


async def ready_readers(conn: HTTPConnection, creds: Credentials, model_: ModelParam = None) -> Readers:
    """:func:`authorised_readers` whose contacts replica has caught up (else 503 ``not_ready``)."""
    check_key(conn, creds, "read")
    state = conn.app.state
    found: Readers = state.namespaces.pick(model_) if model_ else state.namespaces.active()
    if not found.replica.caught_up.is_set():
        of = f" of model namespace {found.namespace}" if model_ else ""
        raise ApiError(503, "not_ready", f"the API is still loading contact state{of}; retry shortly")
    return found


async def settings(conn: HTTPConnection) -> Settings:
    found: Settings = conn.app.state.settings
    return found


async def clock(conn: HTTPConnection) -> Callable[[], int]:
    """The time in epoch milliseconds (tests fix it)."""
    found: Callable[[], int] = conn.app.state.clock
    return found


async def active_model(conn: HTTPConnection) -> Model:
    """The active namespace's model (it follows promotions)."""
    found: Model = conn.app.state.model
    return found


async def active_replica(conn: HTTPConnection) -> Replica | None:
    """The active namespace's contacts replica."""
    found: Replica | None = getattr(conn.app.state, "replica", None)
    return found


async def active_population(conn: HTTPConnection) -> PopulationReader | None:
    """The active namespace's population model reader."""
    found: PopulationReader | None = getattr(conn.app.state, "population", None)
    return found


async def webhook_backend(conn: HTTPConnection) -> WebhookBackend:
    found: WebhookBackend = conn.app.state.webhooks
    return found


async def analytics(conn: HTTPConnection) -> StoreGetter:
    """How this process reaches the archive (``app.state.analytics``, replaced by tests)."""
    found: StoreGetter = conn.app.state.analytics
    return found


async def collector(conn: HTTPConnection) -> Collector:
    found: Collector = conn.app.state.collector
    return found


async def event_writer(conn: HTTPConnection) -> LazyProducer:
    """The producer of the API's own events on the ``crm`` source topic (manual adjustments;
    ``app.state.event_writer``, started on first use; tests replace it)."""
    found: LazyProducer = conn.app.state.event_writer
    return found


# a router's or route's ``dependencies=``: the scope its key needs
ReadScope = [Depends(require_read)]
WriteScope = [Depends(require_write)]
AdminScope = [Depends(require_admin)]
NamespacesDep = Annotated[Namespaces, Depends(namespaces)]
ReadersDep = Annotated[Readers, Depends(readers)]
AuthorisedReaders = Annotated[Readers, Depends(authorised_readers)]
ReadyReaders = Annotated[Readers, Depends(ready_readers)]
SettingsDep = Annotated[Settings, Depends(settings)]
Clock = Annotated[Callable[[], int], Depends(clock)]
ActiveModel = Annotated[Model, Depends(active_model)]
ActiveReplica = Annotated[Replica | None, Depends(active_replica)]
ActivePopulation = Annotated[PopulationReader | None, Depends(active_population)]
Webhooks = Annotated[WebhookBackend, Depends(webhook_backend)]
Analytics = Annotated[StoreGetter, Depends(analytics)]
CollectorDep = Annotated[Collector, Depends(collector)]
EventWriter = Annotated[LazyProducer, Depends(event_writer)]
