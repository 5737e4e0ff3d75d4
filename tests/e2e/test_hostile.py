"""End to end: the hostile corpus (tests/hostile/) on the real broker, each message between two
valid events of other users. Every valid event is scored, every hostile message is on the
dead-letter topic with its reason and source coordinates, every odd-but-valid one is scored,
and the worker never restarts. Then the records a producer can make hostile beyond the value:
a null value, and record timestamps that are missing (-1), zero, or far ahead of the clock."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidTimestampError, KafkaError

from schemas.events import DEADLETTER_HEADERS
from tests import hostile
from tests.e2e.service import Service

NOW = int(time.time() * 1000)
DAY = 86_400_000
Coords = tuple[int, int]  # partition, offset


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def page(user: str, ts: int | None = NOW - 3_600_000) -> bytes:
    msg: dict[str, Any] = {"type": "page", "messageId": f"v-{user}", "userId": user, "properties": {"path": "/pricing"}}
    if ts is not None:
        msg["timestamp"] = iso(ts)
    return orjson.dumps(msg)


async def _send(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None, int | None]]
) -> list[Coords | BaseException]:
    """Each record (key, value, record timestamp) in order; its coordinates, or the producer's error."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4 << 20)
    await producer.start()
    out: list[Coords | BaseException] = []
    try:
        for key, value, ts in records:
            try:
                meta = await producer.send_and_wait(topic, value, key=key, timestamp_ms=ts)
                out.append((meta.partition, meta.offset))
            except (KafkaError, ValueError, TypeError) as exc:
                out.append(exc)
    finally:
        await producer.stop()
    return out


def send(
    service: Service, records: list[tuple[bytes | None, bytes | None, int | None]]
) -> list[Coords | BaseException]:
    return asyncio.run(_send(service.bootstrap, service.topic("web"), records))


def dead_letters(
    service: Service, want: set[Coords], timeout: float = 120
) -> dict[Coords, tuple[bytes, dict[str, bytes]]]:
    """The dead letters of records read from the web topic, by source coordinates, once every one
    of ``want`` is there (or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    while True:
        out = {}
        for rec in service.read_topic(service.topic("dead"), expect=10**6, wait_s=3):
            headers = dict(rec.headers)
            assert list(headers)[: len(DEADLETTER_HEADERS)] == list(DEADLETTER_HEADERS)
            if headers["scorestream.source.topic"] == service.topic("web").encode():
                coords = (int(headers["scorestream.source.partition"]), int(headers["scorestream.source.offset"]))
                out[coords] = (rec.value, headers)
        if want <= set(out) or time.monotonic() > deadline:
            return out


def scored(service: Service, users: list[str], timeout: float = 120) -> None:
    with service.client() as http:
        pending = list(users)

        def all_there() -> bool:
            pending[:] = [u for u in pending if http.get(f"/v1/contacts/{u}").status_code != 200]
            return not pending

        service.wait_for(all_there, timeout=timeout, interval=1.0)


def test_the_hostile_corpus_is_dead_lettered_and_nothing_else_is_lost(service: Service) -> None:
    assert service.worker is not None
    pid = service.worker.pid
    corpus = hostile.load()
    records: list[tuple[bytes | None, bytes | None, int | None]] = []
    valid_users: list[str] = []
    for i, case in enumerate(corpus):
        user = f"valid-{i}"
        valid_users.append(user)
        records.append((user.encode(), page(user), None))
        records.append((case.user_id.encode(), case.raw, None))
    valid_users.append("valid-last")
    records.append((b"valid-last", page("valid-last"), None))
    coords = send(service, records)
    assert all(isinstance(c, tuple) for c in coords), coords

    hostile_cases = [(case, coords[2 * i + 1]) for i, case in enumerate(corpus) if case.reason != hostile.ACCEPTED]
    letters = dead_letters(service, {where for _, where in hostile_cases if isinstance(where, tuple)})
    outcome = {"scored": 0, "dead-lettered": 0, "lost": 0}
    for case, where in hostile_cases:
        assert isinstance(where, tuple)
        if where not in letters:
            outcome["lost"] += 1
            continue
        value, headers = letters[where]
        assert headers["scorestream.reason"] == case.reason.encode(), (case.name, headers)
        assert headers["scorestream.error"], case.name
        assert value == case.raw, case.name  # the original bytes (the largest is 33 KiB: not cut)
        outcome["dead-lettered"] += 1
    odd = [case.user_id for case in corpus if case.reason == hostile.ACCEPTED]
    scored(service, valid_users + odd)
    outcome["scored"] = len(valid_users) + len(odd)
    assert outcome == {"scored": len(valid_users) + len(odd), "dead-lettered": len(hostile_cases), "lost": 0}
    valid_coords = {c for i, c in enumerate(coords) if i % 2 == 0 or corpus[i // 2].reason == hostile.ACCEPTED}
    assert not valid_coords & set(letters)  # nothing valid was dead-lettered
    print(f"\nhostile corpus: {len(corpus)} messages between {len(valid_users)} valid events: {outcome}")

    assert service.worker.poll() is None and service.worker.pid == pid  # the same worker process throughout
    log = service.logs("worker")
    assert "Traceback" not in log and "Crashed" not in log and "processing_error" not in log, log


def test_null_values_and_record_timestamps(service: Service) -> None:
    assert service.worker is not None
    pid = service.worker.pid
    # (key, value, record timestamp, expected reason or None when scored)
    cases: list[tuple[bytes | None, bytes | None, int | None, str | None]] = [
        (b"null-value", None, None, "invalid_json"),
        (b"empty-value", b"", None, "invalid_json"),
        (b"rec-missing", page("rec-missing", ts=None), -1, "bad_timestamp"),
        (b"rec-zero", page("rec-zero", ts=None), 0, "bad_timestamp"),
        (b"rec-ahead", page("rec-ahead", ts=None), NOW + 3 * DAY, "bad_timestamp"),
        (b"own-time-ahead", page("own-time-ahead", ts=NOW + 3 * DAY), -1, "bad_timestamp"),
        (b"own-time-ok", page("own-time-ok"), -1, None),
        (b"rec-ok", page("rec-ok", ts=None), NOW - 60_000, None),
    ]
    coords = send(service, [(key, value, ts) for key, value, ts, _ in cases])
    refused_by_producer = [(key, c) for (key, *_), c in zip(cases, coords, strict=True) if not isinstance(c, tuple)]
    produced = [(case, c) for case, c in zip(cases, coords, strict=True) if isinstance(c, tuple)]
    # aiokafka writes a CreateTime of -1 or 0 as given and the broker keeps it; this broker (Kafka
    # 4: log.message.timestamp.after.max.ms is an hour) refuses one 3 days ahead itself. An older
    # broker keeps it, and the worker dead-letters it (tests/schemas/test_events.py).
    assert [key for key, _ in refused_by_producer] in ([], [b"rec-ahead"]), refused_by_producer
    assert all(isinstance(c, InvalidTimestampError) for _, c in refused_by_producer), refused_by_producer
    expected_dead = [(case, c) for case, c in produced if case[3] is not None]
    letters = dead_letters(service, {where for _, where in expected_dead})
    for (key, _value, _ts, reason), where in expected_dead:
        assert where in letters, key
        assert letters[where][1]["scorestream.reason"] == (reason or "").encode(), (key, letters[where][1])
    scored(service, ["own-time-ok", "rec-ok"])
    assert service.worker.poll() is None and service.worker.pid == pid
