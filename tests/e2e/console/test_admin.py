"""The admin pages in a real Chromium on the shared deployment: Webhooks and Models.

Webhooks: a subscription of this module's own (a unique description) is made over the API, pointing
at a local receiver that always answers 500; a dispatcher of this module's own (the shared
deployment runs none) delivers two test sends to it, which fail until their retry schedule is
spent. The page shows the subscription with the delivery log's counts (equal to the API's delivery
list), its recent failures, and a Retry button that makes the dispatcher send the delivery again: a
new manual attempt in the API's delivery log and a new request at the receiver. A read key's
session sees no admin entry and is refused (403) when it posts the retry form's fields.

Models on the shared deployment: the active namespace only (a shadow would run a second worker on
the shared machine): the figures shown equal ``GET /v1/models``, the empty state says how to start a
shadow. The side-by-side view is shown by an API of this module's own, served in process (no
broker): 60 contacts folded by the default model and by a challenger that qualifies marketing leads
earlier, fed to the two namespaces' replicas; every figure of the page (contacts, medians, the stage
matrix's cells) equals what that API answers for ``GET /v1/models`` and ``GET /v1/contacts/{id}``,
and Promote asks for a confirmation before it posts (the promotion's Kafka side is a recorder).
"""

from __future__ import annotations

import copy
import statistics
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from playwright.sync_api import Browser, Dialog, Page
from pydantic import SecretStr

from api.account_replica import AccountReplica
from api.app import create_api
from api.namespaces import Namespaces
from api.replica import Replica, WorkerStatus
from console import admin
from kafka_io import promotion
from kafka_io.clients import KafkaConnection
from kafka_io.promotion import Progress, Promoted
from schemas.model_file import read_model_source
from schemas.registry import NAMESPACE_PREFIX, Promotion, encode_record, namespace_record
from schemas.settings import Settings
from scorestream import Event, Model, fold
from tests.api.view_bytes import view_bytes
from tests.e2e.console.conftest import ADMIN_KEY, DESKTOP, PHONE, READ_KEY
from tests.e2e.service import Service, free_port
from tests.factories import T0, make_event
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

        # Retry all failed (asked first): the other failed delivery goes back on its schedule
        other = next(d for d in deliveries(http, hook.id) if d["id"] != delivery_id)
        page.once("dialog", lambda dialog: dialog.accept())
        section.locator("[data-testid=retry-failed] button").click()
        page.wait_for_url(f"**/console/webhooks?flash=retry-failed&id={hook.id}")

        def sent_again() -> bool:
            now = http.get(f"/v1/webhooks/{hook.id}/deliveries/{other['id']}").json()
            return bool(now["attempt_count"] > other["attempt_count"])

        console_service.wait_for(sent_again, timeout=30, interval=0.3)


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
        # every delivery back to failed (an earlier test's retries have run their schedule)
        console_service.wait_for(
            lambda: all(d["status"] == "failed" for d in deliveries(http, hook.id)), timeout=60, interval=0.5
        )
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


# --- a shadow beside the active model, on an API served in process -------------------------------------

DAY = 86_400_000
NOW = T0 + 2 * DAY
TITLES = ["VP Marketing", "Marketing Manager", "Head of Growth", "Intern", None]
SHADOW = "challenger-v2"


def challenger_source() -> dict[str, Any]:
    """The default model, except that a lead is marketing qualified from engagement 25 and fit 20
    (not 40 and 35): the challenger qualifies more leads."""
    source = copy.deepcopy(read_model_source())
    source["name"] = "challenger"
    for transition in source["lifecycle"]["transitions"]:
        if transition["id"] == "marketing-qualified":
            transition["when"] = [
                {"field": "engagement", "op": "gte", "value": 25},
                {"field": "fit", "op": "gte", "value": 20},
            ]
    return source


def contact_events(i: int) -> tuple[str, list[Event]]:
    contact = f"u-{i:03d}"
    traits: dict[str, Any] = {"email": f"{contact}@acme.com"}
    if TITLES[i % 5]:
        traits["title"] = TITLES[i % 5]
    found = [make_event(kind="identify", user_id=contact, traits=traits, timestamp_ms=T0)]
    for n in range(i % 6):
        found.append(
            make_event(
                kind="page", event=None, channel="web", user_id=contact, path="/pricing", timestamp_ms=T0 + n * DAY // 3
            )
        )
    if i % 13 == 0:
        found.append(make_event(event="Demo Requested", channel="web", user_id=contact, timestamp_ms=T0 + 7))
    return contact, found


def fed(replica: Replica, model: Model, contacts: int = 60) -> Replica:
    for i in range(contacts):
        contact, events = contact_events(i)
        state = fold.step(None, contact, [*events, fold.Tick(NOW)], model).state
        assert state is not None
        replica.apply(contact.encode(), view_bytes(state, model))
    replica.caught_up.set()
    replica.workers["w1"] = WorkerStatus(state="ready", model=model.version, at_ms=NOW)
    return replica


@dataclass
class InProcess:
    url: str
    challenger: Model
    written: list[Promotion] = field(default_factory=list)


@pytest.fixture(scope="module")
def shadow_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    """An API with the active model and the shadow ``challenger-v2``, on a port of its own."""
    data = tmp_path_factory.mktemp("console-shadow")
    model_file = data / "challenger.yaml"
    model_file.write_text(yaml.safe_dump(challenger_source()))
    challenger = Model.from_dict(challenger_source())
    settings = Settings(
        api_keys=[SecretStr(f"{ADMIN_KEY}:admin:console-admin"), SecretStr(f"{READ_KEY}:read:console-reader")],
        data_dir=data,
    )
    nowhere = KafkaConnection("127.0.0.1:1")
    accounts = AccountReplica(kafka=nowhere, changelog_topic="a")
    accounts.caught_up.set()
    active = Model.from_dict(read_model_source())
    replica = fed(Replica(kafka=nowhere, views_topic="c", status_topic="s"), active)
    app = create_api(settings, model=active, replica=replica, accounts=accounts, clock=lambda: NOW)
    namespaces: Namespaces = app.state.namespaces
    namespaces.active().population.caught_up.set()
    record = namespace_record(SHADOW, model_file, T0)
    namespaces.apply(f"{NAMESPACE_PREFIX}{SHADOW}".encode(), encode_record(record))
    fed(namespaces.pick(SHADOW).replica, challenger)
    namespaces.pick(SHADOW).accounts.caught_up.set()
    namespaces.pick(SHADOW).population.caught_up.set()
    served = InProcess("", challenger)

    async def write(settings: Settings, done: Promotion) -> None:
        served.written.append(done)

    async def caught_up(*args: Any) -> Progress:
        return Progress(read=10, total=10, internal=0)

    real = promotion.promote_namespace

    async def promote(*args: Any, **kwargs: Any) -> Promoted:
        return await real(*args, registry=namespaces.registry, progress_of=caught_up, write=write, **kwargs)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None))
    thread = threading.Thread(target=server.run, name="console-shadow-api", daemon=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(admin, "promote_namespace", promote)
        patch.setattr(admin, "namespace_progress", caught_up)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "the in-process API did not start"
        served.url = f"http://127.0.0.1:{port}"
        try:
            yield served
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def signed_in(browser: Browser, url: str, key: str) -> tuple[Page, list[str]]:
    """A fresh page signed in on ``url``, and the console and page errors it logs."""
    page = browser.new_context(viewport=DESKTOP).new_page()  # type: ignore[arg-type]
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.goto(f"{url}/console/sign-in")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/console")
    return page, errors


def test_a_shadow_beside_the_active_model_every_figure_as_the_api_answers(
    browser: Browser, shadow_api: InProcess, shot: Callable[..., Any]
) -> None:
    page, errors = signed_in(browser, shadow_api.url, ADMIN_KEY)
    try:
        page.goto(f"{shadow_api.url}/console/models")
        with httpx.Client(base_url=shadow_api.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            models = http.get("/v1/models").json()["models"]
            assert [m["role"] for m in models] == ["active", "shadow"]
            active = models[0]["namespace"]
            scores: dict[str, list[float]] = {}
            stages: dict[str, dict[str, str]] = {}
            for m in models:
                ns = m["namespace"]
                card = page.locator(f'[data-testid="model-{ns}"]')
                assert card.locator("[data-testid=role]").inner_text() == m["role"]
                assert card.locator("[data-testid=version]").inner_text() == m["model_version"]
                assert shown(page, f"contacts-{ns}") == str(m["contacts"]) == "60"
                bodies = [http.get(f"/v1/contacts/u-{i:03d}", params={"model": ns}).json() for i in range(60)]
                scores[ns] = [b["engagement"]["score"] for b in bodies]
                stages[ns] = {b["contact_id"]: b["stage"]["name"] for b in bodies}
                assert float(shown(page, f"median-{ns}")) == pytest.approx(statistics.median(scores[ns]))
                assert float(shown(page, f"mean-{ns}")) == pytest.approx(statistics.fmean(scores[ns]))
        pairs = Counter((stages[active][c], stages[SHADOW][c]) for c in stages[active])
        assert any(a != b for a, b in pairs)  # the challenger moves some contacts
        for (a, b), n in pairs.items():
            assert shown(page, f"matrix-{SHADOW}-{a}-{b}") == str(n)
        assert shown(page, f"matrix-both-{SHADOW}") == "60"
        assert shown(page, f"matrix-moved-{SHADOW}") == str(sum(n for (a, b), n in pairs.items() if a != b))
        assert page.locator("[data-testid=distribution] svg").count() == 1
        assert page.locator("[data-testid=no-shadow]").count() == 0
        assert shown(page, f"behind-{SHADOW}") == "0"
        shot(page, "models-shadow")

        # Promote asks first: dismissed, nothing is posted; accepted, the promotion is written
        button = page.locator(f'[data-testid="promote-{SHADOW}"] button')
        page.once("dialog", lambda dialog: dialog.dismiss())
        button.click()
        page.wait_for_timeout(300)
        assert shadow_api.written == [] and page.url.endswith("/console/models")
        asked: list[str] = []

        def accept(dialog: Dialog) -> None:
            asked.append(dialog.message)
            dialog.accept()

        page.once("dialog", accept)
        button.click()
        page.wait_for_url(f"**/console/models?flash=promoted&id={SHADOW}")
        assert SHADOW in asked[0] and shadow_api.challenger.version in asked[0]
        assert f"{SHADOW} is now the active model" in page.inner_text("[data-testid=flash]")
        [written] = shadow_api.written
        assert (written.namespace, written.previous, written.promoted_ms) == (SHADOW, active, NOW)
    finally:
        page.context.close()
    assert not errors, errors
