"""End to end: the API's follower of the models registry on a real broker. Before the registry
topic exists it counts as read (the default namespace only, active); once records are written
there, the namespaces they register are followed and a promotion switches the active one."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from api.namespaces import Namespaces, Readers
from kafka_io.topics import wanted
from schemas.model_file import load_model
from schemas.registry import ACTIVE_KEY, NAMESPACE_PREFIX, ActiveRecord, Promotion, encode_record, namespace_record
from schemas.settings import Settings

MODEL = load_model()
T0 = 1_790_000_000_000


async def until(check: Callable[[], Any], what: str, within_s: float = 30) -> Any:
    deadline = time.monotonic() + within_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return found


def test_the_registry_is_empty_until_its_topic_exists_then_followed(kafka_bootstrap: str, tmp_path: Path) -> None:
    # a data directory of its own: each namespace's view store lives there (api.view_store)
    settings = Settings(kafka_bootstrap=kafka_bootstrap, app_id=f"ns-{uuid.uuid4().hex[:8]}", data_dir=tmp_path)
    namespaces = Namespaces(settings, Readers.build(settings, MODEL))

    async def go() -> None:
        await namespaces.start()
        try:
            await asyncio.wait_for(namespaces.caught_up.wait(), 30)
            assert namespaces.error is None
            assert [r.namespace for r in namespaces.live()] == [settings.app_id]
            await until(lambda: namespaces.active().state == "running", "the default namespace's readers")

            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            await admin.start()
            try:
                await admin.create_topics([t for t in wanted(settings) if t.name == settings.models_topic])
            finally:
                await admin.close()
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
            await producer.start()
            try:
                record = namespace_record("v2", None, T0)
                await producer.send_and_wait(
                    settings.models_topic, encode_record(record), key=f"{NAMESPACE_PREFIX}v2".encode()
                )
                shadow = await until(
                    lambda: "v2" in [r.namespace for r in namespaces.live()] and namespaces.pick("v2"), "v2"
                )
                await until(lambda: shadow.state == "running", "the shadow's readers")
                assert shadow.replica.views_topic == "v2.views"
                assert namespaces.active().namespace == settings.app_id
                promotion = Promotion(namespace="v2", from_ms=T0, promoted_ms=T0, previous=settings.app_id)
                await producer.send_and_wait(
                    settings.models_topic, encode_record(ActiveRecord(promotions=[promotion])), key=ACTIVE_KEY.encode()
                )
                await until(lambda: namespaces.active() is shadow, "the promotion")
            finally:
                await producer.stop()
        finally:
            await namespaces.stop()
        assert {r.state for r in namespaces.live()} == {"stopped"}

    asyncio.run(go())
