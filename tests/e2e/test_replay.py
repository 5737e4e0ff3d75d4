"""Replay against the real worker: the whole history under the active model reproduces the live
state exactly; under a changed model the diff shows the change."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import yaml

from analytics.replay import replay
from bench.harness import wait_drained
from deploy.traffic import Traffic
from schemas.model_file import load_model
from schemas.settings import Settings
from schemas.state import decode_state
from tests.analytics.test_replay import doubled_source
from tests.e2e.service import Service

MODEL = load_model()
DAY = 86_400_000


def settings_of(svc: Service) -> Settings:
    return Settings(
        kafka_bootstrap=svc.bootstrap,
        app_id=f"ss-{svc.suffix}",
        topic_web=svc.topic("web"),
        topic_email=svc.topic("email"),
        topic_store=svc.topic("store"),
        partitions=svc.partitions,
    )


def test_replay_reproduces_the_live_state_and_diffs_a_new_model(service: Service, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    traffic = Traffic(80, seed=23, start_ms=now - 30 * DAY, span_ms=30 * DAY - 60_000)
    records = list(traffic.records(600))
    service.publish((r.channel, r.key, r.value) for r in records)
    service.publish([("web", b"k", b"{broken")])  # dead-lettered live, skipped by the replay
    settings = settings_of(service)
    group = settings.app_id
    wait_drained(
        service.bootstrap,
        group,
        [*settings.source_topics, settings.identity_topic, settings.contacts_topic],
        timeout_s=60,
        quiet_s=1.0,
    )

    result = replay(settings, MODEL, live_model=MODEL)
    assert result.records == 601 and result.invalid == 1 and result.events == 600
    d = result.diff
    assert d.live == d.replay == d.both > 50
    assert d.only_live == [] and d.only_replay == []
    assert d.changed == 0, d.examples
    assert result.live_views == result.replay_views
    assert any(v.stage not in (None, "subscriber") for v in result.live_views.values())
    # beyond what a reader sees: the same hits, traits, merges and ledger, contact by contact
    # (the journey is compared walked to one instant above; ticks and the RFM segment are the
    # worker's clock and population, not the events')
    for key, view in result.live_views.items():
        assert view is not None
        live, again = decode_state(result.live[key]), decode_state(result.states[key])
        for state in (live, again):
            state.journey, state.ticked_ms, state.rfm_segment = None, None, None
        assert dataclasses.asdict(live) == dataclasses.asdict(again), key

    path = tmp_path / "doubled.yaml"
    path.write_text(yaml.safe_dump(doubled_source()))
    doubled = load_model(path)
    changed = replay(settings, doubled, live_model=MODEL, as_of_ms=result.as_of_ms)
    assert changed.model_version.startswith("doubled@")
    c = changed.diff
    assert c.both == d.both and c.changed > 0 and c.engagement_changed > 0
    for q in ("p50", "p90", "mean"):
        live_q, replay_q = c.engagement_live[q], c.engagement_replay[q]
        assert live_q is not None and replay_q is not None and replay_q > live_q, q
    assert c.engagement_live == d.engagement_live  # the live side read the same way both times
    assert c.band_changed > 0
    assert sum(sum(row.values()) for row in c.stage_moves.values()) == c.stage_changed
