"""Secured Kafka end to end: a second local broker with a SASL_SSL listener (a CA and certificates
this test makes, SCRAM-SHA-512/256 users made when its storage is formatted, PLAIN users in its
JAAS config), the whole pipeline over it, and the one-line refusals at start.

Every process is the real one (``python -m deploy.cli ...``): topics, worker, API and webhook
dispatcher reach the broker only through its SASL_SSL port, with the security their environment
gives (``SCORESTREAM_KAFKA_*``), and so do this test's own clients (``Service.kafka``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from kafka_io import clients
from kafka_io.clients import KafkaConnection, KafkaUnavailable, check
from tests.e2e.service import REPO, WRITE_KEY, Service, free_port
from tests.e2e.test_pipeline import msg
from tests.kafka_broker import TlsFiles, ensure_broker, make_tls, secured_props, stop_broker
from tests.webhook_receiver import Receiver

ALICE_PASSWORD = "alice-Pa55word-for-scram"
BOB_PASSWORD = "bob-Pa55word-for-plain"
WRONG_PASSWORD = "not-alices-Pa55word"


@dataclass(frozen=True)
class SecuredKafka:
    bootstrap: str  # the SASL_SSL listener
    mtls: str  # the SSL listener that requires a client certificate
    tls: TlsFiles

    def env(
        self,
        *,
        mechanism: str = "SCRAM-SHA-512",
        user: str = "alice",
        password: str = ALICE_PASSWORD,
        ca: Path | None = None,
    ) -> dict[str, str]:
        """The ``SCORESTREAM_KAFKA_*`` variables of a client of this broker."""
        return {
            "SCORESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "SCORESTREAM_KAFKA_SASL_MECHANISM": mechanism,
            "SCORESTREAM_KAFKA_SASL_USERNAME": user,
            "SCORESTREAM_KAFKA_SASL_PASSWORD": password,
            "SCORESTREAM_KAFKA_SSL_CA_FILE": str(ca or self.tls.ca),
        }


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    root = tmp_path_factory.mktemp("secured-kafka")
    tls = make_tls(root / "tls")
    port, controller, sasl_ssl, mtls = free_port(), free_port(), free_port(), free_port()
    ensure_broker(
        root / "data",
        port,
        controller_port=controller,
        extra_props=secured_props(port, controller, sasl_ssl, tls, plain_users={"bob": BOB_PASSWORD}, mtls_port=mtls),
        scram_users=[
            f"SCRAM-SHA-512=[name=alice,password={ALICE_PASSWORD}]",
            f"SCRAM-SHA-256=[name=alice,password={ALICE_PASSWORD}]",
        ],
    )
    try:
        yield SecuredKafka(bootstrap=f"127.0.0.1:{sasl_ssl}", mtls=f"127.0.0.1:{mtls}", tls=tls)
    finally:
        stop_broker(root / "data", port)


def events() -> list[tuple[str, bytes]]:
    t = int(time.time() * 1000) - 3_600_000
    return [
        ("web", msg("identify", "k1", t, userId="u-sec", traits={"email": "sec@acme.com", "title": "CTO"})),
        ("web", msg("page", "k2", t + 1000, userId="u-sec", properties={"path": "/pricing"})),
        ("email", msg("track", "k4", t + 3000, userId="u-sec", event="Email Link Clicked")),
    ]


def collected() -> dict[str, Any]:
    """The event sent through the API's HTTP collector (its producer: SASL_SSL too)."""
    t = int(time.time() * 1000) - 3_600_000 + 2000
    message: dict[str, Any] = orjson.loads(msg("track", "k3", t, userId="u-sec", event="Demo Requested"))
    return message


def test_the_pipeline_runs_over_sasl_ssl_scram(secured: SecuredKafka, tmp_path: Path) -> None:
    """Topics, worker, API (and its collector), dispatcher and analytics sink over SASL_SSL
    (SCRAM-SHA-512, the password from a file as a mounted Kubernetes secret gives it): events
    published over SASL_SSL and through the collector are scored and served, a webhook made over
    the API is delivered by the dispatcher, and the sink archives the events."""
    started = time.monotonic()
    password = tmp_path / "kafka-password"
    password.write_text(ALICE_PASSWORD + "\n")
    env = secured.env()
    del env["SCORESTREAM_KAFKA_SASL_PASSWORD"]
    env["SCORESTREAM_KAFKA_SASL_PASSWORD_FILE"] = str(password)
    svc = Service(
        bootstrap=secured.bootstrap,
        data_dir=tmp_path / "svc",
        partitions=2,
        extra_env={**env, "SCORESTREAM_WEBHOOK_ALLOW_PRIVATE": "true"},
    )
    assert svc.kafka.security_protocol == "SASL_SSL" and svc.kafka.sasl_password == ALICE_PASSWORD
    receiver = Receiver().start()
    svc.start()  # `scorestream topics`, then worker and API, ready
    dispatcher = svc._spawn("dispatcher", "dispatcher.log")
    sink = svc._spawn("sink", "sink.log")  # embedded chDB in its data dir: the API runs none here
    try:
        svc.publish((channel, None, raw) for channel, raw in events())  # this test's producer: SASL_SSL too
        sent = httpx.post(f"{svc.url}/v1/track", json=collected(), auth=(WRITE_KEY, ""), timeout=15)
        assert sent.status_code == 200, sent.text  # 200 once Kafka has it
        with svc.client() as http:
            body = svc.wait_for(
                lambda: (
                    (r := http.get("/v1/contacts/u-sec")).status_code == 200
                    # the collector's event folded too (it may arrive after the others)
                    and "demo-requested" in {c["rule"] for c in r.json()["engagement"]["top"]}
                    and r.json()
                ),
                timeout=90,
            )
            assert body["identity"]["email"] == "sec@acme.com" and body["engagement"]["score"] > 0
            assert len(body["engagement"]["top"]) >= 3
            created = http.post("/v1/webhooks", json={"url": receiver.url("/secured"), "events": ["*"]})
            assert created.status_code == 201, created.text
            hook = created.json()["id"]
            time.sleep(0.5)  # the dispatcher reads the subscription from its topic
            assert http.post(f"/v1/webhooks/{hook}/test").status_code == 202
            svc.wait_for(lambda: receiver.at("/secured"), timeout=60)
        # the analytics sink commits its offsets once the rows are in ClickHouse: all 4 source events
        sunk = svc.wait_for(lambda: sink_committed(svc) == {"web": 3, "email": 1}, timeout=60)
        assert sunk, svc.logs("sink")
        assert dispatcher.poll() is None and sink.poll() is None, svc.logs("dispatcher") + svc.logs("sink")
        for name in ("worker", "api", "dispatcher", "sink"):
            assert ALICE_PASSWORD not in svc.logs(name)  # never logged
    finally:
        for proc in (dispatcher, sink):
            proc.terminate()
        for proc in (dispatcher, sink):
            proc.wait(timeout=30)
        svc.stop()
        receiver.stop()
    print(
        f"SASL_SSL pipeline (topics, worker, API + collector, dispatcher, sink; scored, delivered, archived): "
        f"{time.monotonic() - started:.1f} s"
    )


def sink_committed(svc: Service) -> dict[str, int]:
    """Channel -> the offsets the analytics sink's group has committed on its source topic (SASL_SSL)."""

    async def read() -> dict[str, int]:
        admin = clients.admin(svc.kafka)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(f"ss-{svc.suffix}-sink")
        finally:
            await admin.close()
        topics = {svc.topic(channel): channel for channel in ("web", "email")}
        out: dict[str, int] = {}
        for tp, meta in offsets.items():
            if tp.topic in topics:
                out[topics[tp.topic]] = out.get(topics[tp.topic], 0) + meta.offset
        return out

    return asyncio.run(read())


@pytest.mark.parametrize(
    ("mechanism", "user", "password"),
    [("SCRAM-SHA-256", "alice", ALICE_PASSWORD), ("PLAIN", "bob", BOB_PASSWORD)],
    ids=["scram-sha-256", "plain"],
)
def test_the_other_mechanisms_connect(secured: SecuredKafka, mechanism: str, user: str, password: str) -> None:
    kafka = KafkaConnection(secured.bootstrap, "SASL_SSL", mechanism, user, password, ssl_ca_file=str(secured.tls.ca))
    assert asyncio.run(check(kafka, timeout_s=30)) == 1
    assert asyncio.run(round_trip(kafka, mechanism)) == [b"over " + mechanism.encode()]


def test_mutual_tls(secured: SecuredKafka) -> None:
    """SSL with a client certificate the broker's CA signed; without one, the start is refused."""
    kafka = KafkaConnection(secured.mtls, "SSL", ssl_ca_file=str(secured.tls.ca), ssl_cert_file=str(secured.tls.client))
    assert asyncio.run(check(kafka, timeout_s=30)) == 1
    assert asyncio.run(round_trip(kafka, "mTLS")) == [b"over mTLS"]
    with pytest.raises(KafkaUnavailable) as refused:
        asyncio.run(check(KafkaConnection(secured.mtls, "SSL", ssl_ca_file=str(secured.tls.ca)), timeout_s=30))
    assert str(refused.value).startswith(f"Kafka TLS handshake with {secured.mtls} failed")
    assert "SCORESTREAM_KAFKA_SSL_CERT_FILE" in str(refused.value)


async def round_trip(kafka: KafkaConnection, what: str) -> list[bytes | None]:
    """One record produced and consumed back over ``kafka``."""
    topic = f"round-trip-{free_port()}"
    producer = clients.producer(kafka, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"over " + what.encode())
    finally:
        await producer.stop()
    consumer = clients.consumer(kafka, topic, auto_offset_reset="earliest")
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
        return [record.value for records in batch.values() for record in records]
    finally:
        await consumer.stop()


def start(command: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.cli", command],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc, time.monotonic() - started


def refusal(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start writes (no traceback)."""
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "Kafka" in line]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["worker", "api", "dispatcher", "sink", "topics"])
def test_a_wrong_password_fails_the_start_with_one_line(secured: SecuredKafka, tmp_path: Path, command: str) -> None:
    svc = Service(bootstrap=secured.bootstrap, data_dir=tmp_path, extra_env=secured.env(password=WRONG_PASSWORD))
    proc, took = start(command, svc.env)
    line = refusal(proc)
    assert took < 30, took
    assert line.startswith(f"scorestream {command}: Kafka SASL authentication failed at {secured.bootstrap}"), line
    assert "SCORESTREAM_KAFKA_SASL_PASSWORD" in line and "SCRAM-SHA-512 as 'alice'" in line
    assert WRONG_PASSWORD not in proc.stderr + proc.stdout


def test_an_untrusted_certificate_fails_the_start_with_one_line(secured: SecuredKafka, tmp_path: Path) -> None:
    """The client trusts a CA that did not sign the broker's certificate."""
    svc = Service(bootstrap=secured.bootstrap, data_dir=tmp_path, extra_env=secured.env(ca=secured.tls.other_ca))
    proc, took = start("worker", svc.env)
    line = refusal(proc)
    assert took < 30, took
    assert line.startswith(f"scorestream worker: Kafka TLS certificate of {secured.bootstrap} not trusted"), line
    assert "SCORESTREAM_KAFKA_SSL_CA_FILE" in line


@pytest.mark.parametrize("command", ["api", "run"])  # run: with SCORESTREAM_KAFKA_BOOTSTRAP, no broker of its own
def test_an_unreachable_cluster_fails_the_start_after_the_timeout(tmp_path: Path, command: str) -> None:
    port = free_port()  # nothing listens there
    env: dict[str, Any] = Service(bootstrap=f"127.0.0.1:{port}", data_dir=tmp_path).env
    proc, took = start(command, {**env, "SCORESTREAM_KAFKA_STARTUP_TIMEOUT_S": "2"})
    line = refusal(proc)
    assert took < 30, took
    assert line.startswith(f"scorestream {command}: Kafka unreachable at 127.0.0.1:{port} (PLAINTEXT) within 2 s"), line


@pytest.mark.parametrize(
    ("security", "named"),
    [
        (
            {"SCORESTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "SCORESTREAM_KAFKA_SSL_CA_FILE": "/no/such/ca.pem"},
            "SCORESTREAM_KAFKA_SSL_CA_FILE: no such file",
        ),
        (
            {"SCORESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SCORESTREAM_KAFKA_SASL_PASSWORD": WRONG_PASSWORD},
            "SASL_SSL needs SCORESTREAM_KAFKA_SASL_MECHANISM, SCORESTREAM_KAFKA_SASL_USERNAME",
        ),
    ],
    ids=["missing-ca-file", "sasl-without-user"],
)
def test_an_incomplete_security_setting_is_refused_before_connecting(
    tmp_path: Path, security: dict[str, str], named: str
) -> None:
    env = {**Service(bootstrap="127.0.0.1:1", data_dir=tmp_path).env, **security}
    proc, took = start("worker", env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)  # a setting: no Kafka contacted, no retry
    assert named in proc.stderr and "Traceback" not in proc.stderr and WRONG_PASSWORD not in proc.stderr
    assert took < 30, took
