"""Topic retention on a real broker (``kafka_io.topics``): new topics get the configured
``retention.ms``, and existing topics are given it again when the settings change, their other
topic-level configs kept."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from kafka_io import clients
from kafka_io.topics import DAY_MS, ensure_topics, topic_configs
from schemas.settings import Settings

pytestmark = pytest.mark.kafka


def settings_for(bootstrap: str) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=bootstrap,
        app_id=f"retention-{tag}",
        topic_web=f"web-{tag}",
        topic_email=f"email-{tag}",
        topic_store=f"store-{tag}",
        topic_deadletter=f"dl-{tag}",
        topic_triggers=f"triggers-{tag}",
        partitions=1,
    )


async def configs(settings: Settings, names: list[str]) -> dict[str, dict[str, str]]:
    admin = clients.admin(settings)
    await admin.start()
    try:
        return await topic_configs(admin, names)
    finally:
        await admin.close()


def test_new_and_existing_topics_get_the_configured_retention(kafka_bootstrap: str) -> None:
    settings = settings_for(kafka_bootstrap)
    names = [
        settings.topic_web,
        settings.topic_deadletter,
        settings.private_deadletter_topic,
        settings.topic_triggers,
        settings.contacts_topic,
        settings.deliveries_topic,
        settings.commands_topic,
        settings.changelog_topic("contacts"),
    ]

    async def go() -> None:
        created = await ensure_topics(settings)
        assert set(names) <= set(created)
        found = await configs(settings, names)
        retention = {name: found[name].get("retention.ms") for name in names}
        assert retention == {
            settings.topic_web: str(90 * DAY_MS),
            settings.topic_deadletter: str(30 * DAY_MS),
            settings.private_deadletter_topic: str(30 * DAY_MS),
            settings.topic_triggers: str(30 * DAY_MS),
            settings.contacts_topic: str(7 * DAY_MS),
            settings.deliveries_topic: str(14 * DAY_MS),
            settings.commands_topic: str(7 * DAY_MS),
            settings.changelog_topic("contacts"): None,  # compacted state: no time limit
        }
        changelog = found[settings.changelog_topic("contacts")]
        assert changelog == {"cleanup.policy": "compact", "max.compaction.lag.ms": str(7 * DAY_MS)}
        assert found[settings.deliveries_topic]["max.compaction.lag.ms"] == str(7 * DAY_MS)

        # the settings change: `scorestream topics` (a worker's start) sets them on the existing topics
        changed = settings.model_copy(
            update={
                "source_retention_ms": -1,
                "retention_deadletter_days": 3,
                "retention_deliveries_days": 2,
                "retention_compaction_lag_days": 1,
            }
        )
        assert await ensure_topics(changed) == []
        after = await configs(settings, names)
        for _ in range(100):  # the brokers apply a config change within moments (KRaft metadata)
            if after[settings.topic_web].get("retention.ms") == "-1" and after[
                settings.changelog_topic("contacts")
            ].get("max.compaction.lag.ms") == str(DAY_MS):
                break
            await asyncio.sleep(0.1)
            after = await configs(settings, names)
        assert after[settings.topic_web]["retention.ms"] == "-1"
        assert after[settings.topic_deadletter]["retention.ms"] == str(3 * DAY_MS)
        assert after[settings.deliveries_topic] == {
            "cleanup.policy": "compact,delete",
            "retention.ms": str(2 * DAY_MS),
            "max.compaction.lag.ms": str(DAY_MS),
        }
        assert after[settings.topic_triggers]["retention.ms"] == str(30 * DAY_MS)  # unchanged
        assert after[settings.changelog_topic("contacts")] == {
            "cleanup.policy": "compact",
            "max.compaction.lag.ms": str(DAY_MS),
        }

    asyncio.run(go())
