"""The privacy list, read from its topic: what every door and stage consults before it stores.

``<app>.privacy`` (one partition, compacted, shared by every namespace; written by the API's
regulation service only) holds a :class:`schemas.regulations.PrivacyEntry` per subject key (a
SHA-256 of an identifier, :func:`scorestream.privacy.subject_key`); a tombstone lifts it. A
:class:`PrivacyFollower` reads it from the beginning into a :class:`scorestream.privacy.PrivacyList`
and then follows it, in the worker (ingest and contacts stages), the analytics sink and the API
process (the collector) alike::

    <app>.privacy ──► PrivacyFollower ──► PrivacyList ──► worker ingest / contacts stage
                                                     ├─► HTTP collector
                                                     ├─► analytics sink
                                                     └─► replay, archive backfill (read_privacy_list)

A process that starts must not store what is already restricted: it awaits
:meth:`PrivacyFollower.caught_up` (the topic read to the end once) before it takes records. A topic
that does not exist yet is an empty list. The per-record policy is :mod:`kafka_io.reader`'s (an
unreadable record is logged, counted and skipped: it restricts nothing); a broker error restarts
the following after a pause, keeping the list as it is meanwhile (entries are only ever put again
or lifted by a later record, so reading from the beginning again converges to the same list).

Also here: the identifiers of a message that could not be decoded as an event (a dead letter, a
refused collector message), so that a restricted person's refused messages are not stored either
(:func:`message_subjects`, :func:`raw_subjects`, :func:`key_subjects`), and of an archived event
row (:func:`archived_subjects`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from kafka_io.clients import KafkaConnection
from kafka_io.reader import follow, read_topic
from schemas.regulations import decode_entry
from schemas.settings import Settings
from scorestream.privacy import PrivacyList, SubjectKind, contact_subjects, event_email

log = logging.getLogger(__name__)

LABEL = "privacy list"


class PrivacyFollower:
    """``topic`` (the privacy topic) followed into :attr:`privacy` for ever: :meth:`start` it (or
    run :meth:`run` as a task of one's own), ``await`` :meth:`caught_up` before taking records.

    ``privacy``: the list to keep (default a new one); the API process passes the one its
    regulation service writes, so both see the same entries."""

    def __init__(
        self, kafka: KafkaConnection | Settings, topic: str, privacy: PrivacyList | None = None, *, poll_ms: int = 500
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.privacy = privacy if privacy is not None else PrivacyList()
        self.poll_ms = poll_ms
        self.applied = 0  # records applied since start (entries and tombstones)
        self._report = _Report()
        self._task: asyncio.Task[None] | None = None

    @property
    def error(self) -> str | None:
        """The last broker error (None while reading)."""
        return self._report.error

    @property
    def ready(self) -> bool:
        """Whether the topic was read to its end once (the list holds every restriction written
        before this process started)."""
        return self._report.caught_up.is_set()

    async def caught_up(self) -> None:
        """Return once the topic was read to its end once (at once if it was)."""
        await self._report.caught_up.wait()

    def apply(self, record: Any) -> None:
        """One privacy-topic record: an entry restricts its key, a tombstone lifts it."""
        if record.key is None:
            raise ValueError("a privacy entry without a key")
        key = record.key.decode()
        self.privacy.put(key, decode_entry(record.value).restriction() if record.value is not None else None)
        self.applied += 1

    async def run(self) -> None:
        """Follow the topic for ever. A failure that is not the broker's (those :func:`follow`
        retries itself) starts the reading again after a pause, the list kept as it is."""
        while True:
            try:
                await follow(
                    self._report,
                    self.kafka,
                    [self.topic],
                    self.apply,
                    LABEL,
                    self.poll_ms,
                    absent_is_empty=True,
                )
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: read again rather than stop following the list
                log.exception("privacy list: reading %s failed; reading again in 5 s", self.topic)
                await asyncio.sleep(5.0)

    def start(self) -> asyncio.Task[None]:
        """Follow in a task of the running loop (returned; :meth:`stop` cancels it)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="privacy-list")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class _Report:
    """What :func:`kafka_io.reader.follow` reports to (its ``Follower`` protocol)."""

    __slots__ = ("caught_up", "error")

    def __init__(self) -> None:
        self.error: str | None = None
        self.caught_up = asyncio.Event()


async def read_privacy_list(kafka: KafkaConnection | Settings, topic: str) -> PrivacyList:
    """The privacy list as its topic holds it now (empty if the topic does not exist): for a
    one-off reader (replay, the archive's copy to a backfill)."""
    follower = PrivacyFollower(kafka, topic)

    def apply(key: bytes | None, value: bytes | None) -> None:
        follower.apply(_Record(key, value))

    await read_topic(kafka, topic, apply, until_end=True)
    return follower.privacy


class _Record:
    __slots__ = ("key", "value")

    def __init__(self, key: bytes | None, value: bytes | None) -> None:
        self.key, self.value = key, value


# --- identifiers of what is not an event -------------------------------------------------------


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
    """:func:`message_subjects` of a record value that is a JSON object; none otherwise."""
    if not raw or raw[:1] != b"{":
        return []
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    return list(message_subjects(parsed)) if isinstance(parsed, dict) else []


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
            traits = _get(orjson.loads(raw), "traits")
        except orjson.JSONDecodeError:
            traits = None
        if isinstance(traits, dict) and (email := event_email(traits)) is not None:
            subjects.append(("email", email))
    return subjects
