"""The topics scorestream uses: their creation (idempotent) and their offsets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from kafka_io.clients import KafkaConnection, admin, consumer
from schemas.settings import Settings

log = logging.getLogger(__name__)


def wanted(settings: Settings) -> list[NewTopic]:
    """Every topic of ``settings``' namespace: sources, dead letters, internal, changelogs."""
    p, r = settings.partitions, settings.replication_factor
    compact = {"cleanup.policy": "compact"}
    sources = {"retention.ms": str(settings.source_retention_ms)}
    topics = [NewTopic(name, p, r, topic_configs=sources) for name in settings.source_topics]
    plain = [
        settings.topic_deadletter,
        settings.topic_triggers,
        settings.identity_topic,
        settings.contacts_topic,
        settings.accounts_topic,
    ]
    plain += [settings.private_triggers_topic, settings.private_deadletter_topic]
    topics += [NewTopic(name, p, r) for name in plain]
    tables = ("identity", "contacts", "accounts")
    topics += [NewTopic(settings.changelog_topic(t), p, r, topic_configs=compact) for t in tables]
    topics.append(NewTopic(settings.views_topic, p, r, topic_configs=compact))
    topics.append(NewTopic(settings.status_topic, 1, r, topic_configs=compact))
    topics.append(NewTopic(settings.population_topic, 1, r, topic_configs=compact))
    topics.append(NewTopic(settings.webhooks_topic, 1, r, topic_configs=compact))
    topics.append(NewTopic(settings.models_topic, 1, r, topic_configs=compact))
    for name in (settings.regulations_topic, settings.privacy_topic, settings.regulation_progress_topic):
        topics.append(NewTopic(name, 1, r, topic_configs=compact))
    # A delivery's record is rewritten on every attempt (at most a day apart), so 14 days of
    # retention drops only finished deliveries; compaction keeps the latest state of each.
    deliveries = {"cleanup.policy": "compact,delete", "retention.ms": str(14 * 86400 * 1000)}
    topics.append(NewTopic(settings.deliveries_topic, p, r, topic_configs=deliveries))
    topics.append(NewTopic(settings.commands_topic, p, r, topic_configs={"retention.ms": str(7 * 86400 * 1000)}))
    return topics


async def ensure_topics(settings: Settings, attempts: int = 30) -> list[str]:
    """Create missing topics; returns the names created. Retries while the broker starts."""
    for attempt in range(attempts):
        client = admin(settings, request_timeout_ms=10_000)
        try:
            await client.start()
            existing = set(await client.list_topics())
            missing = [t for t in wanted(settings) if t.name not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await client.create_topics(missing)
            return [t.name for t in missing]
        except Exception as exc:
            if attempt == attempts - 1:
                raise
            log.info("waiting for Kafka at %s (%s)", settings.kafka_bootstrap, exc)
            await asyncio.sleep(1.0)
        finally:
            await client.close()
    return []


async def offsets(
    kafka: KafkaConnection | Settings, topics: list[str], group: str | None = None
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, Any]]:
    """The end offset of every partition of ``topics``, and ``group``'s committed offsets (none
    without a group)."""
    client = admin(kafka)
    await client.start()
    try:
        committed = await client.list_consumer_group_offsets(group) if group is not None else {}
        described = await client.describe_topics(topics)
    finally:
        await client.close()
    tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    reader = consumer(kafka)
    await reader.start()
    try:
        return dict(await reader.end_offsets(tps)), committed
    finally:
        await reader.stop()
