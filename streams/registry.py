"""The worker's view of the models registry (``schemas/registry.py``): read whole before the
worker starts (to know its namespace and model), then followed for promotions while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

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
from streams.topic_reader import read_topic

log = logging.getLogger(__name__)


async def _consume(
    settings: Settings, registry: Registry, until_end: bool, on_change: Callable[[], None] | None = None
) -> None:
    def apply(key: bytes | None, value: bytes | None) -> None:
        registry.apply(key, value)
        if on_change is not None:
            on_change()

    await read_topic(settings.kafka_bootstrap, settings.models_topic, apply, until_end=until_end)


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
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(settings.models_topic, key=key.encode(), value=value, partition=0)
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()


async def register_namespace(settings: Settings, record: NamespaceRecord) -> None:
    await write(settings, NAMESPACE_PREFIX + record.namespace, encode_record(record))


async def promote(settings: Settings, promotion: Promotion) -> ActiveRecord:
    """Append ``promotion`` to the active record (read, check, write: run one promote at a time)."""
    registry = await read_registry(settings)
    record = promoted(registry.promotions, promotion)
    await write(settings, ACTIVE_KEY, encode_record(record))
    return record
