"""The topics scorestream uses: their creation (idempotent) and their offsets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import IncompatibleBrokerVersion, TopicAlreadyExistsError
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int8, Int16, Int32, Schema, String

from kafka_io.clients import KafkaConnection, admin, consumer
from kafka_io.errors import KafkaIoError
from schemas.regulations import REGULATION_RECORD_BYTES
from schemas.settings import Settings

log = logging.getLogger(__name__)


class KafkaConfigError(KafkaIoError, RuntimeError):
    """The broker refused to describe or change a topic's configs."""


DAY_MS = 86_400_000


def retention_ms(days: int) -> str:
    """A ``retention.ms`` value for ``days`` (0: for ever, Kafka's -1)."""
    return str(days * DAY_MS if days > 0 else -1)


def compaction_lag(settings: Settings) -> dict[str, str]:
    """``max.compaction.lag.ms`` of the compacted topics holding personal data (none for 0)."""
    days = settings.retention_compaction_lag_days
    return {"max.compaction.lag.ms": str(days * DAY_MS)} if days > 0 else {}


# the configs set again on existing topics when the settings change (the others only at creation)
ALIGNED = ("retention.ms", "max.compaction.lag.ms", "max.message.bytes")


def wanted(settings: Settings) -> list[NewTopic]:
    """Every topic of ``settings``' namespace: sources, dead letters, internal, changelogs, each with
    its retention (docs/operations.md "Retention")."""
    p, r = settings.partitions, settings.replication_factor
    compact = {"cleanup.policy": "compact"}
    sources = {"retention.ms": str(settings.source_retention_ms)}
    # a backfill topic holds archived events with their event times as record times: a time-based
    # retention would drop them before the shadow read them (it is a copy of the archive, whose TTLs
    # and erasures bound it; erased people's records in it are skipped by the privacy list)
    backfill = set(settings.backfill_topics.values()) if settings.backfill else set()
    topics = [
        NewTopic(name, p, r, topic_configs={"retention.ms": "-1"} if name in backfill else sources)
        for name in settings.source_topics
    ]
    retained = {
        settings.topic_deadletter: settings.retention_deadletter_days,
        settings.private_deadletter_topic: settings.retention_deadletter_days,
        settings.topic_triggers: settings.retention_triggers_days,
        settings.private_triggers_topic: settings.retention_triggers_days,
        settings.identity_topic: settings.retention_internal_days,
        settings.contacts_topic: settings.retention_internal_days,
        settings.accounts_topic: settings.retention_internal_days,
    }
    topics += [
        NewTopic(name, p, r, topic_configs={"retention.ms": retention_ms(days)}) for name, days in retained.items()
    ]
    # compacted topics holding personal data: a superseded record (an erased person's, behind their
    # tombstone) is compacted away within max.compaction.lag.ms, not whenever the cleaner happens to run
    personal = {**compact, **compaction_lag(settings)}
    tables = ("identity", "contacts", "accounts")
    topics += [NewTopic(settings.changelog_topic(t), p, r, topic_configs=personal) for t in tables]
    topics.append(NewTopic(settings.views_topic, p, r, topic_configs=personal))
    topics.append(NewTopic(settings.status_topic, 1, r, topic_configs=compact))
    topics.append(NewTopic(settings.population_topic, 1, r, topic_configs=personal))
    topics.append(NewTopic(settings.webhooks_topic, 1, r, topic_configs=compact))
    topics.append(NewTopic(settings.models_topic, 1, r, topic_configs=compact))
    # a regulation's record holds the hashes of every key it restricted: up to MAX_SUBJECTS people
    # with up to 64 anonymous ids each (schemas/regulations.py REGULATION_RECORD_BYTES)
    regulations = {**personal, "max.message.bytes": str(REGULATION_RECORD_BYTES)}
    topics.append(NewTopic(settings.regulations_topic, 1, r, topic_configs=regulations))
    for name in (settings.privacy_topic, settings.regulation_progress_topic):
        topics.append(NewTopic(name, 1, r, topic_configs=personal))
    # A delivery's record is rewritten on every attempt (at most a day apart), so 14 days of
    # retention drops only finished deliveries; compaction keeps the latest state of each.
    deliveries = {
        "cleanup.policy": "compact,delete",
        "retention.ms": retention_ms(settings.retention_deliveries_days),
        **compaction_lag(settings),
    }
    topics.append(NewTopic(settings.deliveries_topic, p, r, topic_configs=deliveries))
    commands = {"retention.ms": retention_ms(settings.retention_commands_days)}
    topics.append(NewTopic(settings.commands_topic, p, r, topic_configs=commands))
    return topics


async def ensure_topics(settings: Settings, attempts: int = 30) -> list[str]:
    """Create missing topics, and give existing ones the configured ``retention.ms``; returns the
    names created. Retries while the broker starts."""
    for attempt in range(attempts):
        client = admin(settings, request_timeout_ms=10_000)
        try:
            await client.start()
            existing = set(await client.list_topics())
            topics = wanted(settings)
            missing = [t for t in topics if t.name not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await client.create_topics(missing)
            try:
                await align_retention(client, [t for t in topics if t.name in existing])
            except (KafkaConfigError, IncompatibleBrokerVersion, NotImplementedError) as exc:
                # not fatal: a principal without DescribeConfigs/AlterConfigs still runs
                log.warning(
                    "the retention of existing topics was not set (%s): grant DescribeConfigs and AlterConfigs "
                    "on them, or set retention.ms with kafka-configs (docs/operations.md, Retention)",
                    exc,
                )
            return [t.name for t in missing]
        except Exception as exc:
            if attempt == attempts - 1:
                raise
            log.info("waiting for Kafka at %s (%s)", settings.kafka_bootstrap, exc)
            await asyncio.sleep(1.0)
        finally:
            await client.close()
    return []


async def topic_configs(client: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """Topic -> its configs set on the topic itself (not the broker's defaults)."""
    if not names:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    out: dict[str, dict[str, str]] = {}
    for response in await client.describe_configs(resources):
        for resource in response.resources:
            error, _message, _kind, name, entries = resource[:5]
            if error:
                raise KafkaConfigError(f"describing the configs of {name} failed (error {error})")
            out[name] = {entry[0]: entry[1] for entry in entries if _set_on_topic(response, entry)}
    return out


def _set_on_topic(response: Any, entry: tuple[Any, ...]) -> bool:
    """Whether a DescribeConfigs entry is a topic-level override (v0: not ``is_default``; v1+:
    its source is DYNAMIC_TOPIC_CONFIG, 1)."""
    if response.API_VERSION == 0:
        return not entry[3]
    return bool(entry[3] == 1)


class _IncrementalAlterConfigsResponse(Response):  # type: ignore[misc]
    API_KEY = 44
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "responses",
            Array(
                ("error_code", Int16),
                ("error_message", String("utf-8")),
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
            ),
        ),
    )


class _IncrementalAlterConfigsStruct(RequestStruct):  # type: ignore[misc]
    API_KEY = 44
    API_VERSION = 0
    RESPONSE_TYPE = _IncrementalAlterConfigsResponse
    SCHEMA = Schema(
        (
            "resources",
            Array(
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
                ("configs", Array(("name", String("utf-8")), ("config_operation", Int8), ("value", String("utf-8")))),
            ),
        ),
        ("validate_only", Boolean),
    )


class IncrementalAlterConfigs(Request[_IncrementalAlterConfigsStruct]):  # type: ignore[misc]
    """Kafka's IncrementalAlterConfigs (KIP-339): SET the given configs of topics, leaving their
    other configs as they are. aiokafka has only the legacy AlterConfigs, which replaces a topic's
    whole set of configs (an operator's own override, set meanwhile, would be lost)."""

    API_KEY = 44
    TOPIC = 2
    SET = 0

    def __init__(self, topics: dict[str, dict[str, str]]) -> None:
        self.resources = [
            (self.TOPIC, name, [(key, self.SET, value) for key, value in configs.items()])
            for name, configs in topics.items()
        ]

    def build(self, request_struct_class: type[_IncrementalAlterConfigsStruct]) -> _IncrementalAlterConfigsStruct:
        return request_struct_class(self.resources, False)


async def align_retention(client: AIOKafkaAdminClient, topics: list[NewTopic]) -> list[str]:
    """Give each of ``topics`` (existing) the ``retention.ms`` and ``max.compaction.lag.ms`` it is
    wanted with (its other configs untouched); returns the names changed. The brokers apply it
    within moments (KRaft metadata), not necessarily before this returns."""
    wanted_configs = {
        t.name: {key: t.topic_configs[key] for key in ALIGNED if key in t.topic_configs}
        for t in topics
        if any(key in t.topic_configs for key in ALIGNED)
    }
    current = await topic_configs(client, sorted(wanted_configs))
    changes: dict[str, dict[str, str]] = {}
    for name, configs in sorted(wanted_configs.items()):
        for key, value in configs.items():
            before = current.get(name, {}).get(key)
            if before != value:
                changes.setdefault(name, {})[key] = value
                log.info("topic %s: %s %s -> %s", name, key, before or "(broker default)", value)
    if changes:
        response = await client._send_request(IncrementalAlterConfigs(changes))
        for error, message, _kind, name in response.responses:
            if error:
                raise KafkaConfigError(f"setting the retention of {name} failed (error {error}): {message}")
    return sorted(changes)


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
