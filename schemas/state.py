"""Binary contracts that outlive a deploy: table values and internal topic messages.

Encoded as MessagePack with msgspec straight from the core's dataclasses (no per-message model
construction on the hot path). Every value carries a version: ``ContactState.v``,
``IdentityLink.v`` and ``Envelope.v``; a decoder meeting a newer version refuses it loudly rather
than misreading it. Older versions still decode (fields added since take their defaults), and a
state the fold touches is written at the current version (contact state 2: the bounds'
``traits_capped``, ``anonymous_at`` and the purchase ledger's ``folded`` orders, see docs/architecture.md "Bounds").
"""

from __future__ import annotations

from typing import Literal

import msgspec

from scorestream import ContactState, Event, IdentityLink

__all__ = [
    "STATE_VERSION",
    "Batch",
    "ContactState",
    "Envelope",
    "EnvelopeHead",
    "Event",
    "EventHead",
    "IdentityLink",
    "Item",
    "MergeInto",
    "RawBatch",
    "RawItem",
    "UnsupportedVersion",
]
from schemas.errors import ContractError
from scorestream.fold import Absorb, Tick
from scorestream.identity import MergeInto
from scorestream.privacy import Erase
from scorestream.state import STATE_VERSION

ENVELOPE_VERSION = 1
MAX_HOPS = 8


class Envelope(msgspec.Struct, omit_defaults=True):
    """A message on ``scorestream.contacts``: an event, a merge instruction, or a merged state."""

    kind: Literal["event", "merge", "absorb", "tick", "erase", "erase_link"]
    event: Event | None = None
    merge: MergeInto | None = None
    state: ContactState | None = None
    tick: Tick | None = None
    # a regulation's order (scorestream.privacy): "erase" on the contacts topic, "erase_link" on
    # the identity topic
    erase: Erase | None = None
    hops: int = 0
    v: int = ENVELOPE_VERSION


class Item(msgspec.Struct, array_like=True):
    """One keyed message inside a :class:`Batch`."""

    key: str
    env: Envelope


class Batch(msgspec.Struct):
    """One Kafka record on an internal topic: many messages whose keys share its partition.

    Batching internal traffic makes the per-record cost of the framework per batch, not per event.
    """

    items: list[Item]
    v: int = ENVELOPE_VERSION


class RawItem(msgspec.Struct, array_like=True):
    """An :class:`Item` whose envelope stays encoded: the same bytes on the wire."""

    key: str
    env: msgspec.Raw


class RawBatch(msgspec.Struct):
    """A :class:`Batch` whose envelopes stay encoded. Stages that only forward events use it."""

    items: list[RawItem]
    v: int = ENVELOPE_VERSION


class EventHead(msgspec.Struct):
    """The identity fields of an encoded :class:`~scorestream.events.Event` (same names; the
    decoder skips the rest: properties and traits are never built)."""

    message_id: str
    kind: str
    timestamp_ms: int
    user_id: str | None = None
    anonymous_id: str | None = None
    previous_id: str | None = None


class EnvelopeHead(msgspec.Struct):
    """The parts of an :class:`Envelope` the identity stage reads."""

    kind: str
    event: EventHead | None = None
    erase: Erase | None = None  # an ``erase_link`` order
    hops: int = 0
    v: int = ENVELOPE_VERSION


def envelope_for(item: Event | MergeInto | Absorb | Tick, hops: int = 0) -> Envelope:
    """Wrap what the core produced (an event, a merge, an absorbed state, a tick) for the
    contacts topic."""
    if isinstance(item, Event):
        return Envelope(kind="event", event=item, hops=hops)
    if isinstance(item, MergeInto):
        return Envelope(kind="merge", merge=item, hops=hops)
    if isinstance(item, Tick):
        return Envelope(kind="tick", tick=item, hops=hops)
    return Envelope(kind="absorb", state=item.state, hops=hops)


def message_of(env: Envelope) -> Event | MergeInto | Absorb | Tick | Erase | None:
    """What an envelope brings the contacts fold (the inverse of :func:`envelope_for`, and a
    regulation's ``erase`` order); None for an envelope without its content (an ``erase_link``
    belongs to the identity stage: on the contacts topic it is empty)."""
    if env.kind == "erase":
        return env.erase
    if env.kind == "erase_link":
        return None
    return env.event or env.merge or env.tick or (Absorb(env.state) if env.state is not None else None)


class UnsupportedVersion(ContractError, ValueError):
    pass


_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(ContactState)
_link_decoder = msgspec.msgpack.Decoder(IdentityLink)
_batch_decoder = msgspec.msgpack.Decoder(Batch)
_raw_batch_decoder = msgspec.msgpack.Decoder(RawBatch)
_head_decoder = msgspec.msgpack.Decoder(EnvelopeHead)

encode = _encoder.encode


def _check(v: int, supported: int, what: str) -> None:
    if v > supported:
        raise UnsupportedVersion(f"{what} version {v} is newer than this build understands ({supported})")


def decode_state(raw: bytes) -> ContactState:
    state = _state_decoder.decode(raw)
    _check(state.v, STATE_VERSION, "contact state")
    return state


def decode_link(raw: bytes) -> IdentityLink:
    link = _link_decoder.decode(raw)
    _check(link.v, 1, "identity link")
    return link


def decode_batch(raw: bytes) -> Batch:
    batch = _batch_decoder.decode(raw)
    _check(batch.v, ENVELOPE_VERSION, "batch")
    for item in batch.items:
        _check(item.env.v, ENVELOPE_VERSION, "envelope")
    return batch


def decode_heads(raw: bytes) -> list[tuple[str, msgspec.Raw, EnvelopeHead]]:
    """A batch's items as (key, encoded envelope, its head): for stages that forward envelopes."""
    batch = _raw_batch_decoder.decode(raw)
    _check(batch.v, ENVELOPE_VERSION, "batch")
    out = []
    for item in batch.items:
        head = _head_decoder.decode(item.env)
        _check(head.v, ENVELOPE_VERSION, "envelope")
        out.append((item.key, item.env, head))
    return out


def raw_item(key: str, env: Envelope | msgspec.Raw) -> RawItem:
    """An item for a :class:`RawBatch`: an envelope encoded now, or one received encoded."""
    return RawItem(key=key, env=env if isinstance(env, msgspec.Raw) else msgspec.Raw(_encoder.encode(env)))
