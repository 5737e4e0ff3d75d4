"""Manual score adjustments: sales add or take points a contact's events do not show, and undo them.

An adjustment is an event like any other (:mod:`scorestream.adjustments`): the API publishes a
``Score Adjusted`` track message on the ``crm`` source topic (``SCORESTREAM_TOPIC_CRM``), the worker
folds it (a hit of the built-in rule ``adjustment`` or ``adjustment:<group>`` earning the
adjustment's points, decaying, explained, archived by the sink, replayed), and the contact's view
lists it. A revert is a ``Score Adjustment Reverted`` message; it counts whenever it arrives.
Writes answer ``202``: the worker applies them within moments.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request, Response

from api.bodies import LimitedRoute
from api.deps import API_KEY, Clock, EventWriter, ReadersDep, ReadScope, SettingsDep, WriteScope
from api.errors import ApiError
from api.namespaces import Readers
from api.replica import Decoded
from schemas.api import Problem
from schemas.api_adjustments import (
    AdjustmentIn,
    AdjustmentListOut,
    AdjustmentOut,
    RevertOut,
    adjusted_message,
    reverted_message,
)
from schemas.api_keys import KeyEntry
from schemas.settings import Settings
from schemas.times import at_of
from scorestream.adjustments import MAX_BY, MAX_ID, Adjustment
from scorestream.identity import ANONYMOUS_PREFIX
from scorestream.state import decay
from scorestream.view import ContactView

router = APIRouter(tags=["adjustments"], route_class=LimitedRoute)
PREFIX = "/v1/contacts/{contact_id}/adjustments"
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": Problem}, 503: {"model": Problem}}
AdjustmentId = Annotated[str, Path(min_length=1, max_length=MAX_ID)]


def _ready(readers: Readers) -> None:
    if not readers.replica.caught_up.is_set():
        raise ApiError(503, "not_ready", "the API is still loading contact state; retry shortly")


def _found(readers: Readers, contact_id: str) -> Decoded:
    _ready(readers)
    entry = readers.replica.find(contact_id)
    if entry is None:
        raise ApiError(404, "not_found", f"no contact with id, anonymous id or email {contact_id!r}")
    return entry


def _ids(contact_id: str) -> tuple[str | None, str | None]:
    """``(userId, anonymousId)`` of the contact ``contact_id``."""
    if contact_id.startswith(ANONYMOUS_PREFIX):
        return None, contact_id.removeprefix(ANONYMOUS_PREFIX)
    return contact_id, None


def _author(request: Request, given: str | None) -> str:
    """Who: as given, else the API key's name."""
    if given:
        return given
    key: KeyEntry | None = request.scope.get(API_KEY)
    return key.name if key is not None else "api"


async def _publish(writer: EventWriter, settings: Settings, contact_id: str, message: dict[str, object]) -> None:
    await writer.send(settings.topic_crm, contact_id.encode(), orjson.dumps(message))


def _out(contact_id: str, aid: str, a: Adjustment, now_ms: int | None, half_life_ms: int) -> AdjustmentOut:
    assert a.at_ms is not None
    out = AdjustmentOut(
        adjustment_id=aid,
        contact_id=contact_id,
        points=a.points,
        group=a.group,
        reason=a.reason,
        by=a.by,
        at=at_of(a.at_ms),
        reverted_at=at_of(a.reverted.at_ms) if a.reverted is not None else None,
        reverted_by=a.reverted.by if a.reverted is not None else None,
    )
    if now_ms is not None:
        out.points_now = round(decay(a.live_points, a.at_ms, max(now_ms, a.at_ms), half_life_ms), 6) + 0.0
    return out


@router.post(
    PREFIX,
    response_model=AdjustmentOut,
    status_code=202,
    dependencies=WriteScope,
    responses={422: {"model": Problem}, 503: {"model": Problem}},
)
async def create_adjustment(
    contact_id: str,
    body: AdjustmentIn,
    readers: ReadersDep,
    writer: EventWriter,
    settings: SettingsDep,
    clock: Clock,
    request: Request,
) -> Response:
    """Add (or, negative, take) points to a contact by user id, anonymous id or email, now; a group
    of the active model counts them in that group too. A contact never seen is created under
    ``contact_id`` as a user id (``anonymous:<id>``: an anonymous one), as any event would."""
    _ready(readers)
    model = readers.model
    if body.group is not None and model.group(body.group) is None:
        known = ", ".join(g.id for g in model.groups) or "none declared"
        raise ApiError(422, "invalid_request", f"body.group: unknown score group {body.group!r}; groups: {known}")
    entry = readers.replica.find(contact_id)
    target = entry.view.contact_id if entry is not None else contact_id
    user_id, anonymous_id = _ids(target)
    aid = str(uuid.uuid4())
    now = clock()
    by = _author(request, body.by)
    await _publish(writer, settings, target, adjusted_message(aid, now, user_id, anonymous_id, body, by))
    out = _out(target, aid, Adjustment(now, body.points, body.group, body.reason, by), None, model.half_life_ms)
    location = f"/v1/contacts/{target}/adjustments/{aid}"
    return Response(out.model_dump_json(), 202, {"Location": location}, media_type="application/json")


@router.get(PREFIX, response_model=AdjustmentListOut, dependencies=ReadScope, responses=ERRORS)
async def list_adjustments(contact_id: str, readers: ReadersDep, clock: Clock) -> AdjustmentListOut:
    """A contact's adjustments as folded by the worker, newest first, each with its points decayed
    to now (0 once reverted); reverted ones are marked."""
    return adjustments_out(_found(readers, contact_id).view, clock(), readers.model.half_life_ms)


def adjustments_out(view: ContactView, now_ms: int, half_life_ms: int) -> AdjustmentListOut:
    """A contact's adjustments from its view, newest first (the console's contact page shows them too)."""
    made = [(aid, a) for aid, a in view.adjustments.items() if a.at_ms is not None]
    made.sort(key=lambda item: (item[1].at_ms, item[0]), reverse=True)
    return AdjustmentListOut(
        contact_id=view.contact_id,
        adjustments=[_out(view.contact_id, aid, a, now_ms, half_life_ms) for aid, a in made],
    )


@router.get(PREFIX + "/{adjustment_id}", response_model=AdjustmentOut, dependencies=ReadScope, responses=ERRORS)
async def get_adjustment(
    contact_id: str, adjustment_id: AdjustmentId, readers: ReadersDep, clock: Clock
) -> AdjustmentOut:
    """One adjustment of the contact; 404 until the worker folded it (moments after it was made)."""
    view = _found(readers, contact_id).view
    found = view.adjustments.get(adjustment_id)
    if found is None or found.at_ms is None:
        raise ApiError(404, "not_found", f"contact {view.contact_id!r} has no adjustment {adjustment_id!r} (yet)")
    return _out(view.contact_id, adjustment_id, found, clock(), readers.model.half_life_ms)


@router.delete(
    PREFIX + "/{adjustment_id}",
    response_model=RevertOut,
    status_code=202,
    dependencies=WriteScope,
    responses=ERRORS,
)
async def revert_adjustment(
    contact_id: str,
    adjustment_id: AdjustmentId,
    readers: ReadersDep,
    writer: EventWriter,
    settings: SettingsDep,
    clock: Clock,
    request: Request,
    by: Annotated[
        str | None, Query(min_length=1, max_length=MAX_BY, description="Who undoes it; default: the API key's name.")
    ] = None,
) -> RevertOut:
    """Undo an adjustment: its points leave the contact's scores, as if it had never been made. An
    adjustment the worker has not folded yet is reverted when it arrives; reverting twice changes
    nothing (the first revert counts). 404 for an unknown contact."""
    view = _found(readers, contact_id).view
    user_id, anonymous_id = _ids(view.contact_id)
    now = clock()
    by = _author(request, by)
    message_id = f"revert-{uuid.uuid4()}"
    await _publish(
        writer, settings, view.contact_id, reverted_message(message_id, adjustment_id, now, user_id, anonymous_id, by)
    )
    return RevertOut(adjustment_id=adjustment_id, contact_id=view.contact_id, reverted_at=at_of(now), reverted_by=by)
