"""Records handed to the Kafka producer in batches, still one Kafka record each.

Faust's ``topic.send_soon`` costs a coroutine and a round of its machinery per record: a
``FutureMessage`` and its ``PendingMessage`` (headers, key and value prepared by codecs), a queue
hop to the producer buffer's task, ``publish_message`` (sensors, a debug log call, Faust's
producer wrapper), a done callback, and the buffer's ``message_sent`` event waking every waiter.
The pipeline's own topics send one record per destination partition per batch (``Outbox``), and
the records that must stay one per message (a trigger is one JSON record on the public
``triggers`` topic; a dead letter is the original bytes with its headers) one each: all of them go
through :class:`BatchedSends` (the app's one, :meth:`BatchedSends.of`):

- ``add`` appends ``(topic, key, value, headers, partition)`` to the open :class:`PendingSends`; the first
  record after the previous one was taken opens a new one and puts it into Faust's producer buffer
  *at once*, so everything a fetched batch adds is in the buffer before the agent acknowledges the
  batch (the records join it until the buffer's task takes it, which cannot happen while the agent
  runs: the agents are synchronous within a batch).
- Faust flushes that buffer before every offset commit (:class:`~streams.transport.SnapshotFlushBuffer`
  waits for every item queued before the flush), and then the Kafka producer, so a batch's offsets
  are committed only once its triggers are acknowledged: at-least-once, as before.
- The buffer's task hands each item's records to aiokafka's ``send`` one after another (the
  partition given, or the same partitioner as before; order kept per partition), with no Faust
  machinery per record.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from faust.types import TopicT

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]] | None


class PendingSends:
    """One item of Faust's producer buffer carrying many records.

    The buffer's task sends an item with ``item.message.channel.publish_message(item, wait=False)``
    (a ``FutureMessage`` normally); this item answers to that by sending its records."""

    __slots__ = ("producer", "records", "started")

    def __init__(self, producer: Any) -> None:
        self.producer = producer  # Faust's producer: its aiokafka producer exists once it started
        self.records: list[tuple[str, bytes | None, bytes, Headers, int | None]] = []
        self.started = False

    @property
    def message(self) -> PendingSends:
        return self

    @property
    def channel(self) -> PendingSends:
        return self

    async def publish_message(self, _: Any = None, wait: bool = False) -> None:
        """Hand every record to the Kafka producer (acknowledged later; its flush waits for them).

        A send that raises (the producer closed, no metadata within its timeout) stops the
        buffer's task, as a failing ``send_soon`` did: the worker stops before committing offsets
        past records that were not sent."""
        self.started = True
        send = self.producer._ensure_producer().send
        for topic, key, value, headers, partition in self.records:
            delivered = await send(topic, value, key=key, headers=headers, partition=partition)
            delivered.add_done_callback(_report_failure)


def _report_failure(delivered: asyncio.Future[Any]) -> None:
    if not delivered.cancelled() and delivered.exception() is not None:
        log.error("a record was not delivered: %r", delivered.exception())


class BatchedSends:
    """Records put into Faust's producer buffer as one item per event-loop turn (module
    docstring). ``records`` and ``items``: how many were added and queued."""

    @classmethod
    def of(cls, app: Any) -> BatchedSends:
        """The app's batched sends (made on first use)."""
        sends = _BY_APP.get(app)
        if sends is None:
            sends = _BY_APP[app] = cls(app)
        return sends

    @staticmethod
    def for_topic(topic: Any) -> BatchedSends | None:
        """The batched sends of ``topic``'s app, if it has them (None: a plain Faust app, a fake)."""
        app = getattr(topic, "app", None)
        return _BY_APP.get(app) if app is not None else None

    def __init__(self, app: Any) -> None:
        self.app = app
        self.pending: PendingSends | None = None
        self.records = 0
        self.items = 0

    def add(
        self, topic: TopicT, key: bytes | None, value: bytes, headers: Headers = None, partition: int | None = None
    ) -> None:
        pending = self.pending
        if pending is None or pending.started:
            producer = self.app.producer
            pending = self.pending = PendingSends(producer)
            producer.buffer.put(pending)  # in the buffer now: covered by the next commit's flush
            self.items += 1
        pending.records.append((topic.get_topic_name(), key, value, headers, partition))
        self.records += 1


_BY_APP: weakref.WeakKeyDictionary[Any, BatchedSends] = weakref.WeakKeyDictionary()
