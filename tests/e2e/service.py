"""Run the real worker and API as subprocesses against the session's Kafka broker."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from kafka_io import clients
from kafka_io.clients import KafkaConnection
from kafka_io.reader import read_topic
from schemas.settings import Settings

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789abcdef"
WRITE_KEY = "test-write-key-web"  # the HTTP collector's (default channel web, may send to every channel)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    check: Callable[[], Any], timeout: float, what: str, logs: Callable[[], str] = lambda: "", interval: float = 0.05
) -> Any:
    """Poll ``check()`` until it returns a truthy value; return it, or fail naming ``what`` with the
    last value and ``logs()``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not met within {timeout} s; last value: {last!r}\n{logs()}")


def kafka_of(env: Mapping[str, str]) -> KafkaConnection:
    """The Kafka connection the processes started with ``env`` use (its ``SCORESTREAM_KAFKA_*``
    variables: bootstrap servers, TLS, SASL), for this test process's own clients."""
    values = {k.removeprefix("SCORESTREAM_").lower(): v for k, v in env.items() if k.startswith("SCORESTREAM_KAFKA_")}
    return KafkaConnection.of(Settings.model_validate(values))


def isolated_env(bootstrap: str, app_id: str, suffix: str, partitions: int, data_dir: Path) -> dict[str, str]:
    """The environment of one isolated deployment on a shared broker: the caller's, without its
    ``SCORESTREAM_*`` variables, with an own app id, topic names and data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORESTREAM_")}
    env.update(
        {
            "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}",
            "SCORESTREAM_KAFKA_BOOTSTRAP": bootstrap,
            "SCORESTREAM_APP_ID": app_id,
            "SCORESTREAM_TOPIC_WEB": f"web-{suffix}",
            "SCORESTREAM_TOPIC_EMAIL": f"email-{suffix}",
            "SCORESTREAM_TOPIC_STORE": f"store-{suffix}",
            "SCORESTREAM_TOPIC_CRM": f"crm-{suffix}",
            "SCORESTREAM_TOPIC_DEADLETTER": f"dead-{suffix}",
            "SCORESTREAM_TOPIC_TRIGGERS": f"triggers-{suffix}",
            "SCORESTREAM_PARTITIONS": str(partitions),
            "SCORESTREAM_DATA_DIR": str(data_dir),
        }
    )
    return env


@dataclass
class Service:
    """One isolated scorestream deployment (own app id, topics, data dir) on a shared broker."""

    bootstrap: str
    data_dir: Path
    partitions: int = 4
    model: Path | None = None
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    api_port: int = field(default_factory=free_port)
    worker: subprocess.Popen[bytes] | None = None
    api: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: int = 1  # worker processes sharing data_dir (worker i: SCORESTREAM_WORKER_INDEX=i)
    more_workers: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)  # index >= 1

    @property
    def env(self) -> dict[str, str]:
        env = isolated_env(self.bootstrap, f"ss-{self.suffix}", self.suffix, self.partitions, self.data_dir)
        env.update(
            {
                "SCORESTREAM_API_KEYS": API_KEY,
                "SCORESTREAM_WRITE_KEYS": f"{WRITE_KEY}:*",
                "SCORESTREAM_API_PORT": str(self.api_port),
                "SCORESTREAM_LOG_LEVEL": "WARNING",
                "SCORESTREAM_COMMIT_INTERVAL_S": "0.5",
                "SCORESTREAM_SESSION_TIMEOUT_S": "6",
                # no analytics sink in the API (it would open a chDB engine in every API process of
                # every test and benchmark); tests/e2e/test_analytics.py turns it on
                "SCORESTREAM_SINK_IN_API": "false",
                # no side metrics ports (workers would all want 9300 on this host, tests run side by
                # side); tests/e2e/test_metrics.py gives each process its own
                "SCORESTREAM_METRICS_PORT": "0",
                # one key reads far beyond the default budget here (bench.api_load: ~14k lookups/s,
                # batchGet 1000 ids at a time): a limit checked on every request that never refuses;
                # tests/api/test_limits.py covers refusals
                "SCORESTREAM_RATE_LIMIT_READ": "1000000/second",
            }
        )
        if self.model is not None:
            env["SCORESTREAM_MODEL"] = str(self.model)
        env.update(self.extra_env)
        return env

    @property
    def settings(self) -> Settings:
        """The deployment's settings, as its processes read them from :attr:`env`."""
        prefix = "SCORESTREAM_"
        return Settings.model_validate(
            {k[len(prefix) :].lower(): v for k, v in self.env.items() if k.startswith(prefix)}
        )

    @property
    def kafka(self) -> KafkaConnection:
        """How the deployment reaches Kafka (``extra_env`` may secure it): the test's clients too."""
        return kafka_of(self.env)

    def topic(self, channel: str) -> str:
        return {
            "web": f"web-{self.suffix}",
            "email": f"email-{self.suffix}",
            "store": f"store-{self.suffix}",
            "crm": f"crm-{self.suffix}",
            "dead": f"dead-{self.suffix}",
        }[channel]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _spawn(self, role: str, log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out = (self.data_dir / log).open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", role],
            env={**self.env, **(env or {})},
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "deploy.cli", "topics"], env=self.env, cwd=REPO, check=True)
        for index in range(self.workers):
            self.start_worker(index)
        self.start_api()
        self.wait_ready()

    def start_worker(self, index: int = 0) -> None:
        """Start worker ``index`` (its log: ``worker.log`` for 0, ``worker-<index>.log`` for others)."""
        proc = self._spawn("worker", self.worker_log(index), {"SCORESTREAM_WORKER_INDEX": str(index)})
        if index == 0:
            self.worker = proc
        else:
            self.more_workers[index] = proc

    @staticmethod
    def worker_log(index: int) -> str:
        return "worker.log" if index == 0 else f"worker-{index}.log"

    def worker_proc(self, index: int = 0) -> subprocess.Popen[bytes] | None:
        return self.worker if index == 0 else self.more_workers.get(index)

    def start_api(self) -> None:
        self.api = self._spawn("api", "api.log")

    def kill_worker(self, index: int = 0) -> None:
        proc = self.worker_proc(index)
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            for proc, name in self._processes():
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}: {self.logs(name)}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=2)
                last = r.text
                if r.status_code == 200:
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.3)
        raise TimeoutError(f"not ready in {timeout} s: {last}\n{self.logs('worker')}")

    def _processes(self) -> list[tuple[subprocess.Popen[bytes] | None, str]]:
        """Every process with the name of its log (``<name>.log``)."""
        workers = [(self.worker_proc(i), self.worker_log(i).removesuffix(".log")) for i in range(self.workers)]
        return [*workers, (self.api, "api")]

    def logs(self, name: str) -> str:
        path = self.data_dir / f"{name}.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def stop(self) -> None:
        procs = [self.api, self.worker, *self.more_workers.values()]
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in procs:
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()

    # --- talking to it -------------------------------------------------------------------------
    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)

    def publish(self, records: Iterable[tuple[str, bytes | None, bytes]]) -> None:
        asyncio.run(self._publish(list(records)))

    async def _publish(self, records: list[tuple[str, bytes | None, bytes]]) -> None:
        producer = clients.producer(self.kafka, acks="all", linger_ms=5, max_request_size=4 << 20)
        await producer.start()
        try:
            futures = [await producer.send(self.topic(channel), value, key=key) for channel, key, value in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    def read_topic(self, topic: str, expect: int, wait_s: float = 30) -> list[Any]:
        return asyncio.run(self._read(topic, expect, wait_s))

    async def _read(self, topic: str, expect: int, wait_s: float) -> list[Any]:
        consumer = clients.consumer(self.kafka, topic, auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            out: list[Any] = []
            deadline = time.monotonic() + wait_s
            while len(out) < expect and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    out.extend(records)
            return out
        finally:
            await consumer.stop()

    def wait_for(self, check: Any, timeout: float = 60, interval: float = 0.2) -> Any:
        """Poll ``check()`` until it returns a truthy value; return it (or raise with the last value)."""
        return wait_for(check, timeout, "condition", lambda: self.logs("worker"), interval)


def archived(bootstrap: str, data_dir: Path, **options: Any) -> Service:
    """A deployment whose API runs the analytics sink into embedded chDB under ``data_dir`` (the
    archive's tests: export, regulations, replay from the archive)."""
    archive = {"SCORESTREAM_SINK_IN_API": "true", "SCORESTREAM_CLICKHOUSE_URL": f"chdb://{data_dir / 'chdb'}"}
    extra = {**archive, **options.pop("extra_env", {})}
    return Service(bootstrap=bootstrap, data_dir=data_dir, extra_env=extra, **options)


def latest_values(settings: Settings, topic: str) -> dict[bytes, bytes | None]:
    """The latest value per key of ``topic`` up to its end now (None: a tombstone)."""
    out: dict[bytes, bytes | None] = {}

    def keep(key: bytes | None, value: bytes | None) -> None:
        if key is not None:
            out[key] = value

    asyncio.run(read_topic(settings, topic, keep, until_end=True))
    return out


def shadow_from_archive(service: Service, model: Path, name: str, out: Path) -> tuple[str, dict[str, Any]]:
    """``scorestream shadow --source archive --until-caught-up`` for ``service``'s deployment (its
    API stopped: chDB released); the command's output and its ``--json`` report."""
    cmd = [sys.executable, "-m", "deploy.cli", "shadow", "--model", str(model), "--name", name]
    cmd += ["--source", "archive", "--until-caught-up", "--json", str(out)]
    done = subprocess.run(cmd, env=service.env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, Any] = orjson.loads(out.read_bytes())
    return done.stdout, report
