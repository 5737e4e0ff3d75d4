"""A read replica of ``<app>-accounts-changelog``, which ``GET /v1/accounts/{id}`` answers from
(:mod:`api.routers.accounts`).

The same idea as :mod:`api.replica` for contacts: the API reads every partition of the accounts
table's changelog into memory (raw bytes, decoded per request) instead of asking workers, and
computes the time-dependent parts (decayed engagement, coverage) at request time with the core.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from api.follow import Following
from kafka_io.clients import KafkaConnection
from kafka_io.reader import follow

log = logging.getLogger(__name__)
FETCH_MAX_WAIT_MS = 200


@dataclass
class AccountReplica(Following):
    """In-memory view of ``<app>-accounts-changelog``: account id -> encoded AccountState."""

    kafka: KafkaConnection
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
            self,
            self.kafka,
            [self.changelog_topic],
            self.apply_record,
            "accounts replica",
            FETCH_MAX_WAIT_MS,
        )
