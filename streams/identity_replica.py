"""The identity fast path: a local replica of the identity links, read by the ingest stage.

::

    <app>-identity-changelog (every partition) ──► IdentityReplica: anonymous id -> IdentityLink (LRU)
    ingest: event keyed by anonymous id ── linked, and nothing for the identity stage to decide?
              yes ──► <app>.contacts   keyed by the contact the identity stage would have chosen
              no  ──► <app>.identity   (as before)

Most anonymous ids on live traffic are already linked, yet every event carrying one crossed two
internal topics (ingest -> identity -> contacts), each with its own fetch and linger. The worker
follows the identity table's changelog (all partitions, whatever it is assigned: the ingest
partitions and the identity partitions are independent) into a bounded LRU of links, and ingest
sends an event straight to the contacts topic when :func:`direct_route` says the identity stage
would only forward it.

Why a stale or missing entry costs only the extra hop, never correctness:

- :func:`direct_route` asks :func:`scorestream.identity.resolve` itself, with the replica's link:
  it answers only when ``resolve`` keeps the link unchanged (the same object) and routes the event
  alone, unchanged, to one contact. So the fast path never skips a link write, a merge, or a
  redelivered linking event (its merges are sent again by the identity stage).
- Links are written once: ``resolve`` creates a link only where there is none (or re-creates the
  same one for the same message). A link in the replica is therefore the link the table holds now
  and later; what the replica can lack is a link (not read yet, evicted, not written yet), and
  then the event takes the identity hop as before, where the table decides.
- A linked contact that was merged since (an alias moved it into another user) is still the
  link's contact in the table too: the identity stage routes there as well, and the contacts stage
  forwards messages of a merged contact to its owner (``merged_into``).
- The contacts fold is order-independent and idempotent by message id, so an event reaching its
  contact by the short path before (or as well as) older events by the long path ends in the same
  state.

Memory is bounded: at most ``SCORESTREAM_IDENTITY_REPLICA_ENTRIES`` links, least recently used
out (a lookup refreshes an entry; reading the changelog from the beginning leaves the most
recently written links). An LRU rather than a RocksDB copy on disk: the worker already holds the
table on disk for its own partitions, ids still active are the ones the fast path needs, and an
evicted one costs one hop (the identity stage, when it runs in this worker, puts the link it reads
back into the replica).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

from kafka_io.reader import follow
from schemas.settings import Settings
from schemas.state import decode_link
from scorestream import IdentityLink
from scorestream.identity import E, resolve
from streams.app import Wiring

log = logging.getLogger(__name__)


def direct_route(link: IdentityLink | None, key: str, event: E) -> str | None:
    """The contact the identity stage would send ``event`` (arriving at identity key ``key``) to,
    if it would do nothing else: keep ``link`` as it is and forward the event alone. None when the
    event must cross the identity stage (no link known, a first link, a redelivered linking
    event: anything that writes a link or sends a merge)."""
    if link is None:
        return None
    after, routed = resolve(link, key, event)
    if after is not link or len(routed) != 1 or routed[0].merge is not None or routed[0].event is not event:
        return None
    return routed[0].key


class IdentityReplica:
    """Anonymous id (or previous id) -> its :class:`IdentityLink`, followed from the identity
    table's changelog; at most ``max_entries``, least recently used out."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.links: OrderedDict[str, IdentityLink] = OrderedDict()
        self.error: str | None = None
        self.caught_up = asyncio.Event()
        self.direct = 0  # events ingest sent straight to their contact
        self.via_identity = 0  # events with an identity key that took the identity hop

    def __len__(self) -> int:
        return len(self.links)

    def learn(self, key: str, link: IdentityLink | None) -> None:
        """Remember ``key``'s link (None: the table no longer holds one)."""
        if link is None:
            self.links.pop(key, None)
            return
        if self.max_entries <= 0:
            return
        self.links[key] = link
        self.links.move_to_end(key)
        if len(self.links) > self.max_entries:
            self.links.popitem(last=False)

    def apply(self, record: Any) -> None:
        """One changelog record (``kafka_io.reader`` logs, counts and skips one this raises on)."""
        key = record.key.decode()
        self.learn(key, decode_link(record.value) if record.value is not None else None)

    def route(self, key: str, event: E) -> str | None:
        """:func:`direct_route` with the link the replica holds for ``key`` (counted)."""
        link = self.links.get(key)
        if link is not None:
            self.links.move_to_end(key)
        contact = direct_route(link, key, event)
        if contact is None:
            self.via_identity += 1
        else:
            self.direct += 1
        return contact

    async def run(self, settings: Settings, changelog: str) -> None:
        """Follow ``changelog`` (every partition, from the beginning) for ever. A failure that is
        not the broker's (those ``follow`` retries itself) starts the reading again after a pause:
        meanwhile the replica only misses new links, which costs their events the identity hop."""
        while True:
            try:
                await follow(
                    self,
                    settings,
                    [changelog],
                    self.apply,
                    "identity replica",
                    settings.fetch_max_wait_ms,
                    absent_is_empty=True,
                )
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: read again rather than stop following the links
                log.exception("identity replica: reading %s failed; reading again in 5 s", changelog)
                await asyncio.sleep(5.0)


def register_identity_replica(w: Wiring, settings: Settings) -> IdentityReplica | None:
    """The worker's replica of the identity links, followed by a task of the app; None when the
    fast path is off (``SCORESTREAM_IDENTITY_FAST_PATH=false``)."""
    if not settings.identity_fast_path:
        return None
    replica = IdentityReplica(settings.identity_replica_entries)

    @w.app.task
    async def identity_replica() -> None:
        await replica.run(settings, settings.changelog_topic("identity"))

    return replica
