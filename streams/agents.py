"""The pipeline, batch by batch: decode -> validate (or dead-letter) -> route -> fold -> persist.

Every agent receives a fetched batch of one partition's records as one stream event
(:mod:`streams.transport`), does the per-event work with the pure core, reads and writes each
table key once per batch, and produces its output as one
:class:`~schemas.state.Batch` record per destination partition with ``send_soon``. Faust flushes
the producer before it commits offsets, so output is durable before input is acknowledged:
at-least-once, made idempotent by message ids.
"""

from __future__ import annotations

import logging
import zlib
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import faust
import msgspec
from faust.types import TopicT

from schemas.events import InvalidMessage, deadletter_headers, decode
from schemas.settings import Settings
from schemas.state import (
    MAX_HOPS,
    Batch,
    Envelope,
    EnvelopeHead,
    Item,
    RawBatch,
    RawItem,
    decode_batch,
    decode_heads,
    decode_link,
    decode_state,
    encode,
    envelope_for,
    raw_item,
)
from scorestream import ContactState, Event, IdentityLink, Model
from scorestream.contact import Absorb, Tick, step
from scorestream.identity import MergeInto, resolve, routing_key
from scorestream.journey import Journey
from scorestream.lifecycle import journey_triggers
from scorestream.triggers import make_trigger
from streams.accounts import register_accounts
from streams.app import Wiring
from streams.population import register_population
from streams.timers import Clock, TimerIndex
from streams.transport import record_ms, records_of

log = logging.getLogger(__name__)

MAX_ITEMS_PER_RECORD = 1000


def partition_for(key: bytes, partitions: int) -> int:
    """Partition of an internal-topic key. Only scorestream writes these topics, so any stable hash
    works; CRC32 is in C (aiokafka's murmur2 is pure Python)."""
    return zlib.crc32(key) % partitions


class Outbox:
    """Collects keyed envelopes for internal topics; sends one record per partition per batch.

    Envelopes are added as objects or, when forwarded unchanged, as the bytes they arrived in
    (``msgspec.Raw``): an event is encoded once by ingest and decoded once by contacts.
    """

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.pending: dict[tuple[TopicT, int], list[RawItem]] = defaultdict(list)

    def add(self, topic: TopicT, key: str, env: Envelope | msgspec.Raw) -> None:
        self.pending[(topic, partition_for(key.encode(), self.partitions))].append(raw_item(key, env))

    def flush(self) -> None:
        for (topic, partition), items in self.pending.items():
            for start in range(0, len(items), MAX_ITEMS_PER_RECORD):
                chunk = items[start : start + MAX_ITEMS_PER_RECORD]
                topic.send_soon(key=chunk[0].key.encode(), value=encode(RawBatch(items=chunk)), partition=partition)
        self.pending.clear()


class DecodedStates:
    """Decoded contact states kept between batches, least recently used out.

    Under live traffic a batch holds a few dozen events, and the busiest contacts appear in
    nearly every one: decoding their states again each time was the largest cost of the contacts
    stage (py-spy). An entry is used only if the bytes the table holds now are the bytes it was
    made from (a memcmp), so a value written by anyone else (recovery, another owner before a
    rebalance) is decoded afresh.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[str, tuple[bytes, ContactState]] = OrderedDict()

    def get(self, key: str, raw: bytes | None) -> ContactState | None:
        if raw is None:
            self.entries.pop(key, None)
            return None
        hit = self.entries.get(key)
        if hit is not None and hit[0] == raw:
            self.entries.move_to_end(key)
            return hit[1]
        return decode_state(raw)

    def put(self, key: str, raw: bytes, state: ContactState) -> None:
        if self.max_entries <= 0:
            return
        self.entries[key] = (raw, state)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def drop(self, key: str) -> None:
        self.entries.pop(key, None)


def register(w: Wiring, settings: Settings, model: Model) -> None:
    """Attach the three agents to the app."""
    channels = settings.source_topics
    population = register_population(w, settings, model)
    feed = register_accounts(w, settings, model)
    partitions = settings.partitions
    lifecycle = model.lifecycle
    timer_index = TimerIndex()

    def send_ticks(ticks: list[tuple[str, Tick]]) -> None:
        out = Outbox(partitions)
        for key, tick in ticks:
            out.add(w.contacts_topic, key, envelope_for(tick))
        out.flush()

    def assigned() -> frozenset[int]:
        topic = settings.contacts_topic
        return frozenset(tp.partition for tp in w.app.assignor.assigned_actives() if tp.topic == topic)

    clock = Clock(timer_index, assigned, w.contacts.items, send_ticks, max_ticks=settings.batch_max)

    @w.app.timer(interval=settings.timer_interval_s, name="clock")
    async def beat() -> None:
        if lifecycle is None or w.app.in_recovery or w.app.rebalancing:
            return
        await clock.tick()

    def changes(key: str, journey: Journey | None, state: ContactState) -> list[dict[str, Any]]:
        """Triggers for what changed in this contact (``journey``: its lifecycle before), and the
        contact's next due instant for the clock. The RFM segment is recorded in the state."""
        if state.merged_into is not None:
            timer_index.set(key, None)
            return []
        out: list[dict[str, Any]] = []
        if lifecycle is not None and state.journey is not None and state.journey is not journey:
            out.extend(journey_triggers(journey, state.journey, key, model, lifecycle))
            timer_index.set(key, state.journey.next_due_ms)
        as_of = max(state.last_seen_ms or 0, state.ticked_ms or 0)
        segment = population.segment_of(state, as_of)
        if segment != state.rfm_segment:
            out.append(
                make_trigger(
                    "rfm.segment_changed",
                    at_ms=as_of,
                    model_version=model.version,
                    contact_id=key,
                    before=state.rfm_segment,
                    after=segment,
                    rule="rfm-segments",
                )
            )
            state.rfm_segment = segment
        return out

    def dead(message: Any, raw: bytes | None, reason: str, detail: str) -> None:
        """Dead-letter a record (an aiokafka record or a Faust message: same attribute names)."""
        log.warning("dead-letter %s[%s] %s: %s: %s", message.topic, message.partition, message.offset, reason, detail)
        headers = deadletter_headers(reason, detail, message.topic, message.partition, message.offset)
        w.send_dead(message.key, raw or b"", headers, record_ms(message))

    def park(batch_event: Any, items: list[Item], reason: str, detail: str) -> None:
        """Internal messages that cannot be applied go to the dead-letter topic, replayable as is."""
        message = batch_event.message
        log.error(
            "parked %d message(s) from %s[%s]: %s: %s", len(items), message.topic, message.partition, reason, detail
        )
        headers = deadletter_headers(reason, detail, message.topic, message.partition, message.offset)
        w.send_dead(items[0].key.encode(), encode(Batch(items=items)), headers, record_ms(message))

    def unpack(records: list[Any]) -> Iterator[Item]:
        for record in records:
            try:
                yield from decode_batch(record.value).items
            except ValueError as exc:
                dead(record, record.value, "internal_decode", str(exc))

    def heads(records: list[Any]) -> Iterator[tuple[str, msgspec.Raw, EnvelopeHead]]:
        for record in records:
            try:
                yield from decode_heads(record.value)
            except ValueError as exc:
                dead(record, record.value, "internal_decode", str(exc))

    @w.app.agent(w.sources, name="ingest")
    async def ingest(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for batch_event in stream.events():
            out = Outbox(partitions)
            for record in records_of(batch_event):
                raw = record.value
                try:
                    if not isinstance(raw, bytes):
                        raise InvalidMessage("invalid_json", "empty record value")
                    event = decode(raw, channels[record.topic], record_ms(record))
                except InvalidMessage as exc:
                    dead(record, raw if isinstance(raw, bytes) else None, exc.reason, exc.detail)
                    continue
                where, key = routing_key(event)
                topic = w.identity_topic if where == "identity" else w.contacts_topic
                out.add(topic, key, Envelope(kind="event", event=event))
            out.flush()
            yield None

    @w.app.agent(w.identity_topic, name="identity")
    async def identity(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        table = w.identity
        async for batch_event in stream.events():
            out = Outbox(partitions)
            links: dict[str, IdentityLink | None] = {}
            changed: set[str] = set()
            for key, env, head in heads(records_of(batch_event)):
                if head.event is None:
                    continue
                if key not in links:
                    raw = table.get(key)
                    links[key] = decode_link(raw) if raw is not None else None
                link, routed = resolve(links[key], key, head.event)
                if link is not links[key]:
                    links[key] = link
                    changed.add(key)
                for r in routed:  # the event itself is forwarded as received
                    out.add(w.contacts_topic, r.key, env if r.merge is None else envelope_for(r.merge, 0))
            for key in changed:
                table[key] = encode(links[key])
            out.flush()
            yield None

    @w.app.agent(w.contacts_topic, name="contacts")
    async def contacts(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        table = w.contacts
        decoded = DecodedStates(settings.state_cache_entries)
        async for batch_event in stream.events():
            out = Outbox(partitions)
            inbox: dict[str, list[Event | MergeInto | Absorb | Tick]] = defaultdict(list)
            hops: dict[str, int] = defaultdict(int)
            for item in unpack(records_of(batch_event)):
                env = item.env
                if env.hops > MAX_HOPS:
                    park(batch_event, [item], "merge_loop", f"{env.hops} forwards")
                    continue
                message = env.event or env.merge or env.tick or (Absorb(env.state) if env.state else None)
                if message is not None:
                    inbox[item.key].append(message)
                    hops[item.key] = max(hops[item.key], env.hops)
            for key, messages in inbox.items():
                try:
                    # step() may change ``before`` in place: a failure drops it from the cache
                    before = decoded.get(key, table.get(key))
                    journey = before.journey if before is not None else None
                    state, sent = step(before, key, messages, model)
                except Exception as exc:  # a bug or an unreadable state must not cost the batch
                    decoded.drop(key)
                    log.exception("contact %s: messages parked on the dead-letter topic", key)
                    park(
                        batch_event,
                        [Item(key=key, env=envelope_for(m, hops[key])) for m in messages],
                        "processing_error",
                        repr(exc),
                    )
                    continue
                if state is not None:
                    for trigger in changes(key, journey, state):
                        w.send_trigger(key.encode(), trigger)
                    raw = encode(state)
                    table[key] = raw
                    decoded.put(key, raw, state)
                    feed.add(state)
                    population.add(batch_event.message.partition, state)
                for o in sent:
                    out.add(w.contacts_topic, o.key, envelope_for(o.item, hops[key] + 1))
            out.flush()
            feed.flush()
            yield None
