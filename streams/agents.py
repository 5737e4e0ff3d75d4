"""The pipeline, batch by batch: decode -> validate (or dead-letter) -> route -> fold -> persist.

Every agent takes a batch of records (``stream.take_events``), does the per-record work with the
pure core, writes each changed table key once per batch, and produces its output with
``send_soon`` (buffered; Faust flushes the producer before it commits offsets, so output is
durable before the input is acknowledged: at-least-once, made idempotent by message ids).
"""

from __future__ import annotations

import logging
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import faust
from faust.streams import _current_event
from faust.types import EventT

from schemas.events import InvalidMessage, decode
from schemas.settings import Settings
from schemas.state import MAX_HOPS, Envelope, decode_envelope, decode_event, decode_link, decode_state, encode
from scorestream import Event, Model
from scorestream.contact import Absorb, ContactState, step
from scorestream.identity import MergeInto, resolve, routing_key
from streams.app import Wiring

log = logging.getLogger(__name__)

DEADLETTER_HEADERS = (
    "scorestream.reason",
    "scorestream.error",
    "scorestream.source.topic",
    "scorestream.source.partition",
    "scorestream.source.offset",
)


@contextmanager
def as_current(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event, so table reads and writes use its partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def by_partition(events: Sequence[EventT]) -> dict[int, list[EventT]]:
    groups: dict[int, list[EventT]] = defaultdict(list)
    for event in events:
        groups[event.message.partition].append(event)
    return groups


def deadletter_headers(reason: str, detail: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    values = (reason, detail[:1000], topic, str(partition), str(offset))
    return [(k, v.encode()) for k, v in zip(DEADLETTER_HEADERS, values, strict=True)]


def register(w: Wiring, settings: Settings, model: Model) -> None:
    """Attach the three agents to the app."""
    channels = settings.source_topics
    within = settings.batch_within_ms / 1000
    batch = settings.batch_max

    def dead(message: Any, raw: bytes | None, reason: str, detail: str) -> None:
        log.warning("dead-letter %s[%s] %s: %s: %s", message.topic, message.partition, message.offset, reason, detail)
        w.deadletter.send_soon(
            key=message.key,
            value=raw or b"",
            headers=deadletter_headers(reason, detail, message.topic, message.partition, message.offset),
        )

    @w.app.agent(w.sources, name="ingest")
    async def ingest(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for events in stream.take_events(batch, within=within):
            for record in events:
                message = record.message
                raw = record.value
                try:
                    if not isinstance(raw, bytes):
                        raise InvalidMessage("invalid_json", "empty record value")
                    event = decode(raw, channels[message.topic], int(message.timestamp * 1000))
                except InvalidMessage as exc:
                    dead(message, raw if isinstance(raw, bytes) else None, exc.reason, exc.detail)
                    continue
                where, key = routing_key(event)
                if where == "identity":
                    w.identity_topic.send_soon(key=key.encode(), value=encode(event))
                else:
                    w.contacts_topic.send_soon(key=key.encode(), value=encode(Envelope(kind="event", event=event)))
            yield None

    @w.app.agent(w.identity_topic, name="identity")
    async def identity(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        table = w.identity
        async for events in stream.take_events(batch, within=within):
            for group in by_partition(events).values():
                with as_current(group[-1]):
                    links: dict[str, Any] = {}
                    changed: set[str] = set()
                    for record in group:
                        key = record.key.decode()
                        try:
                            event = decode_event(record.value)
                        except ValueError as exc:
                            dead(record.message, record.value, "internal_decode", str(exc))
                            continue
                        if key not in links:
                            raw = table.get(key)
                            links[key] = decode_link(raw) if raw is not None else None
                        link, routed = resolve(links[key], key, event)
                        if link is not links[key]:
                            links[key] = link
                            changed.add(key)
                        for r in routed:
                            env = (
                                Envelope(kind="merge", merge=r.merge)
                                if r.merge
                                else Envelope(kind="event", event=r.event)
                            )
                            w.contacts_topic.send_soon(key=r.key.encode(), value=encode(env))
                    for key in changed:
                        table[key] = encode(links[key])
            yield None

    @w.app.agent(w.contacts_topic, name="contacts")
    async def contacts(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        table = w.contacts
        async for events in stream.take_events(batch, within=within):
            for group in by_partition(events).values():
                with as_current(group[-1]):
                    inbox: dict[str, list[Event | MergeInto | Absorb]] = defaultdict(list)
                    hops: dict[str, int] = defaultdict(int)
                    for record in group:
                        try:
                            env = decode_envelope(record.value)
                        except ValueError as exc:
                            dead(record.message, record.value, "internal_decode", str(exc))
                            continue
                        key = record.key.decode()
                        if env.hops > MAX_HOPS:
                            dead(record.message, record.value, "merge_loop", f"dropped after {env.hops} forwards")
                            continue
                        item = env.event or env.merge or (Absorb(env.state) if env.state else None)
                        if item is not None:
                            inbox[key].append(item)
                            hops[key] = max(hops[key], env.hops)
                    for key, items in inbox.items():
                        raw = table.get(key)
                        before: ContactState | None = decode_state(raw) if raw is not None else None
                        state, out = step(before, key, items, model)
                        if state is not None:
                            table[key] = encode(state)
                        for o in out:
                            w.contacts_topic.send_soon(
                                key=o.key.encode(), value=encode(_envelope(o.item, hops[key] + 1))
                            )
            yield None


def _envelope(item: Event | MergeInto | Absorb, hops: int) -> Envelope:
    if isinstance(item, Event):
        return Envelope(kind="event", event=item, hops=hops)
    if isinstance(item, MergeInto):
        return Envelope(kind="merge", merge=item, hops=hops)
    return Envelope(kind="absorb", state=item.state, hops=hops)


Handler = Callable[..., Any]
