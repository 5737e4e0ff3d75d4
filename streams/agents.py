"""The pipeline, batch by batch: decode -> validate (or dead-letter) -> route -> fold -> persist.

Every agent receives a fetched batch of one partition's records as one stream event
(:mod:`streams.transport`), does the per-event work with the pure core, reads and writes each
table key once per batch, and produces its output as one
:class:`~schemas.state.Batch` record per destination partition, put into Faust's producer buffer
as one item with the batch's triggers (:mod:`streams.sends`). Faust flushes the producer before it
commits offsets, so output is durable before input is acknowledged: at-least-once, made idempotent
by message ids.

Each record (and each key of a fold) is handled inside its own ``try``: one that fails, for any
reason, is dead-lettered alone and the rest of the batch goes on; no exception leaves an agent
(:mod:`streams.deadletter` has the policy and the reasons).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import faust
import msgspec
from faust.types import TopicT

from kafka_io.partitioner import partition_for
from schemas.events import InvalidMessage, decode
from schemas.privacy import key_subjects, raw_subjects
from schemas.regulations import ErasureReport, encode_json, progress_key
from schemas.settings import Settings
from schemas.state import (
    MAX_HOPS,
    Batch,
    Envelope,
    EnvelopeHead,
    EventHead,
    Item,
    RawBatch,
    RawItem,
    decode_batch,
    decode_heads,
    decode_link,
    decode_state,
    encode,
    envelope_for,
    message_of,
    raw_item,
)
from scorestream import ContactState, Event, IdentityLink, Model
from scorestream.fold import Erased, Folded, Message, Tick, step
from scorestream.identity import resolve, routing_key
from scorestream.privacy import Decision, PrivacyList, SubjectKind, contact_key, subject_key
from streams.account_feed import register_accounts
from streams.app import Wiring
from streams.deadletter import Unprocessable, batch_error, dead_letter
from streams.identity_replica import register_identity_replica
from streams.population_feed import register_population
from streams.sends import BatchedSends
from streams.state_cache import Acks, FaustAcks, StateCache, writer_for
from streams.timers import TickClock, TimerIndex, beat_interval_s
from streams.transport import (
    MAX_RECORD_BYTES,
    ScorestreamApp,
    TooLarge,
    encode_chunks,
    exception_name,
    record_ms,
    records_of,
)
from streams.views import register_views
from telemetry import metrics
from telemetry.logs import kafka_fields

log = logging.getLogger(__name__)

MAX_ITEMS_PER_RECORD = 1000
# One envelope must fit a record on its own, with room for the batch around it.
MAX_ITEM_BYTES = MAX_RECORD_BYTES - 1024


class Outbox:
    """Collects keyed envelopes for internal topics; sends one record per partition per batch.

    Envelopes are added as objects or, when forwarded unchanged, as the bytes they arrived in
    (``msgspec.Raw``): an event is encoded once by ingest and decoded once by contacts.

    Each envelope is encoded (and its size checked) when it is added, so one that cannot be
    written fails there, alone, in the caller's per-record handling; at flush a record that does
    not encode is halved until the one bad item is found (``refuse``), and the others are sent.
    """

    def __init__(self, partitions: int, refuse: Callable[[RawItem, Exception], None] | None = None) -> None:
        self.partitions = partitions
        self.pending: dict[tuple[TopicT, int], list[RawItem]] = defaultdict(list)
        self.refuse = refuse or _log_refused

    def item(self, topic: TopicT, key: str, env: Envelope | msgspec.Raw) -> tuple[TopicT, int, RawItem]:
        """An envelope made ready to send (encoded now; raises if it cannot be written)."""
        item = raw_item(key, env)
        size = len(item.env) + len(key)
        if size > MAX_ITEM_BYTES:
            raise TooLarge(f"an envelope of {size} bytes; the limit is {MAX_ITEM_BYTES}")
        return topic, partition_for(key.encode(), self.partitions), item

    def put(self, staged: tuple[TopicT, int, RawItem]) -> None:
        topic, partition, item = staged
        self.pending[(topic, partition)].append(item)

    def add(self, topic: TopicT, key: str, env: Envelope | msgspec.Raw) -> None:
        self.put(self.item(topic, key, env))

    def flush(self) -> None:
        """The records into the producer buffer now (as one item: :mod:`streams.sends`)."""
        for (topic, partition), items in self.pending.items():
            sends = BatchedSends.for_topic(topic)
            for chunk, value in encode_chunks(items, _encode_raw, self.refuse, MAX_ITEMS_PER_RECORD):
                if sends is not None:
                    sends.add(topic, chunk[0].key.encode(), value, partition=partition)
                else:  # an app without batched sends (the tests' fakes)
                    topic.send_soon(key=chunk[0].key.encode(), value=value, partition=partition)
        self.pending.clear()


def _encode_raw(items: list[RawItem]) -> bytes:
    return encode(RawBatch(items=items))


def _log_refused(item: RawItem, exc: Exception) -> None:
    log.error("envelope for %s not sent: %s: %s", item.key, exception_name(exc), exc)


class Pipeline:
    """The worker's stages over one app: what each agent does with one fetched batch.

    ingest: source records -> decode (or dead-letter) -> route by identity -> identity or contacts
    topic; identity: events -> identity links (table) -> the event and any merges to the contacts
    topic; contacts: each contact's messages -> :func:`scorestream.fold.step` -> its state
    (table), its messages for other contacts, its triggers, its next due instant (the clock). The
    agents registered by :func:`register` call these methods and do nothing else.
    """

    def __init__(
        self, w: Wiring, settings: Settings, model: Model, acks: Acks | None = None, privacy: PrivacyList | None = None
    ) -> None:
        self.w = w
        self.settings = settings
        self.model = model
        # who may not be collected (kafka_io.privacy: followed by the worker, streams/worker.py)
        self.privacy = privacy if privacy is not None else PrivacyList()
        self.channels = settings.source_topics
        self.counted = {
            topic: (metrics.EVENTS_IN.labels(topic), metrics.EVENTS_ACCEPTED.labels(topic)) for topic in self.channels
        }
        self.partitions = settings.partitions
        self.population = register_population(w, settings, model)
        self.feed = register_accounts(w, settings, model)
        self.replica = register_identity_replica(w, settings)
        self.views = register_views(w, settings, model)
        self.timer_index = TimerIndex()
        self.clock = TickClock(
            self.timer_index, self.assigned, self.flushed_contacts, self.send_ticks, max_ticks=settings.batch_max
        )
        self.states = StateCache(
            writer_for(w.contacts),
            acks or FaustAcks(w.app),
            self._encode_state,
            self._unwritable,
            topic=settings.contacts_topic,
            flush_ms=settings.state_flush_ms,
            max_dirty=settings.state_flush_max_dirty,
            max_clean=settings.state_cache_entries,
        )

    # --- the clock -----------------------------------------------------------------------------

    def send_ticks(self, ticks: list[tuple[str, Tick]]) -> None:
        out = Outbox(self.partitions)
        for key, tick in ticks:
            out.add(self.w.contacts_topic, key, envelope_for(tick))
        out.flush()

    def assigned(self) -> frozenset[int]:
        topic = self.settings.contacts_topic
        return frozenset(tp.partition for tp in self.w.app.assignor.assigned_actives() if tp.topic == topic)

    async def beat(self) -> None:
        """One beat of the clock: due contacts are sent a tick (not while tables recover)."""
        app = self.w.app
        if self.model.lifecycle is None or app.in_recovery or app.rebalancing:
            return
        try:
            await self.clock.tick()
        except Exception:  # the next beat tries again (the due instants live in the states)
            log.exception("clock: a beat failed")

    # --- dead letters and decoding -------------------------------------------------------------

    def refuser(self, batch_event: Any) -> Callable[[RawItem, Exception], None]:
        """Where an item that cannot be sent at flush goes: the dead-letter topic, with the
        coordinates of the batch it was produced from."""

        def refuse(item: RawItem, exc: Exception) -> None:
            value = encode(RawBatch(items=[item])) if not isinstance(exc, TooLarge) else bytes(item.env)
            dead_letter(self.w, batch_event.message, value, "unsendable", str(exc), exc, item.key.encode())

        return refuse

    def park(self, record: Any, items: list[Item], reason: str, detail: str, exc: BaseException | None = None) -> None:
        """Internal messages that cannot be applied go to the dead-letter topic, replayable as is
        (a batch of these items; the record's own bytes if they cannot be encoded again)."""
        try:
            value = encode(Batch(items=items))
        except Exception:
            value = record.value
        dead_letter(self.w, record, value, reason, detail, exc, items[0].key.encode() if items else None)

    def unpack(self, records: list[Any]) -> Iterator[tuple[Any, Item]]:
        for record in records:
            try:
                items = decode_batch(record.value).items
            except Exception as exc:
                dead_letter(self.w, record, None, "internal_decode", str(exc), exc)
                continue
            for item in items:
                yield record, item

    def heads(self, records: list[Any]) -> Iterator[tuple[Any, str, msgspec.Raw, EnvelopeHead]]:
        for record in records:
            try:
                items = decode_heads(record.value)
            except Exception as exc:
                dead_letter(self.w, record, None, "internal_decode", str(exc), exc)
                continue
            for key, env, head in items:
                yield record, key, env, head

    # --- ingest ----------------------------------------------------------------------------------

    def ingest_batch(self, batch_event: Any) -> None:
        """Source records -> events routed to the identity or contacts topic; one that fails is
        dead-lettered alone."""
        w = self.w
        out = Outbox(self.partitions, self.refuser(batch_event))
        records = records_of(batch_event)
        refused = 0
        privacy = self.privacy
        for record in records:
            raw = record.value
            try:
                if not isinstance(raw, bytes):
                    raise InvalidMessage("invalid_json", "empty record value")
                event = decode(raw, self.channels[record.topic], record_ms(record), time.time_ns() // 1_000_000)
                if privacy.entries and (decision := privacy.decide(event, record_ms(record))) is not None:
                    refused += 1  # not accepted: dropped, stored nowhere (counted as suppressed)
                    metrics.suppressed("worker", record.topic, decision)
                    continue
                topic, key = self._route(event)
                out.add(topic, key, Envelope(kind="event", event=event))  # encoded here: fails alone
            except InvalidMessage as exc:
                refused += 1
                if not self._restricted(record):
                    dead_letter(w, record, None, exc.reason, exc.detail, exc)
            except Exception as exc:  # not the contract's refusal: a bug, a limit; never the batch
                refused += 1
                if self._restricted(record):
                    continue
                log.exception(
                    "ingest: %s[%s] %s failed",
                    record.topic,
                    record.partition,
                    record.offset,
                    extra=kafka_fields(record.topic, record.partition, record.offset),
                )
                dead_letter(w, record, None, "processing_error", repr(exc), exc)
        out.flush()
        counted = self.counted.get(batch_event.message.topic)
        if counted is not None:  # one partition's batch: one topic
            counted[0].inc(len(records))
            counted[1].inc(len(records) - refused)

    def _restricted(self, record: Any) -> bool:
        """Whether a source record ingest could not take belongs to a restricted person, by the
        identifiers its bytes and key show (at its record time): then it is dropped and counted,
        not dead-lettered (its content must not be stored)."""
        privacy = self.privacy
        if not privacy.entries:
            return False
        at = record_ms(record)
        raw = record.value if isinstance(record.value, bytes) else None
        decision = privacy.decide_subjects([*raw_subjects(raw), *key_subjects(record.key)], at, at)
        if decision is None:
            return False
        metrics.suppressed("worker", record.topic, decision)
        return True

    def _route(self, event: Event) -> tuple[TopicT, str]:
        """The topic and key of an event's next stage: the identity topic keyed by anonymous id,
        or the contacts topic keyed by user id, or (the fast path, :mod:`streams.identity_replica`)
        by the contact a known link leads to when the identity stage would only forward it."""
        where, key = routing_key(event)
        if where != "identity":
            return self.w.contacts_topic, key
        contact = self.replica.route(key, event) if self.replica is not None else None
        if contact is not None:
            return self.w.contacts_topic, contact
        return self.w.identity_topic, key

    # --- identity --------------------------------------------------------------------------------

    def identity_batch(self, batch_event: Any) -> None:
        """Events keyed by anonymous id -> identity links; the event (and any merge) on to the
        contacts topic. One event that fails is dead-lettered alone; a link that cannot be written
        has its events' records parked (the events were forwarded)."""
        out = Outbox(self.partitions, self.refuser(batch_event))
        links: dict[str, IdentityLink | None] = {}
        changed: dict[str, list[tuple[Any, str, msgspec.Raw]]] = defaultdict(list)
        privacy = self.privacy
        for record, key, env, head in self.heads(records_of(batch_event)):
            if head.kind == "erase_link":
                self._erase_link(record, key, env, head, links, changed)
                continue
            if privacy.entries and head.event is not None and (decision := _head_decision(privacy, head.event)):
                # in flight when its person's regulation came: no link (an erased one not re-created)
                metrics.suppressed("identity", record.topic, decision)
                continue
            try:
                link, staged = self._resolve(out, links, key, env, head)
            except Exception as exc:
                reason = exc.reason if isinstance(exc, Unprocessable) else "processing_error"
                detail = exc.detail if isinstance(exc, Unprocessable) else repr(exc)
                if not isinstance(exc, Unprocessable):
                    log.exception(
                        "identity: %s in %s[%s] %s failed", key, record.topic, record.partition, record.offset
                    )
                dead_letter(self.w, record, _one_item(key, env), reason, detail, exc, key.encode())
                continue
            if link is not links[key]:
                links[key] = link
                changed[key].append((record, key, env))
            for item in staged:
                out.put(item)
        for key, sources in changed.items():
            self._write_link(key, links[key], sources)
        out.flush()

    def _stored_link(self, links: dict[str, IdentityLink | None], key: str) -> IdentityLink | None:
        """``key``'s link as the batch sees it (read from the table once)."""
        if key not in links:
            raw = self.w.identity.get(key)
            links[key] = decode_link(raw) if raw is not None else None
            if self.replica is not None and links[key] is not None:
                self.replica.learn(key, links[key])  # the table's link: back in the replica if evicted
        return links[key]

    def _erase_link(
        self,
        record: Any,
        key: str,
        env: msgspec.Raw,
        head: EnvelopeHead,
        links: dict[str, IdentityLink | None],
        changed: dict[str, list[tuple[Any, str, msgspec.Raw]]],
    ) -> None:
        """A regulation's ``erase_link`` order for anonymous id ``key``: its link is deleted (a
        tombstone on the changelog, written with the batch's other links) and the order is
        reported with the contact it led to. An order without its content is parked alone."""
        if head.erase is None:
            detail = "an 'erase_link' envelope without its order"
            dead_letter(self.w, record, _one_item(key, env), "empty_envelope", detail)
            return
        try:
            link = self._stored_link(links, key)
        except Exception as exc:  # an unreadable link: deleted all the same (nothing to report of it)
            log.error("identity: erase_link of %s: stored link unreadable (%s)", subject_key("anonymous", key), exc)
            link = None
            links[key] = link
            changed[key].append((record, key, env))
        if link is not None:
            links[key] = None
            changed[key].append((record, key, env))
        if self.replica is not None:
            self.replica.learn(key, None)
        report = ErasureReport(
            regulation_id=head.erase.regulation_id,
            namespace=self.settings.ns,
            target="link",
            key=key,
            found=link is not None,
            at_ms=time.time_ns() // 1_000_000,
            linked_contact=link.contact_id if link is not None else None,
        )
        self.w.send_progress(progress_key(report).encode(), encode_json(report))
        metrics.ERASURES.labels("identity", str(report.found).lower()).inc()
        log.info(
            "identity: regulation %s: link %s erased (found: %s)",
            report.regulation_id,
            subject_key("anonymous", key),
            report.found,
        )

    def _resolve(
        self, out: Outbox, links: dict[str, IdentityLink | None], key: str, env: msgspec.Raw, head: EnvelopeHead
    ) -> tuple[IdentityLink | None, list[tuple[TopicT, int, RawItem]]]:
        """One event's identity decision, and its outputs made ready (all of them before any is
        kept: an event fails whole)."""
        if head.event is None:
            raise Unprocessable("not_an_event", f"a {head.kind!r} envelope on the identity topic")
        link, routed = resolve(self._stored_link(links, key), key, head.event)
        staged = [
            out.item(self.w.contacts_topic, r.key, env if r.merge is None else envelope_for(r.merge, 0))
            for r in routed  # the event itself is forwarded as received
        ]
        return link, staged

    def _write_link(self, key: str, link: IdentityLink | None, sources: list[tuple[Any, str, msgspec.Raw]]) -> None:
        try:
            if link is None:  # erased: the changelog gets a tombstone
                if key in self.w.identity:
                    del self.w.identity[key]
                return
            value = encode(link)
            if len(value) + len(key) > MAX_RECORD_BYTES:
                raise TooLarge(f"identity link of {len(value)} bytes")
            self.w.identity[key] = value
        except Exception as exc:  # its events were forwarded; the link change is parked
            log.exception("identity: link %s not written", key)
            for record, k, env in sources:
                dead_letter(self.w, record, _one_item(k, env), "processing_error", repr(exc), exc, k.encode())

    # --- contacts --------------------------------------------------------------------------------

    def contacts_batch(self, batch_event: Any) -> None:
        """One fetched batch of the contacts topic: every message of a key folded at once, one
        key at a time; a key whose fold fails has its messages parked (its cached state is rebuilt
        without them, :meth:`_refold`). The states stay in the write-behind cache (:mod:`streams.state_cache`), which holds the batch's record
        unacknowledged until they are written."""
        out = Outbox(self.partitions, self.refuser(batch_event))
        inboxes = self._inboxes(records_of(batch_event))
        partition = batch_event.message.partition
        states = self.states
        puts = states.puts
        for key, inbox in inboxes.items():
            try:
                staged = self._fold(key, inbox, partition, out)
            except Exception as exc:  # a bug, an unreadable state, a limit: never the batch
                log.exception("contact %s: messages parked on the dead-letter topic", key)
                self._refold(partition, key, states.discard(partition, key))
                self.park(inbox.sources[0][0], [item for _, item in inbox.sources], "processing_error", repr(exc), exc)
                continue
            for ready in staged:
                out.put(ready)
        out.flush()
        self.feed.flush(batch_event.message)
        if states.puts != puts:
            states.hold(batch_event.message)
        # a reader of the table is about to rebuild from it: write through until it has
        states.write_through = self.population.rebuilt != self.population.rebalances
        states.maybe_flush()

    def _refold(self, partition: int, key: str, earlier: list[tuple[Any, Item]]) -> None:
        """The cached state of a key whose fold failed is dropped (the core may have changed it in
        place); the messages folded into it since the last flush are folded again onto the written
        state, so only the failing batch's messages are parked (the outputs of the earlier folds
        were sent already). If that fails too, they are parked with them."""
        if not earlier:
            return
        try:
            raw = self.w.contacts.get(key)
            before = decode_state(raw) if raw is not None else None
            messages = [m for _, item in earlier if (m := message_of(item.env)) is not None]
            folded = step(
                before,
                key,
                messages,
                self.model,
                segment_of=self.population.segment_of,
                churn_of=self.population.churn_of,
            )
            if folded.state is not None:
                self.states.put(partition, key, folded.state, earlier)
            elif folded.erased:  # the erase order among them stands
                self.states.delete(partition, key, earlier)
        except Exception as exc:
            log.exception("contact %s: messages since the last flush parked too", key)
            self.park(earlier[0][0], [item for _, item in earlier], "processing_error", repr(exc), exc)

    def _erased(self, key: str, folded: Folded, partition: int, sources: list[tuple[Any, Item]]) -> None:
        """The inbox held erase orders (``folded.erased``): the contact is deleted from the cache
        and the table (a changelog tombstone at the flush), the views topic (a tombstone), its
        accounts (an ``erased`` member update), the population and timer indexes and the identity
        replica; each order is reported on the progress topic, with the batch's other output (so
        before its record is acknowledged). Events after the order in the inbox (new collection)
        made ``folded.state`` a new contact: the caller writes it over the tombstone."""
        for erased in folded.erased:
            held = erased.state
            if held is not None:
                self.feed.erase(held)
                self.population.remove(partition, key)
                if self.replica is not None:
                    for anonymous_id in held.anonymous_ids:
                        self.replica.learn(anonymous_id, None)
        if folded.state is None:
            self.timer_index.set(key, None)
            self.states.delete(partition, key, sources)
            self.views.add(key, None)
        now_ms = time.time_ns() // 1_000_000
        for erased in folded.erased:
            report = _report(erased, key, self.settings.ns, now_ms)
            self.w.send_progress(progress_key(report).encode(), encode_json(report))
            metrics.ERASURES.labels("contacts", str(report.found).lower()).inc()
            log.info(
                "contacts: regulation %s: contact %s erased (found: %s)",
                erased.regulation_id,
                contact_key(key),
                report.found,
            )

    def flushed_contacts(self) -> Any:
        """The contacts table's items, once the cache's dirty states are written (the timer
        index is rebuilt from them)."""
        self.states.flush()
        return self.w.contacts.items()

    def _encode_state(self, key: str, state: ContactState) -> bytes:
        raw = encode(state)
        if len(raw) + len(key) > MAX_RECORD_BYTES:
            raise TooLarge(f"the contact's state is {len(raw)} bytes; a changelog record holds {MAX_RECORD_BYTES}")
        return raw

    def _unwritable(self, key: str, sources: list[tuple[Any, Item]], exc: Exception) -> None:
        """A state that cannot be written at flush: the messages folded into it since the last
        flush are parked (the state is dropped; the stored one stays)."""
        log.error("contact %s: state not written (%s: %s); its messages parked", key, exception_name(exc), exc)
        self.park(sources[0][0], [item for _, item in sources], "processing_error", repr(exc), exc)

    def _inboxes(self, records: list[Any]) -> dict[str, _Messages]:
        """The batch's messages by contact, in partition order; one that cannot be applied (an
        empty envelope, a merge loop) is parked alone."""
        inboxes: dict[str, _Messages] = {}
        privacy = self.privacy
        for record, item in self.unpack(records):
            try:
                env = item.env
                if env.hops > MAX_HOPS:
                    raise Unprocessable("merge_loop", f"{env.hops} forwards")
                message = message_of(env)
                if message is None:
                    raise Unprocessable("empty_envelope", f"a {env.kind!r} envelope without its content")
                if privacy.entries and env.event is not None and (decision := privacy.decide(env.event)) is not None:
                    # in flight when its person's regulation came (past ingest): dropped here
                    metrics.suppressed("contacts", record.topic, decision)
                    continue
            except Exception as exc:
                reason = exc.reason if isinstance(exc, Unprocessable) else "processing_error"
                self.park(record, [item], reason, exc.detail if isinstance(exc, Unprocessable) else repr(exc), exc)
                continue
            inbox = inboxes.get(item.key)
            if inbox is None:
                inbox = inboxes[item.key] = _Messages()
            inbox.messages.append(message)
            inbox.sources.append((record, item))
            inbox.hops = max(inbox.hops, env.hops)
        return inboxes

    def _fold(self, key: str, inbox: _Messages, partition: int, out: Outbox) -> list[tuple[TopicT, int, RawItem]]:
        """One contact: read its state (the cache's, else the table's), fold its inbox, keep what
        the fold decided (the state in the cache; its messages for other contacts are returned,
        ready to send, for the caller to keep once all is done)."""
        w = self.w
        # step() may change ``before`` in place: a failure drops it from the cache
        before = self.states.get(partition, key)
        if before is None and not self.states.deleted(partition, key):
            raw = w.contacts.get(key)
            before = decode_state(raw) if raw is not None else None
        folded = step(
            before,
            key,
            inbox.messages,
            self.model,
            segment_of=self.population.segment_of,
            churn_of=self.population.churn_of,
        )
        hop = inbox.hops + 1
        staged = [out.item(w.contacts_topic, o.key, envelope_for(o.item, hop)) for o in folded.outgoing]
        if folded.erased:
            self._erased(key, folded, partition, inbox.sources)
        state = folded.state
        if state is None:
            return staged
        self.timer_index.set(key, folded.next_due_ms)
        for trigger in folded.triggers:
            w.send_trigger(key.encode(), trigger)
        self.feed.add(state)
        self.population.add(partition, state)
        self.states.put(partition, key, state, inbox.sources)
        self.views.add(key, state)
        return staged


class _Messages:
    """One contact's messages in a batch, the records they came in, and their most hops."""

    __slots__ = ("hops", "messages", "sources")

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.sources: list[tuple[Any, Item]] = []
        self.hops = 0


def _report(erased: Erased, key: str, namespace: str, at_ms: int) -> ErasureReport:
    """What an erase order found in contact ``key``: the ids that lead further (for the
    regulation service to restrict and erase in turn)."""
    held = erased.state
    if held is None:
        return ErasureReport(erased.regulation_id, namespace, "contact", key, found=False, at_ms=at_ms)
    return ErasureReport(
        regulation_id=erased.regulation_id,
        namespace=namespace,
        target="contact",
        key=key,
        found=True,
        at_ms=at_ms,
        user_id=held.user_id,
        anonymous_ids=list(held.anonymous_ids),
        merged_ids=list(held.merged_ids),
        merged_into=held.merged_into,
        email=held.email,
        account_id=held.account_id,
    )


def _head_decision(privacy: PrivacyList, event: EventHead) -> Decision | None:
    """The privacy list's decision for an event the identity stage read only the head of (its ids
    and event time; an email trait is decided by the contacts stage, which reads it)."""
    subjects: list[tuple[SubjectKind, str]] = []
    if event.user_id:
        subjects.append(("user", event.user_id))
    if event.anonymous_id:
        subjects.append(("anonymous", event.anonymous_id))
    if event.kind == "alias" and event.previous_id:
        subjects += [("user", event.previous_id), ("anonymous", event.previous_id)]
    return privacy.decide_subjects(subjects, event.timestamp_ms)


def _one_item(key: str, env: msgspec.Raw) -> bytes:
    return encode(RawBatch(items=[RawItem(key=key, env=env)]))


def register(
    w: Wiring, settings: Settings, model: Model, acks: Acks | None = None, privacy: PrivacyList | None = None
) -> Pipeline:
    """Attach the clock and the three agents to the app: each batch to its :class:`Pipeline` stage,
    whatever escapes a stage dead-lettered as a batch error (an agent never raises). ``acks``:
    how the contacts stage holds its records until their states are written (default Faust's);
    ``privacy``: the privacy list the ingest and contacts stages drop restricted events by (kept
    current by its follower; default an empty one)."""
    pipeline = Pipeline(w, settings, model, acks, privacy)
    states = pipeline.states
    stages = {name: metrics.Stage(name) for name in ("ingest", "identity", "contacts")}
    cast(ScorestreamApp, w.app).add_state_flusher(states)

    if settings.state_flush_ms > 0:  # a quiet partition's dirty states are written on time too

        @w.app.timer(interval=settings.state_flush_ms / 2000, name="state-flush")
        async def flush_states() -> None:
            try:
                states.maybe_flush()
            except Exception:  # held records stay unacknowledged; the next beat tries again
                log.exception("state cache: flush failed")

    @w.app.timer(interval=beat_interval_s(settings.timer_interval_s), name="clock")
    async def beat() -> None:
        await pipeline.beat()

    @w.app.agent(w.sources, name="ingest")
    async def ingest(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        stage = stages["ingest"]
        async for batch_event in stream.events():
            started = time.perf_counter()
            try:
                pipeline.ingest_batch(batch_event)
            except Exception as exc:
                batch_error(w, "ingest", batch_event, exc)
            stage.batch(len(records_of(batch_event)), time.perf_counter() - started)
            yield None

    @w.app.agent(w.identity_topic, name="identity")
    async def identity(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        stage = stages["identity"]
        async for batch_event in stream.events():
            started = time.perf_counter()
            try:
                pipeline.identity_batch(batch_event)
            except Exception as exc:
                batch_error(w, "identity", batch_event, exc)
            stage.batch(len(records_of(batch_event)), time.perf_counter() - started)
            yield None

    @w.app.agent(w.contacts_topic, name="contacts")
    async def contacts(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        stage = stages["contacts"]
        async for batch_event in stream.events():
            started = time.perf_counter()
            try:
                pipeline.contacts_batch(batch_event)
            except Exception as exc:
                batch_error(w, "contacts", batch_event, exc)
            stage.batch(len(records_of(batch_event)), time.perf_counter() - started)
            yield None

    return pipeline
