"""The population model in the API: read from ``<app>.population``, applied to contacts at request time.

The workers publish the model (RFM quintile boundaries, the CLV fit) on a one-partition compacted
topic; this reader follows it from the beginning and keeps the latest. A contact's value is
computed per request from its ledger with the pure core (:func:`scorestream.population.value_view`),
so recency, ``p_alive`` and CLV are as of the request time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.population import decode_record
from schemas.value import clv_model_body, value_body
from scorestream import ContactState
from scorestream.population import PopulationModel, value_view
from scorestream.rfm import DEFAULT_SEGMENTS, SegmentRule

log = logging.getLogger(__name__)
FETCH_MAX_WAIT_MS = 500  # the model changes every few minutes: an idle reader polls twice a second


@dataclass
class PopulationReader:
    """The latest population model on ``topic`` (None before the first)."""

    bootstrap: str
    topic: str
    segments: tuple[SegmentRule, ...] = DEFAULT_SEGMENTS
    model: PopulationModel | None = None
    records: int = 0
    error: str | None = None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        self.records += 1
        try:
            record = decode_record(key, value)
        except (msgspec.DecodeError, ValueError) as exc:
            log.warning("population record %r unreadable: %s", key, exc)
            return
        if isinstance(record, PopulationModel):
            self.model = record

    def value_body(self, state: ContactState, now_ms: int) -> dict[str, Any]:
        """``{"rfm": ..., "clv": ...}`` of a contact at ``now_ms`` (see :class:`schemas.value.ValueOut`):
        both null for a non-customer; r/f/m/segment and the CLV figures null before a model exists."""
        return value_body(value_view(state.value, now_ms, self.model, self.segments))

    def clv_model_body(self) -> dict[str, Any] | None:
        """The ``GET /v1/models/clv`` body, or None before the first successful fit."""
        return None if self.model is None else clv_model_body(self.model)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="population")

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
                log.warning("population reader failed (%s); retrying in 1 s", self.error)
                await asyncio.sleep(1.0)

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=FETCH_MAX_WAIT_MS
        )
        await consumer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            self.error = None
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for r in records:
                        self.apply(r.key, r.value)
        finally:
            await consumer.stop()
