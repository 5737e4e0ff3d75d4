"""How the sink tells which promotion a changelog partition's commits belong to (no broker, no
ClickHouse; ``tests/e2e/test_analytics_promotion.py`` runs the whole switch)."""

from __future__ import annotations

from aiokafka import TopicPartition

from schemas.registry import ActiveRecord, Promotion, Registry, encode_record, promoted
from schemas.settings import Settings
from sink.service import Namespace, RowBatch, Sink, epoch_of
from tests.factories import DEFAULT_MODEL


def registry(*moves: tuple[str, int]) -> Registry:
    """A registry whose active record holds promotions (namespace, promoted_ms), in order."""
    reg, record, previous = Registry("app"), ActiveRecord(), "app"
    for namespace, at in moves:
        record = promoted(record.promotions, Promotion(namespace, from_ms=at, promoted_ms=at, previous=previous))
        previous = namespace
    reg.apply(b"active", encode_record(record))
    return reg


def test_the_epoch_is_when_the_active_namespace_became_active() -> None:
    assert epoch_of(registry()) == 0
    assert epoch_of(registry(("v2", 100))) == 100
    assert epoch_of(registry(("v2", 100), ("v2", 200))) == 100  # promoted again: nothing changes
    assert epoch_of(registry(("v2", 100), ("app", 200))) == 200  # rolled back: a new epoch
    assert epoch_of(registry(("v2", 100), ("app", 200), ("v2", 300))) == 300


def test_a_partition_resumes_only_from_commits_of_the_current_promotion() -> None:
    sink = Sink(Settings(app_id="app"), model=DEFAULT_MODEL)
    try:
        # the default namespace, never promoted: a commit without metadata (an older sink) is its
        assert sink._since_in("") == 0 and sink._since_in("app@0:0") == 0
        sink._follow(Namespace("v2", 100, DEFAULT_MODEL.version, DEFAULT_MODEL))
        assert sink.contacts.topics == ["v2-contacts-changelog"] and sink.accounts.topics == ["v2-accounts-changelog"]
        assert "app-contacts-changelog" not in sink.topics and "v2-contacts-changelog" in sink.topics
        assert sink._since_in("v2@100:1234") == 1234
        assert sink._since_in("v2@50:1234") is None  # an earlier time v2 was active: read again
        assert sink._since_in("") is None and sink._since_in("app@0:0") is None and sink._since_in("v2@100:x") is None
    finally:
        sink._rows.shutdown()


def test_insert_tokens_of_changelog_partitions_include_since() -> None:
    batch, tp, other = RowBatch(), TopicPartition("v2-contacts-changelog", 0), TopicPartition("events.web", 0)
    batch.first, batch.next = {tp: 5, other: 1}, {tp: 9, other: 3}
    plain = batch.token("contacts")
    assert batch.token("contacts", {}) == plain and batch.token("contacts", {tp: 0}) == plain
    assert batch.token("contacts", {tp: 77}) != plain
    assert batch.token("contacts", {tp: 77}) == batch.token("contacts", {tp: 77})
    assert batch.token("contacts", {tp: 77}) != batch.token("contacts", {tp: 78})
