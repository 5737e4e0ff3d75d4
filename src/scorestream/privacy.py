"""Who may not be collected or kept: the privacy list and the one decision made from it.

A regulation (``schemas/regulations.py``; the API's ``/v1/regulations``) puts a *restriction* on
every identifier of a person: their user id, each anonymous id linked to them and their email.
The list holds them by :func:`subject_key`, a SHA-256 of the identifier, never the identifier
itself, so the list that enforces a suppression is not a list of the people who asked for one.

Two kinds of restriction, decided from an event's identifiers and its instants only (no clock):

- **suppressed** (``SUPPRESS``, ``SUPPRESS_WITH_DELETE``; lifted by ``UNSUPPRESS``): an event whose
  record time or event time is at or after ``suppressed_from_ms`` is dropped. Events collected
  before the suppression stay as they were (a replay of the sources keeps them, as live did).
- **erased** (``DELETE_ONLY``, ``SUPPRESS_WITH_DELETE``): an event whose *event time* is before
  ``erased_before_ms`` belongs to the erased past and is dropped wherever it is met again (a late
  record still in flight, a replay, a shadow reading the sources from the beginning). Events after
  it are new collection (unless suppressed too).

Every door and stage asks the same :meth:`PrivacyList.decide`: the worker's ingest and contacts
stages, the HTTP collector, the analytics sink and replay. An empty list costs one ``if``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from scorestream.events import Event
from scorestream.identity import ANONYMOUS_PREFIX

SubjectKind = Literal["user", "anonymous", "email"]
Decision = Literal["suppressed", "erased"]


def normal_email(email: str) -> str:
    """An email as the core keeps it (``ContactState.email``): stripped and case-folded."""
    return email.strip().casefold()


def subject_key(kind: SubjectKind, value: str) -> str:
    """The privacy list's key of one identifier: ``sha256("<kind>:<value>")`` in hex (emails
    normalised first). The same person's user id, anonymous ids and email are three keys.

    The keys of recently seen identifiers are remembered (least recently used out, at most
    :data:`KEYS_REMEMBERED`): live traffic asks for the same ids again and again, and a hash costs
    several times the dict lookup that answers for a remembered one (``bench.privacy_gate``)."""
    return _subject_key(kind, value)


KEYS_REMEMBERED = 1 << 15


@functools.lru_cache(maxsize=KEYS_REMEMBERED)
def _subject_key(kind: SubjectKind, value: str) -> str:
    if kind == "email":
        value = normal_email(value)
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


def contact_subjects(contact_id: str) -> tuple[SubjectKind, str]:
    """The identifier a contact id stands for: ``anonymous:<a>`` is the anonymous id ``a``,
    anything else a user id."""
    if contact_id.startswith(ANONYMOUS_PREFIX):
        return "anonymous", contact_id[len(ANONYMOUS_PREFIX) :]
    return "user", contact_id


def contact_key(contact_id: str) -> str:
    """:func:`subject_key` of the identifier a contact id stands for."""
    kind, value = contact_subjects(contact_id)
    return subject_key(kind, value)


def event_email(traits: dict[str, Any]) -> str | None:
    email = traits.get("email")
    return email if isinstance(email, str) and email.strip() else None


def event_subjects(event: Event) -> Iterator[tuple[SubjectKind, str]]:
    """The identifiers an event carries: user id, anonymous id, alias's previous id, email trait
    (a ``group`` call's traits are the account's: its email is the company's, not the person's)."""
    if event.user_id:
        yield "user", event.user_id
    if event.anonymous_id:
        yield "anonymous", event.anonymous_id
    if event.kind == "alias" and event.previous_id:
        yield "user", event.previous_id
        yield "anonymous", event.previous_id
    email = event_email(event.traits) if event.kind != "group" else None
    if email is not None:
        yield "email", email


@dataclass(frozen=True, slots=True)
class Restriction:
    """What the list holds for one identifier (the value under its :func:`subject_key`).

    ``regulation_id``: the latest regulation that set it; ``suppressed_from_ms``: events at or
    after this instant are dropped (None: not suppressed); ``erased_before_ms``: events with an
    event time before it are the erased past (None: nothing erased)."""

    regulation_id: str
    suppressed_from_ms: int | None = None
    erased_before_ms: int | None = None

    def decide(self, event_ms: int, record_ms: int | None) -> Decision | None:
        if self.erased_before_ms is not None and event_ms < self.erased_before_ms:
            return "erased"
        if self.suppressed_from_ms is not None:
            latest = event_ms if record_ms is None else max(event_ms, record_ms)
            if latest >= self.suppressed_from_ms:
                return "suppressed"
        return None


class PrivacyList:
    """Subject key -> :class:`Restriction`: a replica of the privacy topic (``<app>.privacy``),
    or the one the API writes it from. Pure: filled by whoever reads the topic."""

    __slots__ = ("entries",)

    def __init__(self, entries: dict[str, Restriction] | None = None) -> None:
        self.entries: dict[str, Restriction] = dict(entries or {})

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def put(self, key: str, restriction: Restriction | None) -> None:
        """Set (or, with None, lift) the restriction on one subject key."""
        if restriction is None:
            self.entries.pop(key, None)
        else:
            self.entries[key] = restriction

    def get(self, key: str) -> Restriction | None:
        return self.entries.get(key)

    def decide_subjects(
        self, subjects: Iterable[tuple[SubjectKind, str]], event_ms: int, record_ms: int | None = None
    ) -> Decision | None:
        """``"erased"`` or ``"suppressed"`` if any of the identifiers is restricted at these
        instants (erased wins), else None."""
        if not self.entries:
            return None
        found: Decision | None = None
        for kind, value in subjects:
            restriction = self.entries.get(subject_key(kind, value))
            if restriction is None:
                continue
            decision = restriction.decide(event_ms, record_ms)
            if decision == "erased":
                return decision
            found = found or decision
        return found

    def decide(self, event: Event, record_ms: int | None = None) -> Decision | None:
        """The decision for an event (``record_ms``: its Kafka record time, or the collector's
        receive time; None where it is not known, as in the contacts stage)."""
        if not self.entries:
            return None
        return self.decide_subjects(event_subjects(event), event.timestamp_ms, record_ms)

    def contact_erased(self, contact_id: str) -> bool:
        """Whether the identifier a contact id stands for is erased (at any instant): the sink
        keeps no row about it and the contacts stage folds nothing more into it before its
        erasure instant."""
        if not self.entries:
            return False
        restriction = self.entries.get(contact_key(contact_id))
        return restriction is not None and restriction.erased_before_ms is not None


@dataclass(frozen=True, slots=True)
class Erase:
    """A regulation's order to a contact (on the contacts topic, keyed by its contact id): delete
    it, report what it held (``schemas.regulations.ErasureReport``)."""

    regulation_id: str


@dataclass(frozen=True, slots=True)
class EraseLink:
    """A regulation's order to an identity link (on the identity topic, keyed by its anonymous
    id): delete it, report the contact it led to."""

    regulation_id: str
