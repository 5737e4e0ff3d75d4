"""The bench's broker housekeeping: a finished deployment's topics are dropped, nobody else's."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from bench.harness import create_topic, drop_topics
from kafka_io import clients
from kafka_io.clients import KafkaConnection

pytestmark = pytest.mark.kafka


async def _topics(bootstrap: str) -> set[str]:
    admin = clients.admin(KafkaConnection(bootstrap))
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def test_drop_topics_deletes_only_the_deployments_topics(kafka_bootstrap: str) -> None:
    mine, other = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    for name in (f"web-{mine}", f"ss-{mine}-contacts-changelog", f"web-{other}"):
        asyncio.run(create_topic(kafka_bootstrap, name, partitions=1))
    assert asyncio.run(drop_topics(kafka_bootstrap, mine)) == 2
    left: set[str] = set()
    for _ in range(50):  # deletion is asynchronous on the broker
        left = asyncio.run(_topics(kafka_bootstrap))
        if not {f"web-{mine}", f"ss-{mine}-contacts-changelog"} & left:
            break
        asyncio.run(asyncio.sleep(0.2))
    assert f"web-{other}" in left
    assert not {f"web-{mine}", f"ss-{mine}-contacts-changelog"} & left
