"""Identity resolution: which contact an event belongs to.

Partitioned by anonymous id (or an alias's ``previousId``): each link is decided in one place, in
partition order, so a replay from the same topic makes the same decisions. A contact is keyed by
its ``userId``; a visitor not yet identified by ``anonymous:<anonymousId>``. The first user an
anonymous id is linked to keeps it; later conflicting links do not move data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from scorestream.events import Event


class Identified(Protocol):
    """What identity resolution reads of an event. :class:`Event` has it; so does a decoder's
    partial view of an encoded event, which lets the identity stage forward events undecoded."""

    @property
    def message_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def timestamp_ms(self) -> int: ...
    @property
    def user_id(self) -> str | None: ...


E = TypeVar("E", bound=Identified)


@dataclass(slots=True)
class IdentityLink:
    """Table value: anonymous id (or previous id) -> the contact that owns it."""

    contact_id: str
    linked_ms: int
    message_id: str
    v: int = 1


@dataclass(frozen=True, slots=True)
class MergeInto:
    """Instruction to a contact: move everything you hold into ``target`` and forward from now on."""

    target: str
    message_id: str


@dataclass(frozen=True, slots=True)
class Routed(Generic[E]):
    """A message for the contacts stage, keyed by contact id: the event given to :func:`resolve`,
    or a merge instruction."""

    key: str
    event: E | None = None
    merge: MergeInto | None = None

    @property
    def item(self) -> E | MergeInto:
        item = self.merge or self.event
        assert item is not None, "a routed message carries an event or a merge"
        return item


ANONYMOUS_PREFIX = "anonymous:"


def anonymous_contact_id(anonymous_id: str) -> str:
    """Contact id of a visitor known only by an anonymous id."""
    return ANONYMOUS_PREFIX + anonymous_id


def routing_key(event: Event) -> tuple[str, str]:
    """Where an event goes first: ``("identity", id)`` or ``("contact", contact_id)``."""
    if event.kind == "alias" and event.previous_id:
        return ("identity", event.previous_id)
    if event.anonymous_id:
        return ("identity", event.anonymous_id)
    assert event.user_id is not None
    return ("contact", event.user_id)


def resolve(link: IdentityLink | None, key: str, event: E) -> tuple[IdentityLink | None, list[Routed[E]]]:
    """Decide the contact for ``event`` arriving at identity partition key ``key``.

    Returns the (possibly new) link and the messages to send. A new link sends ``MergeInto`` to
    the contact(s) the key stood for until now; the same message redelivered sends it again
    (contacts absorb idempotently), other events do not.
    """
    user = event.user_id
    if user and user != key:
        if link is None or link.message_id == event.message_id:
            link = IdentityLink(contact_id=user, linked_ms=event.timestamp_ms, message_id=event.message_id)
            merge = MergeInto(target=user, message_id=event.message_id)
            routed: list[Routed[E]] = [Routed(key=anonymous_contact_id(key), merge=merge)]
            if event.kind == "alias":
                routed.append(Routed(key=key, merge=merge))
            routed.append(Routed(key=user, event=event))
            return link, routed
        return link, [Routed(key=user, event=event)]
    if user:
        return link, [Routed(key=user, event=event)]
    target = link.contact_id if link is not None else anonymous_contact_id(key)
    return link, [Routed(key=target, event=event)]
