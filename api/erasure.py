"""What the API forgets of an erased person, and how a regulation checks it (``api`` and
``deliveries`` stores of a regulation, :mod:`api.regulations` drives both).

- **Views and indexes.** The worker tombstones an erased contact's record on ``<app>.views``; the
  contacts replica then deletes its view and every index entry still pointing to it (anonymous
  ids, emails, those of contacts merged into it: :meth:`api.view_store.ViewStore.forget`), on disk
  for every API process of the host. :func:`api_forgets` says whether any lookup still finds one
  of a person's ids.
- **Webhook deliveries.** ``<app>.webhook-deliveries`` is compacted and keyed by delivery id; a
  delivery record names its contact (``key``). :func:`forget_deliveries` reads the topic, writes a
  tombstone for each delivery of the erased contacts to the partition it lives on, asks the
  dispatcher owning that partition to forget it (a ``forget`` command: it is not sent or retried
  any more, its lane goes on), and drops it from this process's delivery log. The other API
  processes drop it when their delivery log reads the tombstone; the log cleaner then removes the
  earlier records from the topic (when it compacts the segment: bounded by the topic's
  ``max.compaction.lag.ms`` where set, else by its retention). The cost is one read of the topic
  per call (the API's delivery log keeps only the latest 1,000 deliveries per subscription, so it
  cannot answer for older ones): on this loaded 2-core machine 45-50k records/s (100k delivery
  records in about 2 s), and 10,000 contacts with 20k deliveries among 100k records forgotten in
  5.9 s, tombstones and commands included. The regulation service calls it once per regulation
  (up to 5,000 subjects).
- **Triggers** (the ``triggers`` topic, not compacted) cannot be rewritten: an erased contact's
  triggers expire with the topic's retention (docs/events.md).

Nothing here logs an id or an email: counts and regulation ids only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer

from api.replica import Replica
from api.webhook_store import DeliveryLog
from kafka_io import clients
from kafka_io.reader import TopicReader
from schemas.settings import Settings
from schemas.webhooks import CommandRecord, encode
from scorestream.privacy import normal_email

log = logging.getLogger(__name__)
# the broker's acknowledgement of the tombstones and commands: this, plus 1 ms per delivery (some
# 10k records/s were sent here: 19,998 tombstones and commands in 4 s)
SEND_TIMEOUT_S = 30.0


def api_forgets(
    replica: Replica,
    contact_ids: Iterable[str],
    anonymous_ids: Iterable[str],
    emails: Iterable[str],
    *,
    erased_before_ms: int | None = None,
) -> bool:
    """Whether no lookup of this API process finds any of a person's ids any more: a contact id,
    an anonymous id or an email, as ``GET /v1/contacts/{id}`` and batchGet look them up (merges
    followed), and no view is stored under a contact id.

    False while the replica has not caught up (it may not have read the views yet). With
    ``erased_before_ms`` (the regulation's erasure instant), a contact found whose first event is
    at or after it is new collection (a person who came back after a DELETE_ONLY), not the erased
    one, and does not count.

    The replica answers from what it has read: poll this after the worker reported the erasure
    (its views tombstones are then on the topic; the replica reads them within milliseconds)."""
    if not replica.caught_up.is_set():
        return False

    def erased_one(found: Any) -> bool:
        if found is None:
            return False
        first = found.view.first_seen_ms
        return erased_before_ms is None or first is None or first < erased_before_ms

    contacts = list(contact_ids)
    if any(erased_one(replica.decoded(contact_id)) for contact_id in contacts):  # stored, merged or not
        return False
    idents = (*contacts, *anonymous_ids, *(normal_email(e) for e in emails))
    return not any(erased_one(replica.find(ident)) for ident in idents)


class _DeliveryHead(msgspec.Struct):
    """The fields of a delivery record the scan needs (the body is skipped, not decoded)."""

    subscription_id: str
    key: str
    partition: int


@dataclass
class _Found:
    """Deliveries of the erased contacts on the topic: delivery id -> (partition, subscription)."""

    contacts: frozenset[str]
    live: dict[str, tuple[int, str]] = field(default_factory=dict)
    read: int = 0
    _decoder: msgspec.json.Decoder[_DeliveryHead] = field(default_factory=lambda: msgspec.json.Decoder(_DeliveryHead))

    def apply(self, record: Any) -> None:
        self.read += 1
        if record.key is None:
            return
        delivery = record.key.decode(errors="replace")
        if record.value is None:  # a tombstone: gone already
            self.live.pop(delivery, None)
            return
        head = self._decoder.decode(record.value)
        if head.key in self.contacts:
            self.live[delivery] = (record.partition, head.subscription_id)


async def find_deliveries(settings: Settings, contact_ids: Collection[str]) -> dict[str, tuple[int, str]]:
    """The deliveries of ``contact_ids`` on ``<app>.webhook-deliveries`` as of now (read to the end
    offsets it has now): delivery id -> (its partition, its subscription)."""
    found = _Found(frozenset(contact_ids))
    reader = TopicReader(settings, [settings.deliveries_topic], found.apply, "deliveries to forget")
    async with reader:
        if not await reader.assign():
            return {}
        await reader.read_to_end()
    log.info("deliveries topic read for an erasure: %d records, %d deliveries to forget", found.read, len(found.live))
    return found.live


async def forget_deliveries(
    settings: Settings,
    contact_ids: Collection[str],
    delivery_log: DeliveryLog | None = None,
    *,
    regulation_id: str = "",
) -> int:
    """Forget every webhook delivery of ``contact_ids``: a tombstone for each on the partition it
    lives on, a ``forget`` command to the dispatcher owning that partition (a pending delivery
    is not sent nor retried, its lane goes on; one in flight is tombstoned again when it ends), and
    gone from ``delivery_log`` (this process's; the others read the tombstones). Returns how many
    deliveries were forgotten; idempotent (a second call finds none: its tombstones are read)."""
    if not contact_ids:
        return 0
    found = await find_deliveries(settings, contact_ids)
    if found:
        producer = clients.producer(settings, acks="all", enable_idempotence=True, linger_ms=5)
        await producer.start()
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S + len(found) / 1000):
                await _send_forgets(producer, settings, found, regulation_id)
        finally:
            await producer.stop()
    if delivery_log is not None:
        for delivery in found:
            delivery_log.apply(delivery.encode(), None)
    log.info("regulation %s: %d webhook deliveries forgotten", regulation_id or "-", len(found))
    return len(found)


async def _send_forgets(
    producer: AIOKafkaProducer, settings: Settings, found: dict[str, tuple[int, str]], regulation_id: str
) -> None:
    """Tombstones first, then the commands (a dispatcher that restarts in between skips the
    delivery at recovery: the tombstone is read before it)."""
    sent = [
        await producer.send(settings.deliveries_topic, None, key=delivery.encode(), partition=partition)
        for delivery, (partition, _) in found.items()
    ]
    await asyncio.gather(*sent)
    now = int(time.time() * 1000)
    request = f"erase_{regulation_id}" if regulation_id else "erase"
    commands = [
        await producer.send(
            settings.commands_topic,
            encode(
                CommandRecord(
                    op="forget", subscription_id=sub, request_id=request, requested_ms=now, delivery_id=delivery
                )
            ),
            key=sub.encode(),
            partition=partition,
        )
        for delivery, (partition, sub) in found.items()
    ]
    await asyncio.gather(*commands)
