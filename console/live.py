"""What the console shows live: the pipeline's pulse (events/s, dead letters, consumer lag) and
the feed of triggers, for the overview's server-sent events.

One :class:`Live` per API process (``app.state.console_live``), with one shared set of Kafka
clients, built by :mod:`kafka_io.clients` and started on the first console request that needs
them, never one per request or per browser:

- :class:`Pulse`: a group-less consumer (end offsets, earliest offsets, offsets for a time) and an
  admin client (the worker group's committed offsets). A single task samples them every
  :data:`SAMPLE_S` while at least one browser watches (:meth:`Pulse.watch`), and ends when the
  last one leaves: nobody watching, no request to the brokers. Every watcher reads the latest
  :class:`Sample`. Every :data:`CONTACTS_EVERY` samples it also counts the active contacts in the
  archive (one query per process, whatever the number of watchers).
- :class:`TriggerFeed`: a group-less consumer assigned every partition of the public triggers
  topic (``settings.topic_triggers``). Started lazily, it reads the last :data:`RING` triggers
  from the topic's tail (what a page shows on load), then follows the topic for as long as the
  process runs, handing each new trigger to every subscriber's bounded queue: a slow browser loses
  its oldest items, it never holds the follower up.

:meth:`Live.stop` (the API's lifespan) ends both and every open stream's wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from kafka_io.clients import admin, consumer, partitions_of
from kafka_io.promotion import lag_between
from schemas.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_S = 2.0  # how often the pulse is sampled while someone watches (and the figures are sent)
CONTACTS_EVERY = 5  # the contacts are counted in the archive every 5th sample (~10 s): a query each time
KAFKA_TIMEOUT_S = 5.0  # one sample's broker requests, at most
HOUR_MS = 3_600_000
RING = 20  # triggers kept for a page's first paint
QUEUE = 50  # triggers waiting for one slow browser before its oldest are dropped
RETRY_S = 2.0  # the feed's wait before trying again (no topic yet, a broker error)
FETCH_MAX_WAIT_MS = 500


@dataclass(frozen=True, slots=True)
class Sample:
    """The pipeline's pulse at ``at_ms``; None: not known (the first sample has no rate yet; a
    figure the brokers did not give)."""

    at_ms: int
    events_per_s: float | None = None
    source_records: int | None = None  # records ever written to the source topics (their end offsets)
    deadletters: int | None = None  # records on the dead-letter topic now (end minus earliest offsets)
    deadletters_last_hour: int | None = None  # of them, written in the last hour
    lag: int | None = None  # source records the worker group has not committed yet
    contacts: int | None = None  # active contacts in the archive (counted every CONTACTS_EVERY samples)
    group: str = ""
    error: str | None = None


def rate(previous: Sample | None, records: int, at_ms: int) -> float | None:
    """Records per second between ``previous``'s count and ``records`` at ``at_ms``."""
    if previous is None or previous.source_records is None or at_ms <= previous.at_ms:
        return None
    return max(records - previous.source_records, 0) * 1000 / (at_ms - previous.at_ms)


class Pulse:
    """The sampled figures of one API process (see the module docstring)."""

    def __init__(self, settings: Settings, clock: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.settings = settings
        self.clock = clock
        self.latest: Sample | None = None
        self.group = settings.app_id  # the worker group: the active namespace's (set by each watcher)
        self.count_contacts: Callable[[], Awaitable[int]] | None = None  # set by each watcher
        self.watchers = 0
        self.samples = 0  # samples taken (tests)
        self.changed = asyncio.Condition()
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def _clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        if self._consumer is None or self._admin is None:
            reader = consumer(self.settings, group_id=None, enable_auto_commit=False, client_id="scorestream-console")
            helper = admin(
                self.settings, client_id="scorestream-console", request_timeout_ms=int(KAFKA_TIMEOUT_S * 1000)
            )
            await reader.start()
            try:
                await helper.start()
            except BaseException:
                await reader.stop()
                raise
            self._consumer, self._admin = reader, helper
        return self._consumer, self._admin

    async def sample(self) -> Sample:
        """One sample from the brokers (its ``error`` says why not, the figures then None)."""
        now = self.clock()
        try:
            async with asyncio.timeout(KAFKA_TIMEOUT_S):
                return await self._sample(now)
        except Exception as exc:  # the brokers' trouble is shown, never raised into a page
            log.warning("console: the pipeline's figures could not be read: %s", exc)
            return Sample(at_ms=now, group=self.group, error="Kafka did not answer; the figures will come back")

    async def _sample(self, now: int) -> Sample:
        reader, helper = await self._clients()
        s = self.settings
        sources = await partitions_of(reader, list(s.source_topics))
        dead = await partitions_of(reader, [s.topic_deadletter])
        ends: dict[TopicPartition, int] = dict(await reader.end_offsets(sources + dead)) if sources or dead else {}
        source_ends = {tp: ends[tp] for tp in sources}
        records = sum(source_ends.values())
        lag: int | None = None
        try:
            committed = await helper.list_consumer_group_offsets(self.group) if sources else {}
            lag = lag_between(source_ends, committed).remaining
        except KafkaError as exc:  # the group's coordinator not there yet (a new cluster): the rest stands
            log.info("console: the offsets of group %s could not be read: %s", self.group, exc)
        deadletters = hour = 0
        if dead:
            firsts = await reader.beginning_offsets(dead)
            deadletters = sum(ends[tp] - firsts[tp] for tp in dead)
            since = await reader.offsets_for_times({tp: now - HOUR_MS for tp in dead})
            hour = sum(ends[tp] - found.offset for tp, found in since.items() if found is not None)
        return Sample(
            at_ms=now,
            events_per_s=rate(self.latest, records, now),
            source_records=records,
            deadletters=deadletters,
            deadletters_last_hour=hour,
            lag=lag,
            group=self.group,
        )

    async def contacts(self, count: bool) -> int | None:
        """The archive's active contacts (:attr:`count_contacts`) when ``count``; else the last
        count; None while the archive cannot say."""
        last = self.latest.contacts if self.latest is not None else None
        if self.count_contacts is None or (last is not None and not count):
            return last
        try:
            async with asyncio.timeout(KAFKA_TIMEOUT_S):
                return await self.count_contacts()
        except Exception as exc:  # the archive not ready, busy or away: the figure waits
            log.info("console: the archive's contacts could not be counted: %s", exc)
            return last

    async def _run(self) -> None:
        try:
            run = 0  # samples of this run: a run counts the contacts first (the last count may be old)
            while self.watchers > 0 and not self._stopped:
                counted = await self.contacts(run % CONTACTS_EVERY == 0)
                sample = dataclasses.replace(await self.sample(), contacts=counted)
                run += 1
                async with self.changed:
                    self.latest = sample
                    self.samples += 1
                    self.changed.notify_all()
                await asyncio.sleep(SAMPLE_S)
        finally:
            self._task = None

    @contextlib.asynccontextmanager
    async def watch(self, group: str, count_contacts: Callable[[], Awaitable[int]]) -> AsyncIterator[Pulse]:
        """While inside, the figures are sampled (lag: of the worker group ``group``; contacts:
        ``count_contacts()``); the last watcher to leave ends the sampling."""
        self.group, self.count_contacts = group, count_contacts
        self.watchers += 1
        if self._task is None and not self._stopped:
            self._task = asyncio.create_task(self._run(), name="console-pulse")
        try:
            yield self
        finally:
            self.watchers -= 1

    def recent(self) -> Sample | None:
        """The latest sample if taken within three sampling periods, else None (taken while someone
        else watched, a while ago: a page's stream brings a fresh one)."""
        if self.latest is None or self.latest.at_ms < self.clock() - 3 * SAMPLE_S * 1000:
            return None
        return self.latest

    async def next_sample(self, after: int, timeout_s: float) -> Sample | None:
        """The first sample newer than the ``after``-th (None on timeout, or once stopped)."""
        async with self.changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait_for(lambda: self.samples > after or self._stopped), timeout_s)
        return None if self._stopped else self.latest

    async def stop(self) -> None:
        self._stopped = True
        async with self.changed:
            self.changed.notify_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for client in (self._consumer, self._admin):
            if client is not None:
                with contextlib.suppress(Exception):
                    await (client.stop() if isinstance(client, AIOKafkaConsumer) else client.close())
        self._consumer = self._admin = None


@dataclass(frozen=True, slots=True)
class TriggerItem:
    """A trigger as the feed shows it (``schemas.triggers.Trigger``'s fields the console needs)."""

    id: str
    type: str
    at_ms: int
    contact_id: str | None
    account_id: str | None
    before: Any
    after: Any
    rule: str | None

    @classmethod
    def of(cls, value: bytes) -> TriggerItem:
        body = orjson.loads(value)
        return cls(
            id=str(body["id"]),
            type=str(body["type"]),
            at_ms=int(body["at_ms"]),
            contact_id=body.get("contact_id"),
            account_id=body.get("account_id"),
            before=body.get("before"),
            after=body.get("after"),
            rule=body.get("rule"),
        )


def tail(records: Iterable[Any], keep: int = RING) -> list[TriggerItem]:
    """The last ``keep`` readable triggers of ``records`` (from several partitions), oldest first,
    by the time they were written (the record's timestamp), then their event time."""
    items: list[tuple[int, int, TriggerItem]] = []
    for record in records:
        try:
            items.append((int(record.timestamp), record.offset, TriggerItem.of(record.value)))
        except Exception as exc:  # a record not of the contract is skipped, as the dispatcher's log says
            log.warning("console: trigger %s[%s] %s unreadable: %s", record.topic, record.partition, record.offset, exc)
    items.sort(key=lambda t: (t[0], t[2].at_ms, t[1]))
    return [item for _, _, item in items[-keep:]]


@dataclass
class TriggerFeed:
    """The public triggers topic, followed once per process (see the module docstring)."""

    settings: Settings
    follow: bool = True  # False: nothing is read (tests publish by hand)
    ring: deque[TriggerItem] = field(default_factory=lambda: deque(maxlen=RING))
    loaded: bool = False  # the tail was read (or there is no topic yet)
    subscribers: set[asyncio.Queue[TriggerItem | None]] = field(default_factory=set)
    received: int = 0
    error: str | None = None
    _task: asyncio.Task[None] | None = None
    _started_s: float = 0.0
    _stopped: bool = False

    def start(self) -> None:
        """Follow the topic (once: later calls do nothing while it runs)."""
        if self.follow and not self._stopped and (self._task is None or self._task.done()):
            self._started_s = time.monotonic()
            self._task = asyncio.create_task(self._run(), name="console-triggers")

    async def recent(self, wait_s: float = 2.0) -> list[TriggerItem]:
        """The last triggers, newest first. A page loaded as the feed starts waits up to ``wait_s``
        for the tail to be read; later ones never wait (brokers away: the ring as it is)."""
        self.start()
        # a flag polled, not an Event: an Event is bound to the loop that first waits on it
        while not self.loaded and time.monotonic() < self._started_s + wait_s:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return list(reversed(self.ring))

    @contextlib.contextmanager
    def subscribe(self) -> Any:
        """A queue of the triggers read from now on (None: the feed stopped)."""
        self.start()
        queue: asyncio.Queue[TriggerItem | None] = asyncio.Queue(maxsize=QUEUE)
        self.subscribers.add(queue)
        try:
            yield queue
        finally:
            self.subscribers.discard(queue)

    def publish(self, item: TriggerItem) -> None:
        """``item`` into the ring and every subscriber's queue (a full queue drops its oldest)."""
        self.received += 1
        self.ring.append(item)
        for queue in list(self.subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(item)

    async def _run(self) -> None:
        while not self._stopped:
            reader = consumer(
                self.settings,
                group_id=None,
                enable_auto_commit=False,
                client_id="scorestream-console-triggers",
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            )
            try:
                await reader.start()
                await self._follow(reader)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error = str(exc)
                log.warning(
                    "console: following %s failed (%s); again in %s s", self.settings.topic_triggers, exc, RETRY_S
                )
            finally:
                with contextlib.suppress(Exception):
                    await reader.stop()
            await asyncio.sleep(RETRY_S)

    async def _follow(self, reader: AIOKafkaConsumer) -> None:
        partitions: list[TopicPartition] = []
        while not partitions:
            partitions = await partitions_of(reader, [self.settings.topic_triggers])
            if not partitions:
                self.loaded = True  # no topic yet: nothing to show, and nothing to wait for
                await asyncio.sleep(RETRY_S)
        reader.assign(partitions)
        firsts = await reader.beginning_offsets(partitions)
        ends = await reader.end_offsets(partitions)
        for tp in partitions:
            reader.seek(tp, max(ends[tp] - RING, firsts[tp]))
        old: list[Any] = []
        new: list[Any] = []  # read with the tail, written after the feed started: news
        while [tp for tp in partitions if await reader.position(tp) < ends[tp]]:
            batch = await reader.getmany(*partitions, timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    (old if r.offset < ends[tp] else new).append(r)
        if not self.ring:  # a restart after a broker error keeps what it showed
            self.ring.extend(tail(old))
        self.loaded = True
        self.error = None
        while not self._stopped:
            for item in tail(new, keep=len(new)):
                self.publish(item)
            batch = await reader.getmany(*partitions, timeout_ms=1000)
            new = [r for records in batch.values() for r in records]

    async def stop(self) -> None:
        self._stopped = True
        for queue in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueEmpty):
                while queue.full():
                    queue.get_nowait()
            queue.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class Live:
    """Started with the API process (lazily: nothing runs until a console asks)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pulse: Pulse | None = None
        self._feed: TriggerFeed | None = None
        self.stopping = False

    @property
    def pulse(self) -> Pulse:
        """The process's :class:`Pulse` (made on first use, in the running event loop)."""
        if self._pulse is None:
            self._pulse = Pulse(self.settings)
        return self._pulse

    @property
    def feed(self) -> TriggerFeed:
        """The process's :class:`TriggerFeed` (made on first use, in the running event loop)."""
        if self._feed is None:
            self._feed = TriggerFeed(self.settings)
        return self._feed

    async def stop(self) -> None:
        """Stop what runs (the API's lifespan calls it)."""
        self.stopping = True
        if self._pulse is not None:
            await self._pulse.stop()
        if self._feed is not None:
            await self._feed.stop()
