"""``/v1/regulations``: privacy regulations (suppress, delete, unsuppress), shaped as Segment's
Public API takes them. Admin scope. The service that carries them out is :mod:`api.regulations`."""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Annotated

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from api.audit import audit, key_name
from api.bodies import LimitedRoute
from api.deps import AdminScope
from api.errors import ApiError
from api.regulations import RegulationService
from schemas.api import Problem
from schemas.api_regulations import (
    DEFAULT_PAGE,
    FROM_SEGMENT,
    MAX_PAGE,
    Pagination,
    RegulateId,
    RegulationCreated,
    RegulationData,
    RegulationEnvelope,
    RegulationIn,
    RegulationList,
    RegulationsData,
    regulation_out,
)

log = logging.getLogger(__name__)
PREFIX = "/v1/regulations"
MAX_IDEMPOTENCY_KEY = 255
router = APIRouter(
    route_class=LimitedRoute,
    prefix=PREFIX,
    tags=["regulations"],
    dependencies=AdminScope,
    responses={code: {"model": Problem} for code in (404, 413, 422, 503)},
)


async def service(conn: HTTPConnection) -> RegulationService:
    """This process's regulation service, once it has read the regulations (else 503)."""
    found: RegulationService | None = getattr(conn.app.state, "regulations", None)
    if found is None:
        raise ApiError(503, "not_ready", "the regulation service does not run in this API process")
    if not found.caught_up.is_set():
        raise ApiError(503, "not_ready", "the API is still reading the regulations; retry shortly")
    return found


Service = Annotated[RegulationService, Depends(service)]


@router.post("", response_model=RegulationCreated, status_code=200)
async def create_regulation(
    body: RegulationIn,
    regulations: Service,
    conn: HTTPConnection,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=MAX_IDEMPOTENCY_KEY,
            description="Makes the request distinct from others with the same body, and the same with itself: "
            "the same body and key within 24 hours answer the same regulation.",
        ),
    ] = None,
) -> JSONResponse:
    """Create a regulation. The same request (type, subject type, distinct ids and `Idempotency-Key`)
    within 24 hours of the first answers the first's id. Durable once answered: its record and
    the privacy entries of its subjects are written; it is carried out in the background
    (`GET /v1/regulations/{id}`)."""
    if not regulations.ready():
        raise ApiError(503, "not_ready", "the API is still loading contact state; retry shortly")
    try:
        reg, created = await regulations.accept(body, idempotency_key, key_name(conn))
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("regulation not accepted: Kafka did not acknowledge it (%s)", type(exc).__name__)
        raise ApiError(
            503,
            "not_ready",
            "Kafka did not acknowledge the regulation; retry (the same request gives the same regulation)",
            headers={"Retry-After": "5"},
        ) from None
    audit(
        conn,
        "regulation_created" if created else "regulation_repeated",
        regulation_id=reg.id,
        regulation_type=reg.regulation_type,
        subject_type=reg.subject_type,
        subject_count=len(reg.subject_keys),
        subject_keys=reg.subject_keys,
    )
    answer = RegulationCreated(data=RegulateId(regulateId=reg.id))
    return JSONResponse(answer.model_dump(), status_code=200, headers={"Location": f"{PREFIX}/{reg.id}"})


def _cursor(created_at_ms: int, reg_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at_ms}:{reg_id}".encode()).decode().rstrip("=")


def _position(cursor: str) -> tuple[int, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, reg_id = text.split(":", 1)
        return int(at), reg_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(422, "invalid_request", "cursor: not a cursor this API gave") from None


@router.get("", response_model=RegulationList)
async def list_regulations(
    regulations: Service,
    status: Annotated[
        str | None,
        Query(description="Only regulations with this status: pending, running, done, failed (or Segment's names)."),
    ] = None,
    cursor: Annotated[str | None, Query(description="`pagination.next` of the previous page.")] = None,
    count: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Regulations per page.")] = DEFAULT_PAGE,
) -> RegulationList:
    """Every regulation, newest first, a page at a time."""
    wanted = None if status is None else FROM_SEGMENT.get(status.upper(), status.lower())
    if wanted not in (None, "pending", "running", "done", "failed"):
        raise ApiError(422, "invalid_request", f"status: not a regulation status: {status!r}")
    found = regulations.listing(wanted)
    start = 0
    if cursor is not None:
        at, reg_id = _position(cursor)
        start = next((i for i, r in enumerate(found) if (-r.created_at_ms, r.id) > (-at, reg_id)), len(found))
    page = found[start : start + count]
    more = start + count < len(found)
    return RegulationList(
        data=RegulationsData(
            regulations=[regulation_out(r) for r in page],
            pagination=Pagination(
                current=cursor,
                next=_cursor(page[-1].created_at_ms, page[-1].id) if more and page else None,
                totalEntries=len(found),
            ),
        )
    )


@router.get("/{regulation_id}", response_model=RegulationEnvelope)
async def get_regulation(regulation_id: str, regulations: Service) -> RegulationEnvelope:
    """One regulation: its status overall and per store, with timestamps (never its subject ids)."""
    reg = regulations.regulations.get(regulation_id)
    if reg is None:
        raise ApiError(404, "not_found", f"no regulation {regulation_id!r}")
    return RegulationEnvelope(data=RegulationData(regulation=regulation_out(reg)))
