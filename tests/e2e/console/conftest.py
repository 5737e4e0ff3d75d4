"""The console's browser tests share one deployment and one Chromium.

``console_service``: a real broker, worker and API (with the analytics sink into embedded chDB), an
admin key and a read key, and realistic traffic (:class:`deploy.traffic.Traffic`: 200 contacts over
the last 14 days, and more of the same people in the last hour) published through the broker,
scored and archived before any test runs. ``browser``: Debian's Chromium driven by Playwright (never
a build of its own). ``console_page(key)``: a page signed in through the sign-in form, in a fresh
context; a console or page error on it fails the test. ``shot``: a screenshot artefact under
``tests/artefacts/console/`` (git-ignored); with ``SCORESTREAM_SCREENSHOTS=docs`` also the README's
copy in ``docs/console/``. ``api(key)``: an HTTP client on the API with that key.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from deploy.traffic import Traffic
from tests.e2e.service import REPO, Service, archived

CHROMIUM = Path("/usr/lib/chromium/chromium")  # Debian's package `chromium`
ADMIN_KEY = "console-admin-key-0123456789"
READ_KEY = "console-read-key-0123456789ab"
KEYS = f"{ADMIN_KEY}:admin:console-admin,{READ_KEY}:read:console-reader"
CONTACTS = 200
HISTORY_EVENTS = 3000  # over the last 14 days
RECENT_EVENTS = 400  # in the last hour (top movers, the live figures)
ARTEFACTS = REPO / "tests" / "artefacts" / "console"
DOCS_SHOTS = REPO / "docs" / "console"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def api_client(service: Service, key: str) -> httpx.Client:
    return httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def publish_traffic(service: Service) -> list[str]:
    """The deployment's traffic; the anonymous id of every contact it names (each contact's first id)."""
    now = int(time.time() * 1000)
    span = 14 * 86_400_000
    history = Traffic(CONTACTS, seed=19, start_ms=now - span, span_ms=span - 3_600_000)
    recent = Traffic(CONTACTS, seed=20, start_ms=now - 3_600_000, span_ms=3_540_000)
    recent.seq = 1_000_000  # its message ids (m-<seq>) never those of the history: no event taken for a duplicate
    records = [*history.records(HISTORY_EVENTS), *recent.records(RECENT_EVENTS)]
    service.publish([(r.channel, r.key, r.value) for r in records])
    return sorted({history.anonymous_id(r.contact) for r in records})


def wait_scored_and_archived(service: Service, ids: list[str]) -> None:
    """Every contact found by the API, and every one of them in the archive's sync list."""
    with api_client(service, ADMIN_KEY) as http:

        def scored() -> set[str] | None:
            r = http.post("/v1/contacts:batchGet", json={"ids": ids})
            if r.status_code != 200:
                return None
            body = r.json()
            found = {c["contact_id"] for c in body["contacts"]}
            return found if not body.get("not_found") else None

        contact_ids: set[str] = service.wait_for(scored, timeout=180)

        def archived_all() -> bool:
            listed: set[str] = set()
            cursor: str | None = None
            while True:
                params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
                r = http.get("/v1/contacts", params=params)
                if r.status_code != 200:
                    return False
                page = r.json()
                listed |= {c["contact_id"] for c in page["data"]}
                if not page["has_more"]:
                    return contact_ids <= listed
                cursor = page["next_cursor"]

        service.wait_for(archived_all, timeout=180, interval=1.0)
    time.sleep(1.5)  # the sink's last batch of ledger rows and transitions after the contacts rows


@pytest.fixture(scope="package")
def console_service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = archived(
        kafka_bootstrap,
        Path(tmp_path_factory.mktemp("console")),
        extra_env={
            "SCORESTREAM_API_KEYS": KEYS,
            "SCORESTREAM_SINK_BATCH_S": "0.2",
            "SCORESTREAM_POPULATION_INTERVAL_S": "3",  # RFM boundaries (the value grid, a contact's cell) soon
            "SCORESTREAM_WEBHOOK_ALLOW_PRIVATE": "true",  # the webhooks page's test receiver is on 127.0.0.1
        },
    )
    svc.start()
    try:
        wait_scored_and_archived(svc, publish_traffic(svc))
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make browser` installs Debian's chromium"
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@dataclass
class Watched:
    """A signed-in page and what went wrong on it (console errors, page errors)."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text} at {message.location}")


def sign_in(page: Page, service: Service, key: str) -> None:
    page.goto(f"{service.url}/console/sign-in")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{service.url}/console")


@pytest.fixture
def console_page(console_service: Service, browser: Browser) -> Iterator[Callable[..., Page]]:
    """``console_page(key, viewport=DESKTOP)``: a fresh context's page, signed in with ``key``. Any
    console error or uncaught page error on one of them fails the test at teardown."""
    opened: list[Watched] = []

    def open_page(key: str, viewport: dict[str, int] | None = None) -> Page:
        context = browser.new_context(viewport=viewport or DESKTOP)  # type: ignore[arg-type]
        watched = Watched(context.new_page())
        watched.page.on("console", watched.console)
        watched.page.on("pageerror", lambda exc: watched.errors.append(f"pageerror: {exc}"))
        opened.append(watched)
        sign_in(watched.page, console_service, key)
        return watched.page

    yield open_page
    errors = [e for w in opened for e in w.errors]
    for watched in opened:
        watched.page.context.close()
    assert not errors, errors


@pytest.fixture
def shot() -> Callable[[Page, str], Path]:
    """``shot(page, name)``: a full-page screenshot, ``tests/artefacts/console/<name>.png`` (and the
    docs' copy with ``SCORESTREAM_SCREENSHOTS=docs``)."""

    def take(page: Page, name: str) -> Path:
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTEFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000, f"{path} is empty"
        if os.environ.get("SCORESTREAM_SCREENSHOTS") == "docs":
            DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
            (DOCS_SHOTS / f"{name}.png").write_bytes(path.read_bytes())
        return path

    return take


@pytest.fixture
def api(console_service: Service) -> Iterator[Callable[[str], httpx.Client]]:
    """``api(key)``: an HTTP client on the API, authorised with ``key``."""
    clients: list[httpx.Client] = []

    def client(key: str) -> httpx.Client:
        made = api_client(console_service, key)
        clients.append(made)
        return made

    yield client
    for made in clients:
        made.close()
