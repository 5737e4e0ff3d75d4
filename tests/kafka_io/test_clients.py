"""Client construction (``kafka_io.clients``): every client gets its connection from one function."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kafka_io import clients
from kafka_io.clients import KafkaConnection, connection, faust_broker_options
from schemas.settings import Settings


def test_a_connection_comes_from_settings_or_a_bootstrap_string() -> None:
    settings = Settings(kafka_bootstrap="k1:9092,k2:9092")
    assert KafkaConnection.of(settings) == KafkaConnection("k1:9092,k2:9092")
    assert connection(settings) == {"bootstrap_servers": "k1:9092,k2:9092"}
    assert connection(KafkaConnection("k3:1")) == {"bootstrap_servers": "k3:1"}


def test_the_faust_broker_is_the_same_connection() -> None:
    assert faust_broker_options(Settings(kafka_bootstrap="k1:9092,k2:9093")) == {
        "broker": ["kafka://k1:9092", "kafka://k2:9093"]
    }


class Recorder:
    def __init__(self, *topics: str, **options: Any) -> None:
        self.topics, self.options = topics, options


@pytest.mark.parametrize(
    ("build", "cls"),
    [
        (clients.consumer, "AIOKafkaConsumer"),
        (clients.producer, "AIOKafkaProducer"),
        (clients.admin, "AIOKafkaAdminClient"),
    ],
)
def test_every_client_gets_the_connection_and_its_own_options(
    build: Any, cls: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clients, cls, Recorder)
    client = build(KafkaConnection("k1:9092,k2:9092"), client_id="me", request_timeout_ms=1234)
    assert client.options == {"bootstrap_servers": "k1:9092,k2:9092", "client_id": "me", "request_timeout_ms": 1234}


def test_a_consumer_subscribes_to_the_topics_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clients, "AIOKafkaConsumer", Recorder)
    client = clients.consumer(Settings(kafka_bootstrap="k1:1"), "t1", "t2", group_id="g")
    assert client.topics == ("t1", "t2") and client.options == {"bootstrap_servers": "k1:1", "group_id": "g"}


def test_a_real_client_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    async def make() -> Any:
        consumer = clients.consumer(KafkaConnection("k1:9092"), "t1", client_id="me")
        try:
            return consumer._client._bootstrap_servers, consumer._client._client_id
        finally:
            await consumer.stop()

    assert asyncio.run(make()) == ("k1:9092", "me")
