"""A read replica of the contacts' views, fed by the ``<app>.views`` topic.

Why a replica: a contact's state lives on the worker that owns its partition. The worker sends a
compact view of each contact it writes (:mod:`scorestream.view`: identity, traits, fit, journey,
value summary, engagement as per-rule totals; no history) to a compacted topic, and the API reads
it (every partition) instead of asking workers or reading the full states' changelog, so answers
are correct however many workers share the work, and API processes scale independently of them.
The cost is a short delay (one hop, typically milliseconds; a busy contact's view at most
``SCORESTREAM_VIEW_INTERVAL_MS`` apart) and memory for the views' bytes: ``states`` maps a contact
id to its view's bytes, ``by_anonymous`` and ``by_email`` are the indexes.

Lookups accept a contact id, any anonymous id, or an email; merged contacts are followed to the
contact they merged into.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from api.follow import Following
from kafka_io.clients import KafkaConnection
from kafka_io.reader import follow
from schemas.view import decode_head, decode_view
from scorestream.identity import anonymous_contact_id
from scorestream.view import ContactView

log = logging.getLogger(__name__)
MAX_FOLLOW = 8
# The longest a views fetch waits on the broker when there is nothing new. A fetch returns as
# soon as a record arrives, so this bounds only how often an idle replica polls (5 requests/s, not
# 100 at 10 ms, which cost the API 7-12% of its CPU), not how soon a change becomes visible.
FETCH_MAX_WAIT_MS = 200
# Decoded views kept, least recently used dropped first, counted in the bytes they were decoded
# from: 8 MiB of MessagePack is some 40-60 MiB of Python objects (5-8x).
DECODED_CACHE_BYTES = 8 << 20


@dataclass(slots=True)
class Decoded:
    """A contact's view decoded from the bytes the replica holds (shared: treat it as read-only),
    with a slot for what a reader derives from the view alone (the API's renderer keeps the
    time-independent parts of the response there). Valid while the replica holds ``raw``."""

    raw: bytes
    view: ContactView
    derived: Any = None


@dataclass
class WorkerStatus:
    state: str
    model: str
    at_ms: int
    lease_until_ms: int | None = None  # "ready" holds until then unless renewed (None: until it says otherwise)


@dataclass
class Replica(Following):
    """In-memory replica of ``<app>.views`` (contact id -> view bytes, and the indexes) and the
    worker status topic."""

    kafka: KafkaConnection
    views_topic: str
    status_topic: str
    states: dict[str, bytes] = field(default_factory=dict)
    by_anonymous: dict[str, str] = field(default_factory=dict)
    by_email: dict[str, str] = field(default_factory=dict)
    workers: dict[str, WorkerStatus] = field(default_factory=dict)
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    records: int = 0
    last_record_ms: int = 0
    error: str | None = None
    decoded_cache_bytes: int = DECODED_CACHE_BYTES
    _decoded: OrderedDict[str, Decoded] = field(default_factory=OrderedDict)
    _decoded_bytes: int = 0
    _task: asyncio.Task[None] | None = None

    def apply(self, key: bytes, value: bytes | None) -> None:
        contact_id = key.decode()
        self.records += 1
        if (stale := self._decoded.pop(contact_id, None)) is not None:
            self._decoded_bytes -= len(stale.raw)
        if value is None:
            self.states.pop(contact_id, None)
            return
        self.states[contact_id] = value
        view = decode_head(value)
        if view.merged_into is None:
            for anon in view.anonymous_ids:
                self.by_anonymous[anon] = contact_id
            if view.email:
                self.by_email[view.email] = contact_id
        else:
            for anon in view.anonymous_ids:
                self.by_anonymous.setdefault(anon, view.merged_into)

    def apply_status(self, value: bytes | None) -> None:
        if not value:
            return
        body = orjson.loads(value)
        lease = body.get("lease_until_ms")
        self.workers[str(body["worker"])] = WorkerStatus(
            state=str(body["state"]),
            model=str(body.get("model", "")),
            at_ms=int(body["at_ms"]),
            lease_until_ms=None if lease is None else int(lease),
        )

    def decoded(self, contact_id: str) -> Decoded | None:
        """The decoded view of ``contact_id`` (merges not followed), or ``None``; cached."""
        raw = self.states.get(contact_id)
        if raw is None:
            return None
        entry = self._decoded.get(contact_id)
        if entry is not None and entry.raw is raw:
            self._decoded.move_to_end(contact_id)
            return entry
        if entry is not None:  # bytes replaced without apply() (tests): drop the stale entry
            del self._decoded[contact_id]
            self._decoded_bytes -= len(entry.raw)
        entry = Decoded(raw, decode_view(raw))
        self._decoded[contact_id] = entry
        self._decoded_bytes += len(raw)
        while self._decoded_bytes > self.decoded_cache_bytes and len(self._decoded) > 1:
            _, old = self._decoded.popitem(last=False)
            self._decoded_bytes -= len(old.raw)
        return entry

    def _follow(self, contact_id: str) -> Decoded | None:
        for _ in range(MAX_FOLLOW):
            entry = self.decoded(contact_id)
            if entry is None:
                return None
            if entry.view.merged_into is None:
                return entry
            contact_id = entry.view.merged_into
        return None

    def find(self, ident: str) -> Decoded | None:
        """The contact for a user id, an anonymous id or an email, or ``None``."""
        for candidate in (ident, anonymous_contact_id(ident), self.by_anonymous.get(ident)):
            if candidate is not None and candidate in self.states:
                entry = self._follow(candidate)
                if entry is not None:
                    return entry
        owner = self.by_email.get(ident.strip().casefold())
        if owner is not None:
            entry = self._follow(owner)
            if entry is not None and entry.view.email == ident.strip().casefold():
                return entry
        return None

    def lookup(self, ident: str) -> ContactView | None:
        """The view of :meth:`find`'s contact (shared: treat it as read-only), or ``None``."""
        entry = self.find(ident)
        return None if entry is None else entry.view

    @property
    def ready_workers(self) -> list[str]:
        """Workers whose latest status is "ready" and whose lease has not run out (a worker killed
        without announcing "stopped" stops renewing it)."""
        now = time.time() * 1000
        return sorted(
            w
            for w, s in self.workers.items()
            if s.state == "ready" and (s.lease_until_ms is None or s.lease_until_ms >= now)
        )

    def apply_record(self, record: Any) -> None:
        if record.topic == self.views_topic:
            if record.key is not None:
                self.apply(record.key, record.value)
        else:
            self.apply_status(record.value)
        self.last_record_ms = record.timestamp

    async def follow(self) -> None:
        topics = (self.views_topic, self.status_topic)
        await follow(self, self.kafka, topics, self.apply_record, "contacts replica", FETCH_MAX_WAIT_MS)
