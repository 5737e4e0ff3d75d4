"""Accounts: ``GET /v1/accounts/{id}`` from the namespace's accounts replica (:mod:`api.account_replica`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from api.bodies import LimitedRoute
from api.deps import Clock, ReadersDep, ReadScope
from api.errors import ApiError
from schemas.accounts import decode_account
from schemas.api import Problem
from schemas.api_accounts import AccountOut, account_out

JSON = "application/json"
router = APIRouter(prefix="/v1/accounts", tags=["accounts"], route_class=LimitedRoute)


@router.get(
    "/{account_id}",
    response_model=AccountOut,
    dependencies=ReadScope,
    responses={404: {"model": Problem}, 503: {"model": Problem}},
)
async def get_account(account_id: str, readers: ReadersDep, clock: Clock) -> Response:
    """An account (a ``group`` call's ``groupId``): scores decayed to now, buying-centre
    coverage, stage with history, and members with their roles and scores."""
    replica = readers.accounts
    if not replica.caught_up.is_set():
        raise ApiError(503, "not_ready", "the API is still loading account state; retry shortly")
    raw = replica.states.get(account_id)
    if raw is None:
        raise ApiError(404, "not_found", f"no account with id {account_id!r}")
    body = account_out(decode_account(raw), readers.model, clock())
    return Response(body.model_dump_json(), media_type=JSON)
