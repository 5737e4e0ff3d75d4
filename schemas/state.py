"""Binary contracts that outlive a deploy: table values and internal topic messages.

Encoded as MessagePack with msgspec straight from the core's dataclasses (no per-message model
construction on the hot path). Every value carries a version: ``ContactState.v``,
``IdentityLink.v`` and ``Envelope.v``; a decoder meeting a newer version refuses it loudly rather
than misreading it.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from scorestream import ContactState, Event, IdentityLink

__all__ = ["Batch", "ContactState", "Envelope", "Event", "IdentityLink", "Item", "MergeInto", "UnsupportedVersion"]
from scorestream.contact import Absorb
from scorestream.identity import MergeInto

ENVELOPE_VERSION = 1
MAX_HOPS = 8


class Envelope(msgspec.Struct, omit_defaults=True):
    """A message on ``scorestream.contacts``: an event, a merge instruction, or a merged state."""

    kind: Literal["event", "merge", "absorb"]
    event: Event | None = None
    merge: MergeInto | None = None
    state: ContactState | None = None
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


def envelope_for(item: Event | MergeInto | Absorb, hops: int = 0) -> Envelope:
    """Wrap what the core produced (an event, a merge, an absorbed state) for the contacts topic."""
    if isinstance(item, Event):
        return Envelope(kind="event", event=item, hops=hops)
    if isinstance(item, MergeInto):
        return Envelope(kind="merge", merge=item, hops=hops)
    return Envelope(kind="absorb", state=item.state, hops=hops)


class UnsupportedVersion(ValueError):
    pass


_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(ContactState)
_link_decoder = msgspec.msgpack.Decoder(IdentityLink)
_batch_decoder = msgspec.msgpack.Decoder(Batch)

encode = _encoder.encode


def _check(v: int, supported: int, what: str) -> None:
    if v > supported:
        raise UnsupportedVersion(f"{what} version {v} is newer than this build understands ({supported})")


def decode_state(raw: bytes) -> ContactState:
    state = _state_decoder.decode(raw)
    _check(state.v, 1, "contact state")
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
