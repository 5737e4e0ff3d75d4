"""Binary contracts of the accounts stage: members' updates on ``<app>.accounts`` and the
``accounts`` table value (its changelog ``<app>-accounts-changelog`` feeds the API).

MessagePack via msgspec straight from the core's dataclasses, like :mod:`schemas.state`. Both
carry a version (``MemberBatch.v``, ``AccountState.v``); a decoder meeting a newer one refuses it.
"""

from __future__ import annotations

import msgspec

from schemas.state import UnsupportedVersion
from scorestream.accounts import ACCOUNT_STATE_VERSION, AccountState, MemberUpdate

__all__ = [
    "ACCOUNT_STATE_VERSION",
    "MEMBERS_VERSION",
    "AccountState",
    "MemberBatch",
    "MemberUpdate",
    "decode_account",
    "decode_members",
    "encode",
    "member_batch",
]

MEMBERS_VERSION = 2
"""2: ``MemberUpdate.erased`` (a regulation erased the member). A batch is written at version 2
only when it holds an erased update (:func:`member_batch`): a build before it refuses those (it
would read them as a departure that keeps the member), and reads every other batch as before."""


class MemberBatch(msgspec.Struct):
    """One record on ``<app>.accounts``: members' updates whose accounts share its partition."""

    items: list[MemberUpdate]
    v: int = MEMBERS_VERSION


def member_batch(items: list[MemberUpdate]) -> MemberBatch:
    """The record for ``items``: version 1 unless one of them is an erased update."""
    return MemberBatch(items=items, v=MEMBERS_VERSION if any(u.erased for u in items) else 1)


_encoder = msgspec.msgpack.Encoder()
_members_decoder = msgspec.msgpack.Decoder(MemberBatch)
_account_decoder = msgspec.msgpack.Decoder(AccountState)

encode = _encoder.encode


def decode_members(raw: bytes) -> MemberBatch:
    batch = _members_decoder.decode(raw)
    if batch.v > MEMBERS_VERSION:
        raise UnsupportedVersion(f"member batch version {batch.v} is newer than this build understands")
    return batch


def decode_account(raw: bytes) -> AccountState:
    state = _account_decoder.decode(raw)
    if state.v > ACCOUNT_STATE_VERSION:
        raise UnsupportedVersion(f"account state version {state.v} is newer than this build understands")
    return state
