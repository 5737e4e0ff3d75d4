"""A read replica of the contacts' views, fed by the ``<app>.views`` topic.

Why a replica: a contact's state lives on the worker that owns its partition. The worker sends a
compact view of each contact it writes (:mod:`scorestream.view`: identity, traits, fit, journey,
value summary, engagement as per-rule totals; no history) to a compacted topic, and the API reads
it (every partition) instead of asking workers or reading the full states' changelog, so answers
are correct however many workers share the work, and API processes scale independently of them.
The cost is a short delay (one hop, typically milliseconds; a busy contact's view at most
``SCORESTREAM_VIEW_INTERVAL_MS`` apart).

Where the views are kept: a :class:`~api.view_store.ViewStore` (``store``; ``states`` is another
name for it): contact id -> view bytes, and the indexes (anonymous id, email). The API's replicas
keep it on disk (:class:`~api.view_store.RocksViewStore` in ``<data_dir>/api/<namespace>``, opened
when the replica starts), so memory does not grow with contacts, and the API processes of a host
share it: the one that holds its lock follows the topics and writes each fetch as one batch with
its offsets; the others read it and take over if that one dies (see :mod:`api.view_store`).
Replicas built without a directory (tests, tools) keep it in dicts and follow the topics
themselves. Decoded views sit in a small LRU (:data:`DECODED_CACHE_BYTES`), checked against the
stored bytes on every read (a reading process learns of a change no other way).

Lookups accept a contact id, any anonymous id, or an email; merged contacts are followed to the
contact they merged into.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from api.follow import Following
from api.view_store import ANONYMOUS, EMAIL, StoreOptions, ViewStore, follow_into_store, open_store
from kafka_io.clients import KafkaConnection
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
STATUS = "status/"  # the store's named values: status/<worker> -> the worker's latest status record


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
    """Replica of ``<app>.views`` (contact id -> view bytes, and the indexes, in ``store``) and
    the worker status topic. ``store_dir``: keep the store there, shared with the host's other API
    processes (opened by :meth:`follow`); None: in memory."""

    kafka: KafkaConnection
    views_topic: str
    status_topic: str
    store: ViewStore = field(default_factory=ViewStore)
    store_dir: Path | None = None
    store_options: StoreOptions = field(default_factory=StoreOptions)
    catch_up_s: float = 0.005
    workers: dict[str, WorkerStatus] = field(default_factory=dict)
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    records: int = 0
    last_record_ms: int = 0
    error: str | None = None
    decoded_cache_bytes: int = DECODED_CACHE_BYTES
    _decoded: OrderedDict[str, Decoded] = field(default_factory=OrderedDict)
    _decoded_bytes: int = 0
    _task: asyncio.Task[None] | None = None

    @property
    def states(self) -> ViewStore:
        """Contact id -> view bytes (the store)."""
        return self.store

    def apply(self, key: bytes, value: bytes | None) -> None:
        """Write one view record to the store (shown at its commit; a view that does not decode
        is not stored)."""
        contact_id = key.decode()
        self.records += 1
        if (stale := self._decoded.pop(contact_id, None)) is not None:
            self._decoded_bytes -= len(stale.raw)
        if value is None:
            self.forget(contact_id)
            return
        view = decode_head(value)
        self.store.put(contact_id, value)
        if view.merged_into is None:
            for anon in view.anonymous_ids:
                self.store.link_anonymous(anon, contact_id)
            if view.email:
                self.store.link_email(view.email, contact_id)
        else:
            for anon in view.anonymous_ids:
                self.store.link_anonymous(anon, view.merged_into, replace=False)

    def forget(self, contact_id: str) -> None:
        """A contact's tombstone (erased, or gone): its view and every index entry still pointing
        to it leave the store (those its last view lists are named too, for a store written before
        index entries were listed by contact); an entry another contact took since stays."""
        also: list[tuple[str, str]] = []
        old = self.store.previous(contact_id)
        if old is not None:
            try:
                head = decode_head(old)
            except Exception:  # an unreadable old view: what the store lists is removed all the same
                head = None
            if head is not None:
                also = [(ANONYMOUS, anon) for anon in head.anonymous_ids]
                if head.email:
                    also.append((EMAIL, head.email))
        self.store.forget(contact_id, also)

    def apply_status(self, value: bytes | None) -> None:
        """A worker's status record (kept in the store too, for the processes that read it)."""
        worker = self._status(value)
        if worker is not None and value:
            self.store.put_meta(STATUS + worker, value)

    def load_from_store(self) -> None:
        """The workers' statuses as the store holds them (a reading process, or a writer
        resuming from its offsets: the records before them are not read again)."""
        for _, value in self.store.meta_items(STATUS):
            self._status(value)

    def _status(self, value: bytes | None) -> str | None:
        if not value:
            return None
        body = orjson.loads(value)
        lease = body.get("lease_until_ms")
        self.workers[str(body["worker"])] = WorkerStatus(
            state=str(body["state"]),
            model=str(body.get("model", "")),
            at_ms=int(body["at_ms"]),
            lease_until_ms=None if lease is None else int(lease),
        )
        return str(body["worker"])

    def decoded(self, contact_id: str) -> Decoded | None:
        """The decoded view of ``contact_id`` (merges not followed), or ``None``; cached."""
        raw = self.store.get(contact_id)
        if raw is None:
            if (gone := self._decoded.pop(contact_id, None)) is not None:  # deleted (a reader learns it here)
                self._decoded_bytes -= len(gone.raw)
            return None
        entry = self._decoded.get(contact_id)
        if entry is not None and (entry.raw is raw or entry.raw == raw):
            self._decoded.move_to_end(contact_id)
            return entry
        if entry is not None:  # bytes replaced (by the writer, seen by a reader): drop the stale entry
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
        for candidate in (ident, anonymous_contact_id(ident)):
            entry = self._follow(candidate)
            if entry is not None:
                return entry
        owner = self.store.anonymous_owner(ident)
        if owner is not None and (entry := self._follow(owner)) is not None:
            return entry
        owner = self.store.email_owner(ident.strip().casefold())
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
        """Open the store (``store_dir``), then keep it current in the role it has (see
        :func:`api.view_store.follow_into_store`)."""
        if self.store_dir is not None and self.store.role == "memory":
            self.store = await open_store(self.store_dir, self.store_options, self)
        topics = (self.views_topic, self.status_topic)
        await follow_into_store(
            self, self.kafka, topics, self.apply_record, "contacts replica", FETCH_MAX_WAIT_MS, self.catch_up_s
        )

    async def stop(self) -> None:
        await super().stop()
        self.store.close()
