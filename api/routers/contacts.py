"""Contacts: one or many by id from the namespace's replica (scores decayed to now), the CRM's sync
list and a contact's score and stage history from the archive.

``GET /v1/contacts/{id}`` is also answered, without FastAPI's stack, by
:meth:`api.app.ScorestreamApi.direct_get`, which calls this module's :func:`get_contact` with the
same dependencies: both answer with :class:`api.render.ContactRenderer`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from analytics import reports
from analytics.client import Store
from analytics.reports import ContactFilter
from api import archive, deps
from api.bodies import LimitedRoute
from api.deps import ActiveModel, ActiveReplica, Analytics, Clock, NamespacesDep, ReadScope, ReadyReaders
from api.errors import ApiError
from api.replica import Decoded, Replica
from schemas.api import BatchGetIn, BatchGetOut, ContactOut, Problem
from schemas.api_analytics import ContactListOut, HistoryOut
from schemas.times import ms_of as _ms

JSON = "application/json"
router = APIRouter(tags=["contacts"], route_class=LimitedRoute)


@router.get(
    "/v1/contacts/{contact_id}",
    response_model=ContactOut,
    responses={404: {"model": Problem}, 503: {"model": Problem}},
)
async def get_contact(contact_id: str, readers: ReadyReaders, clock: Clock) -> Response:
    """A contact by user id, anonymous id or email, with scores decayed to now."""
    entry = readers.replica.find(contact_id)
    if entry is None:
        raise ApiError(404, "not_found", f"no contact with id, anonymous id or email {contact_id!r}")
    return Response(readers.renderer.contact_json(entry, clock()), media_type=JSON)


@router.post(
    "/v1/contacts:batchGet",
    response_model=BatchGetOut,
    responses={404: {"model": Problem}, 413: {"model": Problem}, 503: {"model": Problem}},
)
async def batch_get(body: BatchGetIn, readers: ReadyReaders, clock: Clock, request: Request) -> Response:
    """Up to 1000 contacts at once (CRM sync); unknown ids are listed in ``not_found``. Costs one
    request of the key's read rate limit per id."""
    deps.charge(request, len(body.ids))
    now = clock()
    found: list[Decoded] = []
    missing: list[str] = []
    replica = readers.replica
    for ident in body.ids:
        entry = replica.find(ident)
        if entry is None:
            missing.append(ident)
        else:
            found.append(entry)
    return Response(readers.renderer.batch_json(found, missing, now), media_type=JSON)


@router.get("/v1/contacts", response_model=ContactListOut, dependencies=ReadScope, responses=archive.ERRORS)
async def list_contacts(
    analytics: Analytics,
    model: ActiveModel,
    clock: Clock,
    stage: Annotated[str | None, Query(description="Stage(s), comma-separated.")] = None,
    min_engagement: Annotated[
        float | None, Query(description="Engagement decayed to now (as the contact route shows it) at least this.")
    ] = None,
    segment: Annotated[str | None, Query(description="The RFM segment the worker last assigned.")] = None,
    flag: Annotated[str | None, Query(description="Contacts carrying this flag (e.g. `job_seeker`).")] = None,
    updated_since: Annotated[datetime | None, Query(description="Changed at or after (ISO 8601).")] = None,
    status: Annotated[
        Literal["active", "all"], Query(description="`all` also lists merged and deleted contacts.")
    ] = "active",
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ContactListOut:
    """The CRM's sync list from the archive, in the order changes reached it (about the order of
    change): page with `next_cursor`; keep the last one and ask again later for what changed
    since. A contact changed again after it was listed comes again; none is skipped."""
    filters = ContactFilter(
        stages=archive.names(stage),
        min_engagement=min_engagement,
        segment=segment or None,
        flag=flag or None,
        updated_since_ms=None if updated_since is None else _ms(updated_since),
        include_removed=status == "all",
    )

    after = reports.START if not cursor else archive.valid(reports.decode_cursor, cursor)

    async def query(store: Store) -> ContactListOut:
        settle = 0 if store.embedded else archive.SERVER_SETTLE_MS
        return await reports.contact_list(store, model, filters, after, limit, clock(), settle)

    return await archive.answer(analytics, query)


HISTORY_MODEL = (
    "The model whose history this is: a live namespace (its model's version), a version "
    "(`name@hash`) or a name (every version of it); default: the active model's version. After a promotion the "
    "archive holds both models' histories of the same period; `GET /v1/models` lists the versions."
)


@router.get(
    "/v1/contacts/{contact_id}/history",
    response_model=HistoryOut,
    dependencies=ReadScope,
    responses={**archive.ERRORS, 404: {"model": Problem}},
)
async def contact_history(
    contact_id: str,
    analytics: Analytics,
    active: ActiveModel,
    namespaces: NamespacesDep,
    replica: ActiveReplica,
    clock: Clock,
    from_: Annotated[datetime | None, Query(alias="from", description="Window start (default: all).")] = None,
    to: Annotated[datetime | None, Query(description="Window end, exclusive (default: now).")] = None,
    as_of: Annotated[
        datetime | None, Query(description="The instant of the as-of view (default: the window end).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Most rows of each list.")] = 1000,
    model_: Annotated[str | None, Query(alias="model", description=HISTORY_MODEL)] = None,
) -> HistoryOut:
    """Why a contact scores what it does under one model (`model`, default the active one): every
    change of its scores (with the rules and events behind it) and its stage changes in the window,
    and its scores as they were at `as_of` (what the CRM saw when it last synced). By user id,
    anonymous id or email. The stage changes are those the model announced: after a promotion,
    the new model's from the promotion's cut on (its ledger rows show its stages before it)."""
    from_ms, to_ms = archive.window(from_, to, None, clock())
    at = to_ms if as_of is None else _ms(as_of)
    chosen = model_ or active.version
    for readers in namespaces.live() if model_ else ():
        if getattr(readers, "namespace", None) == model_:  # a namespace's name: its model's version
            chosen = readers.model.version
    scoring = archive.model_of(chosen, active, namespaces.live())

    async def query(store: Store) -> HistoryOut:
        found = _replica_id(replica, contact_id)
        if found is None:
            found = await reports.resolve_contact(store, contact_id)
        if found is None:
            raise ApiError(404, "not_found", f"no contact with id, anonymous id or email {contact_id!r} in the archive")
        return await reports.history(store, scoring, found, from_ms, to_ms, at, limit, chosen)

    return await archive.answer(analytics, query)


def _replica_id(replica: Replica | None, ident: str) -> str | None:
    """The contact id the active namespace's replica knows ``ident`` by (None before it caught up)."""
    if replica is None or not replica.caught_up.is_set():
        return None
    entry = replica.find(ident)
    return None if entry is None else str(entry.view.contact_id)
