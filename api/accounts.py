"""``GET /v1/accounts/{id}``, served from a read replica of ``<app>-accounts-changelog``.

The same idea as :mod:`api.replica` for contacts: the API reads every partition of the accounts
table's changelog into memory (raw bytes, decoded per request) instead of asking workers, and
computes the time-dependent parts (decayed engagement, coverage) at request time with the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from schemas.accounts import decode_account
from schemas.api import ErrorBody
from schemas.api_accounts import AccountOut, account_out
from scorestream import Model

log = logging.getLogger(__name__)
FETCH_MAX_WAIT_MS = 200
JSON = "application/json"


@dataclass
class AccountReplica:
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

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="accounts-replica")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("accounts replica consumer failed (%s); retrying in 1 s", self.error)
                await asyncio.sleep(1.0)

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=4 << 20,
        )
        await consumer.start()
        try:
            partitions: list[TopicPartition] = []
            while not partitions:
                cluster = await consumer._client.fetch_all_metadata()
                found = cluster.partitions_for_topic(self.changelog_topic) or set()
                partitions = [TopicPartition(self.changelog_topic, p) for p in sorted(found)]
                if not partitions:
                    self.error = f"waiting for topic {self.changelog_topic}"
                    await asyncio.sleep(1.0)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            pending = {tp for tp, end in ends.items() if end > 0}
            self.error = None
            started = time.monotonic()
            while True:
                batches = await consumer.getmany(timeout_ms=100, max_records=10_000)
                for records in batches.values():
                    for r in records:
                        if r.key is not None:
                            self.apply(r.key, r.value)
                if pending:
                    pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
                if not pending and not self.caught_up.is_set():
                    self.caught_up.set()
                    log.info(
                        "accounts replica caught up: %d accounts in %.1f s",
                        len(self.states),
                        time.monotonic() - started,
                    )
        finally:
            await consumer.stop()


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def mount_accounts(
    app: FastAPI, replica: AccountReplica, model: Model, dependencies: Sequence[Any], clock: Callable[[], int]
) -> None:
    """Add ``GET /v1/accounts/{account_id}`` to ``app`` behind ``dependencies`` (the API keys)."""

    @app.get(
        "/v1/accounts/{account_id}",
        response_model=AccountOut,
        dependencies=list(dependencies),
        tags=["accounts"],
        responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    async def get_account(account_id: str) -> Response:
        """An account (a ``group`` call's ``groupId``): scores decayed to now, buying-centre
        coverage, stage with history, and members with their roles and scores."""
        if not replica.caught_up.is_set():
            return _error(503, "not_ready", "the API is still loading account state; retry shortly")
        raw = replica.states.get(account_id)
        if raw is None:
            return _error(404, "not_found", f"no account with id {account_id!r}")
        body = account_out(decode_account(raw), model, clock())
        return Response(body.model_dump_json(), media_type=JSON)
