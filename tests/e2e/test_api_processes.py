"""Several API processes on one host share its view store (``api.view_store``): one follows the
views topic and writes the store, the others read it; both answer for contacts published after
both started; when the writer is killed, the other one takes over and keeps answering for new
contacts. ``scorestream api --processes 2`` serves one port with two such processes."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.service import API_KEY, REPO, Service, free_port, wait_for

NOW = int(time.time() * 1000)


def identify(user: str, mid: str) -> tuple[str, None, bytes]:
    body = {"type": "identify", "messageId": mid, "userId": user, "traits": {"email": f"{user}@acme.com"}}
    return "web", None, orjson.dumps({**body, "timestamp": "2026-12-01T10:00:00Z"})


def page(user: str, mid: str, path: str) -> tuple[str, None, bytes]:
    body = {"type": "page", "messageId": mid, "userId": user, "properties": {"path": path}}
    return "web", None, orjson.dumps({**body, "timestamp": "2026-12-01T10:00:01Z"})


class Api:
    """Another ``scorestream api`` process of ``svc`` (same data directory), on its own port."""

    def __init__(self, svc: Service, log: str, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = svc.data_dir / log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "api", *args],
            env={**svc.env, "SCORESTREAM_API_PORT": str(self.port)},
            cwd=REPO,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def logs(self) -> str:
        return self.log.read_text()[-4000:]

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5)

    def ready(self) -> dict[str, Any] | None:
        try:
            r = httpx.get(f"{self.url}/readyz", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5)
        except httpx.HTTPError:
            return None
        return dict(r.json()["detail"]) if r.status_code == 200 else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def readyz(url: str) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"{url}/readyz", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5)  # detail: with a key
    except httpx.HTTPError:
        return None
    return dict(r.json()["detail"]) if r.status_code == 200 else None


def score_of(url: str, contact: str) -> float | None:
    try:
        r = httpx.get(f"{url}/v1/contacts/{contact}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5)
    except httpx.HTTPError:
        return None
    return float(r.json()["engagement"]["score"]) if r.status_code == 200 else None


@pytest.fixture
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    svc = Service(bootstrap=kafka_bootstrap, data_dir=tmp_path_factory.mktemp("processes"))
    svc.start()
    yield svc
    svc.stop()


def test_two_api_processes_share_one_store_and_the_reader_takes_over(service: Service) -> None:
    second = Api(service, "api-2.log")
    try:
        first_detail = wait_for(lambda: readyz(service.url), 60, "the first API ready", lambda: service.logs("api"))
        second_detail = wait_for(lambda: second.ready(), 60, "the second API ready", second.logs)
        assert (first_detail["view_store"], second_detail["view_store"]) == ("writer", "secondary")

        # contacts published after both started: each process answers with the same scores
        service.publish([identify("p-1", "m1"), page("p-1", "m2", "/pricing"), identify("p-2", "m3")])
        for url in (service.url, second.url):

            def both_known(at: str = url) -> bool:
                return bool(score_of(at, "p-1")) and score_of(at, "p-2") is not None

            wait_for(both_known, 60, f"p-1, p-2 at {url}")
        ours = wait_for(lambda: second.get("/v1/contacts/p-1").json(), 5, "p-1")
        theirs = httpx.get(
            f"{service.url}/v1/contacts/p-1", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5
        ).json()
        assert math.isclose(ours["engagement"]["score"], theirs["engagement"]["score"], abs_tol=1e-3)
        assert ours["engagement"]["score"] > 0
        assert ours["identity"] == theirs["identity"]
        assert second.get("/v1/contacts/p-1@acme.com").json()["contact_id"] == "p-1"  # the email index too

        # the writer dies: the reader takes the lock, resumes from the stored offsets, goes on
        assert service.api is not None
        service.api.kill()
        service.api.wait(10)
        wait_for(lambda: (second.ready() or {}).get("view_store") == "writer", 30, "take-over", second.logs)
        service.publish([identify("p-3", "m4"), page("p-3", "m5", "/docs")])
        wait_for(lambda: score_of(second.url, "p-3"), 60, "p-3 after the take-over", second.logs)
        assert math.isclose(score_of(second.url, "p-1") or 0, ours["engagement"]["score"], abs_tol=1e-3)
        models = second.get("/v1/models").json()["models"]
        assert models[0]["contacts"] == 3  # the store's count, kept across the take-over
    finally:
        second.stop()


def test_processes_option_serves_one_port_with_several(service: Service) -> None:
    assert service.api is not None
    service.api.terminate()
    service.api.wait(30)
    both = Api(service, "api-both.log", "--processes", "2")
    try:
        detail = wait_for(lambda: both.ready(), 90, "two processes ready", both.logs)
        assert detail["view_store"] in ("writer", "secondary")
        service.publish([identify("q-1", "n1"), page("q-1", "n2", "/pricing")])
        wait_for(lambda: score_of(both.url, "q-1"), 60, "q-1", both.logs)
        # new connections spread over the two processes: both answer, one writing, one reading
        roles: set[str] = set()

        def both_seen() -> bool:
            assert score_of(both.url, "q-1")
            roles.add(str((both.ready() or {}).get("view_store")))
            return roles == {"writer", "secondary"}

        wait_for(both_seen, 30, "answers from the writer and the reader", lambda: f"{roles} {both.logs()}")
    finally:
        both.stop()
