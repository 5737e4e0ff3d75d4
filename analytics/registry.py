"""The models registry (``schemas/registry.py``, topic ``<app>.models``) as the analytics sink reads it.

A group-less consumer assigned the registry's one partition: the first :meth:`RegistryReader.read`
reads it from the beginning to its end offset, every later one reads what was appended since. A
topic that does not exist yet is an empty registry (the default namespace is active); it is looked
for again at every read. After a broker error the next read starts over from the beginning (the
last complete view is kept meanwhile).
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.registry import Registry
from schemas.settings import Settings

log = logging.getLogger(__name__)


class RegistryReader:
    def __init__(self, settings: Settings) -> None:
        self.bootstrap = settings.kafka_bootstrap
        self.tp = TopicPartition(settings.models_topic, 0)
        self.registry = Registry(settings.app_id)  # the last complete view
        self._reading: Registry | None = None  # being read from the beginning
        self._consumer: AIOKafkaConsumer | None = None
        self.unreadable = 0  # records skipped (logged with their offset)

    async def read(self) -> Registry:
        """The registry as its topic holds it now (raises the broker's error, if any)."""
        try:
            return await self._read()
        except BaseException:
            await self.close()
            raise

    async def _read(self) -> Registry:
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                fetch_max_wait_ms=100,
                auto_offset_reset="earliest",
            )
            await self._consumer.start()
            self._reading = Registry(self.registry.default)
        consumer = self._consumer
        if not consumer.assignment():
            if self.tp.topic not in await consumer.topics():
                return self.registry  # nothing was ever registered (the view is the empty one)
            consumer.assign([self.tp])
            await consumer.seek_to_beginning(self.tp)
        end = (await consumer.end_offsets([self.tp]))[self.tp]
        while await consumer.position(self.tp) < end:
            for record in (await consumer.getmany(self.tp, timeout_ms=1000)).get(self.tp, []):
                self._apply(record)
        if self._reading is not None:  # read to the end: the view is complete
            self.registry, self._reading = self._reading, None
        return self.registry

    def _apply(self, record: Any) -> None:
        try:
            (self._reading or self.registry).apply(record.key, record.value)
        except Exception as exc:  # one record it cannot read never stops the reader
            self.unreadable += 1
            log.error(
                "models registry: record %s[0] %s skipped (%s: %s)",
                self.tp.topic,
                record.offset,
                type(exc).__name__,
                exc,
            )

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await consumer.stop()
            except Exception:
                log.debug("closing the models registry reader failed", exc_info=True)
