"""The privacy list followed from its topic (``kafka_io.privacy``) on a real broker: read to the end
before a process takes records, entries restrict, tombstones lift, an unreadable record restricts
nothing and stops nothing; and the identifiers read out of what is not an event."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from kafka_io import clients
from kafka_io.clients import KafkaConnection
from kafka_io.privacy import LABEL, PrivacyFollower, read_privacy_list
from kafka_io.reader import unreadable
from schemas.privacy import key_subjects, message_subjects, raw_subjects, text_subjects
from schemas.regulations import PrivacyEntry, encode_json
from scorestream.privacy import PrivacyList, Restriction, subject_key
from tests.kafka_io.test_reader import create, until


def fresh() -> str:
    return f"privacy-{uuid.uuid4().hex[:8]}"


async def put(kafka: KafkaConnection, topic: str, records: list[tuple[str, bytes | None]]) -> None:
    producer = clients.producer(kafka, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key.encode(), partition=0)
    finally:
        await producer.stop()


ALICE, BOB, CAROL, DAN = (subject_key("user", name) for name in ("alice", "bob", "carol", "dan"))


def entry(regulation: str, suppressed: int | None = None, erased: int | None = None) -> bytes:
    return encode_json(PrivacyEntry(regulation, suppressed_from_ms=suppressed, erased_before_ms=erased))


@pytest.mark.kafka
def test_reads_the_list_to_its_end_then_follows_entries_and_tombstones(kafka_bootstrap: str) -> None:
    kafka, topic = KafkaConnection(kafka_bootstrap), fresh()
    follower = PrivacyFollower(kafka, topic, poll_ms=100)

    async def go() -> None:
        await create(kafka, topic, 1)
        await put(
            kafka,
            topic,
            [
                (ALICE, entry("r1", suppressed=1_000)),
                (BOB, entry("r2", erased=2_000)),
                (CAROL, b"not an entry"),  # unreadable: skipped, restricts nothing
                (BOB, None),  # lifted
            ],
        )
        assert not follower.ready
        follower.start()
        try:
            await asyncio.wait_for(follower.caught_up(), 30)
            assert follower.ready and follower.error is None
            assert follower.privacy.entries == {ALICE: Restriction("r1", 1_000, None)}
            await put(kafka, topic, [(DAN, entry("r3", suppressed=5, erased=9)), (ALICE, None)])
            await until(lambda: ALICE not in follower.privacy.entries)
            assert follower.privacy.entries == {DAN: Restriction("r3", 5, 9)}
        finally:
            await follower.stop()

    before = unreadable[LABEL]
    asyncio.run(go())
    assert unreadable[LABEL] == before + 1
    assert follower.applied == 5  # the unreadable record is not applied


@pytest.mark.kafka
def test_a_privacy_topic_not_created_yet_is_an_empty_list(kafka_bootstrap: str) -> None:
    kafka, topic = KafkaConnection(kafka_bootstrap), fresh()
    shared = PrivacyList()
    follower = PrivacyFollower(kafka, topic, shared, poll_ms=100)

    async def go() -> PrivacyList:
        assert len(await read_privacy_list(kafka, topic)) == 0
        follower.start()
        try:
            await asyncio.wait_for(follower.caught_up(), 30)  # nothing to wait for
            assert not shared
            await create(kafka, topic, 1)
            await put(kafka, topic, [(ALICE, entry("r1", suppressed=0))])
            await until(lambda: ALICE in shared.entries)  # the caller's list is the one kept
        finally:
            await follower.stop()
        return await read_privacy_list(kafka, topic)

    read = asyncio.run(go())
    assert read.entries == {ALICE: Restriction("r1", 0, None)}


# --- what is not an event ------------------------------------------------------------------------


def test_the_identifiers_of_a_refused_message() -> None:
    message = {
        "type": "track",
        "userId": 42,  # numeric ids are taken as their text
        "anonymousId": "a-1",
        "previousId": "old",
        "traits": {"email": "  Ann@Example.COM "},
        "context": {"traits": {"email": "ctx@example.com"}},
        "properties": {"email": 7},  # not an email
    }
    assert list(message_subjects(message)) == [
        ("user", "42"),
        ("anonymous", "a-1"),
        ("user", "old"),
        ("anonymous", "old"),
        ("email", "  Ann@Example.COM "),
        ("email", "ctx@example.com"),
    ]
    assert list(message_subjects({"userId": True, "anonymousId": ""})) == []


def test_raw_bytes_and_keys() -> None:
    assert raw_subjects(b'{"userId": "u", "traits": []}') == [("user", "u")]
    assert raw_subjects(b"[1, 2]") == raw_subjects(b"{not json") == raw_subjects(None) == raw_subjects(b"") == []
    assert key_subjects(b"anonymous:a-1") == [("anonymous", "a-1"), ("user", "anonymous:a-1")]
    assert key_subjects("u-1") == [("user", "u-1"), ("anonymous", "u-1")]
    assert key_subjects(None) == key_subjects(b"") == []
    privacy = PrivacyList({subject_key("email", "ann@example.com"): Restriction("r", suppressed_from_ms=10)})
    assert privacy.decide_subjects(raw_subjects(b'{"traits": {"email": "ANN@example.com"}}'), 10, 10) == "suppressed"
    assert privacy.decide_subjects(raw_subjects(b'{"traits": {"email": "ANN@example.com"}}'), 9, 9) is None


def test_a_batch_body_and_broken_json_show_their_ids() -> None:
    body = b'{"batch": [{"userId": "u1"}, {"anonymousId": "a1", "traits": {"email": "e@x.com"}}], "userId": "top"}'
    assert raw_subjects(body) == [("user", "top"), ("user", "u1"), ("anonymous", "a1"), ("email", "e@x.com")]
    broken = b'{"userId": "gone", "traits": {"email": "g@x.com"'
    found = raw_subjects(broken)
    assert ("user", "gone") in found and ("anonymous", "gone") in found and ("email", "g@x.com") in found
    assert text_subjects(b"no strings here") == [] and raw_subjects(b"not json, not kept") == []
