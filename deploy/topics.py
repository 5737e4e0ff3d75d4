"""Create every topic scorestream uses (idempotent): sources, dead letters, internal, changelogs."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas.settings import Settings

log = logging.getLogger(__name__)


def wanted(settings: Settings) -> list[NewTopic]:
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
    topics.append(NewTopic(settings.status_topic, 1, r, topic_configs=compact))
    topics.append(NewTopic(settings.population_topic, 1, r, topic_configs=compact))
    topics.append(NewTopic(settings.webhooks_topic, 1, r, topic_configs=compact))
    topics.append(NewTopic(settings.models_topic, 1, r, topic_configs=compact))
    # A delivery's record is rewritten on every attempt (at most a day apart), so 14 days of
    # retention drops only finished deliveries; compaction keeps the latest state of each.
    deliveries = {"cleanup.policy": "compact,delete", "retention.ms": str(14 * 86400 * 1000)}
    topics.append(NewTopic(settings.deliveries_topic, p, r, topic_configs=deliveries))
    topics.append(NewTopic(settings.commands_topic, p, r, topic_configs={"retention.ms": str(7 * 86400 * 1000)}))
    return topics


async def ensure_topics(settings: Settings, attempts: int = 30) -> list[str]:
    """Create missing topics; returns the names created. Retries while the broker starts."""
    for attempt in range(attempts):
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in wanted(settings) if t.name not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(missing)
            return [t.name for t in missing]
        except Exception as exc:
            if attempt == attempts - 1:
                raise
            log.info("waiting for Kafka at %s (%s)", settings.kafka_bootstrap, exc)
            await asyncio.sleep(1.0)
        finally:
            await admin.close()
    return []


def main(settings: Settings) -> None:
    created = asyncio.run(ensure_topics(settings))
    log.info("topics ready (%d created)", len(created))
