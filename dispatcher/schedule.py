"""The webhook dispatcher's bookkeeping, without I/O: delivery records' state changes, the
in-memory queue that orders attempts, and what a scan of a deliveries partition brings back.

Rules kept here (``dispatcher/service.py`` does the Kafka and HTTP around them):

- **Order.** Deliveries of one subscription for one key (a contact or account id) form a *lane*,
  ordered by ``seq`` (the trigger's offset in its partition). Only the lowest ``seq`` of a lane is
  ever attempted, and never two of a lane at once: a delivery goes out only after every earlier
  one of its lane succeeded or failed for good. Lanes never wait on each other.
- **Concurrency.** At most ``concurrency`` attempts per subscription are in flight; due deliveries
  of a subscription at its limit wait in that subscription's ready queue only (other
  subscriptions are served meanwhile).
- **Bounded memory.** At most ``limit`` deliveries of one subscription from one partition are held
  in memory (``Scheduler.queued``). The dispatcher *parks* the rest: their pending records are on
  the deliveries topic, and a later scan (:class:`Selection`) brings back the lowest ``seq``
  first, so what is in memory is always a prefix of a lane.
- **State changes.** :func:`after_attempt` is the only way an attempt changes a delivery; every
  change produces the whole new record (the topic is compacted on the delivery id).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import msgspec

from schemas.webhooks import (
    DELIVERY_DECODER,
    MAX_ATTEMPTS_KEPT,
    AttemptRecord,
    DeliveryRecord,
    DeliveryStatus,
)
from scorestream.delivery import TEST_TYPE, retry_delay_s

TEST_LANE = "\x00test"  # test sends of a subscription: a lane of their own, ordered by command offset
ONCE_LANE = "\x00once:"  # a manual retry of a settled delivery: alone in its lane

LaneKey = tuple[int, str, str]  # partition, subscription id, ordering key


# --- state changes -------------------------------------------------------------------------------


def new_delivery(
    *,
    delivery_id: str,
    subscription_id: str,
    kind: str,
    key: str,
    partition: int,
    seq: int,
    body: str,
    now_ms: int,
    trigger_id: str | None,
) -> DeliveryRecord:
    """A pending delivery, due now."""
    return DeliveryRecord(
        id=delivery_id,
        subscription_id=subscription_id,
        type=kind,
        key=key,
        partition=partition,
        seq=seq,
        body=body,
        created_ms=now_ms,
        updated_ms=now_ms,
        trigger_id=trigger_id,
        next_attempt_ms=now_ms,
    )


def settled(record: DeliveryRecord, status: DeliveryStatus, reason: str | None, now_ms: int) -> DeliveryRecord:
    """``record`` finished without a further attempt (failed: ``reason`` says why)."""
    return msgspec.structs.replace(record, status=status, reason=reason, next_attempt_ms=None, updated_ms=now_ms)


def revived(record: DeliveryRecord, now_ms: int) -> DeliveryRecord:
    """A failed delivery sent back to pending with a fresh retry schedule, due now (its
    ``attempt_count`` keeps counting)."""
    return msgspec.structs.replace(
        record, status="pending", reason=None, scheduled_attempts=0, next_attempt_ms=now_ms, updated_ms=now_ms
    )


def attempt_summary(attempt: AttemptRecord) -> str:
    if attempt.status_code is not None:
        return f"HTTP {attempt.status_code}"
    return f"{attempt.outcome}: {attempt.error}" if attempt.error else attempt.outcome


def after_attempt(
    record: DeliveryRecord,
    attempt: AttemptRecord,
    *,
    schedule: tuple[float, ...],
    draw: float,
    retry_after_s: float | None,
    now_ms: int,
    once: bool = False,
) -> tuple[DeliveryRecord, int | None]:
    """The delivery after ``attempt``, and when it is due next (None: it leaves the queue).

    Success settles it; 410 fails it (the caller disables the subscription). Any other outcome
    counts against the retry schedule: the next attempt after the schedule's delay (or the
    receiver's ``Retry-After``), or, when the schedule is spent, failed for good (the dead letter,
    replayable by a retry command). A ``once`` attempt (a manual retry of a settled delivery)
    does not touch the schedule: on failure the delivery is failed.
    """
    attempts = [*record.attempts, attempt][-MAX_ATTEMPTS_KEPT:]
    done = msgspec.structs.replace(record, attempts=attempts, attempt_count=record.attempt_count + 1, updated_ms=now_ms)
    if attempt.outcome == "success":
        return settled(done, "succeeded", None, now_ms), None
    if attempt.outcome == "gone":
        reason = "the receiver answered 410 Gone: subscription disabled"
        return settled(done, "failed", reason, now_ms), None
    if once:
        return settled(done, "failed", f"manual retry failed ({attempt_summary(attempt)})", now_ms), None
    made = record.scheduled_attempts + 1
    delay = retry_delay_s(schedule, made, draw, retry_after_s)
    if delay is None:
        reason = f"retry schedule spent after {made} attempts (last: {attempt_summary(attempt)})"
        return settled(msgspec.structs.replace(done, scheduled_attempts=made), "failed", reason, now_ms), None
    due = now_ms + math.ceil(delay * 1000)
    return msgspec.structs.replace(done, scheduled_attempts=made, next_attempt_ms=due), due


# --- the queue -----------------------------------------------------------------------------------


def lane_of(record: DeliveryRecord) -> LaneKey:
    key = TEST_LANE if _is_test(record) else record.key
    return (record.partition, record.subscription_id, key)


@dataclass(eq=False, slots=True)
class Entry:
    """A delivery in memory: its latest record and when it is due."""

    record: DeliveryRecord
    due_ms: int
    lane: LaneKey
    manual: bool = False  # the next attempt was asked for over the API
    once: bool = False  # one manual attempt of a settled delivery, then it leaves memory
    counted: bool = True  # counts against the partition's per-subscription limit
    in_flight: bool = False
    holds_slot: bool = False  # counts against its subscription's concurrency (until its answer)
    ready: bool = False  # in its subscription's ready queue
    retry_after: bool = False  # a manual retry arrived while in flight: due again at once

    @classmethod
    def of(cls, record: DeliveryRecord, now_ms: int) -> Entry:
        due = record.next_attempt_ms if record.next_attempt_ms is not None else now_ms
        return cls(record, due, lane_of(record), counted=not _is_test(record))

    @classmethod
    def once_for(cls, record: DeliveryRecord, now_ms: int) -> Entry:
        lane = (record.partition, record.subscription_id, ONCE_LANE + record.id)
        return cls(record, now_ms, lane, manual=True, once=True, counted=False)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def subscription_id(self) -> str:
        return self.record.subscription_id

    @property
    def partition(self) -> int:
        return self.record.partition


def _seq(entry: Entry) -> int:
    return entry.record.seq


class Scheduler:
    """Deliveries in memory, by lane; hands out the due ones within each subscription's limit.

    ``take_due`` starts attempts (marks them in flight), ``finish`` ends them with the new record
    and when it is due next. Timers are a heap with lazy deletion: an entry is checked against
    the lanes when its timer fires.
    """

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.entries: dict[str, Entry] = {}
        self.in_flight: Counter[str] = Counter()
        self._lanes: dict[LaneKey, list[Entry]] = {}
        self._busy: set[LaneKey] = set()
        self._timers: list[tuple[int, int, str]] = []
        self._ready: dict[str, deque[Entry]] = {}
        self._queued: Counter[tuple[int, str]] = Counter()
        self._watching: dict[int, set[str]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def queued(self, partition: int, subscription_id: str) -> int:
        """Deliveries of a subscription from one partition held in memory (test sends and manual
        retries of settled deliveries not counted)."""
        return self._queued[(partition, subscription_id)]

    def add(self, entry: Entry) -> bool:
        """Queue a delivery (False: one with that id is already queued)."""
        if entry.id in self.entries:
            return False
        self.entries[entry.id] = entry
        lane = self._lanes.setdefault(entry.lane, [])
        bisect.insort(lane, entry, key=_seq)
        if entry.counted:
            self._queued[(entry.partition, entry.subscription_id)] += 1
        self._arm(entry.lane)
        return True

    def _arm(self, lane_key: LaneKey) -> None:
        lane = self._lanes.get(lane_key)
        if lane and lane_key not in self._busy:
            head = lane[0]
            heapq.heappush(self._timers, (head.due_ms, head.record.seq, head.id))

    def _startable(self, entry: Entry) -> bool:
        if self.entries.get(entry.id) is not entry or entry.in_flight or entry.lane in self._busy:
            return False
        lane = self._lanes.get(entry.lane)
        return bool(lane) and lane[0] is entry  # type: ignore[index]

    def take_due(self, now_ms: int, limit: int = 1000) -> list[Entry]:
        """Start up to ``limit`` due attempts (head of their lane, subscription below its limit)."""
        timers = self._timers
        while timers and timers[0][0] <= now_ms:
            due, _, delivery = heapq.heappop(timers)
            entry = self.entries.get(delivery)
            if entry is None or entry.ready or entry.due_ms != due or not self._startable(entry):
                continue
            entry.ready = True
            self._ready.setdefault(entry.subscription_id, deque()).append(entry)
        started: list[Entry] = []
        for sub in list(self._ready):
            waiting = self._ready[sub]
            while waiting and self.in_flight[sub] < self.concurrency and len(started) < limit:
                entry = waiting.popleft()
                entry.ready = False
                if not self._startable(entry):
                    continue
                entry.in_flight = entry.holds_slot = True
                self._busy.add(entry.lane)
                self.in_flight[sub] += 1
                started.append(entry)
            if not waiting:
                del self._ready[sub]
        return started

    def next_due_ms(self) -> int | None:
        """When ``take_due`` may next have something to start (ready deliveries waiting for a
        free slot are woken by ``finish``)."""
        return self._timers[0][0] if self._timers else None

    def answered(self, entry: Entry) -> None:
        """The receiver answered (or the attempt failed): the subscription's slot is free for
        another request; the lane stays busy until ``finish`` (its record is written)."""
        if entry.holds_slot:
            entry.holds_slot = False
            sub = entry.subscription_id
            self.in_flight[sub] -= 1
            if self.in_flight[sub] <= 0:
                del self.in_flight[sub]

    def finish(self, entry: Entry, record: DeliveryRecord, due_ms: int | None, now_ms: int) -> None:
        """End an attempt (its record written): keep the delivery due at ``due_ms``, or drop it
        (None)."""
        self.answered(entry)
        entry.in_flight = False
        self._busy.discard(entry.lane)
        if self.entries.get(entry.id) is not entry:  # dropped meanwhile (partition revoked, delivery forgotten)
            self._arm(entry.lane)  # the lane's next one, if any, is free to go
            return
        if due_ms is None:
            self.remove(entry)
            return
        entry.record = record
        entry.due_ms = due_ms
        entry.manual = False
        if entry.retry_after:
            entry.retry_after = False
            entry.manual = True
            entry.due_ms = min(due_ms, now_ms)
        self._arm(entry.lane)

    def bring_forward(self, delivery_id: str, now_ms: int) -> bool:
        """A manual retry of a queued delivery: its next attempt is now (after the one in flight,
        if any) and marked manual; lane order still holds. False if it is not queued."""
        entry = self.entries.get(delivery_id)
        if entry is None:
            return False
        if entry.in_flight:
            entry.retry_after = True
            return True
        entry.manual = True
        entry.due_ms = min(entry.due_ms, now_ms)
        self._arm(entry.lane)
        return True

    def remove(self, entry: Entry) -> None:
        if self.entries.get(entry.id) is not entry:
            return
        del self.entries[entry.id]
        lane = self._lanes.get(entry.lane)
        if lane is not None:
            lane.remove(entry)
            if not lane:
                del self._lanes[entry.lane]
            else:
                self._arm(entry.lane)
        if entry.counted:
            key = (entry.partition, entry.subscription_id)
            self._queued[key] -= 1
            if self._queued[key] <= 0:
                del self._queued[key]
        removed = self._watching.get(entry.partition)
        if removed is not None:
            removed.add(entry.id)

    def waiting_of(self, subscription_id: str) -> list[Entry]:
        """The queued deliveries of a subscription that are not in flight."""
        return [e for e in self.entries.values() if e.subscription_id == subscription_id and not e.in_flight]

    def drop_partition(self, partition: int) -> int:
        """Forget a partition's deliveries (attempts in flight end without effect here)."""
        gone = [e for e in self.entries.values() if e.partition == partition]
        for entry in gone:
            self.remove(entry)
        self._watching.pop(partition, None)
        return len(gone)

    def watch(self, partition: int) -> None:
        """Remember the deliveries of ``partition`` leaving memory from now on (a scan must not
        bring back a delivery it read the older record of)."""
        self._watching[partition] = set()

    def unwatch(self, partition: int) -> set[str]:
        return self._watching.pop(partition, set())

    def removed_since_watch(self, partition: int) -> set[str]:
        return self._watching.get(partition, set())


class SeenIds:
    """The latest ``limit`` delivery ids of a partition: a trigger read again (after a crash, or
    emitted again by the worker) does not make a second delivery while its id is here."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ids: dict[str, None] = {}

    def add(self, delivery_id: str) -> bool:
        """Remember an id; False if it was already here."""
        if delivery_id in self._ids:
            return False
        self._ids[delivery_id] = None
        if len(self._ids) > self.limit:
            del self._ids[next(iter(self._ids))]
        return True

    def __contains__(self, delivery_id: str) -> bool:
        return delivery_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


# --- scans of a deliveries partition -------------------------------------------------------------


@dataclass
class Revive:
    """A "retry every failed delivery" in progress on one partition: failed deliveries created
    since ``since_ms`` whose record is before offset ``until`` come back as pending."""

    since_ms: int
    until: int | None = None  # fixed by the first scan (its end offset): later failures stay failed
    from_offset: int | None = None  # where the next scan starts (None: at since_ms)
    commands: list[int] = field(default_factory=list)  # command offsets done after the next scan


@dataclass
class _Picked:
    """Bounded candidates of one kind for one subscription; what it had to leave is *refused*."""

    by_seq: bool
    cand: dict[str, tuple[int, DeliveryRecord]] = field(default_factory=dict)
    heap: list[tuple[int, int, str]] = field(default_factory=list)  # (-order, offset, id): the last to keep on top
    refused_order: int | None = None
    refused_offset: int | None = None

    def order(self, offset: int, record: DeliveryRecord) -> int:
        return record.seq if self.by_seq else offset

    def refuse(self, offset: int, order: int) -> None:
        self.refused_offset = offset if self.refused_offset is None else min(self.refused_offset, offset)
        self.refused_order = order if self.refused_order is None else min(self.refused_order, order)

    def top(self) -> tuple[int, str] | None:
        while self.heap:
            neg, offset, delivery = self.heap[0]
            found = self.cand.get(delivery)
            if found is not None and found[0] == offset:
                return -neg, delivery
            heapq.heappop(self.heap)
        return None

    def offer(self, offset: int, record: DeliveryRecord, room: int) -> bool:
        """Keep ``record`` if it is among the first ``room`` (in seq or offset order) that came
        before any refused one; False if refused."""
        order = self.order(offset, record)
        if self.refused_order is not None and order >= self.refused_order:
            self.refuse(offset, order)
            return False
        if len(self.cand) >= room:
            top = self.top()
            if top is None or top[0] <= order:
                self.refuse(offset, order)
                return False
            evicted_offset, _ = self.cand.pop(top[1])
            self.refuse(evicted_offset, top[0])
        self.cand[record.id] = (offset, record)
        heapq.heappush(self.heap, (-order, offset, record.id))
        return True

    def trim(self, keep: int) -> list[DeliveryRecord]:
        """The first ``keep`` candidates in order; the rest refused."""
        ranked = sorted(self.cand.values(), key=lambda c: self.order(*c))
        for offset, record in ranked[keep:]:
            self.refuse(offset, self.order(offset, record))
        return [record for _, record in ranked[:keep]]


@dataclass(frozen=True)
class Picked:
    """What a scan brings back for one subscription: records to queue (``True``: a failed one to
    send back to pending), and the lowest offset of a parked record (``parked_from``) or of a
    failed one to revive (``revive_from``) it had to leave on the topic (None: none left)."""

    records: list[tuple[DeliveryRecord, bool]]
    parked_from: int | None
    revive_from: int | None


def _is_test(record: DeliveryRecord) -> bool:
    return record.type == TEST_TYPE and record.trigger_id is None


class Selection:
    """Reads a deliveries partition's records in offset order and chooses, per subscription, the
    deliveries to bring into memory; the latest record of each delivery counts.

    Three kinds of records matter. *Parked* ones (pending, marked so by the dispatcher when it
    did not queue them) are taken lowest ``seq`` first, at most ``room``; a delivery it cannot
    take, and every later one, is refused, so what is in memory stays a prefix of each lane. *Held*
    ones (pending, not parked: they were in a dispatcher's memory, at most its queue limit) are
    all taken, in ``recovery`` only (in a refill they are in memory or finished). *Failed* ones are
    taken when a ``revive`` asks for them, lowest offset first within the room left. Test sends are
    always taken in recovery.

    Progress: a parked record is written once, in ``seq`` order, so a record taken by one scan
    lies before the first one refused, where the next scan starts; a stale record (of a delivery
    brought back and attempted since) can fill the room for a while, never twice.

    ``skip(id)``: deliveries in memory (or that left memory during the scan).
    """

    def __init__(
        self,
        room: Mapping[str, int] | int,
        skip: Callable[[str], bool],
        subscriptions: Iterable[str] | None = None,
        revive: Mapping[str, Revive] | None = None,
        recovery: bool = False,
    ) -> None:
        self._room = room
        self._skip = skip
        self._subs = None if subscriptions is None else set(subscriptions)
        self._revive = dict(revive or {})
        self._recovery = recovery
        self._parked: dict[str, _Picked] = {}
        self._revived: dict[str, _Picked] = {}
        self._held: dict[str, tuple[int, DeliveryRecord]] = {}
        self._owner: dict[str, tuple[str, str]] = {}  # candidate id -> (subscription, kind)

    def room(self, sub: str) -> int:
        return self._room if isinstance(self._room, int) else max(0, self._room.get(sub, 0))

    def offer(
        self,
        offset: int,
        delivery_id: str,
        value: bytes | None,
        subscription_hint: str | None = None,
        status_hint: str | None = None,
        parked_hint: bool | None = None,
    ) -> None:
        """One record of the partition (offsets increasing). The hints (Kafka headers) let most
        records through without decoding."""
        if self._skip(delivery_id):
            return
        self._forget(delivery_id)
        if value is None:  # a tombstone: the delivery is gone
            return
        sub = subscription_hint
        record: DeliveryRecord | None = None
        if sub is None:
            record = DELIVERY_DECODER.decode(value)
            sub = record.subscription_id
        if self._subs is not None and sub not in self._subs:
            return
        if status_hint is not None and record is None:
            if status_hint != "pending" and sub not in self._revive:
                return
            if status_hint == "pending" and not parked_hint and not self._recovery:
                return
        if record is None:
            record = DELIVERY_DECODER.decode(value)
        if record.status == "pending":
            self._pending(offset, delivery_id, sub, record, parked_hint)
            return
        revive = self._revive.get(sub)
        if (
            revive is not None
            and record.status == "failed"
            and record.created_ms >= revive.since_ms
            and (revive.until is None or offset < revive.until)
        ):
            picked = self._revived.setdefault(sub, _Picked(by_seq=False))
            if picked.offer(offset, record, self.room(sub)):
                self._owner[delivery_id] = (sub, "revive")

    def _forget(self, delivery_id: str) -> None:
        """A later record of ``delivery_id``: the earlier one no longer counts."""
        known = self._owner.pop(delivery_id, None)
        if known is None:
            return
        known_sub, kind = known
        if kind == "held":
            del self._held[delivery_id]
        else:
            (self._parked if kind == "parked" else self._revived)[known_sub].cand.pop(delivery_id, None)

    def _pending(
        self, offset: int, delivery_id: str, sub: str, record: DeliveryRecord, parked_hint: bool | None
    ) -> None:
        """A pending delivery: held (recovery), or a parked candidate, or nothing."""
        if self._recovery and (_is_test(record) or not parked_hint):
            self._held[delivery_id] = (offset, record)
            self._owner[delivery_id] = (sub, "held")
        elif parked_hint and not _is_test(record):
            picked = self._parked.setdefault(sub, _Picked(by_seq=True))
            if picked.offer(offset, record, self.room(sub)):
                self._owner[delivery_id] = (sub, "parked")

    def result(self) -> dict[str, Picked]:
        """Per subscription met: what to queue (held ones, then parked, then revived, within
        the room) and where the next scan must start."""
        held: dict[str, list[DeliveryRecord]] = {}
        for _, record in sorted(self._held.values(), key=lambda c: c[1].seq):
            held.setdefault(record.subscription_id, []).append(record)
        out: dict[str, Picked] = {}
        for sub in {*held, *self._parked, *self._revived}:
            mine = held.get(sub, [])
            room = max(0, self.room(sub) - sum(1 for r in mine if not _is_test(r)))
            parked = self._parked.get(sub)
            taken = parked.trim(room) if parked is not None else []
            revived = self._revived.get(sub)
            back = revived.trim(room - len(taken)) if revived is not None else []
            out[sub] = Picked(
                [(r, False) for r in (*mine, *taken)] + [(r, True) for r in back],
                parked.refused_offset if parked is not None else None,
                revived.refused_offset if revived is not None else None,
            )
        return out
