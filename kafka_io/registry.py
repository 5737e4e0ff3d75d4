"""The models registry topic (``<app>.models``, one partition, compacted), read and written.

What its records mean is ``schemas/registry.py``; this module moves them. The worker reads the
registry whole before it starts (to know its namespace and model) and follows it for promotions
(:func:`read_registry`, :func:`follow_registry`); ``scorestream register``/``promote`` write it
(:func:`register_namespace`, :func:`promote`); the analytics sink reads it incrementally
(:class:`RegistryReader`). A topic that does not exist yet is an empty registry (the default
namespace is active).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiokafka.errors import KafkaError

from kafka_io.clients import KafkaConnection, producer
from kafka_io.reader import TopicReader, apply_or_skip, read_topic
from schemas.registry import (
    ACTIVE_KEY,
    NAMESPACE_PREFIX,
    ActiveRecord,
    NamespaceRecord,
    Promotion,
    Registry,
    encode_record,
    promoted,
)
from schemas.settings import Settings

log = logging.getLogger(__name__)


async def _consume(
    settings: Settings, registry: Registry, until_end: bool, on_change: Callable[[], None] | None = None
) -> None:
    def apply(key: bytes | None, value: bytes | None) -> None:
        registry.apply(key, value)
        if on_change is not None:
            on_change()

    await read_topic(settings, settings.models_topic, apply, until_end=until_end)


async def read_registry(settings: Settings) -> Registry:
    """The registry as its topic holds it now (an empty one if the topic does not exist yet)."""
    registry = Registry(settings.app_id)
    try:
        await _consume(settings, registry, until_end=True)
    except KafkaError as exc:
        log.warning("models registry %s not read (%s): running the default namespace", settings.models_topic, exc)
    return registry


async def follow_registry(settings: Settings, registry: Registry, on_change: Callable[[], None] | None = None) -> None:
    """Keep ``registry`` current for ever (re-reading from the start after a broker error)."""
    while True:
        fresh = Registry(registry.default)
        try:
            await _consume(settings, fresh, until_end=True)
            registry.namespaces, registry.promotions = fresh.namespaces, fresh.promotions
            if on_change is not None:
                on_change()
            await _consume(settings, registry, until_end=False, on_change=on_change)
        except asyncio.CancelledError:
            raise
        except (KafkaError, OSError) as exc:
            log.warning("models registry: %s; reading again in 1 s", exc)
            await asyncio.sleep(1.0)


async def write(settings: Settings, key: str, value: bytes) -> None:
    client = producer(settings, acks="all", enable_idempotence=True)
    await client.start()
    try:
        await client.send_and_wait(settings.models_topic, key=key.encode(), value=value, partition=0)
    finally:
        with contextlib.suppress(Exception):
            await client.stop()


async def register_namespace(settings: Settings, record: NamespaceRecord) -> None:
    await write(settings, NAMESPACE_PREFIX + record.namespace, encode_record(record))


async def promote(settings: Settings, promotion: Promotion) -> ActiveRecord:
    """Append ``promotion`` to the active record (read, check, write: run one promote at a time)."""
    registry = await read_registry(settings)
    record = promoted(registry.promotions, promotion)
    await write(settings, ACTIVE_KEY, encode_record(record))
    return record


class RegistryReader:
    """The registry read incrementally (the analytics sink's view).

    One reader assigned the registry's one partition: the first :meth:`read` reads it from the
    beginning to its end offset, every later one reads what was appended since. A topic that does
    not exist yet is an empty registry; it is looked for again at every read. After a broker error
    the next read starts over from the beginning (the last complete view is kept meanwhile)."""

    LABEL = "analytics sink: models registry"

    def __init__(self, settings: Settings) -> None:
        self.kafka = KafkaConnection.of(settings)
        self.topic = settings.models_topic
        self.registry = Registry(settings.app_id)  # the last complete view
        self._reading: Registry | None = None  # being read from the beginning
        self._reader: TopicReader | None = None
        self.unreadable = 0  # records skipped (logged with their offset)

    async def read(self) -> Registry:
        """The registry as its topic holds it now (raises the broker's error, if any)."""
        try:
            return await self._read()
        except BaseException:
            await self.close()
            raise

    async def _read(self) -> Registry:
        if self._reader is None:
            self._reader = TopicReader(self.kafka, [self.topic], self._apply, self.LABEL, fetch_max_wait_ms=100)
            await self._reader.start()
            self._reading = Registry(self.registry.default)
        reader = self._reader
        if not reader.partitions and not await reader.assign():
            return self.registry  # nothing was ever registered (the view is the empty one)
        await reader.read_to_end()
        if self._reading is not None:  # read to the end: the view is complete
            self.registry, self._reading = self._reading, None
        return self.registry

    def _apply(self, record: Any) -> None:
        if not apply_or_skip(self._apply_record, record, self.LABEL):
            self.unreadable += 1

    def _apply_record(self, record: Any) -> None:
        (self._reading or self.registry).apply(record.key, record.value)

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                await reader.stop()
            except Exception:
                log.debug("closing the models registry reader failed", exc_info=True)
