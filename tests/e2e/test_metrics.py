"""/metrics of every process, end to end: a worker, the API (with its collector), the webhook
dispatcher and the analytics sink (embedded chDB in a directory of its own) run as the real
processes on the session's broker, each serving its metrics on its own port; events go in (one of
them bad), a webhook is delivered after one refusal, and every endpoint is scraped and parsed with
``prometheus_client``'s parser: the counts follow the traffic."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.service import WRITE_KEY, Service, free_port
from tests.webhook_receiver import Receiver

USERS = 20
Samples = dict[str, list[Any]]  # family name (as the parser names it) -> its samples


class Deployment:
    def __init__(self, svc: Service, ports: dict[str, int], procs: dict[str, subprocess.Popen[bytes]]) -> None:
        self.svc, self.ports, self.procs = svc, ports, procs

    def scrape(self, role: str) -> Samples:
        url = f"{self.svc.url}/metrics" if role == "api" else f"http://127.0.0.1:{self.ports[role]}/metrics"
        r = httpx.get(url, timeout=5)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        return {family.name: family.samples for family in text_string_to_metric_families(r.text)}

    def until(self, role: str, check: Callable[[Samples], bool], what: str, timeout: float = 90) -> Samples:
        """Scrape ``role`` until ``check`` holds; the last scrape."""
        last: Samples = {}

        def ok() -> bool:
            nonlocal last
            try:
                last = self.scrape(role)
            except httpx.HTTPError:
                return False
            return check(last)

        try:
            self.svc.wait_for(ok, timeout=timeout, interval=0.5)
        except AssertionError:
            raise AssertionError(f"{role}: {what}; last scrape: {dict(last)}\n{self.svc.logs(role)}") from None
        return last


def value(samples: Samples, family: str, suffix: str = "", **labels: str) -> float:
    """The sum of ``family``'s samples named ``family + suffix`` whose labels include ``labels``."""
    return sum(
        float(s.value)
        for s in samples.get(family, [])
        if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def deployment(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    data_dir = Path(tmp_path_factory.mktemp("metrics"))
    ports = {"worker": free_port(), "dispatcher": free_port(), "sink": free_port()}
    svc = Service(
        bootstrap=kafka_bootstrap,
        data_dir=data_dir,
        partitions=2,
        extra_env={
            "SCORESTREAM_METRICS_PORT": str(ports["worker"]),  # worker slot 0: this port
            "SCORESTREAM_WEBHOOK_ALLOW_PRIVATE": "true",
            "SCORESTREAM_WEBHOOK_RETRY_SCHEDULE": "0.3,0.6,1.2",
        },
    )
    svc.start()
    procs = {
        "dispatcher": svc._spawn(
            "dispatcher", "dispatcher.log", {"SCORESTREAM_METRICS_PORT": str(ports["dispatcher"])}
        ),
        "sink": svc._spawn(
            "sink",
            "sink.log",
            {
                "SCORESTREAM_METRICS_PORT": str(ports["sink"]),
                "SCORESTREAM_CLICKHOUSE_URL": f"chdb://{data_dir / 'clickhouse-sink'}",
                "SCORESTREAM_SINK_BATCH_S": "0.3",
            },
        ),
    }
    try:
        yield Deployment(svc, ports, procs)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        svc.stop()


@pytest.fixture(scope="module")
def traffic(deployment: Deployment) -> Deployment:
    """Twenty good events and one that is not JSON on the web topic; one message through the
    collector and one collector request with an unknown write key; a contact read."""
    svc = deployment.svc
    now = datetime.now(UTC).isoformat()
    good = [
        orjson.dumps({"type": "page", "userId": f"m-{i}", "messageId": f"m-{i}", "timestamp": now, "properties": {}})
        for i in range(USERS)
    ]
    svc.publish([("web", f"m-{i}".encode(), value) for i, value in enumerate(good)] + [("web", b"bad", b"{not json")])
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    body = {"userId": "m-http", "event": "Signed Up", "timestamp": now}
    r = httpx.post(f"{svc.url}/v1/track", json=body, headers={"authorization": auth}, timeout=10)
    assert r.status_code == 200, r.text
    refused = httpx.post(f"{svc.url}/v1/track", json={**body, "writeKey": "nope"}, timeout=10)
    assert refused.status_code == 401
    with svc.client() as api:
        svc.wait_for(lambda: api.get("/v1/contacts/m-0").status_code == 200, timeout=60)
    return deployment


def test_the_worker_counts_its_input_dead_letters_batches_and_lag(traffic: Deployment) -> None:
    web = traffic.svc.topic("web")
    sent = USERS + 2  # the twenty, the bad one, the collector's
    # exact unless a rebalance redelivers (at-least-once): then every count grows together

    def caught_up(s: Samples) -> bool:
        return (
            value(s, "scorestream_events_in", "_total", topic=web) >= sent
            and value(s, "scorestream_worker_consumer_lag_records", topic=web) == 0
            and {
                x.labels["partition"]
                for x in s.get("scorestream_worker_consumer_lag_records", [])
                if x.labels["topic"] == web
            }
            == {"0", "1"}
        )

    s = traffic.until("worker", caught_up, f"{sent} records in from {web}, committed on both partitions")
    read = value(s, "scorestream_events_in", "_total", topic=web)
    accepted = value(s, "scorestream_events_accepted", "_total", topic=web)
    dead = [x for x in s["scorestream_dead_letters"] if x.name.endswith("_total")]
    assert {(x.labels["topic"], x.labels["reason"]) for x in dead} == {(web, "invalid_json")}
    assert read - accepted == sum(x.value for x in dead) >= 1, "in = accepted + dead-lettered"
    assert accepted >= sent - 1
    if read == sent:  # no redelivery: the exact figures
        assert (accepted, sum(x.value for x in dead)) == (sent - 1, 1)
    assert value(s, "scorestream_worker_records", "_total", stage="ingest") == read
    for stage in ("ingest", "contacts"):
        assert value(s, "scorestream_worker_batch_records", "_count", stage=stage) >= 1
        assert value(s, "scorestream_worker_batch_duration_seconds", "_count", stage=stage) >= 1
    assert value(s, "scorestream_worker_records", "_total", stage="contacts") >= 1  # records of batched messages
    assert value(s, "scorestream_worker_views_sent", "_total") >= USERS
    assert value(s, "scorestream_worker_ready") == 1
    assert value(s, "scorestream_worker_commit_duration_seconds", "_count") >= 1
    assert all(x.value >= 0 for x in s["scorestream_worker_consumer_lag_records"])
    workers = [x.labels for x in s["scorestream_build_info"] if x.labels["role"] == "worker"]
    assert [w["namespace"] for w in workers] == [f"ss-{traffic.svc.suffix}"]
    assert "process_resident_memory_bytes" in s
    later = traffic.until(
        "worker",
        lambda s: (
            value(s, "scorestream_worker_table_keys", table="contacts") > 0
            and value(s, "scorestream_worker_states_written", "_total") >= USERS
        ),
        "the contacts table's keys and written states",
    )
    assert {x.labels["partition"] for x in later["scorestream_worker_table_keys"]} <= {"0", "1"}


def test_the_api_serves_the_collector_s_counts_and_its_request_latency(traffic: Deployment) -> None:
    s = traffic.until(
        "api",
        lambda s: (
            value(s, "scorestream_api_request_duration_seconds", "_count", route="/v1/contacts/{contact_id}") >= 1
        ),
        "the contact read in the request histogram",
    )
    assert value(s, "scorestream_collector_messages_accepted", "_total") == 1
    assert value(s, "scorestream_collector_requests_refused", "_total", reason="unauthorized") == 1
    assert any(x.labels["role"] == "api" for x in s["scorestream_build_info"])
    routes = {x.labels.get("route") for x in s["scorestream_api_request_duration_seconds"]}
    assert not any(r and "m-0" in r for r in routes), "route templates only, never a contact id"


def test_the_dispatcher_counts_a_refused_then_delivered_webhook(traffic: Deployment) -> None:
    receiver = Receiver().start()
    try:
        receiver.rules["/hook"] = lambda req, seen: (503, {}) if seen == 0 else (200, {})
        with traffic.svc.client() as api:
            created = api.post("/v1/webhooks", json={"url": receiver.url("/hook"), "events": ["*"]})
            assert created.status_code == 201, created.text
            hook = created.json()["id"]
            traffic.until(
                "dispatcher", lambda s: "scorestream_webhook_queue_deliveries" in s, "the dispatcher's metrics"
            )
            assert api.post(f"/v1/webhooks/{hook}/test").status_code == 202
        s = traffic.until(
            "dispatcher",
            lambda s: value(s, "scorestream_webhook_deliveries", "_total", outcome="delivered") >= 1,
            "a delivery delivered",
        )
    finally:
        receiver.stop()
    assert value(s, "scorestream_webhook_deliveries", "_total", outcome="retried") >= 1
    assert value(s, "scorestream_webhook_attempts", "_total", outcome="success") >= 1
    assert value(s, "scorestream_webhook_attempt_duration_seconds", "_count") >= 2
    assert value(s, "scorestream_webhook_queue_deliveries") >= 0
    triggers = {x.labels["topic"] for x in s.get("scorestream_webhook_consumer_lag_records", [])}
    assert triggers <= {f"triggers-{traffic.svc.suffix}"}
    assert any(x.labels["role"] == "dispatcher" for x in s["scorestream_build_info"])


def test_the_sink_counts_the_rows_it_inserts(traffic: Deployment) -> None:
    web = traffic.svc.topic("web")
    s = traffic.until(
        "sink",
        lambda s: value(s, "scorestream_sink_rows_inserted", "_total", table="events") >= USERS + 1,
        "the events inserted into chDB",
        timeout=120,
    )
    assert {x.labels["topic"] for x in s["scorestream_sink_consumer_lag_records"]} >= {web}
    assert value(s, "scorestream_sink_insert_duration_seconds", "_count", table="events") >= 1
    assert value(s, "scorestream_sink_insert_errors", "_total") == 0
    assert any(x.labels["role"] == "sink" for x in s["scorestream_build_info"])


def test_several_api_processes_are_summed_in_one_scrape(traffic: Deployment) -> None:
    """``scorestream api`` with two processes on one port: each writes its values under
    ``<data_dir>/metrics/api`` and whichever answers the scrape serves the sum of both."""
    svc = traffic.svc
    port = free_port()
    proc = svc._spawn("api", "api-2.log", {"SCORESTREAM_API_PORT": str(port), "SCORESTREAM_API_PROCESSES": "2"})
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, svc.logs("api-2")
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        svc.wait_for(up, timeout=90)
        sent = 12
        for i in range(sent):  # each on a new connection: the two processes share the socket
            refused = httpx.post(f"{url}/v1/track", json={"writeKey": f"nope-{i}", "event": "x", "userId": "u"})
            assert refused.status_code == 401
        files = list((svc.data_dir / "metrics" / "api").glob("counter_*.db"))
        assert len(files) == 2, files  # one per process
        for _ in range(6):  # whichever process answers, the same sum
            r = httpx.get(f"{url}/metrics", timeout=5)
            samples = {family.name: family.samples for family in text_string_to_metric_families(r.text)}
            assert value(samples, "scorestream_collector_requests_refused", "_total", reason="unauthorized") == sent
            assert [x.labels["role"] for x in samples["scorestream_build_info"]] == ["api"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
