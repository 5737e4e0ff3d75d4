"""Replay from the ClickHouse archive against the real worker, broker and chDB: the accepted events
the API's sink archived, folded under the active model, reproduce the live state exactly, and the
same state as a replay of the source topics; under a changed model the diff shows the change.

The API runs the sink into a chDB directory of this module's own (embedded chDB allows one
process per directory; the test process's shared one, ``chdb_path``, is not used): the test opens
it only once the API has stopped, in process for the replay, then ``scorestream replay --source
archive`` opens it as a subprocess with the service's environment.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml

from analytics.client import clickhouse_url, connect
from analytics.replay import replay
from bench.harness import wait_drained
from deploy.traffic import Traffic
from schemas.model_file import DEFAULT_MODEL as MODEL_FILE
from schemas.state import decode_state
from tests.analytics.test_replay import doubled_source
from tests.e2e.service import REPO, Service, archived, shadow_from_archive
from tests.e2e.test_analytics import BAD, settings_for, workload
from tests.e2e.test_replay import DAY, MODEL


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Worker and API; the API runs the sink into chDB in a directory only it opens."""
    svc = archived(kafka_bootstrap, Path(tmp_path_factory.mktemp("replay-archive")))
    svc.start()
    yield svc
    svc.stop()


def test_the_archive_replays_to_the_live_state_and_to_the_kafka_replays(service: Service, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    traffic = Traffic(60, seed=29, start_ms=now - 30 * DAY, span_ms=30 * DAY - 3_600_000)
    # identifies of anonymous visitors (merges), orders (purchases), groups; and an alias
    good = [(r.channel, r.key, r.value) for r in traffic.records(400)]
    good += workload("ra-", [f"ra-user-{i}" for i in range(6)], now - 1_800_000)
    assert any(b'"Order Completed"' in v for _, _, v in good) and any(b'"alias"' in v for _, _, v in good)
    service.publish([*good, *BAD])  # BAD: dead-lettered live, archived as rejected, left out of the replay
    settings = settings_for(service, service.env["SCORESTREAM_CLICKHOUSE_URL"])
    wait_drained(
        service.bootstrap,
        settings.app_id,
        [*settings.source_topics, settings.identity_topic, settings.contacts_topic],
        timeout_s=60,
        quiet_s=1.0,
    )
    # the sink has inserted (and then committed) every source and dead-letter record
    wait_drained(
        service.bootstrap,
        f"{settings.app_id}-sink",
        [*settings.source_topics, settings.topic_deadletter],
        timeout_s=60,
        quiet_s=0.5,
    )
    assert service.api is not None
    service.api.terminate()  # releases chDB
    assert service.api.wait(30) in (0, -15), service.logs("api")  # uvicorn re-raises SIGTERM after its shutdown

    client = connect(clickhouse_url(settings))
    try:
        rows = client.query("SELECT status, count() FROM events FINAL GROUP BY status").result_rows
        statuses = {str(status): int(n) for status, n in rows}
    finally:
        client.close()
    assert statuses == {"accepted": len(good), "rejected": len(BAD)}

    archived = replay(settings, MODEL, "archive", live_model=MODEL)
    assert (archived.records, archived.events, archived.invalid, archived.skipped) == (len(good), len(good), 0, 0)
    d = archived.diff
    assert d.live == d.replay == d.both > 40
    assert d.only_live == [] and d.only_replay == []
    assert d.changed == 0, d.examples
    assert archived.live_views == archived.replay_views
    assert any(v.stage not in (None, "subscriber") for v in archived.live_views.values())

    # the source topics, read at the same instant, give the same contacts, merged records included
    topics = replay(settings, MODEL, "kafka", live_model=MODEL, as_of_ms=archived.as_of_ms)
    assert (topics.records, topics.events, topics.invalid) == (len(good) + len(BAD), len(good), len(BAD))
    assert topics.replay_views == archived.replay_views
    assert topics.states.keys() == archived.states.keys()
    merged = 0
    for key, raw in archived.states.items():
        one, other = decode_state(raw), decode_state(topics.states[key])
        if one.merged_into is not None:
            # a forwarding record keeps what it held when it merged (fold.step): which events
            # reached it before the merge depends on the order, where they all end up does not
            merged += 1
            assert one.merged_into == other.merged_into, key
        else:
            assert dataclasses.asdict(one) == dataclasses.asdict(other), key
    assert merged > 0

    # it would fail: the archive under a changed rule differs from live (the command, with the
    # service's environment, opens the chDB directory the API has released)
    path = tmp_path / "doubled.yaml"
    path.write_text(yaml.safe_dump(doubled_source()))
    out = tmp_path / "doubled.json"
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "replay", "--model", str(path), "--source", "archive", "--json", str(out)],
        env=service.env,
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    changed = orjson.loads(out.read_bytes())
    assert changed["source"] == "archive" and changed["model_version"].startswith("doubled@")
    assert changed["events"] == len(good) and changed["invalid"] == 0
    c = changed["diff"]
    assert c["contacts"] == {"live": d.live, "replay": d.replay, "both": d.both}
    assert c["changed"] > 0 and c["engagement_changed"] > 0
    assert c["engagement"]["replay"]["mean"] > c["engagement"]["live"]["mean"]


async def truncate(bootstrap: str, topics: list[str]) -> None:
    """Delete every record of ``topics`` (as retention would): their beginning moves to their end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        await consumer.topics()  # the cluster's metadata
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = await consumer.end_offsets(tps)
        await admin.delete_records({tp: RecordsToDelete(before_offset=end) for tp, end in ends.items() if end})
        starts = await consumer.beginning_offsets(tps)
        assert starts == ends
    finally:
        await admin.close()
        await consumer.stop()


def test_a_shadow_filled_from_the_archive_has_the_events_kafka_no_longer_holds(
    service: Service, tmp_path: Path
) -> None:
    """After the first test (the events archived, the API stopped): the source topics lose every
    event (as retention would); a shadow of the same model filled from the archive still holds every
    contact, exactly as the live namespace does."""
    import asyncio

    assert service.api is not None and service.api.poll() is not None  # chDB released
    settings = settings_for(service, service.env["SCORESTREAM_CLICKHOUSE_URL"])
    asyncio.run(truncate(service.bootstrap, list(settings.source_topics)))
    out = tmp_path / "shadow.json"
    stdout, report = shadow_from_archive(service, MODEL_FILE, "from-archive", out)
    assert "copied" in stdout
    d = report["diff"]
    assert d["contacts"]["live"] == d["contacts"]["replay"] == d["contacts"]["both"] > 40
    assert d["changed"] == 0, d["examples"]
