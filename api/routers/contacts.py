"""Contacts: one or many by id from the namespace's replica (scores decayed to now), the CRM's sync
list and a contact's score and stage history from the archive, and a person's export (everything
held about them: ``GET /v1/contacts/{id}/export``).

``GET /v1/contacts/{id}`` is also answered, without FastAPI's stack, by
:meth:`api.app.ScorestreamApi.direct_get`, which calls this module's :func:`get_contact` with the
same dependencies: both answer with :class:`api.render.ContactRenderer`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from analytics import privacy, reports
from analytics.client import Store
from analytics.reports import ContactFilter
from api import archive, deps
from api.audit import audit
from api.bodies import LimitedRoute
from api.deps import (
    ActiveModel,
    ActivePopulation,
    ActiveReplica,
    AdminScope,
    Analytics,
    Clock,
    NamespacesDep,
    ReadScope,
    ReadyReaders,
)
from api.errors import ApiError
from api.population_reader import PopulationReader
from api.replica import Decoded, Replica
from schemas.api import BatchGetIn, BatchGetOut, ContactOut, Problem
from schemas.api_analytics import ContactListOut, HistoryOut
from schemas.api_interests import interests_out
from schemas.api_privacy import ExportArchive, ExportIdentity, ExportOut
from schemas.times import ms_of as _ms
from scorestream import Model
from scorestream.privacy import contact_key
from scorestream.rfm import RfmBoundaries
from scorestream.view import ContactView

JSON = "application/json"
RFM_SCORE = (
    "Customers whose {} score is this (1-5), under the current population boundaries, as the cells of "
    "`GET /v1/reports/rfm`; 503 before there are boundaries."
)
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
    population: ActivePopulation,
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
    rfm_r: Annotated[int | None, Query(ge=1, le=5, description=RFM_SCORE.format("R (5 = most recent)"))] = None,
    rfm_f: Annotated[int | None, Query(ge=1, le=5, description=RFM_SCORE.format("F (5 = most orders)"))] = None,
    group: Annotated[
        str | None,
        Query(
            description="A score group of the active model (`GET /v1/model` lists them): contacts with points in it."
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        Query(
            description="With `group`: the group's score decayed to now (as the contact route shows it) at least this."
        ),
    ] = None,
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
        rfm_r=rfm_r,
        rfm_f=rfm_f,
        rfm_boundaries=_boundaries(population) if rfm_r or rfm_f else None,
        group=group or None,
        min_score=min_score,
    )
    archive.valid(reports.group_filter, filters, model)

    after = reports.START if not cursor else archive.valid(reports.decode_cursor, cursor)

    async def query(store: Store) -> ContactListOut:
        settle = 0 if store.embedded else archive.SERVER_SETTLE_MS
        return await reports.contact_list(store, model, filters, after, limit, clock(), settle)

    return await archive.answer(analytics, query)


def _boundaries(population: PopulationReader | None) -> RfmBoundaries:
    """The RFM boundaries the R / F filters score against, as ``GET /v1/reports/rfm``'s grid: 503
    before the workers published a population model."""
    current = population.model if population is not None else None
    if current is None or current.boundaries is None:
        raise ApiError(
            503, "not_ready", "no RFM boundaries yet (the workers publish them once there are customers); retry later"
        )
    return current.boundaries


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


# --- export (right of access) ------------------------------------------------------------------

EXPORT_LIMIT_DESCRIPTION = "Most rows of each archive list (events, ledger, ...); `archive.truncated` names those cut."


@router.get(
    "/v1/contacts/{contact_id}/export",
    response_model=ExportOut,
    dependencies=AdminScope,
    responses={404: {"model": Problem}, 503: {"model": Problem}},
)
async def export_contact(
    contact_id: str,
    request: Request,
    readers: ReadyReaders,
    analytics: Analytics,
    clock: Clock,
    limit: Annotated[int, Query(ge=1, le=100_000, description=EXPORT_LIMIT_DESCRIPTION)] = 10_000,
) -> Response:
    """Everything held about a person (by user id, anonymous id or email), as one JSON document to
    hand them: every id linked to them, their traits, their current state as `GET /v1/contacts/{id}`
    shows it (scores and their explanation, stage and its history, RFM/CLV, flags, consent), their
    orders, and what the archive holds (events, score ledger, stage transitions, triggers, webhook
    deliveries). Admin scope; audited (the key's name and the person's key hash, never the id).
    When the archive cannot be read, the export is still given with `archive.status` `unavailable`
    and why (a person the live state does not know then gets 503: it cannot tell)."""
    now = clock()
    entry = readers.replica.find(contact_id)
    view = entry.view if entry is not None else None

    async def query(store: Store) -> tuple[str, dict[str, Any]] | None:
        found = view.contact_id if view is not None else await reports.resolve_contact(store, contact_id)
        if found is None:
            return None
        ids = _export_ids(found, view)
        return found, await privacy.export(store, **ids, limit=limit)

    try:
        answered = await archive.answer(analytics, query)
        unavailable = None
    except ApiError as exc:
        if exc.status != 503 or view is None:
            raise
        answered, unavailable = None, exc.message
    if view is None and answered is None:
        raise ApiError(404, "not_found", f"no contact with id, anonymous id or email {contact_id!r}")
    found = view.contact_id if view is not None else answered[0] if answered else contact_id
    held = answered[1] if answered is not None else None
    body = ExportOut(
        exported_at=datetime.fromtimestamp(now / 1000, tz=UTC),
        contact_id=found,
        identity=_export_identity(found, view, held),
        traits=dict(view.traits) if view is not None else {},
        current=readers.renderer.body(entry, now) if entry is not None else None,
        orders=_orders(held, readers.model) if held is not None else [],
        interests=interests_out(view, rules, now) if view is not None and (rules := readers.model.interests) else None,
        archive=_export_archive(held, unavailable),
    )
    audit(request, "export", subject_count=1, subject_keys=[contact_key(found)])
    name = f"scorestream-export-{contact_key(found)[:16]}.json"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}
    return Response(body.model_dump_json(), media_type=JSON, headers=headers)


def _export_ids(contact_id: str, view: ContactView | None) -> dict[str, list[str]]:
    """The ids the archive is searched by: the contact's, its merged contacts', its anonymous ids, email."""
    if view is None:
        return {"contact_ids": [contact_id], "user_ids": [], "anonymous_ids": [], "emails": []}
    return {
        "contact_ids": [contact_id, *view.merged_ids],
        "user_ids": [view.user_id] if view.user_id else [],
        "anonymous_ids": list(view.anonymous_ids),
        "emails": [view.email] if view.email else [],
    }


def _export_identity(contact_id: str, view: ContactView | None, held: dict[str, Any] | None) -> ExportIdentity:
    if view is not None:
        return ExportIdentity(
            contact_id=contact_id,
            user_id=view.user_id,
            anonymous_ids=list(view.anonymous_ids),
            email=view.email,
            merged_ids=list(view.merged_ids),
        )
    rows = (held or {}).get("contacts", [])
    own: dict[str, Any] = next((r for r in rows if r["contact_id"] == contact_id), {})
    anonymous = sorted({str(e["anonymous_id"]) for e in (held or {}).get("events", []) if e.get("anonymous_id")})
    return ExportIdentity(
        contact_id=contact_id,
        user_id=own.get("user_id") or None,
        anonymous_ids=anonymous,
        email=own.get("email") or None,
        merged_ids=sorted(str(r["contact_id"]) for r in rows if r.get("merged_into") == contact_id),
    )


def _orders(held: dict[str, Any], model: Model) -> list[dict[str, Any]]:
    """The order and refund events among the archived ones."""
    names = set(model.value.order_events) | set(model.value.refund_events)
    return [e for e in held.get("events", []) if e.get("type") == "track" and e.get("event") in names]


def _export_archive(held: dict[str, Any] | None, unavailable: str | None) -> ExportArchive:
    if held is None:
        return ExportArchive(status="unavailable", detail=unavailable or "the archive holds nothing about them")
    lists = {table: held[table] for table in privacy.EXPORTS}
    truncated = list(held.get("truncated", []))
    return ExportArchive(status="truncated" if truncated else "complete", truncated=truncated, **lists)
