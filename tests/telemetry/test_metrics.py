"""telemetry.metrics: the families, the per-batch API and its cost, scrape-time sources, the ports,
the side server, several processes' values summed, and the API's ``GET /metrics``."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from faust.types import TP
from prometheus_client import REGISTRY, CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_api
from api.replica import Replica
from kafka_io.clients import KafkaConnection
from schemas.model_file import load_model
from schemas.settings import Settings
from streams import metrics as worker_metrics
from telemetry import metrics

REPO = Path(__file__).resolve().parents[2]


def value(name: str, labels: dict[str, str] | None = None) -> float:
    found = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if found is None else found


def parsed(text: str) -> dict[str, Any]:
    """Family name (as the parser names it: a counter without ``_total``) -> its family."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- names and labels ----------------------------------------------------------------------------


UNITS = (
    *("_total", "_info", "_keys", "_records", "_deliveries", "_messages", "_pending", "_ready"),
    *(f"_{unit}{part}" for unit in ("seconds", "records") for part in ("_bucket", "_sum", "_count")),
)


def test_every_family_is_scorestream_with_a_unit_or_total_and_no_identifying_label() -> None:
    names = metrics.families()
    assert names, "the families are registered at import"
    forbidden = {"contact_id", "contact", "key", "path", "user_id", "anonymous_id", "email", "account_id"}
    for metric in REGISTRY.collect():
        if not metric.name.startswith("scorestream_"):
            continue
        for sample in metric.samples:
            assert not set(sample.labels) & forbidden, (metric.name, sample.labels)
    for name in names:
        assert name.startswith("scorestream_")
        assert name.endswith(UNITS), name


def test_the_families_the_operations_page_lists_are_the_ones_served() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    documented = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `scorestream_")}
    served = {n.removesuffix("_bucket") for n in metrics.families() if not n.endswith(("_sum", "_count"))}
    # the API's request histogram is telemetry's too (telemetry/http_metrics.py), registered on import
    assert documented == served


# --- the worker's per-batch API -----------------------------------------------------------------


def test_a_stage_batch_counts_its_records_and_observes_once() -> None:
    before_count = value("scorestream_worker_batch_records_count", {"stage": "unit"})
    before_records = value("scorestream_worker_records_total", {"stage": "unit"})
    before_sum = value("scorestream_worker_batch_duration_seconds_sum", {"stage": "unit"})
    stage = metrics.Stage("unit")
    stage.batch(120, 0.004)
    stage.batch(30, 0.001)
    assert value("scorestream_worker_batch_records_count", {"stage": "unit"}) == before_count + 2
    assert value("scorestream_worker_records_total", {"stage": "unit"}) == before_records + 150
    assert value("scorestream_worker_batch_duration_seconds_sum", {"stage": "unit"}) == pytest.approx(
        before_sum + 0.005
    )
    assert value("scorestream_worker_batch_records_bucket", {"stage": "unit", "le": "100.0"}) >= 1  # the 30


def test_triggers_and_state_flushes_are_counted() -> None:
    before = value("scorestream_triggers_total", {"type": "unit.kind"})
    metrics.trigger("unit.kind")
    metrics.trigger("unit.kind")
    assert value("scorestream_triggers_total", {"type": "unit.kind"}) == before + 2
    written = value("scorestream_worker_states_written_total")
    flushes = value("scorestream_worker_state_flush_duration_seconds_count")
    metrics.state_flush(7, 0.01)
    assert value("scorestream_worker_states_written_total") == written + 7
    assert value("scorestream_worker_state_flush_duration_seconds_count") == flushes + 1


# --- scrape-time sources ------------------------------------------------------------------------


def test_a_scraped_family_reads_its_source_at_each_scrape_and_a_new_source_replaces_it() -> None:
    registry = CollectorRegistry()
    box = {"n": 3}
    metrics.scraped(metrics.WEBHOOK_QUEUE, lambda: [(box["n"],)], registry)
    assert registry.get_sample_value("scorestream_webhook_queue_deliveries") == 3
    box["n"] = 5
    assert registry.get_sample_value("scorestream_webhook_queue_deliveries") == 5
    metrics.scraped(metrics.WEBHOOK_QUEUE, lambda: [(9,)], registry)  # no "duplicated timeseries"
    assert registry.get_sample_value("scorestream_webhook_queue_deliveries") == 9
    metrics.scraped(metrics.SINK_REJECTS, lambda: [(4,)], registry)
    assert registry.get_sample_value("scorestream_sink_rejected_rows_total") == 4
    other = CollectorRegistry()  # each registry its own sources
    metrics.scraped(metrics.WEBHOOK_QUEUE, lambda: [(1,)], other)
    assert other.get_sample_value("scorestream_webhook_queue_deliveries") == 1
    assert registry.get_sample_value("scorestream_webhook_queue_deliveries") == 9


def test_a_failing_source_leaves_its_family_empty_and_the_scrape_goes_on() -> None:
    registry = CollectorRegistry()

    def broken() -> list[tuple[int]]:
        raise RuntimeError("consumer stopping")

    metrics.scraped(metrics.TIMERS_DUE, broken, registry)
    metrics.scraped(metrics.VIEWS_SENT, lambda: [(11,)], registry)
    assert registry.get_sample_value("scorestream_worker_views_sent_total") == 11
    assert registry.get_sample_value("scorestream_worker_timers_pending") is None


def test_lag_is_the_highwater_minus_the_committed_offset_and_unknowns_are_left_out() -> None:
    ends = {("t", 0): 100, ("t", 1): 7, ("t", 2): None, ("t", 3): 50}
    committed = {("t", 0): 60, ("t", 1): 9, ("t", 2): 1, ("t", 3): None}
    out = list(metrics.lag_of(sorted(ends), lambda t, p: ends[(t, p)], lambda t, p: committed[(t, p)]))
    assert out == [("t", 0, 40), ("t", 1, 0)]


def test_a_fetch_sets_its_partition_s_lag_and_a_revocation_forgets_it() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("unit_lag_records", "lag", ["topic", "partition"], registry=registry)
    metrics.fetched(gauge, "triggers", 1, 120, 100)
    assert registry.get_sample_value("unit_lag_records", {"topic": "triggers", "partition": "1"}) == 20
    metrics.fetched(gauge, "triggers", 1, None, 110)  # highwater unknown: unchanged
    metrics.fetched(gauge, "triggers", 0, 5, 9)  # never negative
    assert registry.get_sample_value("unit_lag_records", {"topic": "triggers", "partition": "1"}) == 20
    assert registry.get_sample_value("unit_lag_records", {"topic": "triggers", "partition": "0"}) == 0
    metrics.forget(gauge, "triggers", 1)
    metrics.forget(gauge, "triggers", 7)  # never fetched: nothing to forget
    assert registry.get_sample_value("unit_lag_records", {"topic": "triggers", "partition": "1"}) is None


def test_the_worker_reads_lag_from_faust_s_consumer_without_creating_one() -> None:
    tp0, tp1, tp2 = (TP("events.web", p) for p in range(3))
    highs = {0: 120, 1: 5}

    class Consumer:
        _committed_offset = {tp0: 100, tp1: 5}  # tp2: recovering, never committed

        def assignment(self) -> set[Any]:
            return {tp0, tp1, tp2}

        def highwater(self, tp: Any) -> int:
            if tp.partition not in highs:
                raise AssertionError("Partition is not assigned")
            return highs[tp.partition]

    assert list(worker_metrics.consumer_lag(SimpleNamespace(_consumer=None))) == []
    lag = list(worker_metrics.consumer_lag(SimpleNamespace(_consumer=Consumer())))
    assert lag == [("events.web", 0, 20), ("events.web", 1, 0)]


def test_the_worker_reads_table_sizes_per_partition() -> None:
    class Db:
        def __init__(self, n: int) -> None:
            self.n = n

        def property_int_value(self, name: str) -> int:
            assert name == "rocksdb.estimate-num-keys"
            return self.n

    def table(dbs: dict[int, Db]) -> Any:
        return SimpleNamespace(data=SimpleNamespace(_dbs=dbs))

    wiring = SimpleNamespace(identity=table({1: Db(4)}), contacts=table({0: Db(10), 2: Db(3)}), accounts=table({}))
    assert list(worker_metrics.table_keys(wiring)) == [("identity", 1, 4), ("contacts", 0, 10), ("contacts", 2, 3)]


# --- ports and the side server --------------------------------------------------------------------


def test_ports_per_role_with_the_worker_s_slot() -> None:
    s = Settings()
    assert metrics.port_of(s, "dispatcher") == 9290
    assert metrics.port_of(s, "sink") == 9291
    assert metrics.port_of(s, "worker") == 9300
    assert metrics.port_of(s.model_copy(update={"worker_index": 2}), "worker") == 9302
    assert metrics.port_of(s.model_copy(update={"worker_index": 2, "metrics_port": 9400}), "worker") == 9402
    assert metrics.port_of(s.model_copy(update={"metrics_port": 9500}), "sink") == 9500
    assert metrics.port_of(s.model_copy(update={"metrics_port": 0, "worker_index": 1}), "worker") == 0
    assert metrics.port_of(s.model_copy(update={"metrics_enabled": False}), "dispatcher") == 0
    assert metrics.port_of(s, "api") == 0  # the API serves /metrics on its own port


def test_serve_answers_a_scrape_and_a_taken_port_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    settings = Settings(metrics_port=port)
    assert metrics.serve(settings, "dispatcher") == port
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert r.status_code == 200
    families = parsed(r.text)
    build = families["scorestream_build_info"].samples
    assert any(s.labels["role"] == "dispatcher" and s.value == 1 for s in build)
    assert "process_cpu_seconds" in families  # prometheus_client's process collector
    with caplog.at_level(logging.ERROR, logger="telemetry.metrics"):
        assert metrics.serve(settings, "dispatcher") == 0
    assert "cannot serve /metrics" in caplog.text


def test_several_processes_are_summed_through_the_multiprocess_directory(tmp_path: Path) -> None:
    """What several API processes do: each writes its values to the directory; one exposition
    (in any of them) reads the sum."""
    settings = Settings(data_dir=tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    previous = os.environ.get(metrics.MULTIPROC_ENV)
    try:
        path = metrics.multiprocess_dir(settings)
        (path / "stale.db").write_bytes(b"")
        path = metrics.multiprocess_dir(settings)  # a new start empties it
        assert list(path.iterdir()) == []
        env[metrics.MULTIPROC_ENV] = str(path)
        child = (
            "from telemetry import metrics; metrics.COLLECTOR_ACCEPTED.inc({n}); metrics.announce('api', 'ss'); "
            "metrics.COLLECTOR_IN_FLIGHT.set({n}); {end}"
        )
        # the first one is killed (its in-flight gauge stays in the sum), the second one stops
        for n, end in ((3, "pass"), (4, "metrics.process_stopped()")):
            subprocess.run([sys.executable, "-c", child.format(n=n, end=end)], env=env, cwd=REPO, check=True)
        text = subprocess.run(
            [sys.executable, "-c", "from telemetry import metrics; print(metrics.exposition().decode())"],
            env=env,
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        if previous is None:
            os.environ.pop(metrics.MULTIPROC_ENV, None)
        else:
            os.environ[metrics.MULTIPROC_ENV] = previous
    families = parsed(text)
    assert families["scorestream_collector_messages_accepted"].samples[0].value == 7
    assert families["scorestream_collector_in_flight_messages"].samples[0].value == 3
    assert [s.value for s in families["scorestream_build_info"].samples] == [1.0]


# --- the API's GET /metrics ------------------------------------------------------------------------


def api(**settings: Any) -> Any:
    replica = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    return create_api(Settings(api_keys="unit-test-key-0123456789", **settings), model=load_model(), replica=replica)  # type: ignore[arg-type]


def get(app: Any, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.get(path, headers=headers or {})

    return asyncio.run(go())


@pytest.fixture
def collector_counted() -> Iterator[None]:
    metrics.COLLECTOR_REFUSED.labels("unit_reason").inc()
    yield


def test_the_api_serves_metrics_without_a_key(collector_counted: None) -> None:
    r = get(api(), "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = parsed(r.text)
    assert any(s.labels["role"] == "api" for s in families["scorestream_build_info"].samples)
    refused = families["scorestream_collector_requests_refused"].samples
    assert any(s.labels.get("reason") == "unit_reason" and s.value >= 1 for s in refused)
    assert "/metrics" not in api().openapi()["paths"]


def test_the_api_s_metrics_need_the_token_when_one_is_set_and_are_gone_when_off() -> None:
    app = api(metrics_token="scrape-token-0123456789")
    assert get(app, "/metrics").status_code == 401
    assert get(app, "/metrics", {"Authorization": "Bearer wrong"}).status_code == 401
    assert get(app, "/metrics", {"Authorization": "Bearer scrape-token-0123456789"}).status_code == 200
    assert get(api(metrics_enabled=False), "/metrics").status_code == 404
