"""The contact view record on ``<app>.views``: what the API reads of a contact (compacted topic,
key contact id, partitioned like the contacts topic; a tombstone when the contact is gone).

MessagePack via msgspec straight from the core's dataclasses, like :mod:`schemas.state`
(:class:`scorestream.view.ContactView`; its JSON Schema is ``schemas/json/state-contact-view.v1.json``).
It carries a version (``ContactView.v``); a decoder meeting a newer one refuses it.
"""

from __future__ import annotations

import msgspec

from schemas.state import UnsupportedVersion
from scorestream.view import VIEW_VERSION, ContactView

__all__ = ["VIEW_VERSION", "ContactView", "ViewHead", "decode_head", "decode_view", "encode_view"]


class ViewHead(msgspec.Struct):
    """The fields of a view the API's indexes need (decoded without the rest)."""

    contact_id: str
    anonymous_ids: list[str] = []
    email: str | None = None
    merged_into: str | None = None
    v: int = VIEW_VERSION


_encoder = msgspec.msgpack.Encoder()
_view_decoder = msgspec.msgpack.Decoder(ContactView)
_head_decoder = msgspec.msgpack.Decoder(ViewHead)

encode_view = _encoder.encode


def _check(v: int) -> None:
    if v > VIEW_VERSION:
        raise UnsupportedVersion(f"contact view version {v} is newer than this build understands ({VIEW_VERSION})")


def decode_view(raw: bytes) -> ContactView:
    view = _view_decoder.decode(raw)
    _check(view.v)
    return view


def decode_head(raw: bytes) -> ViewHead:
    head = _head_decoder.decode(raw)
    _check(head.v)
    return head
