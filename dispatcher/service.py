"""The webhook dispatcher (``scorestream dispatcher``): triggers to subscribers' URLs, signed,
in order per contact, retried, recorded.

A plain aiokafka process (not Faust)::

    <app>.webhooks (1 partition, compacted)      ──► subscriptions, all of them, followed for ever
    triggers (p partitions)      ┐ one group <app>-webhooks, RangeAssignor: partition p of both
    <app>.webhook-commands (p)   ┘ topics on the same process; offsets committed by hand
                                     │
                                     ▼ per trigger x subscription that wants it: a DeliveryRecord
    <app>.webhook-deliveries (p, compacted) ◄── written (acks=all) to partition p before the
                                                trigger's offset is committed; rewritten on every
                                                state change (attempt, next attempt, settled)

Guarantees and rules:

- **At least once.** A delivery's record is durable before its trigger's offset is committed,
  and every pending delivery of partition p is queued again by whoever gets p next (recovery
  reads deliveries partition p to its end when p is assigned). A trigger read again (after a
  crash) or emitted again by the worker makes no second delivery while its delivery id is among
  the partition's latest :data:`SEEN_LIMIT` ids; beyond, receivers deduplicate on
  ``webhook-id`` (the delivery id, the same on every attempt and every redelivery).
- **Order per key.** Deliveries of one subscription for one contact (or account) go out in
  trigger order: the next only after the previous one succeeded or failed for good
  (``dispatcher/schedule.py``). On revocation the dispatcher stops starting attempts and waits
  (at most the request timeout) for those in flight, so the next owner never overlaps with them.
- **Isolation.** Attempts run in their own tasks; the consume loop never waits on HTTP. Each
  subscription has at most ``webhook_concurrency`` requests in flight; lanes and subscriptions
  never wait on each other. A record it cannot read or handle costs that record only: a trigger
  or command goes to the dead-letter topic (with its reason, exception class and coordinates), a
  subscription or delivery record is logged and counted, and an attempt that fails inside the
  dispatcher settles its delivery ``failed`` with the reason.
- **Bounded memory.** At most ``webhook_queue_limit`` deliveries per subscription and partition
  are held in memory (~1.5 KB each with a trigger's body). Beyond, deliveries are *parked*: their
  pending record is written with the Kafka header ``parked: 1`` and nothing is kept in memory;
  when the subscription's queue is down to half, a scan of the deliveries partition (from the
  oldest parked record to the end; headers spare decoding most records) brings back the oldest
  ones, so what is in memory is always the head of each lane. Recovery takes every delivery a
  previous owner held (at most its limit) and parks the rest the same way. A subscription far
  behind catches up by ``webhook_queue_limit`` / 2 deliveries per scan. Plus :data:`SEEN_LIMIT`
  ids per partition for deduplication.
- **Retries.** ``webhook_retry_schedule`` with jitter, or the receiver's ``Retry-After`` on 429
  and 503; timeouts, connection errors and refused destinations are retried like error answers
  (a refused destination never gets a connection: DNS may change, and an operator may fix the
  URL). Spent schedule: the record is ``failed`` with the reason (the dead letter; a ``retry`` or
  ``retry_failed`` command replays it). HTTP 410 fails the delivery and disables the
  subscription; a subscription failing every attempt for ``webhook_disable_after_s`` is disabled
  (WARNING). Deliveries of a disabled subscription are recorded ``failed`` ("subscription
  disabled") without an attempt; of a deleted one, "subscription deleted".
- **Commands** (``CommandRecord`` on the commands topic, handled by the owner of its partition):
  ``test`` queues a ``webhook.test`` delivery on that partition; ``retry`` attempts a delivery
  once more now (a queued one keeps its lane order; a parked one is taken into memory ahead of
  its turn; a settled one is sent alone and stays failed if that fails); ``retry_failed`` sends
  the subscription's failed deliveries of *that* partition created since ``since_ms`` back to
  pending with a fresh schedule (the API sends it to every partition), as many per scan as its
  queue has room for. A command's offset is committed once it is done (for ``retry_failed``:
  its first scan); a crash before re-runs it (test sends are deduplicated, a retry is sent
  again), a crash after leaves what its later scans would have revived failed (ask again).
  ``forget`` (a regulation erased the delivery's contact; the API wrote a tombstone for it
  first): the delivery no longer exists: dropped from memory (its lane goes on), never sent or
  retried again, a record an attempt in flight would write becomes a tombstone, and a tombstone
  is written again once done (so the topic's last record of it is one). Recovery and scans skip a
  tombstoned delivery.
- **Privacy**: the dispatcher reads the privacy list (``<app>.privacy``, :mod:`kafka_io.privacy`)
  to its end before it consumes, then follows it. A trigger about a contact the list restricts at
  the trigger's instant (erased: before the erasure; suppressed: from the suppression on) makes no
  delivery (counted in ``scorestream_events_suppressed_total{door="dispatcher"}``): triggers of an
  erased person still unread on the triggers topic, or read again, are never sent.
- **Subscriptions** are matched as the dispatcher knows them when it reads a trigger (it reads
  the subscriptions topic to its end before consuming). The dispatcher writes subscription
  records too (``failing_since_ms``, disabling) on top of the latest it has read: an API update
  in the same instant can be overwritten (last write wins on the compacted topic).

Signing secrets never reach a log line or a record; logs name subscriptions by id and deliveries
by id with their Kafka coordinates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, ConsumerStoppedError, IllegalStateError, KafkaError

from dispatcher.errors import DispatcherError
from dispatcher.schedule import (
    Entry,
    Picked,
    Revive,
    Scheduler,
    SeenIds,
    Selection,
    after_attempt,
    attempt_summary,
    new_delivery,
    revived,
    settled,
)
from dispatcher.sender import Answer, Sender
from kafka_io import clients
from kafka_io.privacy import PrivacyFollower
from schemas.events import deadletter_headers
from schemas.settings import Settings
from schemas.webhooks import (
    COMMAND_DECODER,
    DELIVERY_DECODER,
    SUBSCRIPTION_DECODER,
    AttemptRecord,
    CommandRecord,
    DeliveryRecord,
    SubscriptionRecord,
    encode,
    url_refusal,
)
from scorestream.delivery import (
    TEST_TYPE,
    Filter,
    delivery_id,
    headers,
    iso,
    payload,
    should_disable,
    trigger_payload,
    wants,
)
from scorestream.privacy import contact_key
from telemetry import metrics
from telemetry.logs import kafka_fields

log = logging.getLogger(__name__)

SEEN_LIMIT = 50_000  # latest delivery ids per partition remembered against duplicates
BATCH_MAX = 500  # records per poll of the triggers and commands topics
FAILING_PERSIST_MS = 5000  # least time between two writes of a subscription's failing_since
REVIVE_MARGIN_MS = 60_000  # a retry scan starts this much before its since_ms (producer clocks)
STATS_EVERY_S = 60.0
TEST_MESSAGE = "A test delivery from scorestream: your endpoint is reachable and verifies signatures."


MAX_DEAD_BYTES = 900_000  # a dead letter fits a record (the producer's default limit: 1,000,000 bytes)


class Unhandled(DispatcherError, ValueError):
    """A trigger or command record the dispatcher cannot read; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def now_ms() -> int:
    return int(time.time() * 1000)


def _hints(headers: Iterable[tuple[str, bytes]] | None) -> tuple[str | None, str | None, bool | None]:
    """The subscription, status and parked mark a delivery record carries as Kafka headers."""
    sub = status = None
    parked: bool | None = None
    for name, value in headers or ():
        if name == "subscription":
            sub = value.decode()
        elif name == "status":
            status = value.decode()
        elif name == "parked":
            parked = value == b"1"
    if status is not None and parked is None:
        parked = False
    return sub, status, parked


@dataclass
class Parked:
    """Deliveries of one subscription from one partition recorded (marked parked) but not held
    in memory."""

    from_offset: int | None = None  # lowest offset of a parked delivery's record
    arrivals: int = 0  # deliveries parked so far (a scan clears parking only if none came meanwhile)


@dataclass
class _Write:
    record: DeliveryRecord
    entry: Entry | None = None  # queue it once written
    parked: tuple[int, str] | None = None  # or note its offset as parked


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.dispatcher.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.dispatcher.on_assigned(assigned)


class Dispatcher:
    """One dispatcher process. ``run()`` until ``stop()``."""

    def __init__(self, settings: Settings, sender: Sender | None = None) -> None:
        self.settings = settings
        self.group_id = f"{settings.app_id}-webhooks"
        self.schedule = tuple(settings.webhook_retry_schedule)
        self.sender = sender or Sender(
            settings.webhook_timeout_s, settings.webhook_max_response_bytes, settings.webhook_allow_private
        )
        self.queue = Scheduler(settings.webhook_concurrency)
        self.limit = settings.webhook_queue_limit
        self.subs: dict[str, SubscriptionRecord] = {}
        self._matchers: list[tuple[SubscriptionRecord, Filter | None]] | None = None
        self._subs_ready = asyncio.Event()
        self._subs_offset: int | None = None
        self._written_subs: dict[str, bytes] = {}
        self._failing: dict[str, int | None] = {}
        self._failing_written: dict[str, int] = {}
        self._seen: dict[int, SeenIds] = {}
        self._forgotten = SeenIds(SEEN_LIMIT)  # deliveries a forget command removed (of erased contacts)
        self.privacy = PrivacyFollower(settings, settings.privacy_topic)
        self._parked: dict[tuple[int, str], Parked] = {}
        self._revives: dict[tuple[int, str], Revive] = {}
        self._revive_generation: Counter[tuple[int, str]] = Counter()
        self._owned: set[int] = set()
        self._partition_tasks: dict[int, asyncio.Task[None]] = {}
        self._scan_wanted: dict[int, asyncio.Event] = {}
        self._admitting: Counter[tuple[int, str]] = Counter()
        self._in_flight: dict[str, Entry] = {}
        self._attempts: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._cmd_read: dict[int, int] = {}
        self._cmd_pending: dict[int, set[int]] = {}
        self._cmd_committed: dict[int, int] = {}
        self._batch_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._rebalancing = False
        self._stopping = False
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._meta: AIOKafkaConsumer | None = None
        self.stats: Counter[str] = Counter()

    # --- life cycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        s = self.settings
        self._producer = clients.producer(s, acks="all", enable_idempotence=True, linger_ms=2)
        self._meta = clients.consumer(s, enable_auto_commit=False)
        await self._producer.start()
        await self._meta.start()
        tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(self._follow_subscriptions(), name="subscriptions"),
            self.privacy.start(),
        ]
        try:
            for ready in (self._subs_ready.wait(), self.privacy.caught_up()):
                waits = [asyncio.create_task(self._stop.wait()), asyncio.create_task(ready)]
                await asyncio.wait(waits, return_when="FIRST_COMPLETED")
                for task in waits:
                    task.cancel()
                if self._stop.is_set():
                    return
            self._consumer = clients.consumer(
                s,
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                partition_assignment_strategy=(RangePartitionAssignor,),
                session_timeout_ms=int(s.session_timeout_s * 1000),
                heartbeat_interval_ms=max(100, int(s.session_timeout_s * 1000 / 3)),
                fetch_max_wait_ms=s.fetch_max_wait_ms,
            )
            await self._consumer.start()
            self._consumer.subscribe([s.topic_triggers, s.commands_topic], listener=_Rebalance(self))
            log.info(
                "webhook dispatcher started: group %s, topics %s and %s, %d subscriptions",
                self.group_id,
                s.topic_triggers,
                s.commands_topic,
                len(self.subs),
            )
            tasks.append(asyncio.create_task(self._schedule_loop(), name="schedule"))
            tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
            await self._consume()
        finally:
            await self._shutdown(tasks)

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        """Stop consuming, let attempts in flight finish (bounded), flush writes, commit, leave."""
        self._stopping = True
        self._wake.set()
        grace = self.settings.webhook_timeout_s + 2.0
        if self._attempts:
            _, late = await asyncio.wait(list(self._attempts), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                log.warning("%d webhook attempts still running at stop: cancelled (they stay pending)", len(late))
        for task in [*tasks, *self._partition_tasks.values()]:
            task.cancel()
        await asyncio.gather(*tasks, *self._partition_tasks.values(), return_exceptions=True)
        if self._background:
            await asyncio.wait(list(self._background), timeout=grace)
        with contextlib.suppress(KafkaError, IllegalStateError, CommitFailedError):
            await self._commit_commands()
        for closer in (self._producer, self._consumer, self._meta):
            if closer is not None:
                with contextlib.suppress(KafkaError):
                    await closer.stop()
        await self.sender.aclose()
        log.info("webhook dispatcher stopped (%s)", dict(self.stats))

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- subscriptions -----------------------------------------------------------------------------

    async def _follow_subscriptions(self) -> None:
        """Read the subscriptions topic from the beginning, then follow it (from where it was, after
        a broker error)."""
        topic = self.settings.webhooks_topic
        tp = TopicPartition(topic, 0)
        while True:
            consumer = clients.consumer(self.settings, enable_auto_commit=False, fetch_max_wait_ms=100)
            try:
                await consumer.start()
                while topic not in await consumer.topics():
                    log.info("waiting for topic %s", topic)
                    await asyncio.sleep(1.0)
                consumer.assign([tp])
                if self._subs_offset is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, self._subs_offset)
                end = (await consumer.end_offsets([tp]))[tp]
                while True:
                    batch = await consumer.getmany(tp, timeout_ms=500)
                    for record in batch.get(tp, []):
                        self._apply_subscription(record.key, record.value, record.offset)
                        self._subs_offset = record.offset + 1
                    if not self._subs_ready.is_set() and await consumer.position(tp) >= end:
                        self._subs_ready.set()
                        log.info("%d webhook subscriptions read from %s", len(self.subs), topic)
            except (KafkaError, OSError) as exc:
                log.warning("reading %s failed (%s: %s); again in 1 s", topic, type(exc).__name__, exc)
                await asyncio.sleep(1.0)
            finally:
                await consumer.stop()

    def _apply_subscription(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        if key is None:
            return
        sub_id = key.decode(errors="replace")
        if value is None:
            if self.subs.pop(sub_id, None) is not None:
                self._matchers = None
                self._failing.pop(sub_id, None)
                self._settle_waiting(sub_id, "subscription deleted")
                log.info("webhook %s deleted [%s@%d]", sub_id, self.settings.webhooks_topic, offset)
            return
        try:
            record = SUBSCRIPTION_DECODER.decode(value)
            self._put_subscription(record, own=self._written_subs.get(sub_id) == value)
        except Exception as exc:  # one subscription it cannot read never stops the others
            self.stats["unreadable_subscriptions"] += 1
            log.warning(
                "unreadable subscription %s at %s@%d: %s: %s",
                sub_id,
                self.settings.webhooks_topic,
                offset,
                type(exc).__name__,
                exc,
            )

    def _put_subscription(self, record: SubscriptionRecord, own: bool) -> None:
        old = self.subs.get(record.id)
        self.subs[record.id] = record
        self._matchers = None
        if not own:  # another writer's view of failing_since is the shared one from now on
            self._failing[record.id] = record.failing_since_ms
        if old is not None and old.enabled and not record.enabled:
            self._settle_waiting(record.id, "subscription disabled")

    def _write_subscription(self, record: SubscriptionRecord) -> None:
        value = encode(record)
        self._written_subs[record.id] = value
        self._put_subscription(record, own=True)
        assert self._producer is not None
        self._spawn(self._send_subscription(record.id, value), f"write {record.id}")

    async def _send_subscription(self, sub_id: str, value: bytes) -> None:
        assert self._producer is not None
        try:
            await self._producer.send_and_wait(self.settings.webhooks_topic, value, key=sub_id.encode())
        except KafkaError as exc:
            log.error("could not write webhook %s to %s: %s", sub_id, self.settings.webhooks_topic, exc)

    def _disable(self, sub_id: str, reason: str) -> None:
        record = self.subs.get(sub_id)
        if record is None or not record.enabled:
            return
        now = now_ms()
        log.warning("webhook %s disabled: %s", sub_id, reason)
        self.stats["disabled"] += 1
        metrics.SUBSCRIPTIONS_DISABLED.inc()
        self._write_subscription(
            msgspec.structs.replace(
                record,
                enabled=False,
                disabled_ms=now,
                disabled_reason=reason,
                failing_since_ms=self._failing.get(sub_id),
                revision=record.revision + 1,
                updated_ms=now,
            )
        )

    def matchers(self) -> list[tuple[SubscriptionRecord, Filter | None]]:
        if self._matchers is None:
            out: list[tuple[SubscriptionRecord, Filter | None]] = []
            for record in self.subs.values():
                try:
                    out.append((record, record.filter()))
                except ValueError as exc:
                    log.warning("webhook %s has an unusable filter (%s): it matches nothing", record.id, exc)
                    out.append((record, None))
            self._matchers = out
        return self._matchers

    def _settle_waiting(self, sub_id: str, reason: str) -> None:
        """Fail the queued deliveries of a disabled or deleted subscription (those in flight are
        settled when their attempt ends; parked ones when a scan brings them back)."""
        now = now_ms()
        waiting = self.queue.waiting_of(sub_id)
        for entry in waiting:
            self.queue.remove(entry)
            self._spawn(self._write_delivery(settled(entry.record, "failed", reason, now)), f"settle {entry.id}")
        if waiting:
            metrics.DELIVERIES.labels("disabled").inc(len(waiting))
            log.info("webhook %s: %d queued deliveries failed (%s)", sub_id, len(waiting), reason)

    # --- consuming triggers and commands ---------------------------------------------------------

    async def _consume(self) -> None:
        assert self._consumer is not None
        while not self._stop.is_set():
            try:
                batches = await self._consumer.getmany(timeout_ms=200, max_records=BATCH_MAX)
            except ConsumerStoppedError:
                return
            if batches:
                async with self._batch_lock:
                    await self._handle(batches)

    async def _handle(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """One poll: deliveries written (and queued or parked), then offsets committed."""
        if self._rebalancing:  # read again from the committed offsets once assigned
            return
        now = now_ms()
        writes: list[_Write] = []
        dead: list[Coroutine[Any, Any, None]] = []
        commits: dict[TopicPartition, int] = {}
        self._admitting.clear()
        for tp, records in batches.items():
            p = tp.partition
            if p not in self._owned or not records:
                continue
            on_record = self._on_trigger if tp.topic == self.settings.topic_triggers else self._on_command
            for record in records:
                try:
                    on_record(p, record, now, writes)
                except Exception as exc:  # one record never costs the others: it is dead-lettered
                    reason, detail = (
                        (exc.reason, exc.detail) if isinstance(exc, Unhandled) else ("processing_error", repr(exc))
                    )
                    if not isinstance(exc, Unhandled):
                        log.exception(
                            "handling %s[%d]@%d failed",
                            record.topic,
                            p,
                            record.offset,
                            extra=kafka_fields(record.topic, p, record.offset),
                        )
                    dead.append(self._dead_letter(record, reason, detail, exc))
            if tp.topic == self.settings.topic_triggers:
                commits[tp] = records[-1].offset + 1
                self._observe_lag(tp, records[-1].offset + 1)
            else:
                self._cmd_read[p] = records[-1].offset + 1
        await self._write_all(writes)
        await self._written_dead(dead)
        self._wake.set()
        await self._commit(commits)
        await self._commit_commands()

    def _on_trigger(self, p: int, msg: Any, now: int, writes: list[_Write]) -> None:
        try:
            trigger = orjson.loads(msg.value)
            trigger_id = str(trigger["id"])
            kind = str(trigger["type"])
            if not isinstance(trigger["at_ms"], int):
                raise ValueError("at_ms is not an integer")
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
            self.stats["unreadable_triggers"] += 1
            raise Unhandled("unreadable_trigger", f"{type(exc).__name__}: {exc}") from exc
        key = msg.key.decode(errors="replace") if msg.key is not None else ""
        if self.privacy.privacy and self._restricted(trigger):
            return
        body: str | None = None
        for sub, flt in self.matchers():
            if flt is None or not wants(flt, trigger):
                continue
            did = delivery_id(trigger_id, sub.id)
            if not self._seen[p].add(did) or did in self._forgotten:
                self.stats["duplicates"] += 1
                continue
            if body is None:
                body = trigger_payload(trigger).decode()
            record = new_delivery(
                delivery_id=did,
                subscription_id=sub.id,
                kind=kind,
                key=key,
                partition=p,
                seq=msg.offset,
                body=body,
                now_ms=now,
                trigger_id=trigger_id,
            )
            self.stats["deliveries"] += 1
            if not sub.enabled:
                writes.append(_Write(settled(record, "failed", "subscription disabled", now)))
                continue
            slot = (p, sub.id)
            parked = self._parked.get(slot)
            if parked is None and self.queue.queued(p, sub.id) + self._admitting[slot] >= self.limit:
                parked = self._parked[slot] = Parked()
                log.info("webhook %s: %d deliveries queued from partition %d; parking the next", sub.id, self.limit, p)
            if parked is not None:
                parked.arrivals += 1
                self.stats["parked"] += 1
                writes.append(_Write(record, parked=slot))
            else:
                self._admitting[slot] += 1
                writes.append(_Write(record, entry=Entry.of(record, now)))

    def _restricted(self, trigger: dict[str, Any]) -> bool:
        """Whether the privacy list restricts the trigger's contact at the trigger's instant (then
        no delivery is made; counted)."""
        contact = trigger.get("contact_id")
        if not isinstance(contact, str):
            return False
        restriction = self.privacy.privacy.get(contact_key(contact))
        decision = None if restriction is None else restriction.decide(int(trigger["at_ms"]), None)
        if decision is None:
            return False
        self.stats["restricted_triggers"] += 1
        metrics.suppressed("dispatcher", self.settings.topic_triggers, decision)
        return True

    def _on_command(self, p: int, msg: Any, now: int, writes: list[_Write]) -> None:
        where = f"{msg.topic}[{p}]@{msg.offset}"
        try:
            cmd = COMMAND_DECODER.decode(msg.value)
        except (msgspec.DecodeError, TypeError) as exc:
            self.stats["unreadable_commands"] += 1
            raise Unhandled("unreadable_command", f"{type(exc).__name__}: {exc}") from exc
        sub = self.subs.get(cmd.subscription_id)
        if cmd.op == "test":
            if sub is None:
                log.warning(
                    "test send %s for unknown webhook %s at %s: skipped", cmd.request_id, cmd.subscription_id, where
                )
                return
            did = delivery_id("test_" + cmd.request_id, sub.id)
            if not self._seen[p].add(did):
                return
            data = {"subscription_id": sub.id, "request_id": cmd.request_id, "message": TEST_MESSAGE}
            record = new_delivery(
                delivery_id=did,
                subscription_id=sub.id,
                kind=TEST_TYPE,
                key=sub.id,
                partition=p,
                seq=msg.offset,
                body=payload(TEST_TYPE, cmd.requested_ms, data).decode(),
                now_ms=now,
                trigger_id=None,
            )
            if sub.enabled:
                writes.append(_Write(record, entry=Entry.of(record, now)))
            else:
                writes.append(_Write(settled(record, "failed", "subscription disabled", now)))
            log.info("test send %s to webhook %s queued as %s (%s)", cmd.request_id, sub.id, did, where)
        elif cmd.op == "retry":
            if cmd.delivery_id is None:
                log.warning("retry without a delivery id at %s: skipped", where)
            elif self.queue.bring_forward(cmd.delivery_id, now):
                self._wake.set()
                log.info("delivery %s: manual retry brought forward (%s)", cmd.delivery_id, where)
            else:
                self._command_task(p, msg.offset, self._retry_settled(p, cmd, where))
        elif cmd.op == "forget":
            self._forget(p, cmd, msg.offset, where)
        elif cmd.op == "retry_failed":
            if sub is None:
                log.warning("retry_failed for unknown webhook %s at %s: skipped", cmd.subscription_id, where)
                return
            since = cmd.since_ms or 0
            slot = (p, sub.id)
            revive = self._revives.get(slot)
            if revive is None:
                revive = self._revives[slot] = Revive(since)
            else:  # a second request before the first was done: the wider window, read again
                revive.since_ms, revive.until, revive.from_offset = min(since, revive.since_ms), None, None
            self._revive_generation[slot] += 1
            revive.commands.append(msg.offset)
            self._cmd_pending.setdefault(p, set()).add(msg.offset)
            self._want_scan(p)
            log.info(
                "webhook %s: failed deliveries since %s on partition %d to retry (%s)", sub.id, iso(since), p, where
            )

    def _forget(self, p: int, cmd: CommandRecord, offset: int, where: str) -> None:
        """A delivery of an erased contact: out of memory and never written again but as a
        tombstone (written once more now, after any record an attempt wrote before)."""
        if cmd.delivery_id is None:
            log.warning("forget without a delivery id at %s: skipped", where)
            return
        self._forgotten.add(cmd.delivery_id)
        entry = self.queue.entries.get(cmd.delivery_id)
        if entry is not None:
            self.queue.remove(entry)  # one in flight ends without effect (its record: a tombstone)
            self._wake.set()
        self.stats["forgotten"] += 1
        self._command_task(p, offset, self._send_tombstone(p, cmd.delivery_id))
        log.info("delivery %s forgotten (%s)", cmd.delivery_id, where)

    async def _send_tombstone(self, p: int, delivery: str) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(self.settings.deliveries_topic, None, key=delivery.encode(), partition=p)

    def _command_task(self, p: int, offset: int, coro: Coroutine[Any, Any, None]) -> None:
        pending = self._cmd_pending.setdefault(p, set())
        pending.add(offset)
        task = self._spawn(coro, f"command {p}@{offset}")
        task.add_done_callback(lambda _: pending.discard(offset))

    async def _retry_settled(self, p: int, cmd: CommandRecord, where: str) -> None:
        """A manual retry of a delivery not in memory: a settled one gets one attempt alone (it
        stays failed if that fails); a parked one joins the queue, due now."""
        assert cmd.delivery_id is not None
        record = await self._latest(p, cmd.delivery_id, cmd.since_ms)
        if record is None or record.subscription_id != cmd.subscription_id:
            log.warning(
                "retry of unknown delivery %s of webhook %s at %s: skipped", cmd.delivery_id, cmd.subscription_id, where
            )
            return
        if p not in self._owned:
            return
        now = now_ms()
        if self.queue.bring_forward(record.id, now):
            pass
        elif record.status == "pending":  # parked: into memory now, due at once (ahead of its turn)
            entry = Entry.of(record, now)
            entry.manual, entry.due_ms = True, now
            self.queue.add(entry)
        else:
            self.queue.add(Entry.once_for(record, now))
        self._wake.set()
        log.info("delivery %s (%s): manual retry queued (%s)", record.id, record.status, where)

    async def _write_all(self, writes: list[_Write]) -> None:
        """Write the batch's deliveries (acks=all); then queue them. A failed write stops the
        process before the trigger's offset is committed (it is read again)."""
        if not writes:
            return
        futures = [await self._send_delivery(w.record, parked=w.parked is not None) for w in writes]
        results = await asyncio.gather(*futures, return_exceptions=True)
        for w, result in zip(writes, results, strict=True):
            if isinstance(result, BaseException):
                raise RuntimeError(
                    f"could not write delivery {w.record.id} to partition {w.record.partition}"
                ) from result
            if w.parked is not None:
                parked = self._parked.get(w.parked)
                if parked is not None:
                    offset = int(result.offset)
                    parked.from_offset = offset if parked.from_offset is None else min(parked.from_offset, offset)
            elif w.entry is not None and w.record.partition in self._owned:
                self.queue.add(w.entry)

    def _dead_letter(self, msg: Any, reason: str, detail: str, exc: BaseException) -> Coroutine[Any, Any, None]:
        """Put a trigger or command record it cannot handle on the dead-letter topic (original bytes,
        reason, exception class, coordinates); awaited before the batch's offsets are committed."""
        self.stats["dead_lettered"] += 1
        metrics.DEAD_LETTERS.labels(msg.topic, reason).inc()
        log.warning(
            "dead-letter %s[%d]@%d: %s: %s",
            msg.topic,
            msg.partition,
            msg.offset,
            reason,
            detail[:300],
            extra=kafka_fields(msg.topic, msg.partition, msg.offset),
        )
        headers = deadletter_headers(reason, detail, msg.topic, msg.partition, msg.offset, exc)
        value = msg.value if isinstance(msg.value, bytes) else b""
        return self._send_dead(msg.key, value[:MAX_DEAD_BYTES], headers)

    async def _send_dead(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(self.settings.topic_deadletter, value, key=key, headers=headers)

    async def _written_dead(self, dead: list[Coroutine[Any, Any, None]]) -> None:
        """Dead letters written (acks=all) before the offsets that cover them are committed; a
        failed write stops the process, as a failed delivery write does (they are read again)."""
        if dead:
            await asyncio.gather(*dead)

    async def _send_delivery(self, record: DeliveryRecord, parked: bool = False) -> asyncio.Future[Any]:
        """Send a delivery's record to its partition. Headers carry what scans filter on without
        decoding; ``parked`` marks a pending delivery not held in memory (a scan brings it back)."""
        assert self._producer is not None
        if record.id in self._forgotten:  # its contact was erased: the record stays a tombstone
            fut_: asyncio.Future[Any] = await self._producer.send(
                self.settings.deliveries_topic, None, key=record.id.encode(), partition=record.partition
            )
            return fut_
        headers = [
            ("subscription", record.subscription_id.encode()),
            ("status", record.status.encode()),
            ("parked", b"1" if parked else b"0"),
        ]
        fut: asyncio.Future[Any] = await self._producer.send(
            self.settings.deliveries_topic,
            encode(record),
            key=record.id.encode(),
            partition=record.partition,
            headers=headers,
        )
        return fut

    async def _write_delivery(self, record: DeliveryRecord) -> bool:
        try:
            await (await self._send_delivery(record))
            return True
        except KafkaError as exc:
            log.error(
                "could not write delivery %s to %s[%d]: %s",
                record.id,
                self.settings.deliveries_topic,
                record.partition,
                exc,
            )
            return False

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets or self._consumer is None:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:  # a rebalance: the next owner reads them again
            log.info("offsets not committed (%s): %s", type(exc).__name__, exc)
        except KafkaError as exc:  # the next commit covers them; a crash meanwhile reads them again
            log.warning("offsets not committed (%s): %s", type(exc).__name__, exc)

    async def _commit_commands(self) -> None:
        """Commands partitions: up to the first command not done yet."""
        offsets: dict[TopicPartition, int] = {}
        for p, read in self._cmd_read.items():
            if p not in self._owned:
                continue
            pending = self._cmd_pending.get(p)
            mark = min(pending) if pending else read
            if self._cmd_committed.get(p) != mark:
                offsets[TopicPartition(self.settings.commands_topic, p)] = mark
        await self._commit(offsets)
        for tp, mark in offsets.items():
            self._cmd_committed[tp.partition] = mark

    # --- rebalances and partitions ---------------------------------------------------------------

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Stop starting attempts; let the batch in hand finish (written, committed) and the
        attempts in flight end, so whoever gets a partition next does not overlap with them."""
        self._rebalancing = True
        async with self._batch_lock:
            with contextlib.suppress(KafkaError, IllegalStateError, CommitFailedError):
                await self._commit_commands()
        if self._attempts:
            await asyncio.wait(list(self._attempts), timeout=self.settings.webhook_timeout_s + 1.0)

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Keep the partitions still ours; recover the new ones (paused until recovered)."""
        assert self._consumer is not None
        parts = {tp.partition for tp in assigned}
        for p in (self._owned | set(self._partition_tasks)) - parts:
            self._drop(p)
        unready = [tp for tp in assigned if tp.partition not in self._owned]
        if unready:
            self._consumer.pause(*unready)
        for p in sorted(parts - self._owned - set(self._partition_tasks)):
            self._scan_wanted[p] = asyncio.Event()
            self._partition_tasks[p] = asyncio.create_task(self._serve_partition(p), name=f"partition {p}")
        self._rebalancing = False
        self._wake.set()
        log.info("webhook partitions assigned: %s", sorted(parts))

    def _observe_lag(self, tp: TopicPartition, next_offset: int) -> None:
        """The triggers partition's lag after a fetch (a metric never fails a batch)."""
        try:
            high = self._consumer.highwater(tp) if self._consumer is not None else None
        except Exception:  # revoked meanwhile, or a consumer without highwaters
            return
        metrics.fetched(metrics.WEBHOOK_LAG, tp.topic, tp.partition, high, next_offset)

    def _drop(self, p: int) -> None:
        metrics.forget(metrics.WEBHOOK_LAG, self.settings.topic_triggers, p)
        task = self._partition_tasks.pop(p, None)
        if task is not None:
            task.cancel()
        self._owned.discard(p)
        dropped = self.queue.drop_partition(p)
        self._seen.pop(p, None)
        self._scan_wanted.pop(p, None)
        for slot in [slot for slot in self._parked if slot[0] == p]:
            del self._parked[slot]
        for slot in [slot for slot in self._revives if slot[0] == p]:
            del self._revives[slot]
        self._cmd_read.pop(p, None)
        self._cmd_pending.pop(p, None)
        self._cmd_committed.pop(p, None)
        log.info("webhook partition %d revoked (%d queued deliveries left to its next owner)", p, dropped)

    async def _serve_partition(self, p: int) -> None:
        """Recover partition ``p``, resume consuming it, then bring parked deliveries back when
        asked."""
        try:
            await self._recover(p)
        except Exception:  # never a silent dead partition: the process stops, its successor recovers
            log.exception("recovering webhook deliveries partition %d failed; stopping", p)
            self.stop()
            return
        self._owned.add(p)
        assert self._consumer is not None
        mine = [tp for tp in self._consumer.assignment() if tp.partition == p]
        self._consumer.resume(*mine)
        self._wake.set()
        wanted = self._scan_wanted[p]
        while True:
            await wanted.wait()
            wanted.clear()
            try:
                await self._refill(p)
            except (KafkaError, OSError) as exc:
                log.warning("scan of deliveries partition %d failed (%s); again in 1 s", p, exc)
                await asyncio.sleep(1.0)
                wanted.set()
            except Exception:  # a bug must not end the partition's scans for ever
                self.stats["scan_errors"] += 1
                log.exception("scan of deliveries partition %d failed; again in 5 s", p)
                await asyncio.sleep(5.0)
                wanted.set()

    def _want_scan(self, p: int) -> None:
        event = self._scan_wanted.get(p)
        if event is not None:
            event.set()

    async def _scan(self, p: int, start: int | None, end: int | None = None) -> AsyncIterator[Any]:
        """Records of deliveries partition ``p`` from ``start`` (None: the beginning) up to ``end``
        (None: the end offset now)."""
        tp = TopicPartition(self.settings.deliveries_topic, p)
        consumer = clients.consumer(
            self.settings,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=8 << 20,
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            if end is None:
                end = (await consumer.end_offsets([tp]))[tp]
            if start is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
                for record in batch.get(tp, []):
                    if record.offset >= end:
                        return
                    yield record
        finally:
            await consumer.stop()

    async def _end_offset(self, p: int) -> int:
        assert self._meta is not None
        tp = TopicPartition(self.settings.deliveries_topic, p)
        return int((await self._meta.end_offsets([tp]))[tp])

    async def _offset_at(self, p: int, ms: int) -> int:
        assert self._meta is not None
        tp = TopicPartition(self.settings.deliveries_topic, p)
        found = (await self._meta.offsets_for_times({tp: max(0, ms)}))[tp]
        return int(found.offset) if found is not None else await self._end_offset(p)

    async def _latest(self, p: int, delivery: str, created_ms: int | None = None) -> DeliveryRecord | None:
        """The latest record of ``delivery`` on partition ``p``, read from its creation (less the
        producers' clock margin) when known, else from the beginning."""
        key = delivery.encode()
        value: bytes | None = None
        start = None if created_ms is None else await self._offset_at(p, created_ms - REVIVE_MARGIN_MS)
        async for record in self._scan(p, start):
            if record.key == key:
                value = record.value
        return None if value is None else DELIVERY_DECODER.decode(value)

    async def _recover(self, p: int) -> None:
        """Read deliveries partition ``p`` to its end: queue its pending deliveries (at most
        ``webhook_queue_limit`` per subscription, the oldest; the rest parked) and remember its latest ids."""
        started = time.monotonic()
        seen = self._seen[p] = SeenIds(SEEN_LIMIT)
        selection = Selection(self.limit, skip=self._in_flight.__contains__, recovery=True)
        count = 0
        async for record in self._scan(p, None):
            count += 1
            if record.key is None:
                continue
            delivery = record.key.decode(errors="replace")
            seen.add(delivery)
            self._offer(selection, p, record, delivery)
        now = now_ms()
        queued = parked = 0
        for sub, picked in selection.result().items():
            for record_, _ in picked.records:
                queued += self.queue.add(Entry.of(record_, now))
            if picked.parked_from is not None:
                self._parked[(p, sub)] = Parked(from_offset=picked.parked_from)
                parked += 1
        log.info(
            "webhook deliveries partition %d recovered in %.1f s: %d records read, %d pending deliveries queued, "
            "%d subscriptions with parked deliveries",
            p,
            time.monotonic() - started,
            count,
            queued,
            parked,
        )

    def _offer(self, selection: Selection, p: int, record: Any, delivery: str) -> None:
        """A scanned delivery record to ``selection``; one it cannot read is logged and counted
        (it stays on the deliveries topic as it is) and the scan goes on."""
        try:
            selection.offer(record.offset, delivery, record.value, *_hints(record.headers))
        except Exception as exc:
            self.stats["unreadable_deliveries"] += 1
            log.error(
                "unreadable delivery %s at %s[%d]@%d skipped: %s: %s",
                delivery,
                self.settings.deliveries_topic,
                p,
                record.offset,
                type(exc).__name__,
                exc,
            )

    async def _refill(self, p: int) -> None:
        """Bring parked deliveries of partition ``p`` back into memory for the subscriptions whose
        queue is down to half, and failed ones a retry_failed asks for (within the room)."""
        limit = self.limit
        parked_subs = {sub for (pp, sub) in self._parked if pp == p and self.queue.queued(p, sub) <= limit // 2}
        revive_subs = {sub for (pp, sub) in self._revives if pp == p and self.queue.queued(p, sub) < limit}
        subs = sorted(parked_subs | revive_subs)
        if not subs:
            return
        async with self._batch_lock:  # no parked write in flight: the arrivals counted are all below `end`
            arrivals = {sub: self._parked[(p, sub)].arrivals if (p, sub) in self._parked else 0 for sub in subs}
            end = await self._end_offset(p)
        starts, revive, generation, commands = await self._scan_plan(p, subs, end)
        room = {sub: limit - self.queue.queued(p, sub) for sub in subs}
        self.queue.watch(p)
        removed = self.queue.removed_since_watch(p)
        selection = Selection(
            room,
            skip=lambda d: d in self.queue.entries or d in removed or d in self._in_flight or d in self._forgotten,
            subscriptions=subs,
            revive=revive,
        )
        try:
            if starts:
                async for record in self._scan(p, min(starts), end):
                    if record.key is not None:
                        self._offer(selection, p, record, record.key.decode(errors="replace"))
        finally:
            removed = self.queue.unwatch(p)
        now = now_ms()
        result = selection.result()
        back, revived_records = self._brought_back(subs, result, removed, now)
        # revived records are written before they can be attempted (an attempt's record must come after)
        written = await asyncio.gather(*(self._write_delivery(r) for r in revived_records))
        failed_writes = {r.id for r, ok in zip(revived_records, written, strict=True) if not ok}
        queued = sum(self.queue.add(Entry.of(r, now)) for r in back if r.id not in failed_writes)
        for sub in subs:
            self._scanned(p, sub, result.get(sub, Picked([], None, None)), arrivals[sub], end)
            if sub in revive:
                self._revive_scanned(p, sub, result.get(sub, Picked([], None, None)), generation[sub], commands[sub])
        self._wake.set()
        log.info(
            "deliveries partition %d scanned up to offset %d for %d subscriptions: %d deliveries back in memory "
            "(%d failed ones revived)",
            p,
            end,
            len(subs),
            queued,
            len(revived_records),
        )

    async def _scan_plan(
        self, p: int, subs: list[str], end: int
    ) -> tuple[list[int], dict[str, Revive], dict[str, int], dict[str, list[int]]]:
        """Where a refill scan of partition ``p`` starts (one offset per parked or revived
        subscription), and for each revive: itself (bounded by ``end``), its generation, its commands."""
        starts: list[int] = []
        revive: dict[str, Revive] = {}
        generation: dict[str, int] = {}
        commands: dict[str, list[int]] = {}
        for sub in subs:
            parked = self._parked.get((p, sub))
            if parked is not None and parked.from_offset is not None:
                starts.append(parked.from_offset)
            found = self._revives.get((p, sub))
            if found is not None:
                if found.until is None:
                    found.until = end
                if found.from_offset is None:
                    found.from_offset = await self._offset_at(p, found.since_ms - REVIVE_MARGIN_MS)
                starts.append(found.from_offset)
                revive[sub] = found
                generation[sub] = self._revive_generation[(p, sub)]
                commands[sub] = list(found.commands)
        return starts, revive, generation, commands

    def _brought_back(
        self, subs: list[str], result: dict[str, Picked], removed: set[str], now: int
    ) -> tuple[list[DeliveryRecord], list[DeliveryRecord]]:
        """The records a scan picked that are not queued or removed meanwhile (revived ones made
        pending as of ``now``), and the revived ones among them."""
        back: list[DeliveryRecord] = []
        revived_records: list[DeliveryRecord] = []
        for sub in subs:
            for record, is_revived in result[sub].records if sub in result else []:
                if record.id in self.queue.entries or record.id in removed:
                    continue
                if is_revived:
                    record = revived(record, now)
                    revived_records.append(record)
                back.append(record)
        return back, revived_records

    def _scanned(self, p: int, sub: str, picked: Picked, arrivals: int, end: int) -> None:
        """After a scan: where the next one starts for ``sub``'s parked deliveries (none left:
        forgotten; more parked meanwhile than the ``arrivals`` counted before: from ``end``)."""
        slot = (p, sub)
        parked = self._parked.get(slot)
        grew = (parked.arrivals if parked is not None else 0) != arrivals
        if picked.parked_from is None and not grew:
            self._parked.pop(slot, None)
        else:
            parked = self._parked.setdefault(slot, Parked())
            parked.from_offset = min(x for x in (picked.parked_from, end if grew else None) if x is not None)

    def _revive_scanned(self, p: int, sub: str, picked: Picked, generation: int, commands: list[int]) -> None:
        """After a scan that served ``sub``'s retry_failed: its commands are done; the revive ends,
        or goes on from where the scan stopped (unless asked again meanwhile)."""
        slot = (p, sub)
        found = self._revives.get(slot)
        if found is None:
            return
        for offset in commands:  # the commands read before this scan are done
            found.commands.remove(offset)
            self._cmd_pending.get(p, set()).discard(offset)
        if self._revive_generation[slot] != generation:
            return  # asked again meanwhile: the next scan starts over
        if picked.revive_from is None:
            del self._revives[slot]
            self._revive_generation.pop(slot, None)
        else:
            found.from_offset = picked.revive_from

    # --- attempts --------------------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        while True:
            self._wake.clear()
            wait_s: float | None = None
            if not self._rebalancing and not self._stopping:
                now = now_ms()
                started = self.queue.take_due(now)
                for entry in started:
                    self._in_flight[entry.id] = entry
                    task = asyncio.create_task(self._attempt(entry), name=f"attempt {entry.id}")
                    self._attempts.add(task)
                    task.add_done_callback(self._attempts.discard)
                if len(started) >= 1000:
                    continue
                due = self.queue.next_due_ms()
                wait_s = None if due is None else max(0.0, (due - now_ms()) / 1000)
            try:
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _attempt(self, entry: Entry) -> None:
        """One attempt; whatever fails inside the dispatcher (not the receiver: that is an
        outcome) settles the delivery ``failed`` with the reason, so its lane goes on (a
        ``retry`` command replays it)."""
        try:
            await self._attempt_once(entry)
        except Exception as exc:
            self.stats["attempt_errors"] += 1
            record = entry.record
            log.exception(
                "delivery %s (%s[%d]) failed inside the dispatcher",
                record.id,
                self.settings.deliveries_topic,
                record.partition,
            )
            if not entry.in_flight:  # finished already: the failure came after its record was written
                return
            now = now_ms()
            self._in_flight.pop(record.id, None)
            new = settled(record, "failed", f"dispatcher error: {type(exc).__name__}: {exc}"[:500], now)
            self.queue.finish(entry, new, None, now)
            self._wake.set()
            self._spawn(self._write_delivery(new), f"settle {record.id}")

    async def _attempt_once(self, entry: Entry) -> None:
        record = entry.record
        sub = self.subs.get(record.subscription_id)
        started = now_ms()
        answer: Answer | None = None
        due: int | None = None
        try:
            if sub is None:
                new = settled(record, "failed", "subscription deleted", started)
                metrics.DELIVERIES.labels("disabled").inc()
            elif not sub.enabled:
                new = settled(record, "failed", "subscription disabled", started)
                metrics.DELIVERIES.labels("disabled").inc()
            else:
                answer = await self._post(sub, record, started)
                attempt = AttemptRecord(
                    at_ms=started,
                    outcome=answer.outcome,
                    latency_ms=answer.latency_ms,
                    status_code=answer.status_code,
                    error=answer.error,
                    response=answer.response,
                    manual=entry.manual,
                )
                new, due = after_attempt(
                    record,
                    attempt,
                    schedule=self.schedule,
                    draw=random.random(),
                    retry_after_s=answer.retry_after_s,
                    now_ms=now_ms(),
                    once=entry.once,
                )
            # the subscription's next request need not wait for this record; the lane's does
            self.queue.answered(entry)
            self._wake.set()
            await self._write_delivery(new)
        finally:
            self._in_flight.pop(record.id, None)
        self.queue.finish(entry, new, due, now_ms())
        self._wake.set()
        slot = (record.partition, record.subscription_id)
        if slot in self._parked and self.queue.queued(*slot) <= self.limit // 2:
            self._want_scan(record.partition)
        if sub is not None and answer is not None:
            self._observe(sub, entry, new, answer, due)

    async def _post(self, sub: SubscriptionRecord, record: DeliveryRecord, now: int) -> Answer:
        refusal = url_refusal(sub.url, self.settings.webhook_allow_private)
        if refusal is not None:
            return Answer("refused", 0.0, error=refusal)
        secrets = sub.signing_secrets(now)
        if not secrets:
            return Answer("refused", 0.0, error="the subscription has no active signing secret")
        body = record.body.encode()
        try:
            return await self.sender.post(sub.url, headers(secrets, record.id, now // 1000, body), body)
        except Exception as exc:  # an attempt must end with a record, whatever went wrong
            log.warning("delivery %s to webhook %s: unexpected error", record.id, sub.id, exc_info=True)
            return Answer("connection_error", 0.0, error=f"{type(exc).__name__}: {exc}"[:300])

    def _observe(
        self, sub: SubscriptionRecord, entry: Entry, new: DeliveryRecord, answer: Answer, due: int | None
    ) -> None:
        """Log the attempt; keep failing_since; disable on 410."""
        where = f"{self.settings.deliveries_topic}[{new.partition}] seq {new.seq}"
        self.stats[f"attempts_{answer.outcome}"] += 1
        metrics.ATTEMPTS.labels(answer.outcome).inc()
        metrics.ATTEMPT_DURATION.observe(answer.latency_ms / 1000)
        if answer.outcome == "success":
            self._failing[sub.id] = None
            if new.status == "succeeded":
                self.stats["succeeded"] += 1
                metrics.DELIVERIES.labels("delivered").inc()
            log.debug(
                "delivery %s to webhook %s: %s in %.0f ms (%s)",
                new.id,
                sub.id,
                answer.status_code,
                answer.latency_ms,
                where,
            )
            return
        if self._failing.get(sub.id) is None:
            self._failing[sub.id] = new.attempts[-1].at_ms if new.attempts else now_ms()
        detail = attempt_summary(new.attempts[-1])
        if answer.outcome == "gone":
            self._disable(sub.id, "the receiver answered 410 Gone")
        if due is not None:
            metrics.DELIVERIES.labels("retried").inc()
            log.info(
                "delivery %s to webhook %s failed (%s), attempt %d; next in %.1f s (%s)",
                new.id,
                sub.id,
                detail,
                new.attempt_count,
                (due - now_ms()) / 1000,
                where,
            )
        elif new.status == "failed":
            self.stats["failed"] += 1
            metrics.DELIVERIES.labels("failed").inc()
            log.warning("delivery %s to webhook %s failed for good: %s (%s)", new.id, sub.id, new.reason, where)
        else:
            log.info("delivery %s to webhook %s: manual attempt failed (%s) (%s)", new.id, sub.id, detail, where)

    # --- housekeeping ----------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        last_stats = time.monotonic()
        disable_after_ms = int(self.settings.webhook_disable_after_s * 1000)
        while True:
            await asyncio.sleep(1.0)
            self.sender.prune()
            now = now_ms()
            for sub_id, since in list(self._failing.items()):
                record = self.subs.get(sub_id)
                if record is None or not record.enabled:
                    continue
                if since is not None and should_disable(since, now, disable_after_ms):
                    days = (now - since) / 86_400_000
                    self._disable(sub_id, f"failing since {iso(since)} for {days:.1f} days")
                elif (
                    record.failing_since_ms != since
                    and now - self._failing_written.get(sub_id, 0) >= FAILING_PERSIST_MS
                ):
                    self._failing_written[sub_id] = now
                    self._write_subscription(
                        msgspec.structs.replace(
                            record, failing_since_ms=since, revision=record.revision + 1, updated_ms=now
                        )
                    )
            for p, sub in [*self._parked, *self._revives]:
                if self.queue.queued(p, sub) <= self.limit // 2 or (p, sub) in self._revives:
                    self._want_scan(p)
            if not self._rebalancing and not self._batch_lock.locked():
                async with self._batch_lock:
                    with contextlib.suppress(KafkaError):
                        await self._commit_commands()
            if time.monotonic() - last_stats >= STATS_EVERY_S:
                last_stats = time.monotonic()
                log.info(
                    "webhooks: partitions %s, %d queued, %d in flight, %d parked slots; %s",
                    sorted(self._owned),
                    len(self.queue),
                    len(self._in_flight),
                    len(self._parked),
                    dict(self.stats),
                )


def main(settings: Settings | None = None) -> None:
    """``scorestream dispatcher``: run until SIGTERM or SIGINT."""
    settings = settings or Settings()

    async def go() -> None:
        dispatcher = Dispatcher(settings)
        metrics.scraped(metrics.WEBHOOK_QUEUE, lambda: [(len(dispatcher.queue),)])
        metrics.scraped(metrics.WEBHOOK_IN_FLIGHT, lambda: [(len(dispatcher._in_flight),)])
        metrics.serve(settings, "dispatcher")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, dispatcher.stop)
        await dispatcher.run()

    asyncio.run(go())
