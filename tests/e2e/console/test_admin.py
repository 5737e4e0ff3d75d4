"""The admin pages in a real Chromium on the shared deployment: Webhooks and Models.

Webhooks: a subscription of this module's own (a unique description) is made over the API, pointing
at a local receiver that always answers 500; a dispatcher of this module's own (the shared
deployment runs none) delivers two test sends to it, which fail until their retry schedule is
spent. The page shows the subscription with the delivery log's counts (equal to the API's delivery
list), its recent failures, and a Retry button that makes the dispatcher send the delivery again: a
new manual attempt in the API's delivery log and a new request at the receiver. A read key's
session sees no admin entry and is refused (403) when it posts the retry form's fields.

Models: the active namespace only (a shadow would run a second worker on the shared machine): the
figures shown equal ``GET /v1/models``, the empty state says how to start a shadow. The side-by-side
view, the matrix and promotion are covered in process (``tests/console/test_admin.py``).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page

from tests.e2e.console.conftest import ADMIN_KEY, PHONE, READ_KEY
from tests.e2e.service import Service
from tests.webhook_receiver import Receiver

DISPATCHER_ENV = {
    "SCORESTREAM_WEBHOOK_ALLOW_PRIVATE": "true",
    "SCORESTREAM_WEBHOOK_RETRY_SCHEDULE": "0.2,0.4",  # three attempts, then failed
    "SCORESTREAM_WEBHOOK_TIMEOUT_S": "2",
}
TEST_SENDS = 2


@dataclass
class Hook:
    id: str
    receiver: Receiver
    path: str


def admin_api(service: Service) -> httpx.Client:
    return httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)


def deliveries(http: httpx.Client, hook_id: str) -> list[dict[str, Any]]:
    answer = http.get(f"/v1/webhooks/{hook_id}/deliveries", params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["data"]
    return found


@pytest.fixture(scope="module")
def failing_hook(console_service: Service) -> Iterator[Hook]:
    """This module's subscription, its deliveries failed (schedule spent), and the dispatcher still running."""
    receiver = Receiver().start()
    path = f"/down-{uuid.uuid4().hex[:8]}"
    receiver.rules[path] = lambda req, seen: (500, {})
    dispatcher: subprocess.Popen[bytes] = console_service._spawn("dispatcher", "dispatcher-admin.log", DISPATCHER_ENV)
    http = admin_api(console_service)
    hook_id = None
    try:
        made = http.post(
            "/v1/webhooks",
            json={
                "url": receiver.url(path),
                "events": ["stage.changed"],
                "stages": ["no-such-stage"],  # no trigger of the shared traffic: only this module's test sends
                "description": f"Console admin test {path[6:]}",
            },
        )
        assert made.status_code == 201, made.text
        hook_id = made.json()["id"]
        for _ in range(TEST_SENDS):
            assert http.post(f"/v1/webhooks/{hook_id}/test").status_code == 202

        def all_failed() -> bool:
            found = deliveries(http, hook_id)
            return len(found) == TEST_SENDS and all(d["status"] == "failed" for d in found)

        console_service.wait_for(all_failed, timeout=90, interval=0.5)
        yield Hook(hook_id, receiver, path)
    finally:
        if hook_id is not None:
            http.delete(f"/v1/webhooks/{hook_id}")
        http.close()
        dispatcher.terminate()
        try:
            dispatcher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dispatcher.kill()
        receiver.stop()


def shown(page: Page, name: str) -> str:
    value = page.locator(f'data[data-k="{name}"]').first.get_attribute("value")
    assert value is not None, name
    return value


def test_the_webhooks_page_shows_the_delivery_health_and_retries_a_failure(
    console_page: Callable[..., Page], console_service: Service, failing_hook: Hook, shot: Callable[..., Any]
) -> None:
    hook = failing_hook
    page = console_page(ADMIN_KEY)
    page.goto(f"{console_service.url}/console/webhooks")
    section = page.locator(f'[data-testid="webhook-{hook.id}"]')
    assert section.is_visible()
    with admin_api(console_service) as http:
        listed = deliveries(http, hook.id)
        statuses = [d["status"] for d in listed]
        assert shown(page, f"delivered-{hook.id}") == str(statuses.count("succeeded")) == "0"
        assert shown(page, f"failed-{hook.id}") == str(statuses.count("failed")) == str(TEST_SENDS)
        assert shown(page, f"pending-{hook.id}") == str(statuses.count("pending"))
        rows = section.locator('[data-testid^="failure-"]')
        assert rows.count() == TEST_SENDS
        for d in listed:
            assert shown(page, f"attempts-{d['id']}") == str(d["attempt_count"])
        assert "HTTP 500" in section.inner_text()
        shot(page, "webhooks")

        # Retry the first failure: the dispatcher sends it again, a manual attempt in the log
        target = rows.first.get_attribute("data-testid")
        assert target is not None
        delivery_id = target.removeprefix("failure-")
        before = next(d for d in listed if d["id"] == delivery_id)
        received = len(hook.receiver.at(hook.path))
        rows.first.locator("button", has_text="Retry").click()
        page.wait_for_url(f"**/console/webhooks?flash=retry&id={delivery_id}")
        assert delivery_id in page.inner_text("[data-testid=flash]")

        def retried() -> dict[str, Any] | None:
            now = http.get(f"/v1/webhooks/{hook.id}/deliveries/{delivery_id}").json()
            return now if now["attempt_count"] > before["attempt_count"] else None

        after = console_service.wait_for(retried, timeout=30, interval=0.3)
        assert after["attempts"][-1]["manual"] is True and after["attempts"][-1]["status_code"] == 500
        assert len(hook.receiver.at(hook.path)) > received
        assert hook.receiver.at(hook.path)[-1].webhook_id == delivery_id  # the same delivery, sent again


def test_the_webhooks_page_on_a_phone(
    console_page: Callable[..., Page], console_service: Service, failing_hook: Hook, shot: Callable[..., Any]
) -> None:
    page = console_page(ADMIN_KEY, viewport=PHONE)
    page.goto(f"{console_service.url}/console/webhooks")
    assert page.locator(f'[data-testid="webhook-{failing_hook.id}"]').is_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide on a {PHONE['width']} px screen"
    shot(page, "webhooks-phone")


def test_a_read_key_sees_no_admin_entry_and_cannot_post_a_retry(
    console_page: Callable[..., Page], console_service: Service, failing_hook: Hook
) -> None:
    hook = failing_hook
    with admin_api(console_service) as http:
        first = deliveries(http, hook.id)[0]
        reader = console_page(READ_KEY)
        links = reader.locator("header nav a").all_inner_texts()
        assert "Webhooks" not in links and "Models" not in links
        token = reader.locator("input[name=csrf]").first.get_attribute("value")
        assert token  # the read session's own, valid, token
        base = f"{console_service.url}/console"
        for path, fields in (
            (f"/webhooks/{hook.id}/deliveries/{first['id']}/retry", {}),
            (f"/webhooks/{hook.id}/retry-failed", {}),
            ("/models/promote", {"namespace": "x", "version": "x", "active": "x"}),
        ):
            answer = reader.request.post(f"{base}{path}", form={"csrf": token, **fields}, max_redirects=0)
            assert answer.status == 403, path
            assert "admin" in answer.text()
        for path in ("/webhooks", "/models"):
            assert reader.request.get(f"{base}{path}", max_redirects=0).status == 403, path
        again = http.get(f"/v1/webhooks/{hook.id}/deliveries/{first['id']}").json()
        assert again["attempt_count"] == first["attempt_count"]  # nothing was sent again


def test_the_models_page_shows_the_active_model_as_the_api_does(
    console_page: Callable[..., Page], console_service: Service, shot: Callable[..., Any]
) -> None:
    page = console_page(ADMIN_KEY)
    page.goto(f"{console_service.url}/console/models")
    with admin_api(console_service) as http:
        models = http.get("/v1/models").json()["models"]
    assert len(models) == 1  # no shadow on the shared deployment
    (active,) = models
    card = page.locator(f'[data-testid="model-{active["namespace"]}"]')
    assert card.locator("[data-testid=role]").inner_text() == "active"
    assert card.locator("[data-testid=version]").inner_text() == active["model_version"]
    assert shown(page, f"contacts-{active['namespace']}") == str(active["contacts"])
    assert shown(page, f"workers-{active['namespace']}") == str(len(active["workers_ready"]))
    sampled = int(shown(page, f"sampled-{active['namespace']}"))
    assert 0 < sampled <= active["contacts"]
    assert page.locator("[data-testid=distribution] svg").count() == 1
    assert "scorestream shadow --model" in page.inner_text("[data-testid=no-shadow]")
    assert page.locator("form[action$='/models/promote']").count() == 0
    shot(page, "models")
