"""The latency probes' arithmetic: percentiles with lost probes, the fixed schedule, the lag trend,
the sustained verdict and the probes' summary."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections import Counter

import httpx
import pytest

from bench.probes import (
    Plan,
    Probe,
    Target,
    _poll,
    _Run,
    anonymous_flags,
    lag_trend,
    make_probes,
    percentile,
    poll_delay_s,
    schedule,
    summarise,
    sustained_failures,
)
from deploy.traffic import iso


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.999) == 100.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.5) == 7.0
    assert percentile([], 0.5) is None


def test_a_percentile_landing_on_a_lost_probe_is_none() -> None:
    values = [*(float(v) for v in range(1, 100)), math.inf]  # one lost of 100
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.999) is None
    assert percentile([math.inf, 1.0], 0.5) == 1.0
    assert percentile([math.inf, 1.0], 0.99) is None


def test_the_schedule_is_fixed_by_the_rate_alone() -> None:
    assert schedule(4, 2.0) == [0.0, 0.5, 1.0, 1.5]
    times = schedule(3000, 50.0)
    assert times[-1] == pytest.approx(2999 / 50)
    assert all(b - a == pytest.approx(0.02) for a, b in itertools.pairwise(times))


def test_anonymous_probes_are_the_share_asked_spread_evenly() -> None:
    flags = anonymous_flags(3000, 1 / 3)
    assert sum(flags) == 1000
    assert flags[:6] == [False, False, True, False, False, True]
    assert not any(anonymous_flags(10, 0.0))
    assert all(anonymous_flags(10, 1.0))


def test_make_probes_links_an_anonymous_id_to_each_anonymous_probe() -> None:
    made = make_probes(Plan(rate=1000, probes=30, probe_rate=10, anonymous_share=1 / 3))
    anonymous = [p for p in made if p.anonymous_id is not None]
    assert len(made) == 30 and len(anonymous) == 10
    assert len({p.contact_id for p in made}) == 30  # a contact of its own each
    assert all(p.anonymous_id == f"{p.contact_id}-anon" for p in anonymous)
    assert made[-1].due_s == pytest.approx(2.9)


def test_polls_space_out_as_the_oldest_probe_ages() -> None:
    assert poll_delay_s(0.005, 0.0) == 0.005
    assert poll_delay_s(0.005, 0.1) == 0.005
    assert poll_delay_s(0.005, 10.0) == pytest.approx(0.2)
    assert poll_delay_s(0.005, 3600.0) == 1.0


def test_lag_trend_tells_a_steady_lag_from_a_growing_one() -> None:
    steady = [(float(t), 500 + (100 if t % 2 else -100)) for t in range(30)]
    trend = lag_trend(steady, tolerance=2000)
    assert trend is not None and not trend.growing and abs(trend.growth) < 100
    growing = [(float(t), 500 + 300 * t) for t in range(30)]  # falls 300 events/s behind
    trend = lag_trend(growing, tolerance=2000)
    assert trend is not None and trend.growing and trend.growth > 5000
    assert lag_trend([(0.0, 1), (1.0, 2)], tolerance=1) is None


def test_lag_trend_compares_the_last_part_with_the_first() -> None:
    samples = [(0.0, 0), (1.0, 0), (2.0, 0), (3.0, 90), (4.0, 90), (5.0, 90), (6.0, 90)]
    trend = lag_trend(samples, tolerance=50, part=1 / 3)
    assert trend is not None
    assert trend.first_mean == 0.0 and trend.last_mean == 90.0 and trend.growing


def _probe(sent: float, visible: float | None, topic: int | None, anonymous: bool = False) -> Probe:
    return Probe(
        contact_id="c",
        anonymous_id="a" if anonymous else None,
        due_s=0.0,
        sent_ms=sent,
        visible_ms=visible,
        topic_ms=topic,
    )


def test_summarise_splits_worker_and_api_parts_and_counts_lost_probes() -> None:
    probes = [
        _probe(1000.0, 1050.0, 1030),
        _probe(2000.0, 2100.0, 2090),
        _probe(3000.0, None, None),  # lost
        _probe(4000.0, 4020.0, None),  # visible, its record not found on the API's topic
    ]
    got = summarise(probes)
    assert got["probes"] == 4 and got["lost"] == 1 and got["never_on_api_topic"] == 2
    assert got["p50_ms"] == 50.0 and got["p99_ms"] is None  # the lost probe is the slowest
    assert got["max_ms"] == 100.0
    assert got["worker_p50_ms"] == 30.0 and got["worker_p99_ms"] == 90.0
    assert got["api_p50_ms"] == 10.0 and got["api_p99_ms"] == 20.0


def _figures(**changes: object) -> dict[str, object]:
    figures: dict[str, object] = {
        "background_events_per_s": 980,
        "achieved_background_events_per_s": 975,
        "lost": 0,
        "p99_ms": 120.0,
        "lag": {"growing": False, "growth": 10.0, "tolerance": 2000.0},
    }
    return figures | changes


def test_a_rate_is_sustained_only_when_every_condition_holds() -> None:
    assert sustained_failures(_figures()) == []
    assert sustained_failures(_figures(achieved_background_events_per_s=900)) == [
        "publisher reached 900 of 980 events/s"
    ]
    assert sustained_failures(_figures(lost=2)) == ["2 probes lost"]
    assert sustained_failures(_figures(p99_ms=1000.0)) == ["p99 1000.0 ms"]
    assert sustained_failures(_figures(p99_ms=None, lost=1)) == ["1 probes lost", "p99 None ms"]
    assert sustained_failures(_figures(lag={"growing": True, "growth": 9000.0, "tolerance": 2000.0})) == [
        "lag grew by 9000.0 events (tolerance 2000.0)"
    ]
    assert sustained_failures(_figures(lag=None)) == ["no lag samples"]


def _api(visible_after: dict[str, int], last_seen: dict[str, str]) -> httpx.MockTransport:
    """A batchGet that serves contact ``id`` from its ``visible_after[id]``-th request on, with
    ``last_seen[id]``; the anonymous probes' contacts are served from the start with an older time."""
    asked: Counter[str] = Counter()

    def handle(request: httpx.Request) -> httpx.Response:
        ids = json.loads(request.content)["ids"]
        contacts, missing = [], []
        for ident in ids:
            asked[ident] += 1
            if asked[ident] >= visible_after.get(ident, 10**9):
                contacts.append({"contact_id": ident, "last_seen": last_seen[ident]})
            elif ident.startswith("anon-user"):
                contacts.append({"contact_id": ident, "last_seen": "2020-01-01T00:00:00Z"})
            else:
                missing.append(ident)
        return httpx.Response(200, json={"contacts": contacts, "not_found": missing})

    return httpx.MockTransport(handle)


def test_the_poller_marks_a_probe_visible_only_once_served_with_its_event() -> None:
    sent_ms = float(int(time.time() * 1000) - 50)
    stamp = iso(int(sent_ms))
    probes = [
        Probe(contact_id="user-a", anonymous_id=None, due_s=0.0, sent_ms=sent_ms),
        Probe(contact_id="anon-user-b", anonymous_id="anon-b", due_s=0.0, sent_ms=sent_ms),
        Probe(contact_id="user-c", anonymous_id=None, due_s=0.0, sent_ms=sent_ms),  # never served: lost
    ]
    target = Target("k:1", "http://api", {}, "views", "g", [])
    run = _Run(target, Plan(rate=0, probes=3, poll_ms=1, drain_s=0.3), probes, sending_done=True)
    transport = _api({"user-a": 2, "anon-user-b": 3}, {"user-a": stamp, "anon-user-b": stamp})

    async def go() -> None:
        async with httpx.AsyncClient(base_url="http://api", transport=transport) as http:
            await _poll(run, http)

    asyncio.run(go())
    a, b, c = probes
    assert a.visible_ms is not None and b.visible_ms is not None
    assert a.visible_ms <= b.visible_ms  # b's contact was served stale (an older last_seen) one poll longer
    assert c.visible_ms is None and math.isinf(c.latency_ms)
    assert run.polls >= 3 and run.poll_errors == 0
