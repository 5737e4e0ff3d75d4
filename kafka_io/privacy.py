"""The privacy list, read from its topic: what every door and stage consults before it stores.

``<app>.privacy`` (one partition, compacted, shared by every namespace; written by the API's
regulation service only) holds a :class:`schemas.regulations.PrivacyEntry` per subject key (a
SHA-256 of an identifier, :func:`scorestream.privacy.subject_key`); a tombstone lifts it. A
:class:`PrivacyFollower` reads it from the beginning into a :class:`scorestream.privacy.PrivacyList`
and then follows it, in the worker (ingest, identity and contacts stages), the analytics sink, the
webhook dispatcher and the API process (the collector) alike::

    <app>.privacy ──► PrivacyFollower ──► PrivacyList ──► worker ingest / identity / contacts
                                                     ├─► HTTP collector
                                                     ├─► analytics sink, webhook dispatcher
                                                     └─► replay, archive backfill (read_privacy_list)

A process that starts must not store what is already restricted: it awaits
:meth:`PrivacyFollower.caught_up` (the topic read to the end once) before it takes records. A topic
that does not exist yet is an empty list. The per-record policy is :mod:`kafka_io.reader`'s (an
unreadable record is logged, counted and skipped: it restricts nothing); a broker error restarts
the following after a pause, keeping the list as it is meanwhile (entries are only ever put again
or lifted by a later record, so reading from the beginning again converges to the same list; a
tombstone compacted away while a process could not read keeps its entry until it restarts: the
safe side).

The identifiers of what is not a decoded event (a dead letter, a refused collector message, an
archived row) are read by :mod:`schemas.privacy`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kafka_io.clients import KafkaConnection
from kafka_io.reader import follow, read_topic
from schemas.privacy import PrivacyList
from schemas.regulations import decode_entry
from schemas.settings import Settings

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
