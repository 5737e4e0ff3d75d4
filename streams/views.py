"""Contact views: what the API reads, sent by the contacts stage to ``<app>.views``.

contacts (after writing a contact) --ViewFeed.add(key, state)--> <app>.views  (compacted, key
contact id, the contact's partition: a :class:`~scorestream.view.ContactView`, a tombstone for a
contact that is gone)

A contact whose view was not sent in the last ``view_interval_ms`` is sent at once (a click shows
within the fold's batch); a busier one at most once per interval: its latest state waits and a
short timer sends it (the latest view wins, so nothing but intermediate views is skipped). Every
waiting view is queued on the producer when a commit begins (a Faust sensor), and Faust flushes
the producer before it commits offsets: a view is never behind the offsets the worker committed.
Records go through the producer's ``send_soon``, which batches them per partition (linger).

A deployment upgraded from a build without views has contacts in its table but not on the views
topic: :func:`rebuild_views` (``scorestream views``) sends a view for each of them from the contacts
changelog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from faust.sensors import Sensor
from faust.types import TopicT

from kafka_io import clients
from kafka_io.partitioner import partition_for
from kafka_io.reader import TopicReader, read_topic
from schemas.settings import Settings
from schemas.state import decode_state
from schemas.view import encode_view
from scorestream import ContactState, Model
from scorestream.view import EarnedPoints, FitMemo, view_of
from streams.app import Wiring
from streams.transport import MAX_RECORD_BYTES

log = logging.getLogger(__name__)
EARNED_MEMORY = 1024
"""Contacts whose earned points the feed keeps between their views (least recently used out): a
view of a contact with hundreds of hits then costs its new hits' caps, not all of them again."""
EARNED_MIN_HITS = 32
"""Fewer hits are quicker to score again than to keep."""


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class ViewFeed:
    """Sends contacts' views: at once when not sent recently, else at most every ``interval_ms``."""

    def __init__(
        self,
        topic: TopicT,
        model: Model,
        partitions: int,
        interval_ms: int,
        clock: Callable[[], int] = _monotonic_ms,
    ) -> None:
        self.topic = topic
        self.model = model
        self.partitions = partitions
        self.interval_ms = interval_ms
        self.clock = clock
        # contact id -> when its last view was sent (oldest first; only those within the interval)
        self.sent: OrderedDict[str, int] = OrderedDict()
        # contact id -> its latest state, waiting for its interval to pass (None: a tombstone)
        self.pending: dict[str, ContactState | None] = {}
        self.earned: OrderedDict[str, EarnedPoints] = OrderedDict()
        self.fits = FitMemo(model)
        self.views_sent = 0
        self.failed = 0

    def add(self, key: str, state: ContactState | None) -> None:
        """The contacts stage wrote ``state`` for ``key`` (None: removed). Never raises."""
        now = self.clock()
        last = self.sent.get(key)
        if last is None or now - last >= self.interval_ms:
            self.pending.pop(key, None)
            self._send(key, state, now)
        else:
            self.pending[key] = state

    def flush_due(self) -> None:
        """Send the waiting views whose interval has passed (the timer's beat)."""
        now = self.clock()
        sent, interval = self.sent, self.interval_ms
        while sent:  # forget contacts sent longer ago than the interval: they go at once next time
            key, at = next(iter(sent.items()))
            if now - at < interval:
                break
            del sent[key]
            if key in self.pending:
                self._send(key, self.pending.pop(key), now)

    def flush_all(self) -> None:
        """Send every waiting view now (before offsets are committed)."""
        now = self.clock()
        pending, self.pending = self.pending, {}
        for key, state in pending.items():
            self._send(key, state, now)

    def _send(self, key: str, state: ContactState | None, now: int) -> None:
        self.sent[key] = now
        self.sent.move_to_end(key)
        if state is None:  # removed (erased): nothing of it is kept here either
            self.earned.pop(key, None)
        try:
            view = None if state is None else view_of(state, self.model, self._earned(key, state), self.fits)
            value = None if view is None else encode_view(view)
            if value is not None and len(value) + len(key) > MAX_RECORD_BYTES:
                raise ValueError(f"a view of {len(value)} bytes; a record holds {MAX_RECORD_BYTES}")
            raw_key = key.encode()
            self.topic.send_soon(key=raw_key, value=value, partition=partition_for(raw_key, self.partitions))
            self.views_sent += 1
        except Exception:  # the state was written; the API keeps the contact's previous view
            self.failed += 1
            self.earned.pop(key, None)  # it may have stopped half-way
            log.exception("view of contact %s not sent", key)

    def _earned(self, key: str, state: ContactState) -> EarnedPoints | None:
        """The contact's kept points (kept only for contacts with many hits)."""
        earned = self.earned.get(key)
        if earned is not None:
            self.earned.move_to_end(key)
            return earned
        if len(state.hits) < EARNED_MIN_HITS:
            return None
        earned = self.earned[key] = EarnedPoints()
        if len(self.earned) > EARNED_MEMORY:
            self.earned.popitem(last=False)
        return earned


class _FlushBeforeCommit(Sensor):
    """Queues every waiting view on the producer when a commit begins (Faust then flushes the
    producer, and only then commits the offsets)."""

    def __init__(self, feed: ViewFeed) -> None:
        super().__init__()
        self.feed = feed

    def on_commit_initiated(self, consumer: Any) -> Any:
        self.feed.flush_all()
        return None


def register_views(w: Wiring, settings: Settings, model: Model) -> ViewFeed:
    """The feed the contacts stage reports through, its timer and its flush before commits."""
    feed = ViewFeed(w.views_topic, model, settings.partitions, settings.view_interval_ms)
    w.app.sensors.add(_FlushBeforeCommit(feed))

    @w.app.timer(interval=max(settings.view_interval_ms, 5) / 1000, name="views")
    async def views() -> None:
        feed.flush_due()

    return feed


async def rebuild_views(settings: Settings, model: Model) -> tuple[int, int]:
    """Send a view for every contact of ``<ns>-contacts-changelog`` that ``<ns>.views`` lacks;
    ``(views sent, contacts that had one)``.

    For a deployment upgraded from a build without views: the worker sends a contact's view when it
    next writes the contact, this sends the others' now. The changelog is read to its end offsets at
    the start, and each record's view (or tombstone) is sent in the changelog's order, to the
    contact's partition, one fetch at a time (the sends of a fetch queued in order, then awaited):
    the last one of a contact is its latest state (compaction keeps it). Contacts already on the
    views topic are left alone; one whose first view a worker sends while this runs may be shown as
    the changelog had it until its next change. A record that cannot be read is logged and skipped.
    """
    have: set[bytes] = set()

    def seen(key: bytes | None, value: bytes | None) -> None:
        if key is not None:
            have.add(key)

    await read_topic(settings, settings.views_topic, seen, until_end=True)
    producer = clients.producer(settings, enable_idempotence=True, linger_ms=20)
    queued: list[tuple[bytes, bytes | None]] = []

    def view(record: Any) -> None:
        if record.key is not None and record.key not in have:
            value = record.value
            queued.append((record.key, None if value is None else encode_view(view_of(decode_state(value), model))))

    class _Rebuild(TopicReader):
        sent = 0

        async def read_more(self) -> int:
            count = await super().read_more()
            acks = []
            for key, value in queued:
                partition = partition_for(key, settings.partitions)
                acks.append(await producer.send(settings.views_topic, value, key=key, partition=partition))
            queued.clear()
            await asyncio.gather(*acks)
            self.sent += len(acks)
            return count

    await producer.start()
    try:
        reader = _Rebuild(settings, [settings.changelog_topic("contacts")], view, "views rebuild")
        async with reader:
            if await reader.assign():
                await reader.read_to_end()
    finally:
        await producer.stop()
    return reader.sent, len(have)
