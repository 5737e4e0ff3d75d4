"""The regulation service: carries a privacy regulation out, store by store, with its status.

Runs in every API process (started in its lifespan, :func:`api.app.create_api`). It follows three
app-scoped compacted topics from the beginning, for ever (one :func:`kafka_io.reader.follow`):

- ``<app>.regulations``: every :class:`~schemas.regulations.Regulation` (so any API process
  answers ``GET /v1/regulations``);
- ``<app>.privacy``: the privacy list, into :attr:`RegulationService.privacy_list` (this process's
  collector decides from it). The service is the **only writer** of this topic, and puts each
  entry it writes into its own list the moment the broker acked it, so the collector in the same
  process drops at once; other processes follow the topic (``kafka_io/privacy.py``);
- ``<app>.regulation-progress``: the worker stages' :class:`~schemas.regulations.ErasureReport`.

Carrying one regulation out (:meth:`RegulationService.carry_out`; every step is idempotent, so
running it again, after a crash or a failure, is safe):

1. ``privacy_list``: a :class:`~schemas.regulations.PrivacyEntry` for every known identifier of
   the subjects (the requested ids, and what the API's replicas of every live namespace know of
   their contacts: contact ids, anonymous ids, email; later what the worker reports).
   SUPPRESS and SUPPRESS_WITH_DELETE set ``suppressed_from_ms``, the deleting types
   ``erased_before_ms``, both at the acceptance instant; UNSUPPRESS lifts ``suppressed_from_ms`` on
   every key an earlier suppressing regulation of these subjects restricted (a tombstone when
   nothing is left). Entries merge with what a key already holds (the earliest suppression, the
   latest erasure instant).
2. ``worker`` (deleting types): ``erase`` orders for every contact (``<ns>.contacts``) and
   ``erase_link`` for every anonymous id (``<ns>.identity``) on every live namespace of the models
   registry; each report names further ids (anonymous ids, merged ids, the contact merged into,
   email), which get entries and orders in turn, until nothing new. Done when every order has its
   report; ``failed`` when none came for ``SCORESTREAM_REGULATION_TIMEOUT_S`` (a worker is down).
3. ``api``: done when no replica of any live namespace finds any of the ids (the views topic's
   tombstones made them forget); ``failed`` after the timeout.
4. ``archive``: ``analytics.privacy.erase`` on the API's archive, after the worker is done (the
   sink then has nothing more to write about them; it drops late rows itself). No archive
   configured: ``done`` "no archive"; one this process cannot reach (embedded chDB opened by
   another process): ``failed`` with the reason.
5. ``deliveries``: the webhook deliveries of the contacts tombstoned (``api.erasure``).
6. ``deadletter``: ``done``: the dead-letter topic cannot be rewritten; its records expire with
   its retention (the archive's copies went in step 4).

Finished: overall ``done`` (``failed`` when a store failed), ``finished_at_ms``; a done record is
written again without its plaintext ``subject_ids`` (only their hashes stay) and its progress
records are tombstoned. A failed one keeps them, to be retried: every :data:`RETRY_S` this
process looks for regulations not done whose last change is older than the timeout (pending or
running: their process died) or that failed longer than the retry pause ago, and carries them out
again; at start-up it resumes every unfinished one at once. Of the API processes of a host, the
one holding ``<data_dir>/api/regulations.lock`` resumes; with API processes on several hosts
each host's may resume the same one: the steps are idempotent, so a second runner costs
duplicate orders and record writes, not harm (the last finish wins; a failed one is retried).

Never logs an id or an email: regulation ids, subject keys (hashes) and counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from aiokafka import AIOKafkaProducer

from api.audit import audit
from api.errors import ApiError
from api.follow import task_failure
from kafka_io.clients import KafkaConnection, producer
from kafka_io.partitioner import partition_for
from kafka_io.reader import follow
from schemas.api_regulations import RegulationIn
from schemas.regulations import (
    DELETING,
    REGULATION_RECORD_BYTES,
    STORES,
    SUPPRESSING,
    ErasureReport,
    PrivacyEntry,
    Regulation,
    StoreStatus,
    decode_entry,
    decode_regulation,
    decode_report,
    encode_json,
    erase_record,
    progress_key,
)
from schemas.settings import Settings
from scorestream.identity import anonymous_contact_id
from scorestream.privacy import PrivacyList, SubjectKind, contact_subjects, normal_email, subject_key
from scorestream.view import ContactView
from telemetry.metrics import REGULATION_SECONDS, REGULATIONS

log = logging.getLogger(__name__)
DAY_MS = 86_400_000
RETRY_S = 60.0
POLL_S = 0.1
PROGRESS_S = 2.0  # the worker step's progress is written to the record at most this often
FETCH_MAX_WAIT_MS = 200
KIND_OF: dict[str, SubjectKind] = {"USER_ID": "user", "ANONYMOUS_ID": "anonymous", "EMAIL": "email"}


def now_ms() -> int:
    return int(time.time() * 1000)


# -- the edges (fakes in tests) ------------------------------------------------------------------


Record = tuple[str, bytes, bytes | None, int]  # topic, key, value (None: a tombstone), partition


class Writer(Protocol):
    """Where the service writes: each send is acked (``acks=all``) before it returns."""

    async def send(self, topic: str, key: bytes, value: bytes | None, partition: int) -> None: ...

    async def send_many(self, records: list[Record]) -> None: ...  # all sent, then every ack awaited

    async def partitions(self, topic: str) -> int: ...

    async def close(self) -> None: ...


@dataclass
class KafkaWriter:
    """:class:`Writer` on one idempotent producer, started on first use."""

    kafka: KafkaConnection
    _producer: AIOKafkaProducer | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def _client(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                client = producer(
                    self.kafka, acks="all", enable_idempotence=True, max_request_size=REGULATION_RECORD_BYTES
                )
                await client.start()
                self._producer = client
            return self._producer

    async def send(self, topic: str, key: bytes, value: bytes | None, partition: int) -> None:
        client = await self._client()
        await client.send_and_wait(topic, key=key, value=value, partition=partition)

    async def send_many(self, records: list[Record]) -> None:
        """Send every record without waiting, then wait for every acknowledgement (thousands of
        entries or orders take one round trip per producer batch, not one each)."""
        client = await self._client()
        acks = [await client.send(topic, key=key, value=value, partition=p) for topic, key, value, p in records]
        await asyncio.gather(*acks)

    async def partitions(self, topic: str) -> int:
        client = await self._client()
        found = await client.partitions_for(topic)
        if not found:
            raise LookupError(f"topic {topic} does not exist")
        return len(found)

    async def close(self) -> None:
        client, self._producer = self._producer, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.stop()


class Finder(Protocol):
    """What the service asks of a namespace's contacts replica (:class:`api.replica.Replica`)."""

    def decoded(self, contact_id: str) -> Any: ...  # Decoded | None (its ``.view``)

    def find(self, ident: str) -> Any: ...  # Decoded | None

    @property
    def store(self) -> Any: ...  # anonymous_owner(a), email_owner(e)


@dataclass
class Namespace:
    """One live model namespace as the service sees it: its name and contacts replica."""

    name: str
    replica: Finder


ArchiveErase = Callable[..., Awaitable[dict[str, int]]]
ForgetDeliveries = Callable[[Settings, list[str]], Awaitable[int]]
ApiForgets = Callable[..., bool]  # (replica, contact_ids, anonymous_ids, emails, *, erased_before_ms) -> bool


class StepFailed(ApiError):
    """A store's step did not complete: its reason is the store's ``detail`` (never an answer:
    the step runs after the regulation was accepted; an :class:`ApiError` as every error of the
    API is)."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "unavailable", message)


# -- a person's identifiers ----------------------------------------------------------------------


@dataclass
class Person:
    """Every identifier known of the subjects of one regulation."""

    user_ids: set[str] = field(default_factory=set)
    anonymous_ids: set[str] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)

    def add(self, kind: SubjectKind, value: str | None) -> bool:
        """Add one identifier; whether it is new."""
        if not value:
            return False
        found = {"user": self.user_ids, "anonymous": self.anonymous_ids, "email": self.emails}[kind]
        if kind == "email":
            value = normal_email(value)
        if value in found:
            return False
        found.add(value)
        return True

    def add_contact(self, contact_id: str | None) -> bool:
        if not contact_id:
            return False
        kind, value = contact_subjects(contact_id)
        return self.add(kind, value)

    def add_view(self, view: ContactView) -> bool:
        new = self.add_contact(view.contact_id)
        new = self.add("user", view.user_id) or new
        for anon in view.anonymous_ids:
            new = self.add("anonymous", anon) or new
        new = self.add("email", view.email) or new
        for merged in view.merged_ids:
            new = self.add_contact(merged) or new
        return self.add_contact(view.merged_into) or new

    def add_report(self, report: ErasureReport) -> bool:
        new = self.add_contact(report.key) if report.target == "contact" else self.add("anonymous", report.key)
        new = self.add("user", report.user_id) or new
        for anon in report.anonymous_ids:
            new = self.add("anonymous", anon) or new
        for merged in report.merged_ids:
            new = self.add_contact(merged) or new
        new = self.add_contact(report.merged_into) or new
        new = self.add_contact(report.linked_contact) or new
        return self.add("email", report.email) or new

    def subjects(self) -> Iterator[tuple[SubjectKind, str]]:
        for u in sorted(self.user_ids):
            yield "user", u
        for a in sorted(self.anonymous_ids):
            yield "anonymous", a
        for e in sorted(self.emails):
            yield "email", e

    def hashes(self) -> list[str]:
        return [subject_key(kind, value) for kind, value in self.subjects()]

    @property
    def contact_ids(self) -> list[str]:
        return sorted(self.user_ids) + [anonymous_contact_id(a) for a in sorted(self.anonymous_ids)]

    def count(self) -> int:
        return len(self.user_ids) + len(self.anonymous_ids) + len(self.emails)


def _chain(replica: Finder, contact_id: str | None) -> Iterator[ContactView]:
    """The views from ``contact_id`` along its merges (forwarding records included)."""
    for _ in range(8):
        if contact_id is None:
            return
        entry = replica.decoded(contact_id)
        if entry is None:
            return
        view: ContactView = entry.view
        yield view
        contact_id = view.merged_into


def views_of(replica: Finder, kind: SubjectKind, value: str) -> Iterator[ContactView]:
    """The views of the contacts one identifier stands for in a replica (exact lookups: a user id
    is never taken for an anonymous id or an email)."""
    if kind == "user":
        yield from _chain(replica, value)
    elif kind == "anonymous":
        yield from _chain(replica, anonymous_contact_id(value))
        yield from _chain(replica, replica.store.anonymous_owner(value))
    else:
        email = normal_email(value)
        for view in _chain(replica, replica.store.email_owner(email)):
            if view.email == email or view.merged_into is not None:
                yield view


def discover(person: Person, namespaces: Iterable[Namespace], looked: set[tuple[str, str]]) -> bool:
    """Add what the replicas know of the person's identifiers not looked up yet (``looked``
    keeps those that were); whether anything new was found."""
    found = False
    spaces = list(namespaces)
    while True:
        todo = [s for s in person.subjects() if s not in looked]
        if not todo:
            return found
        for kind, value in todo:
            looked.add((kind, value))
            for ns in spaces:
                for view in views_of(ns.replica, kind, value):
                    found = person.add_view(view) or found


def forgotten(namespaces: Iterable[Namespace], person: Person) -> list[str]:
    """The identifiers (as subject keys) some replica still finds; empty: the API forgot them."""
    left = []
    for kind, value in person.subjects():
        if any(ns.replica.find(value) is not None for ns in namespaces):
            left.append(subject_key(kind, value))
    return left


def regulation_id(
    regulation_type: str, subject_type: str, ids: list[str], idempotency_key: str | None, day: int
) -> str:
    """The id of a request: SHA-256 of its type, subject type, sorted distinct ids, its
    ``Idempotency-Key`` (if any) and the UTC day number it is accepted on (see
    :meth:`RegulationService.accept` for the 24-hour rule)."""
    digest = hashlib.sha256()
    for part in (regulation_type, subject_type, idempotency_key or "", str(day), *sorted(set(ids))):
        digest.update(part.encode())
        digest.update(b"\x00")
    return "reg_" + digest.hexdigest()[:32]


def merged_entry(old: PrivacyEntry | None, new: PrivacyEntry) -> PrivacyEntry:
    """A key's entry after a regulation restricts it again: the earliest suppression, the latest
    erasure instant (each kept when the new regulation does not set it)."""
    if old is None:
        return new
    suppressed = [m for m in (old.suppressed_from_ms, new.suppressed_from_ms) if m is not None]
    erased = [m for m in (old.erased_before_ms, new.erased_before_ms) if m is not None]
    return PrivacyEntry(
        regulation_id=new.regulation_id,
        suppressed_from_ms=min(suppressed) if suppressed else None,
        erased_before_ms=max(erased) if erased else None,
    )


def applicable(regulation_type: str) -> tuple[str, ...]:
    """The stores a regulation of this type works on (the others are "not applicable")."""
    return STORES if regulation_type in DELETING else ("privacy_list",)


def last_change_ms(reg: Regulation) -> int:
    moments = [reg.created_at_ms, reg.finished_at_ms or 0]
    for s in reg.stores.values():
        moments += [s.started_at_ms or 0, s.finished_at_ms or 0]
    return max(moments)


# -- the service ---------------------------------------------------------------------------------


class RegulationService:
    """Follows the regulations, privacy and progress topics; accepts and carries regulations out.

    ``namespaces()``: the live namespaces (name and contacts replica; the API passes its
    :class:`~api.namespaces.Namespaces`' readers). ``archive``: how the archive is reached (an
    :class:`api.archive.Archive`, or a getter of a store; None: no archive).
    ``ready()``: whether the namespaces and their replicas have been read (a regulation is
    accepted, and carried out, once they have: discovery must see every id). ``archive_erase`` and
    ``forget_deliveries`` default to ``analytics.privacy.erase`` and ``api.erasure.forget_deliveries``
    (with ``delivery_log``, this process's), ``api_forgets`` to ``api.erasure.api_forgets``.
    """

    def __init__(
        self,
        settings: Settings,
        namespaces: Callable[[], list[Namespace]],
        *,
        writer: Writer | None = None,
        archive: Callable[[], Awaitable[Any]] | None = None,
        archive_erase: ArchiveErase | None = None,
        forget_deliveries: ForgetDeliveries | None = None,
        api_forgets: ApiForgets | None = None,
        delivery_log: Any = None,
        clock: Callable[[], int] = now_ms,
        ready: Callable[[], bool] = lambda: True,
        timeout_s: float | None = None,
        retry_s: float = RETRY_S,
        poll_s: float = POLL_S,
    ) -> None:
        self.settings = settings
        self.namespaces = namespaces
        self.kafka = KafkaConnection.of(settings)
        self.writer: Writer = writer or KafkaWriter(self.kafka)
        self.archive = archive
        self.archive_erase = archive_erase
        self.forget_deliveries = forget_deliveries
        self.api_forgets = api_forgets
        self.delivery_log = delivery_log
        self.clock = clock
        self.ready = ready  # the namespaces and their replicas have been read (discovery sees every id)
        self.timeout_s = float(timeout_s if timeout_s is not None else settings.regulation_timeout_s)
        self.retry_s = retry_s
        self.poll_s = poll_s
        self.regulations: dict[str, Regulation] = {}
        self.entries: dict[str, PrivacyEntry] = {}
        self.privacy_list = PrivacyList()
        self.reports: dict[str, dict[tuple[str, str, str], ErasureReport]] = {}
        self.caught_up = asyncio.Event()
        self.error: str | None = None
        self.running: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = asyncio.Lock()
        self._lock_file: IO[str] | None = None

    # -- following the topics ----------------------------------------------------------------------
    @property
    def topics(self) -> tuple[str, str, str]:
        s = self.settings
        return s.regulations_topic, s.privacy_topic, s.regulation_progress_topic

    def apply_record(self, record: Any) -> None:
        regulations, privacy, progress = self.topics
        if record.key is None:
            return
        key = record.key.decode()
        if record.topic == regulations:
            self.apply_regulation(key, record.value)
        elif record.topic == privacy:
            self.apply_entry(key, None if record.value is None else decode_entry(record.value))
        elif record.topic == progress:
            self.apply_report(None if record.value is None else decode_report(record.value))

    def apply_regulation(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.regulations.pop(key, None)
            return
        record = decode_regulation(value)
        if key in self.running:  # this process runs it: its own copy is the newest
            return
        self.regulations[key] = record

    def apply_entry(self, key: str, entry: PrivacyEntry | None) -> None:
        if entry is None:
            self.entries.pop(key, None)
            self.privacy_list.put(key, None)
        else:
            self.entries[key] = entry
            self.privacy_list.put(key, entry.restriction())

    def apply_report(self, report: ErasureReport | None) -> None:
        """One worker report (a tombstone of one is ignored: the regulation is finished). A
        later report of the same order (a redelivered order finds nothing) keeps what the
        earlier one named."""
        if report is None:
            return
        reports = self.reports.setdefault(report.regulation_id, {})
        at = (report.namespace, report.target, report.key)
        old = reports.get(at)
        if old is not None and old.found and not report.found:
            return
        reports[at] = report

    async def follow(self) -> None:
        await follow(
            self,
            self.kafka,
            list(self.topics),
            self.apply_record,
            "regulations",
            FETCH_MAX_WAIT_MS,
            absent_is_empty=True,
        )

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.follow(), name="regulations follower"),
            asyncio.create_task(self._resume_loop(), name="regulations resume"),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self.running.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks, self.running = [], {}
        await self.writer.close()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None

    @property
    def failure(self) -> str | None:
        return next((f for t in self._tasks if (f := task_failure(t))), None)

    def _resumer(self) -> bool:
        """Whether this process resumes the host's unfinished regulations: the one holding the
        lock ``<data_dir>/api/regulations.lock`` (the API processes of a host share a data
        directory; one resumes, the others only carry out what they accept)."""
        if self._lock_file is not None:
            return True
        path = self.settings.data_dir / "api" / "regulations.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("a")
        except OSError as exc:
            log.warning("regulations: no resume lock at %s (%s); resuming anyway", path, exc)
            return True
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._lock_file = handle
        return True

    async def _resume_loop(self) -> None:
        await self.caught_up.wait()
        first = True
        while True:
            now = self.clock()
            if self._resumer():
                for reg in list(self.regulations.values()):
                    if reg.id not in self.running and self._due(reg, now, first):
                        log.info("regulation %s: resumed (%s)", reg.id, reg.status)
                        self.launch(reg.id)
                first = False
            await asyncio.sleep(self.retry_s)

    def _due(self, reg: Regulation, now: int, first: bool) -> bool:
        if reg.status == "done":
            return False
        if reg.status == "failed":
            return (reg.finished_at_ms or 0) <= now - self.retry_s * 1000
        return first or last_change_ms(reg) <= now - self.timeout_s * 1000

    def launch(self, reg_id: str) -> asyncio.Task[None]:
        """Carry the regulation out in the background (once at a time in this process)."""
        task = self.running.get(reg_id)
        if task is None or task.done():
            task = asyncio.create_task(self._run(reg_id), name=f"regulation {reg_id}")
            self.running[reg_id] = task
        return task

    async def _run(self, reg_id: str) -> None:
        try:
            await self.carry_out(reg_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("regulation %s: carrying it out failed; retried later", reg_id)
        finally:
            self.running.pop(reg_id, None)

    # -- accepting -------------------------------------------------------------------------------------
    def find_existing(self, body: RegulationIn, idempotency_key: str | None, now: int) -> Regulation | None:
        """The regulation the same request made within the last 24 hours, if any."""
        day = now // DAY_MS
        for d in (day, day - 1):
            rid = regulation_id(body.regulationType, body.subjectType, body.subjectIds, idempotency_key, d)
            found = self.regulations.get(rid)
            if found is not None and found.created_at_ms > now - DAY_MS:
                return found
        return None

    async def accept(
        self, body: RegulationIn, idempotency_key: str | None = None, requested_by: str | None = None
    ) -> tuple[Regulation, bool]:
        """Make the regulation durable (its record acked, then for the restricting types the
        privacy entries of the subjects and of what the replicas know of them), start carrying it
        out; ``(regulation, True)``. The same request within 24 hours of the first (type, subject
        type, distinct ids and ``Idempotency-Key`` alike): ``(that regulation, False)``."""
        async with self._accepting:
            now = self.clock()
            existing = self.find_existing(body, idempotency_key, now)
            if existing is not None:
                await self._accepted_again(existing)
                return existing, False
            kind = KIND_OF[body.subjectType]
            reg = Regulation(
                id=regulation_id(
                    body.regulationType, body.subjectType, body.subjectIds, idempotency_key, now // DAY_MS
                ),
                regulation_type=body.regulationType,
                subject_type=body.subjectType,
                created_at_ms=now,
                subject_ids=list(body.subjectIds),
                subject_keys=[subject_key(kind, v) for v in body.subjectIds],
                stores={name: StoreStatus() for name in applicable(body.regulationType)},
                requested_by=requested_by,
            )
            await self.write(reg)
            if body.regulationType != "UNSUPPRESS":
                person = self.person_of(reg)
                discover(person, self.namespaces(), set())
                await self.restrict(reg, person)
                await self.write(reg)
            REGULATIONS.labels(type=reg.regulation_type, status="accepted").inc()
        self.launch(reg.id)
        return reg, True

    async def _accepted_again(self, reg: Regulation) -> None:
        """The same request again: if the first one's answer failed after its record was written
        (Kafka did not acknowledge its entries), write them now, so this answer too means durable."""
        if reg.status != "pending" or reg.regulation_type == "UNSUPPRESS" or reg.id in self.running:
            return
        person = self.person_of(reg)
        discover(person, self.namespaces(), set())
        if await self.restrict(reg, person):
            await self.write(reg)
        self.launch(reg.id)

    # -- writing ---------------------------------------------------------------------------------------
    async def write(self, reg: Regulation) -> None:
        """Write the regulation's record and, once acked, keep it as this process's copy."""
        await self.writer.send(self.settings.regulations_topic, reg.id.encode(), encode_json(reg), 0)
        self.regulations[reg.id] = reg

    async def put_entries(self, entries: Mapping[str, PrivacyEntry | None]) -> None:
        """Write privacy entries (None: a tombstone), acked; this process's list has them at once."""
        topic = self.settings.privacy_topic
        records: list[Record] = [
            (topic, key.encode(), None if e is None else encode_json(e), 0) for key, e in entries.items()
        ]
        if records:
            await self.writer.send_many(records)
        for key, entry in entries.items():
            self.apply_entry(key, entry)

    async def restrict(self, reg: Regulation, person: Person) -> int:
        """Entries for the person's keys this regulation has not written yet; how many."""
        done = set(reg.restricted_keys)
        suppress = reg.created_at_ms if reg.regulation_type in SUPPRESSING else None
        erase = reg.created_at_ms if reg.regulation_type in DELETING else None
        new = [key for key in person.hashes() if key not in done]
        changes = {}
        for key in new:
            entry = merged_entry(self.entries.get(key), PrivacyEntry(reg.id, suppress, erase))
            if entry != self.entries.get(key):
                changes[key] = entry
        await self.put_entries(changes)
        reg.restricted_keys.extend(new)
        if new:
            log.info("regulation %s: %d privacy entries written", reg.id, len(changes))
        return len(new)

    async def lift(self, reg: Regulation, person: Person) -> int:
        """UNSUPPRESS: lift the suppression on every key an earlier suppressing regulation of
        these subjects restricted (and the subjects' own keys); how many entries changed."""
        mine = set(reg.subject_keys) | set(person.hashes())
        keys = set(mine)
        for other in self.regulations.values():
            earlier = other.regulation_type in SUPPRESSING and other.created_at_ms <= reg.created_at_ms
            if earlier and mine & (set(other.subject_keys) | set(other.restricted_keys)):
                keys |= set(other.restricted_keys)
        changes: dict[str, PrivacyEntry | None] = {}
        for key in sorted(keys):
            entry = self.entries.get(key)
            if entry is None or entry.suppressed_from_ms is None:
                continue
            kept = None if entry.erased_before_ms is None else PrivacyEntry(reg.id, None, entry.erased_before_ms)
            changes[key] = kept
        await self.put_entries(changes)
        reg.restricted_keys.extend(k for k in changes if k not in set(reg.restricted_keys))
        return len(changes)

    def person_of(self, reg: Regulation) -> Person:
        person = Person()
        kind = KIND_OF[reg.subject_type]
        for value in reg.subject_ids:
            person.add(kind, value)
        return person

    # -- carrying it out -------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def step(self, reg: Regulation, name: str) -> Any:
        """Run one store's step: ``running`` (written), then ``done`` or ``failed`` with the reason
        (written). The body may set ``store.detail`` and ``store.count``."""
        store = reg.stores.setdefault(name, StoreStatus())
        store.status, store.started_at_ms, store.finished_at_ms = "running", self.clock(), None
        store.detail = None
        await self.write(reg)
        try:
            yield store
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            store.status, store.finished_at_ms = "failed", self.clock()
            store.detail = str(exc) if isinstance(exc, StepFailed) else f"{type(exc).__name__}: {exc}"
            log.warning("regulation %s: store %s failed: %s", reg.id, name, store.detail)
        else:
            store.status, store.finished_at_ms = "done", self.clock()
        await self.write(reg)

    async def carry_out(self, reg_id: str) -> Regulation:
        """Carry the regulation out, store by store (see the module docstring); idempotent."""
        reg = self.regulations[reg_id]
        if reg.status == "done":
            return reg
        waited = time.monotonic() + self.timeout_s
        while True:  # a replica that never catches up delays the regulation, never blocks it
            if self.ready() or time.monotonic() >= waited:
                break
            await asyncio.sleep(self.poll_s)
        reg.status, reg.finished_at_ms = "running", None
        person = self.person_of(reg)
        looked: set[tuple[str, str]] = set()
        discover(person, self.namespaces(), looked)
        async with self.step(reg, "privacy_list") as store:
            if reg.regulation_type == "UNSUPPRESS":
                store.count = await self.lift(reg, person)
                store.detail = "suppression lifted; erasures kept"
            else:
                await self.restrict(reg, person)
                store.count = len(reg.restricted_keys)
        if reg.regulation_type in DELETING and reg.stores["privacy_list"].status == "done":
            await self._delete(reg, person, looked)
        return await self.finish(reg)

    async def _delete(self, reg: Regulation, person: Person, looked: set[tuple[str, str]]) -> None:
        async with self.step(reg, "worker") as store:
            store.count = await self.erase_in_worker(reg, person, looked)
            store.detail = f"{len(self.namespaces())} namespace(s), {len(person.contact_ids)} contact id(s)"
        reg.stores["privacy_list"].count = len(reg.restricted_keys)
        if reg.stores["worker"].status != "done":
            return  # the later stores wait for the worker (the archive must not be written again)
        # a store done in an earlier run (this one retries a failure) keeps its outcome and counts
        if reg.stores["api"].status != "done":
            async with self.step(reg, "api") as store:
                store.count = await self.wait_api_forgets(reg, person)
        if reg.stores["archive"].status != "done":
            async with self.step(reg, "archive") as store:
                store.count, store.detail = await self.erase_archive(person)
        if reg.stores["deliveries"].status != "done":
            async with self.step(reg, "deliveries") as store:
                store.count, store.detail = await self.erase_deliveries(reg.id, person)
        async with self.step(reg, "deadletter") as store:
            store.detail = self.deadletter_detail()

    def deadletter_detail(self) -> str:
        """What happens to the person's dead letters: the topics cannot be rewritten."""
        days = self.settings.retention_deadletter_days
        bound = f"after {days} days" if days else "never (retention 0: set SCORESTREAM_RETENTION_DEADLETTER_DAYS)"
        return (
            f"{self.settings.topic_deadletter} and the private dead-letter topics cannot be rewritten: their records "
            f"expire {bound}; the archive's copies were deleted with the archive"
        )

    def orders(self, person: Person) -> list[tuple[str, str, str]]:
        """Every (namespace, target, key) order the person's identifiers call for."""
        out = []
        for ns in self.namespaces():
            out += [(ns.name, "contact", c) for c in person.contact_ids]
            out += [(ns.name, "link", a) for a in sorted(person.anonymous_ids)]
        return out

    async def send_orders(self, reg: Regulation, orders: list[tuple[str, str, str]]) -> None:
        """The erase orders (``(namespace, target, key)``) on the namespaces' internal topics."""
        records: list[Record] = []
        partitions: dict[str, int] = {}
        for namespace, target, key in orders:
            settings = self.settings.in_namespace(namespace)
            topic = settings.contacts_topic if target == "contact" else settings.identity_topic
            if topic not in partitions:
                partitions[topic] = await self.writer.partitions(topic)
            raw = key.encode()
            value = erase_record(key, reg.id, link=target == "link")
            records.append((topic, raw, value, partition_for(raw, partitions[topic])))
        if records:
            await self.writer.send_many(records)

    async def erase_in_worker(self, reg: Regulation, person: Person, looked: set[tuple[str, str]]) -> int:
        """Send the orders, follow the reports, until every order is reported; the contacts and
        links found. Raises :class:`StepFailed` when no new report came for the timeout (the
        record shows the progress, written at most every :data:`PROGRESS_S`)."""
        sent: set[tuple[str, str, str]] = set()
        seen: dict[tuple[str, str, str], ErasureReport] = {}
        deadline = time.monotonic() + self.timeout_s
        shown, shown_at = -1, time.monotonic()
        changed = True
        while True:
            reports = self.reports.get(reg.id, {})
            for at, report in list(reports.items()):
                if seen.get(at) is not report:  # only what is new since the last round
                    seen[at] = report
                    changed = person.add_report(report) or changed
                    deadline = time.monotonic() + self.timeout_s  # the worker is at it
            if len(seen) != shown and time.monotonic() - shown_at >= PROGRESS_S:
                shown, shown_at = len(seen), time.monotonic()
                reg.stores["worker"].detail = f"{shown} of {len(self.orders(person))} erase orders reported"
                await self.write(reg)
            if changed:
                discover(person, self.namespaces(), looked)
                await self.restrict(reg, person)  # before the orders: no event of a new id slips in
                changed = False
            pending = [o for o in self.orders(person) if o not in reports]
            await self.send_orders(reg, [o for o in pending if o not in sent])
            sent.update(pending)
            if not pending:
                return sum(1 for r in reports.values() if r.found)
            if time.monotonic() > deadline:
                raise StepFailed(
                    f"{len(pending)} of {len(self.orders(person))} erase orders not reported, none for "
                    f"{self.timeout_s:g} s (is the worker of every namespace running?); retried later"
                )
            await asyncio.sleep(self.poll_s)

    def still_found(self, reg: Regulation, person: Person) -> list[str]:
        """The namespaces whose API replica still finds one of the person's ids (``api.erasure``'s
        check when installed: it tells new collection after a DELETE_ONLY from the erased past)."""
        check = self.api_forgets
        if check is None:
            try:
                from api import erasure  # type: ignore[attr-defined,unused-ignore]
            except ImportError:
                return [ns.name for ns in self.namespaces() if forgotten([ns], person)]
            check = erasure.api_forgets  # (its replica: api.replica.Replica, a Finder)
        return [
            ns.name
            for ns in self.namespaces()
            if not check(
                ns.replica,  # type: ignore[arg-type,unused-ignore]
                person.contact_ids,
                sorted(person.anonymous_ids),
                sorted(person.emails),
                erased_before_ms=reg.created_at_ms,
            )
        ]

    async def wait_api_forgets(self, reg: Regulation, person: Person) -> int:
        deadline = time.monotonic() + self.timeout_s
        while True:
            started = time.monotonic()
            left = self.still_found(reg, person)
            if not left:
                break
            took = time.monotonic() - started  # thousands of ids: a check is not free; keep it under 20% of the loop
            if time.monotonic() > deadline:
                raise StepFailed(
                    f"the API of namespace(s) {', '.join(left)} still finds the person after {self.timeout_s:g} s"
                )
            await asyncio.sleep(max(self.poll_s, 4 * took))
        return person.count()

    async def erase_archive(self, person: Person) -> tuple[int, str]:
        if self.archive is None:
            return 0, "no archive"
        erase = self.archive_erase
        if erase is None:
            try:
                from analytics import privacy  # type: ignore[attr-defined,unused-ignore]
            except ImportError as exc:
                raise StepFailed("the archive's erasure (analytics.privacy.erase) is not installed") from exc
            erase = privacy.erase
        async with self._archive_store() as store:
            found = erase(
                store,
                user_ids=sorted(person.user_ids),
                anonymous_ids=sorted(person.anonymous_ids),
                emails=sorted(person.emails),
                contact_ids=person.contact_ids,
            )
            rows: dict[str, int] = await found if inspect.isawaitable(found) else found
        total = sum(rows.values())
        return total, ", ".join(f"{table}: {n}" for table, n in sorted(rows.items()) if n) or "no rows held"

    @contextlib.asynccontextmanager
    async def _archive_store(self) -> AsyncIterator[Any]:
        """A store of the archive: an :class:`api.archive.Archive`'s lease (waiting while the
        reports hold every one or the sink is still migrating, up to the timeout; failing at once
        when the archive is embedded chDB opened by another process), or what a plain getter gives."""
        assert self.archive is not None
        lease = getattr(self.archive, "lease", None)
        if lease is None:
            yield await self.archive()
            return
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                async with lease() as store:
                    yield store
                    return
            except ApiError as exc:  # busy, or starting (migrations): wait; unreachable from here: fail
                elsewhere = getattr(self.archive, "url", "") is None
                if exc.code not in ("busy", "not_ready") or elsewhere or time.monotonic() > deadline:
                    raise StepFailed(f"the archive: {exc.message}") from None
            await asyncio.sleep(1.0)

    async def erase_deliveries(self, reg_id: str, person: Person) -> tuple[int, str]:
        forget = self.forget_deliveries
        if forget is None:
            try:
                from api import erasure  # type: ignore[attr-defined,unused-ignore]
            except ImportError as exc:
                raise StepFailed("the deliveries' erasure (api.erasure.forget_deliveries) is not installed") from exc
            log_ = self.delivery_log
            count = await erasure.forget_deliveries(self.settings, person.contact_ids, log_, regulation_id=reg_id)
        else:
            count = await forget(self.settings, person.contact_ids)
        return count, f"{count} delivery record(s) tombstoned on {self.settings.deliveries_topic}"

    async def finish(self, reg: Regulation) -> Regulation:
        for name in STORES:
            if name not in reg.stores:
                reg.stores[name] = StoreStatus(status="done", detail="not applicable")
        failed = [n for n, s in reg.stores.items() if s.status == "failed"]
        unfinished = [n for n, s in reg.stores.items() if s.status not in ("done", "failed")]
        reg.status = "failed" if failed or unfinished else "done"
        reg.finished_at_ms = self.clock()
        if reg.status == "done":
            reg.subject_ids = []  # only their hashes (subject_keys, restricted_keys) stay
        await self.write(reg)
        if reg.status == "done":
            topic = self.settings.regulation_progress_topic
            done = self.reports.pop(reg.id, {}).values()
            await self.writer.send_many([(topic, progress_key(r).encode(), None, 0) for r in done])
        seconds = (reg.finished_at_ms - reg.created_at_ms) / 1000
        REGULATIONS.labels(type=reg.regulation_type, status=reg.status).inc()
        if reg.status == "done":
            REGULATION_SECONDS.labels(type=reg.regulation_type).observe(seconds)
        audit(
            reg.requested_by,
            f"regulation_{reg.status}",
            regulation_id=reg.id,
            regulation_type=reg.regulation_type,
            subject_count=len(reg.subject_keys),
            subject_keys=reg.subject_keys,
            stores={n: s.status for n, s in reg.stores.items()},
            failed_stores=failed or None,
            seconds=round(seconds, 3),
        )
        log.info("regulation %s: %s in %.1f s", reg.id, reg.status, seconds)
        return reg

    # -- reading ---------------------------------------------------------------------------------------
    def listing(self, status: str | None = None) -> list[Regulation]:
        """Every regulation (of ``status``), newest first."""
        found = [r for r in self.regulations.values() if status is None or r.status == status]
        return sorted(found, key=lambda r: (-r.created_at_ms, r.id))
