"""End to end: the webhook API in process (ASGI, with its lifespan) against the real broker and the
real webhook topics: subscriptions written to and read back from the compacted topic (by a second
API instance too), URLs checked with the system resolver, commands on the commands topic's
partitions, the delivery log read from records published to the deliveries topic."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import FastAPI

from api.app import create_api
from api.webhook_backend import WebhookBackend
from kafka_io.topics import wanted
from schemas.model_file import load_model
from schemas.settings import Settings
from schemas.webhooks import COMMAND_DECODER, SUBSCRIPTION_DECODER, AttemptRecord, CommandRecord, DeliveryRecord, encode
from scorestream.delivery import address_refusal, delivery_id

KEY = "e2e-webhook-key-0123456789"
MODEL = load_model()
PUBLIC = "https://93.184.215.14/hooks"  # a literal public address: accepted without DNS, never called
PARTITIONS = 4


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str) -> Settings:
    """Settings of an isolated deployment with its three webhook topics created."""
    s = Settings(
        kafka_bootstrap=kafka_bootstrap,
        app_id=f"wh-{uuid.uuid4().hex[:8]}",
        partitions=PARTITIONS,
        api_keys=KEY,  # type: ignore[arg-type]
    )
    names = {s.webhooks_topic, s.deliveries_topic, s.commands_topic}

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([t for t in wanted(s) if t.name in names])
        finally:
            await admin.close()

    asyncio.run(create())
    return s


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, WebhookBackend]]:
    """One API instance with its lifespan (its readers follow the topics), once its webhook
    subscriptions have caught up."""
    app: FastAPI = create_api(settings, model=MODEL)
    backend: WebhookBackend = app.state.webhooks
    async with app.router.lifespan_context(app):
        await until(lambda: backend.store.caught_up.is_set(), what="the subscription store to catch up")
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as client:
            yield client, backend


async def until(check: Callable[[], Any], what: str, within_s: float = 30) -> Any:
    """Poll ``check()`` (awaited if it returns an awaitable) until it is truthy; return it."""
    try:
        async with asyncio.timeout(within_s):
            while True:
                value = check()
                if isinstance(value, Awaitable):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record on ``topic`` now (all partitions, up to the end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        partitions = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        assert partitions, topic
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out: list[Any] = []
        pending = [tp for tp in partitions if ends[tp] > 0]
        while pending:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(records)
            pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
        return out
    finally:
        await consumer.stop()


async def commands(settings: Settings, request_id: str, expect: int) -> list[tuple[int, bytes, CommandRecord]]:
    async def found() -> list[tuple[int, bytes, CommandRecord]]:
        records = await read_all(settings.kafka_bootstrap, settings.commands_topic)
        decoded = [(r.partition, r.key, COMMAND_DECODER.decode(r.value)) for r in records]
        mine = [d for d in decoded if d[2].request_id == request_id]
        return mine if len(mine) >= expect else []

    result: list[tuple[int, bytes, CommandRecord]] = await until(found, f"{expect} commands of {request_id}")
    return result


def test_subscriptions_round_trip_through_the_topic(settings: Settings) -> None:
    async def go() -> None:
        async with running(settings) as (api, _):
            r = await api.post("/v1/webhooks", json={"url": PUBLIC, "events": ["stage.changed"], "stages": ["mql"]})
            assert r.status_code == 201, r.text
            created = r.json()
            sub, secret = created["id"], created["secret"]
            # read your writes: the answers right after each write show it
            got = await api.get(f"/v1/webhooks/{sub}")
            assert got.status_code == 200 and got.json() == {k: v for k, v in created.items() if k != "secret"}
            assert sub in [w["id"] for w in (await api.get("/v1/webhooks")).json()["data"]]

            patched = await api.patch(f"/v1/webhooks/{sub}", json={"description": "CRM sync", "stages": None})
            assert patched.status_code == 200, patched.text
            assert (await api.get(f"/v1/webhooks/{sub}")).json()["description"] == "CRM sync"
            assert patched.json()["stages"] is None and patched.json()["events"] == ["stage.changed"]

            rotated = await api.post(f"/v1/webhooks/{sub}/rotate-secret", json={"overlap_s": 3600})
            assert rotated.status_code == 200, rotated.text
            new_secret = rotated.json()["secret"]
            after = await api.get(f"/v1/webhooks/{sub}")
            assert after.json()["secret_overlap_until"] == rotated.json()["previous_expires_at"]

            gone = (await api.post("/v1/webhooks", json={"url": PUBLIC, "events": ["*"]})).json()["id"]
            assert (await api.delete(f"/v1/webhooks/{gone}")).status_code == 204
            assert (await api.get(f"/v1/webhooks/{gone}")).status_code == 404

        # A second API instance (a restart) reads the same subscriptions back from the topic.
        async with running(settings) as (api, backend):
            listed = await api.get("/v1/webhooks")
            ids = [w["id"] for w in listed.json()["data"]]
            assert sub in ids and gone not in ids
            shown = await api.get(f"/v1/webhooks/{sub}")
            assert shown.json()["description"] == "CRM sync" and shown.json()["stages"] is None
            for text in (listed.text, shown.text):
                assert secret not in text and new_secret not in text
            record = backend.store.get(sub)
            assert record is not None and record.revision == 3
            assert record.signing_secrets(int(time.time() * 1000)) == [new_secret, secret]
            # and changes it further (its own writes, read back by itself)
            enabled = await api.patch(f"/v1/webhooks/{sub}", json={"enabled": False})
            assert enabled.json()["enabled"] is False

        # what is on the topic: the JSON records, the deleted one's tombstone last
        records = await read_all(settings.kafka_bootstrap, settings.webhooks_topic)
        mine = [r for r in records if r.key == sub.encode()]
        assert [SUBSCRIPTION_DECODER.decode(r.value).revision for r in mine] == [1, 2, 3, 4]
        assert [r.value for r in records if r.key == gone.encode()][-1] is None

    asyncio.run(go())


def test_refused_urls_with_the_system_resolver(settings: Settings) -> None:
    host = socket.gethostname()
    own = {str(info[4][0]) for info in socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)}
    own_refused = any(address_refusal(a) for a in own)  # a machine's own name is loopback or private

    async def go() -> dict[str, httpx.Response]:
        async with running(settings) as (api, _):
            urls = {
                "http": "http://93.184.215.14/hooks",
                "loopback": "https://127.0.0.1/hooks",
                "metadata": "https://169.254.169.254/latest/meta-data/",
                "localhost": "https://localhost:8443/hooks",
                "own name": f"https://{host}/hooks",
                "unresolvable": "https://no-such-host.invalid/hooks",
            }
            return {
                name: await api.post("/v1/webhooks", json={"url": url, "events": ["*"]}) for name, url in urls.items()
            }

    answers = asyncio.run(go())
    for name, r in answers.items():
        if name == "own name" and not own_refused:
            assert r.status_code == 201, (name, own)
            continue
        assert (r.status_code, r.json()["code"]) == (422, "invalid_url"), (name, r.text)
    assert "HTTPS" in answers["http"].json()["detail"]
    assert "link-local" in answers["metadata"].json()["detail"]
    assert "cannot resolve" in answers["unresolvable"].json()["detail"]


def delivery(sub: str, n: int, partition: int, status: str) -> DeliveryRecord:
    at = int(time.time() * 1000) - (10 - n) * 1000
    return DeliveryRecord(
        id=delivery_id(f"trigger-{n}", sub),
        subscription_id=sub,
        type="stage.changed",
        key=f"u-{n}",
        partition=partition,
        seq=n,
        body='{"type":"stage.changed"}',
        created_ms=at,
        updated_ms=at,
        status=status,  # type: ignore[arg-type]
        trigger_id=f"trigger-{n}",
        attempt_count=1,
        attempts=[AttemptRecord(at_ms=at, outcome="timeout", latency_ms=10_000.0, error="ReadTimeout")],
        reason="schedule spent" if status == "failed" else None,
    )


def test_commands_and_the_delivery_log(settings: Settings) -> None:
    async def go() -> None:
        async with running(settings) as (api, backend):
            sub = (await api.post("/v1/webhooks", json={"url": PUBLIC, "events": ["*"]})).json()["id"]

            # a test send: one command on the subscription's partition
            test = await api.post(f"/v1/webhooks/{sub}/test")
            assert test.status_code == 202, test.text
            [(partition, key, command)] = await commands(settings, test.json()["request_id"], 1)
            assert partition == zlib.crc32(sub.encode()) % PARTITIONS and key == sub.encode()
            assert (command.op, command.subscription_id, command.delivery_id) == ("test", sub, None)
            assert test.json()["delivery_id"] == delivery_id("test_" + command.request_id, sub)

            # the delivery log serves what the dispatchers publish
            failed, done = delivery(sub, 1, 3, "failed"), delivery(sub, 2, 1, "succeeded")
            producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
            await producer.start()
            try:
                for record in (failed, done):
                    await producer.send_and_wait(
                        settings.deliveries_topic, encode(record), key=record.id.encode(), partition=record.partition
                    )
            finally:
                await producer.stop()

            async def listed() -> list[dict[str, Any]]:
                data: list[dict[str, Any]] = (await api.get(f"/v1/webhooks/{sub}/deliveries")).json().get("data", [])
                return data if len(data) == 2 else []

            data = await until(listed, "the deliveries in the log")
            assert [d["id"] for d in data] == [done.id, failed.id]  # newest first
            only_failed = (await api.get(f"/v1/webhooks/{sub}/deliveries?status=failed")).json()["data"]
            assert [d["id"] for d in only_failed] == [failed.id]
            one = (await api.get(f"/v1/webhooks/{sub}/deliveries/{failed.id}")).json()
            assert (one["status"], one["reason"], one["attempts"][0]["error"]) == (
                "failed",
                "schedule spent",
                "ReadTimeout",
            )
            assert backend.deliveries.caught_up.is_set()

            # a retry goes to the partition of the delivery
            retry = await api.post(f"/v1/webhooks/{sub}/deliveries/{failed.id}/retry")
            assert retry.status_code == 202, retry.text
            [(partition, key, command)] = await commands(settings, retry.json()["request_id"], 1)
            assert (partition, key) == (3, sub.encode())
            assert (command.op, command.delivery_id) == ("retry", failed.id)

            # "retry every failed delivery": one command per partition, the same request
            since = "2026-01-01T00:00:00Z"
            every = await api.post(f"/v1/webhooks/{sub}/deliveries:retry-failed", params={"since": since})
            assert every.status_code == 202, every.text
            sent = await commands(settings, every.json()["request_id"], PARTITIONS)
            assert sorted(p for p, _, _ in sent) == list(range(PARTITIONS))
            assert {(c.op, c.since_ms) for _, _, c in sent} == {("retry_failed", 1_767_225_600_000)}

    asyncio.run(go())
