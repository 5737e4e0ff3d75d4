"""The identifiers of what is not a decoded event, for the privacy list (``scorestream.privacy``).

Every door decides a decoded event by :meth:`PrivacyList.decide`. What the contract refused (a
dead letter, a refused collector message), a record key, or an archived ``events`` row is read
here for whatever identifiers it shows, so that a restricted person's refused messages and
archived rows are dropped too: :func:`message_subjects`, :func:`raw_subjects`,
:func:`key_subjects`, :func:`archived_subjects`. ``PrivacyList`` is re-exported for the adapters
that may not import the core (``kafka_io``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

from scorestream.privacy import PrivacyList, SubjectKind, contact_subjects, event_email

__all__ = ["PrivacyList", "archived_subjects", "key_subjects", "message_subjects", "raw_subjects", "text_subjects"]

_json = msgspec.json.Decoder().decode


_ID_FIELDS: tuple[tuple[str, SubjectKind], ...] = (("userId", "user"), ("anonymousId", "anonymous"))


def message_subjects(message: Mapping[str, Any]) -> Iterator[tuple[SubjectKind, str]]:
    """The identifiers a Segment message shows, read as loosely as possible (a message the
    contract refused): ``userId``, ``anonymousId``, ``previousId`` (as either kind), the
    ``traits.email`` / ``context.traits.email`` / ``properties.email``."""
    for name, kind in _ID_FIELDS:
        value = message.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # the contract takes a numeric id as its text
        if isinstance(value, str) and value:
            yield kind, value
    previous = message.get("previousId")
    if isinstance(previous, str) and previous:
        yield "user", previous
        yield "anonymous", previous
    for holder in (message.get("traits"), _get(message.get("context"), "traits"), message.get("properties")):
        if isinstance(holder, dict) and (email := event_email(holder)) is not None:
            yield "email", email


def _get(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else None


def raw_subjects(raw: bytes | None) -> list[tuple[SubjectKind, str]]:
    """:func:`message_subjects` of a record value that is a JSON object (or a batch body: of each
    of its messages too); of bytes that start like JSON but do not parse, :func:`text_subjects`;
    none otherwise."""
    if not raw or raw.lstrip()[:1] not in (b"{", b"["):
        return []
    if len(raw) > TEXT_SCAN_BYTES:  # over any message's size: not worth a parse (hostile sizes)
        return text_subjects(raw)
    try:
        parsed = _json(raw)
    except (msgspec.DecodeError, RecursionError):
        return text_subjects(raw)
    if not isinstance(parsed, dict):
        return []
    found = list(message_subjects(parsed))
    batch = parsed.get("batch")
    if isinstance(batch, list):
        for message in batch:
            if isinstance(message, dict):
                found += message_subjects(message)
    return found


_JSON_STRING = re.compile(rb'"([^"\\\x00-\x1f]{1,512})"')


TEXT_SCAN_BYTES = 64 * 1024  # what text_subjects reads of a broken message (a Segment message: 32 KiB)
TEXT_SCAN_STRINGS = 500  # and at most this many of its strings (each one up to three hashes)


def text_subjects(raw: bytes) -> list[tuple[SubjectKind, str]]:
    """Every short JSON string in bytes that do not parse, as the identifier it might be (a user
    or anonymous id, an email when it has an ``@``): the best that can be read of a broken
    message, so a restricted person's is not kept for its ids being in a broken one. Bounded
    (:data:`TEXT_SCAN_BYTES`, :data:`TEXT_SCAN_STRINGS`): hostile bytes cost a few milliseconds."""
    found: list[tuple[SubjectKind, str]] = []
    for match in itertools.islice(_JSON_STRING.finditer(raw, 0, TEXT_SCAN_BYTES), TEXT_SCAN_STRINGS):
        text = match.group(1).decode("utf-8", "replace")
        found += [("user", text), ("anonymous", text)]
        if "@" in text:
            found.append(("email", text))
    return found


def key_subjects(key: bytes | str | None) -> list[tuple[SubjectKind, str]]:
    """What a record key may stand for: a source record's key is a user id or an anonymous id
    (producers choose), an internal one a contact id (``anonymous:<a>``) or an anonymous id."""
    if not key:
        return []
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    kind, value = contact_subjects(text)
    if kind == "anonymous":
        return [("anonymous", value), ("user", text)]
    return [("user", text), ("anonymous", text)]


def archived_subjects(
    kind: str, user_id: str, anonymous_id: str, previous_id: str, raw: bytes | None
) -> list[tuple[SubjectKind, str]]:
    """The identifiers of an accepted event as the archive's ``events`` row keeps them (the core's
    :func:`scorestream.privacy.event_subjects` of the same event: its ids, an alias's previous id,
    the email of an ``identify`` or ``group``'s traits, read from the raw message only then)."""
    subjects: list[tuple[SubjectKind, str]] = []
    if user_id:
        subjects.append(("user", user_id))
    if anonymous_id:
        subjects.append(("anonymous", anonymous_id))
    if kind == "alias" and previous_id:
        subjects += [("user", previous_id), ("anonymous", previous_id)]
    if kind in ("identify", "group") and raw and b"email" in raw:
        try:
            traits = _get(_json(raw), "traits")
        except msgspec.DecodeError:
            traits = None
        if isinstance(traits, dict) and (email := event_email(traits)) is not None:
            subjects.append(("email", email))
    return subjects
