"""Kafka clients built from one connection description.

Every aiokafka client of scorestream, and the Faust app's broker, is configured by
:func:`connection` (what every client of a deployment shares: where the brokers are, and later how
to reach them securely) plus the options of its own use (acks, fetch sizes, a group, a client id)::

    kafka = KafkaConnection.of(settings)        # or KafkaConnection("127.0.0.1:9092") in the bench
    producer = clients.producer(kafka, acks="all")
    consumer = clients.consumer(settings, "topic", group_id="g")   # settings work as well
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.settings import Settings


@dataclass(frozen=True)
class KafkaConnection:
    """How to reach the Kafka cluster: the bootstrap servers (``host:port``, comma-separated)."""

    bootstrap: str

    @classmethod
    def of(cls, kafka: KafkaConnection | Settings) -> KafkaConnection:
        """The connection of ``kafka`` (the one place settings become a connection)."""
        if isinstance(kafka, KafkaConnection):
            return kafka
        return cls(bootstrap=kafka.kafka_bootstrap)


def connection(kafka: KafkaConnection | Settings) -> dict[str, Any]:
    """The aiokafka keyword arguments every client shares (the one place TLS/SASL will go).

    A client id is not among them: a process runs several clients, each names itself if it wants
    to (``client_id=`` in its options)."""
    return {"bootstrap_servers": KafkaConnection.of(kafka).bootstrap}


def consumer(kafka: KafkaConnection | Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """An aiokafka consumer (not started) of ``topics`` (none: assign partitions yourself)."""
    return AIOKafkaConsumer(*topics, **connection(kafka), **options)


def producer(kafka: KafkaConnection | Settings, **options: Any) -> AIOKafkaProducer:
    """An aiokafka producer (not started)."""
    return AIOKafkaProducer(**connection(kafka), **options)


def admin(kafka: KafkaConnection | Settings, **options: Any) -> AIOKafkaAdminClient:
    """An aiokafka admin client (not started)."""
    return AIOKafkaAdminClient(**connection(kafka), **options)


def faust_broker_options(kafka: KafkaConnection | Settings) -> dict[str, Any]:
    """The Faust app's broker settings for the same connection (``faust.App(..., **options)``)."""
    return {"broker": [f"kafka://{host}" for host in KafkaConnection.of(kafka).bootstrap.split(",")]}


async def partitions_of(client: AIOKafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of those of ``topics`` that exist, in order, as the cluster's metadata says
    now (aiokafka has no public call for the partitions of topics a group-less consumer has not
    been assigned yet: a consumer with no subscription knows only what it was told)."""
    cluster = await client._client.fetch_all_metadata()
    return [TopicPartition(t, p) for t in topics for p in sorted(cluster.partitions_for_topic(t) or ())]
