"""The Faust app: topics and tables. The flow itself is in :mod:`streams.agents`.

Topics (``P`` = ``SCORESTREAM_PARTITIONS``)::

    events.web | events.email | events.store   Segment JSON from producers (any key, any partitioning)
    events.deadletter                          rejected input: original bytes + reason headers
    <app>.identity      key anonymousId        validated events that carry an anonymous id (not those the
                                               identity fast path sends on: streams/identity_replica.py)
    <app>.contacts      key contact id         events, merges and absorbs for one contact
    <app>-identity-changelog, <app>-contacts-changelog   table changelogs (compacted)
    <app>.workers       key worker id          worker status (starting / ready / stopped)
    <app>.accounts      key account id         contacts' membership updates for their account
    <app>.population    key partition          per-partition customer summaries (RFM quintiles, CLV fit)
    <app>.views         key contact id         contact views: what the API reads (compacted)
    triggers            key contact/account id stage changes, thresholds, timers (public, JSON)
    <app>-accounts-changelog                   the accounts table
    <app>.triggers | <app>.deadletter          the same, while another namespace is responsible

``<app>`` is the model namespace (``Settings.ns``): several namespaces (an active model and
shadows) read the same source topics side by side; only the one the models registry makes
responsible for a record's instant publishes to ``triggers`` and ``events.deadletter``
(``schemas/registry.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.types import TopicT

from kafka_io.clients import faust_broker_options
from schemas.registry import Registry
from schemas.settings import Settings
from streams.sends import BatchedSends, Headers
from streams.transport import ScorestreamApp
from telemetry import metrics


@dataclass(frozen=True)
class Wiring:
    app: faust.App
    sources: TopicT
    deadletter: TopicT
    identity_topic: TopicT
    contacts_topic: TopicT
    status_topic: TopicT
    triggers_topic: TopicT
    accounts_topic: TopicT
    population_topic: TopicT
    identity: faust.Table
    contacts: faust.Table
    accounts: faust.Table
    private_triggers: TopicT
    private_deadletter: TopicT
    namespace: str
    registry: Registry
    views_topic: TopicT
    # the app's BatchedSends (streams/sends.py): triggers, dead letters and the stages' records in
    # one producer-buffer item per batch (None: one send_soon each)
    sends: BatchedSends | None = field(default=None, kw_only=True)
    # <app>.regulation-progress (schemas/regulations.py): the stages' erasure reports (None: the
    # reports are only logged)
    progress_topic: TopicT | None = field(default=None, kw_only=True)

    def public(self, at_ms: int) -> bool:
        """Whether this namespace announces what happened at ``at_ms`` (see schemas/registry.py)."""
        return self.registry.responsible(at_ms) == self.namespace

    def send_trigger(self, key: bytes, trigger: dict[str, Any]) -> None:
        topic = self.triggers_topic if self.public(int(trigger["at_ms"])) else self.private_triggers
        metrics.trigger(str(trigger.get("type", "unknown")))
        self._send(topic, key, orjson.dumps(trigger))

    def send_dead(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]], at_ms: int) -> None:
        """Dead-letter a record received at ``at_ms`` (its Kafka timestamp)."""
        topic = self.deadletter if self.public(at_ms) else self.private_deadletter
        self._send(topic, key, value, headers)

    def send_progress(self, key: bytes, value: bytes) -> None:
        """An erasure report (JSON), in the producer buffer before the caller's batch is acknowledged."""
        if self.progress_topic is not None:
            self._send(self.progress_topic, key, value)

    def _send(self, topic: TopicT, key: bytes | None, value: bytes, headers: Headers = None) -> None:
        """One record, in the producer buffer before the caller's batch is acknowledged."""
        if self.sends is not None:
            self.sends.add(topic, key, value, headers)
        else:
            topic.send_soon(key=key, value=value, headers=headers)


def create_app(settings: Settings, registry: Registry | None = None) -> Wiring:
    """Build the Faust app for ``settings`` (its namespace ``settings.ns``): raw bytes everywhere,
    we own the codecs. ``registry``: who announces what (default: an empty registry, so this
    namespace is responsible when it is the app id)."""
    app = ScorestreamApp(
        settings.ns,
        batched_topics=frozenset(
            [*settings.source_topics, settings.identity_topic, settings.contacts_topic, settings.accounts_topic]
        ),
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        producer_buffer_max=4 * settings.batch_max,
        **faust_broker_options(settings),
        store="rocksdb://",
        datadir=str(settings.worker_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        processing_guarantee="at_least_once",
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 4,
        broker_commit_every=max(settings.batch_max * 2, 10_000),
        stream_buffer_maxsize=max(settings.batch_max * 2, 8192),
        broker_max_poll_records=max(settings.batch_max, 500),
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=3600.0,
        table_standby_replicas=settings.standby_replicas,  # each worker restores its share: streams/restore.py
        producer_linger_ms=settings.producer_linger_ms,
        producer_max_batch_size=1 << 20,
        producer_acks=-1,
        store_check_exists=False,
        logging_config=None,
    )
    app.use_fast_changelog_queue()
    rocks = {"block_cache_size": settings.rocksdb_cache_mb << 20}

    def internal(name: str) -> TopicT:
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            partitions=settings.partitions,
            replicas=settings.replication_factor,
            internal=True,
        )

    def table(name: str) -> faust.Table:
        return app.Table(
            name,
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
            options=dict(rocks),
        )

    return Wiring(
        app=app,
        sources=app.topic(*settings.source_topics, key_type=bytes, value_type=bytes),
        deadletter=app.topic(settings.topic_deadletter, key_type=bytes, value_type=bytes),
        identity_topic=internal(settings.identity_topic),
        contacts_topic=internal(settings.contacts_topic),
        status_topic=app.topic(settings.status_topic, key_type=bytes, value_type=bytes),
        triggers_topic=app.topic(
            settings.topic_triggers, key_type=bytes, value_type=bytes, partitions=settings.partitions
        ),
        accounts_topic=internal(settings.accounts_topic),
        population_topic=app.topic(
            settings.population_topic,
            key_type=bytes,
            value_type=bytes,
            partitions=1,
            replicas=settings.replication_factor,
            internal=True,
            compacting=True,
        ),
        identity=table("identity"),
        contacts=table("contacts"),
        accounts=table("accounts"),
        private_triggers=app.topic(
            settings.private_triggers_topic, key_type=bytes, value_type=bytes, partitions=settings.partitions
        ),
        private_deadletter=app.topic(settings.private_deadletter_topic, key_type=bytes, value_type=bytes),
        namespace=settings.ns,
        registry=registry or Registry(settings.app_id),
        sends=BatchedSends.of(app),
        progress_topic=app.topic(settings.regulation_progress_topic, key_type=bytes, value_type=bytes),
        views_topic=app.topic(
            settings.views_topic,
            key_type=bytes,
            value_type=bytes,
            partitions=settings.partitions,
            replicas=settings.replication_factor,
            internal=True,
            compacting=True,
        ),
    )
