"""The Kafka side of the webhook API: the subscription store, the delivery log, the command sender.

- :class:`KafkaSubscriptionStore` follows ``<app>.webhooks`` (one compacted partition) into
  memory and writes to it. A write returns once this process's own follower has applied it
  (read-your-writes: a ``GET`` right after a ``POST`` sees it), with the record it replaced, so
  a caller can tell whether someone else (another API process, the dispatcher) wrote in between.
- :class:`DeliveryLog` follows every partition of ``<app>.webhook-deliveries`` and keeps, per
  subscription, the latest :data:`MAX_DELIVERIES_PER_SUBSCRIPTION` deliveries (without their
  bodies, which the API never shows).
- :class:`KafkaCommands` sends :class:`~schemas.webhooks.CommandRecord` s to
  ``<app>.webhook-commands`` partitions for the dispatchers that own them.

The producer is started on the first write, so the API starts (and serves everything else)
while the broker is away; a write then fails with :class:`WriteFailed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from api.errors import ApiError
from api.follow import Following
from kafka_io import clients
from kafka_io.clients import KafkaConnection
from kafka_io.reader import follow
from schemas.webhooks import (
    DELIVERY_DECODER,
    SUBSCRIPTION_DECODER,
    CommandRecord,
    DeliveryRecord,
    DeliveryStatus,
    SubscriptionRecord,
    encode,
)

log = logging.getLogger(__name__)
FETCH_MAX_WAIT_MS = 200  # how often an idle follower polls; a write's own record wakes it at once
WRITE_TIMEOUT_S = 10.0  # the broker's acknowledgement of one write
VISIBLE_TIMEOUT_S = 5.0  # from the acknowledgement until this process's follower has applied it
# Per subscription, the latest deliveries kept in memory (by creation time). A record without its
# body is some 0.5-1 KiB, at most ~12 KiB with 20 attempts carrying 512-character answers: 1000
# deliveries are about 1 MiB per subscription, 12 MiB at worst.
MAX_DELIVERIES_PER_SUBSCRIPTION = 1000
_RECENT_WRITES = 256  # offsets whose replaced record a late writer can still look up
_TRIM_SLACK = 100  # trim a subscription's deliveries once it holds this many more than the maximum


class WriteFailed(ApiError):
    """A write to a webhook topic failed or was not acknowledged in time (it may still land):
    503 ``unavailable`` (the routes say what they were writing)."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "unavailable", message)


class NotVisible(ApiError):
    """A write was acknowledged but this process's follower has not applied it in time: 503
    ``unavailable`` (the routes say what they were writing, or answer anyway)."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "unavailable", message)


@dataclass(frozen=True, slots=True)
class Written:
    """What a store write replaced: ``previous`` (None: nothing, a new id or a deleted one).
    ``known`` is False when the follower never saw the write itself (a newer record of the same
    subscription replaced it first), so what it replaced is unknown."""

    previous: SubscriptionRecord | None
    known: bool = True


class SubscriptionStore(Protocol):
    """The subscriptions, read from memory, written through to the topic."""

    caught_up: asyncio.Event
    error: str | None

    def get(self, sub_id: str) -> SubscriptionRecord | None: ...

    def all(self) -> list[SubscriptionRecord]: ...

    async def write(self, sub_id: str, record: SubscriptionRecord | None) -> Written:
        """Store ``record`` (None deletes) and return once it is visible to :meth:`get`."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class CommandSender(Protocol):
    async def partitions(self) -> int:
        """How many partitions the commands topic has."""
        ...

    async def send(self, partition: int, command: CommandRecord) -> None: ...


@dataclass
class LazyProducer:
    """One idempotent ``acks=all`` producer shared by the webhook writers, started on first use."""

    kafka: KafkaConnection
    _producer: AIOKafkaProducer | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = clients.producer(
                    self.kafka,
                    acks="all",
                    enable_idempotence=True,
                    request_timeout_ms=int(WRITE_TIMEOUT_S * 1000),
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def send(self, topic: str, key: bytes, value: bytes | None, partition: int | None = None) -> Any:
        """Send one record and wait for the broker's acknowledgement (its RecordMetadata)."""
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                producer = await self.get()
                return await producer.send_and_wait(topic, value, key=key, partition=partition)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("write to %s failed: %s: %s", topic, type(exc).__name__, exc)
            raise WriteFailed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc

    async def stop(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(KafkaError, OSError):
                await self._producer.stop()
            self._producer = None


@dataclass
class KafkaSubscriptionStore(Following):
    """In-memory view of the subscriptions topic, written through ``producer``."""

    kafka: KafkaConnection
    topic: str
    producer: LazyProducer
    records: dict[str, SubscriptionRecord] = field(default_factory=dict)
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None
    offset: int = -1  # the last offset applied
    _waiters: dict[int, asyncio.Future[Written]] = field(default_factory=dict)
    # What the latest writes replaced, by offset: the follower may apply a write before its
    # writer hears the broker's acknowledgement.
    _recent: OrderedDict[int, Written] = field(default_factory=OrderedDict)
    _task: asyncio.Task[None] | None = None

    def get(self, sub_id: str) -> SubscriptionRecord | None:
        return self.records.get(sub_id)

    def all(self) -> list[SubscriptionRecord]:
        return list(self.records.values())

    def apply(self, key: bytes, value: bytes | None, offset: int) -> None:
        """Apply the record at ``offset``; an unreadable value leaves the subscription as it was."""
        sub_id = key.decode()
        previous = self.records.get(sub_id)
        if value is None:
            self.records.pop(sub_id, None)
        else:
            try:
                self.records[sub_id] = SUBSCRIPTION_DECODER.decode(value)
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                log.warning("unreadable subscription record %s at %s@%d: %s", sub_id, self.topic, offset, exc)
        self.offset = offset
        self._recent[offset] = Written(previous)
        if len(self._recent) > _RECENT_WRITES:
            self._recent.popitem(last=False)
        if self._waiters:
            self._wake(offset, previous)

    def _wake(self, offset: int, previous: SubscriptionRecord | None) -> None:
        for at in [at for at in self._waiters if at <= offset]:
            waiter = self._waiters.pop(at)
            if not waiter.done():
                waiter.set_result(Written(previous) if at == offset else Written(None, known=False))

    def apply_record(self, record: Any) -> None:
        if record.key is not None:
            self.apply(record.key, record.value, record.offset)

    async def follow(self) -> None:
        await follow(self, self.kafka, [self.topic], self.apply_record, "webhook subscriptions", FETCH_MAX_WAIT_MS)

    async def write(self, sub_id: str, record: SubscriptionRecord | None) -> Written:
        value = None if record is None else encode(record)
        meta = await self.producer.send(self.topic, sub_id.encode(), value)
        if meta.offset <= self.offset:
            # Applied already; what it replaced is unknown only if the follower has read well
            # past it since (or re-read the topic after a broker error and not reached it yet).
            return self._recent.get(meta.offset, Written(None, known=False))
        waiter = self._waiters.setdefault(meta.offset, asyncio.get_running_loop().create_future())
        try:
            async with asyncio.timeout(VISIBLE_TIMEOUT_S):
                return await waiter
        except TimeoutError:
            raise NotVisible(
                f"written at {self.topic}@{meta.offset} but not read back within {VISIBLE_TIMEOUT_S:g} s"
            ) from None
        finally:
            self._waiters.pop(meta.offset, None)


def _newest_first(record: DeliveryRecord) -> tuple[int, str]:
    return (-record.created_ms, record.id)


@dataclass
class DeliveryLog(Following):
    """The latest deliveries of each subscription, from every partition of the deliveries topic.

    Keeps at most ``per_subscription`` deliveries per subscription, the most recently created
    (older ones are dropped from memory, not from the topic), without their bodies.
    """

    kafka: KafkaConnection
    topic: str
    per_subscription: int = MAX_DELIVERIES_PER_SUBSCRIPTION
    by_id: dict[str, DeliveryRecord] = field(default_factory=dict)
    by_subscription: dict[str, dict[str, DeliveryRecord]] = field(default_factory=dict)
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None
    _task: asyncio.Task[None] | None = None

    def apply(self, key: bytes, value: bytes | None, where: str = "") -> None:
        delivery_id = key.decode()
        old = self.by_id.pop(delivery_id, None)
        if old is not None:
            self.by_subscription.get(old.subscription_id, {}).pop(delivery_id, None)
        if value is None:
            return
        try:
            record = msgspec.structs.replace(DELIVERY_DECODER.decode(value), body="")
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            log.warning("unreadable delivery record %s at %s: %s", delivery_id, where or self.topic, exc)
            return
        self.by_id[delivery_id] = record
        mine = self.by_subscription.setdefault(record.subscription_id, {})
        mine[delivery_id] = record
        if len(mine) > self.per_subscription + _TRIM_SLACK:
            for dropped in sorted(mine.values(), key=_newest_first)[self.per_subscription :]:
                del mine[dropped.id]
                del self.by_id[dropped.id]

    def apply_record(self, record: Any) -> None:
        if record.key is not None:
            self.apply(record.key, record.value, f"{record.topic}[{record.partition}]@{record.offset}")

    async def follow(self) -> None:
        await follow(self, self.kafka, [self.topic], self.apply_record, "webhook deliveries", FETCH_MAX_WAIT_MS)

    def get(self, delivery_id: str) -> DeliveryRecord | None:
        return self.by_id.get(delivery_id)

    def page(
        self, sub_id: str, status: DeliveryStatus | None, limit: int, before: DeliveryRecord | None
    ) -> list[DeliveryRecord]:
        """A subscription's deliveries newest first (by creation, then id), those after ``before``
        in that order, with ``status`` if given."""
        records: Iterable[DeliveryRecord] = self.by_subscription.get(sub_id, {}).values()
        if status is not None:
            records = (r for r in records if r.status == status)
        if before is not None:
            cursor = _newest_first(before)
            records = (r for r in records if _newest_first(r) > cursor)
        return sorted(records, key=_newest_first)[:limit]


@dataclass
class KafkaCommands:
    """Commands for the dispatchers, keyed by subscription id, to the partition the caller picks."""

    topic: str
    producer: LazyProducer

    async def partitions(self) -> int:
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                found = await (await self.producer.get()).partitions_for(self.topic)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise WriteFailed(f"no partitions for {self.topic}: {type(exc).__name__}: {exc}") from exc
        return len(found)

    async def send(self, partition: int, command: CommandRecord) -> None:
        meta = await self.producer.send(self.topic, command.subscription_id.encode(), encode(command), partition)
        log.info(
            "webhook command %s for %s sent to %s[%d]@%d (request %s)",
            command.op,
            command.subscription_id,
            self.topic,
            partition,
            meta.offset,
            command.request_id,
        )
