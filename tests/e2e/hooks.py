"""An isolated webhook deployment on a shared broker: its own topics and a real dispatcher
process (``python -m deploy.cli dispatcher``), with helpers to write subscriptions, triggers and
commands and to read the records back. Used by ``tests/e2e/test_webhooks_dispatch.py`` and
``bench/webhooks.py``."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from kafka_io.topics import ensure_topics
from schemas.settings import Settings
from schemas.webhooks import (
    DELIVERY_DECODER,
    SUBSCRIPTION_DECODER,
    CommandRecord,
    DeliveryRecord,
    SigningSecret,
    SubscriptionRecord,
    encode,
)
from scorestream.delivery import delivery_id
from scorestream.triggers import make_trigger
from tests.e2e.service import isolated_env, wait_for
from tests.webhook_receiver import Receiver

REPO = Path(__file__).resolve().parents[2]


def now_ms() -> int:
    return int(time.time() * 1000)


async def _read_all(bootstrap: str, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


@dataclass
class Hooks:
    """One isolated set of topics and a dispatcher process on the session's broker."""

    bootstrap: str
    data_dir: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    partitions: int = 2
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def env(self) -> dict[str, str]:
        env = isolated_env(self.bootstrap, f"wh-{self.suffix}", self.suffix, self.partitions, self.data_dir)
        env.update(
            {
                "SCORESTREAM_LOG_LEVEL": "INFO",
                "SCORESTREAM_SESSION_TIMEOUT_S": "6",
                "SCORESTREAM_WEBHOOK_ALLOW_PRIVATE": "true",
                "SCORESTREAM_WEBHOOK_RETRY_SCHEDULE": "0.2,0.4,0.8",
                "SCORESTREAM_WEBHOOK_TIMEOUT_S": "1",
            }
        )
        env.update(self.env_extra)
        return env

    @property
    def settings(self) -> Settings:
        env = self.env
        return Settings(
            kafka_bootstrap=self.bootstrap,
            app_id=env["SCORESTREAM_APP_ID"],
            topic_web=env["SCORESTREAM_TOPIC_WEB"],
            topic_email=env["SCORESTREAM_TOPIC_EMAIL"],
            topic_store=env["SCORESTREAM_TOPIC_STORE"],
            topic_deadletter=env["SCORESTREAM_TOPIC_DEADLETTER"],
            topic_triggers=env["SCORESTREAM_TOPIC_TRIGGERS"],
            partitions=self.partitions,
        )

    def create_topics(self) -> None:
        asyncio.run(ensure_topics(self.settings))

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        out = (self.data_dir / "dispatcher.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "dispatcher"],
            env=self.env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def logs(self) -> str:
        path = self.data_dir / "dispatcher.log"
        return path.read_text()[-6000:] if path.exists() else ""

    # --- the topics ------------------------------------------------------------------------------
    def publish(self, topic: str, records: Sequence[tuple[bytes, bytes | None, int | None]]) -> None:
        async def go() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
            await producer.start()
            try:
                for key, value, partition in records:
                    await producer.send_and_wait(topic, value, key=key, partition=partition)
            finally:
                await producer.stop()

        asyncio.run(go())

    def subscribe(self, sub: SubscriptionRecord) -> None:
        self.publish(self.settings.webhooks_topic, [(sub.id.encode(), encode(sub), None)])

    def triggers(self, triggers: list[dict[str, Any]]) -> None:
        records = [(str(t["contact_id"]).encode(), orjson.dumps(t), None) for t in triggers]
        self.publish(self.settings.topic_triggers, records)

    def command(self, partition: int, cmd: CommandRecord) -> None:
        self.publish(self.settings.commands_topic, [(cmd.subscription_id.encode(), encode(cmd), partition)])

    def deliveries(self) -> dict[str, DeliveryRecord]:
        out: dict[str, DeliveryRecord] = {}
        for r in asyncio.run(_read_all(self.bootstrap, self.settings.deliveries_topic)):
            if r.value is not None:
                out[r.key.decode()] = DELIVERY_DECODER.decode(r.value)
        return out

    def subscriptions(self) -> dict[str, SubscriptionRecord]:
        out: dict[str, SubscriptionRecord] = {}
        for r in asyncio.run(_read_all(self.bootstrap, self.settings.webhooks_topic)):
            if r.value is not None:
                out[r.key.decode()] = SUBSCRIPTION_DECODER.decode(r.value)
        return out

    def known(self, sub: SubscriptionRecord, receiver: Receiver, path: str, timeout: float = 20.0) -> None:
        """Wait until the dispatcher knows ``sub``: a test send gets through (sent again until it does)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            request = uuid.uuid4().hex[:12]
            self.command(0, CommandRecord("test", sub.id, request, now_ms()))
            probe = delivery_id("test_" + request, sub.id)
            until = time.monotonic() + 1.5
            while time.monotonic() < until:
                if any(r.webhook_id == probe for r in receiver.at(path)):
                    return
                time.sleep(0.05)
        raise AssertionError(f"webhook {sub.id} never known to the dispatcher\n{self.logs()}")

    def record(self, did: str, check: Callable[[DeliveryRecord], bool], timeout: float = 15.0) -> DeliveryRecord:
        def found() -> DeliveryRecord | None:
            rec = self.deliveries().get(did)
            return rec if rec is not None and check(rec) else None

        result: DeliveryRecord = wait_for(found, timeout, f"delivery {did}", self.logs)
        return result


def subscription(url: str, tag: str, secret: str) -> SubscriptionRecord:
    now = now_ms()
    return SubscriptionRecord(
        id=f"wh_{uuid.uuid4().hex[:12]}",
        url=url,
        events=["*"],
        secrets=[SigningSecret(secret, now)],
        created_ms=now,
        updated_ms=now,
        models=[tag],  # each test's triggers carry their own model name: tests do not see each other's
    )


def trigger(tag: str, contact: str, n: int) -> dict[str, Any]:
    return make_trigger(
        "stage.changed",
        at_ms=now_ms() + n,
        model_version=f"{tag}@abc",
        contact_id=contact,
        before="lead",
        after=f"stage{n}",
    )
