"""The population model in the API: read from ``<app>.population``, applied to contacts at request time.

The workers publish the model (RFM quintile boundaries, the CLV fit) on a one-partition compacted
topic; this reader follows it from the beginning and keeps the latest. A contact's value is
computed per request from its view's ledger summary with the pure core
(:func:`scorestream.view.value_of_view`, which gives :func:`scorestream.population.value_view` of
the ledger), so recency, ``p_alive`` and CLV are as of the request time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from api.follow import Following
from kafka_io.clients import KafkaConnection
from kafka_io.reader import follow
from schemas.population import read_record
from schemas.value import clv_model_body, value_body
from scorestream.population import PopulationModel
from scorestream.rules.value import DEFAULT_CLV, DEFAULT_SEGMENTS, ClvSettings, SegmentRule
from scorestream.view import ContactView, value_of_view

log = logging.getLogger(__name__)
FETCH_MAX_WAIT_MS = 500  # the model changes every few minutes: an idle reader polls twice a second


@dataclass
class PopulationReader(Following):
    """The latest population model on ``topic`` (None before the first)."""

    kafka: KafkaConnection
    topic: str
    segments: tuple[SegmentRule, ...] = DEFAULT_SEGMENTS
    clv: ClvSettings = DEFAULT_CLV  # the model file's predicted-CLV window and churn bands
    model: PopulationModel | None = None
    records: int = 0
    error: str | None = None
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        self.records += 1
        record = read_record(key, value)
        if isinstance(record, PopulationModel):
            self.model = record

    def value_body(self, view: ContactView, now_ms: int) -> dict[str, Any]:
        """``{"rfm": ..., "clv": ...}`` of a contact at ``now_ms`` (see :class:`schemas.value.ValueOut`):
        both null for a non-customer; r/f/m/segment and the CLV figures null before a model exists."""
        return value_body(value_of_view(view, now_ms, self.model, self.segments, self.clv))

    def clv_model_body(self) -> dict[str, Any] | None:
        """The ``GET /v1/models/clv`` body, or None before the first successful fit."""
        return None if self.model is None else clv_model_body(self.model)

    def apply_record(self, record: Any) -> None:
        self.apply(record.key, record.value)

    async def follow(self) -> None:
        await follow(self, self.kafka, [self.topic], self.apply_record, "population reader", FETCH_MAX_WAIT_MS)
