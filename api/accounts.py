"""``GET /v1/accounts/{id}``, served from a read replica of ``<app>-accounts-changelog``.

The same idea as :mod:`api.replica` for contacts: the API reads every partition of the accounts
table's changelog into memory (raw bytes, decoded per request) instead of asking workers, and
computes the time-dependent parts (decayed engagement, coverage) at request time with the core.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the route's annotations, and
# ``get_account``'s name ``mount_accounts``' local ``readers``.
import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response

from api.follow import Following, follow
from schemas.accounts import decode_account
from schemas.api import ErrorBody
from schemas.api_accounts import AccountOut, account_out
from scorestream import Model

log = logging.getLogger(__name__)
FETCH_MAX_WAIT_MS = 200
JSON = "application/json"


@dataclass
class AccountReplica(Following):
    """In-memory view of ``<app>-accounts-changelog``: account id -> encoded AccountState."""

    bootstrap: str
    changelog_topic: str
    states: dict[str, bytes] = field(default_factory=dict)
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None
    _task: asyncio.Task[None] | None = None

    def apply(self, key: bytes, value: bytes | None) -> None:
        account_id = key.decode()
        if value is None:
            self.states.pop(account_id, None)
        else:
            self.states[account_id] = value

    def apply_record(self, record: Any) -> None:
        if record.key is not None:
            self.apply(record.key, record.value)

    async def follow(self) -> None:
        await follow(
            self, self.bootstrap, [self.changelog_topic], self.apply_record, "accounts replica", FETCH_MAX_WAIT_MS
        )


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def mount_accounts(
    app: FastAPI,
    readers: Callable[..., Awaitable[tuple[AccountReplica, Model]]],
    dependencies: Sequence[Any],
    clock: Callable[[], int],
) -> None:
    """Add ``GET /v1/accounts/{account_id}`` to ``app`` behind ``dependencies`` (the API keys).
    ``readers``: the dependency giving the accounts replica and the model to answer with (those of
    the model namespace the request names with ``?model=``, or of the active one)."""

    @app.get(
        "/v1/accounts/{account_id}",
        response_model=AccountOut,
        dependencies=list(dependencies),
        tags=["accounts"],
        responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    async def get_account(
        account_id: str, picked: Annotated[tuple[AccountReplica, Model], Depends(readers)]
    ) -> Response:
        """An account (a ``group`` call's ``groupId``): scores decayed to now, buying-centre
        coverage, stage with history, and members with their roles and scores."""
        replica, model = picked
        if not replica.caught_up.is_set():
            return _error(503, "not_ready", "the API is still loading account state; retry shortly")
        raw = replica.states.get(account_id)
        if raw is None:
            return _error(404, "not_found", f"no account with id {account_id!r}")
        body = account_out(decode_account(raw), model, clock())
        return Response(body.model_dump_json(), media_type=JSON)
