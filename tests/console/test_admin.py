"""The console's admin pages in process (Browser, no broker): webhooks with an in-memory
subscription store, the real delivery log fed directly and a recording command sender; models with
the namespaces' replicas fed directly and the promotion's Kafka side injected.

The same pages on the shared real-broker service, in Chromium: ``tests/e2e/console/test_admin.py``.
"""

from __future__ import annotations

import asyncio
import re
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from api.account_replica import AccountReplica
from api.app import create_api
from api.namespaces import Namespaces
from api.view_store import StoreError
from api.webhook_backend import WebhookBackend
from api.webhook_store import DeliveryLog
from console import admin
from console.pages import templates
from kafka_io import promotion
from kafka_io.clients import KafkaConnection
from kafka_io.promotion import Progress
from schemas.model_file import load_model, read_model_source
from schemas.registry import NAMESPACE_PREFIX, Promotion, Registry, encode_record, namespace_record
from schemas.settings import Settings
from schemas.webhooks import AttemptRecord, DeliveryRecord, SigningSecret, SubscriptionRecord, encode
from scorestream import Model, apply_events
from tests.api.routers.test_webhooks import Commands, MemoryStore, resolve
from tests.api.view_bytes import ready_replica, view_bytes
from tests.factories import T0, make_event

ADMIN_KEY = "console-admin-key-0123456789"
READ_KEY = "console-read-key-0123456789"
NOW = T0 + 3_600_000
MODEL = load_model()
CHALLENGER = Model.from_dict({**read_model_source(), "name": "challenger"})
HOOK = "wh_0123456789abcdef01234567"
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def events(contact: str, pages: int) -> list[Any]:
    """``contact`` identified, then ``pages`` page views a minute apart."""
    found = [make_event(kind="identify", user_id=contact, traits={"email": f"{contact}@acme.com"})]
    for n in range(pages):
        found.append(
            make_event(kind="page", event=None, channel="web", user_id=contact, path="/pricing", timestamp_ms=T0 + n)
        )
    return found


ACTIVE_CONTACTS = {"u-1": events("u-1", 1), "u-2": events("u-2", 3), "u-3": events("u-3", 8)}
SHADOW_CONTACTS = {"u-2": events("u-2", 3), "u-3": events("u-3", 8), "u-4": events("u-4", 2)}


def subscription(sub_id: str = HOOK, **fields: Any) -> SubscriptionRecord:
    return SubscriptionRecord(
        id=sub_id,
        url="https://hooks.example.com/in",
        events=["stage.changed"],
        secrets=[SigningSecret(secret="whsec_x", created_ms=T0)],
        created_ms=T0,
        updated_ms=T0,
        description="CRM sync",
        **fields,
    )


def delivery(n: int, status: str, outcomes: list[str], sub_id: str = HOOK) -> DeliveryRecord:
    attempts = [
        AttemptRecord(
            at_ms=T0 + n * 1000 + i,
            outcome=o,  # type: ignore[arg-type]
            latency_ms=12.0,
            status_code=200 if o == "success" else 500 if o == "http_error" else None,
            error=None if o == "success" else "HTTP 500 from the receiver",
        )
        for i, o in enumerate(outcomes)
    ]
    return DeliveryRecord(
        id=f"msg_{n:04d}",
        subscription_id=sub_id,
        type="stage.changed",
        key=f"u-{n}",
        partition=n % 2,
        seq=n,
        body="{}",
        created_ms=T0 + n * 1000,
        updated_ms=T0 + n * 1000 + len(outcomes),
        status=status,  # type: ignore[arg-type]
        attempt_count=len(outcomes),
        attempts=attempts,
    )


class Browser:
    """A browser on ``app`` over ASGI (no server): keeps its cookies, does not follow redirects."""

    def __init__(self, app: FastAPI) -> None:
        self.app, self.cookies = app, httpx.Cookies()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", cookies=self.cookies) as c:
                answer = await c.request(method, path, **kwargs)
                self.cookies = c.cookies
                return answer

        return asyncio.run(go())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


@dataclass
class Console:
    app: FastAPI
    store: MemoryStore
    log: DeliveryLog
    commands: Commands

    def client(self, key: str | None = ADMIN_KEY) -> Browser:
        """A browser signed in with ``key`` (None: not signed in)."""
        client = Browser(self.app)
        if key is not None:
            signed = client.post("/console/sign-in", data={"key": key, "next": "/console"})
            assert signed.status_code == 303, signed.text
        return client

    @property
    def namespaces(self) -> Namespaces:
        found: Namespaces = self.app.state.namespaces
        return found


def csrf(page: str) -> str:
    found = CSRF.search(page)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


def value(page: str, name: str) -> str:
    """The raw value of the ``<data data-k=name>`` the page shows."""
    found = re.search(rf'<data data-k="{re.escape(name)}" value="([^"]*)"', page)
    assert found is not None, f"no {name} on the page"
    return found.group(1)


@pytest.fixture
def console(tmp_path: Path) -> Console:
    settings = Settings(
        api_keys=[SecretStr(f"{ADMIN_KEY}:admin:ops"), SecretStr(f"{READ_KEY}:read:marketing")], data_dir=tmp_path
    )
    store = MemoryStore()
    store.caught_up.set()
    log = DeliveryLog(kafka=KafkaConnection("127.0.0.1:1"), topic="d")
    log.caught_up.set()
    commands = Commands(count=2)
    backend = WebhookBackend(store=store, deliveries=log, commands=commands, resolve=resolve)
    accounts = AccountReplica(kafka=KafkaConnection("127.0.0.1:1"), changelog_topic="a")
    accounts.caught_up.set()
    app = create_api(
        settings,
        model=MODEL,
        replica=ready_replica(MODEL, ACTIVE_CONTACTS, T0),
        accounts=accounts,
        clock=lambda: NOW,
        webhooks=backend,
    )
    return Console(app, store, log, commands)


@pytest.fixture
def hook(console: Console) -> Console:
    """A subscription with 3 delivered, 2 failed and 2 pending deliveries (one of them retrying)."""
    console.store.put(HOOK, subscription(failing_since_ms=T0 + 5000))
    for record in (
        delivery(1, "succeeded", ["success"]),
        delivery(2, "succeeded", ["http_error", "success"]),
        delivery(3, "succeeded", ["success"]),
        delivery(4, "failed", ["http_error", "http_error", "timeout"]),
        delivery(5, "failed", ["connection_error"]),
        delivery(6, "pending", ["http_error"]),
        delivery(7, "pending", []),
    ):
        console.log.apply(record.id.encode(), encode(record))
    return console


SHADOW_PROGRESS = Progress(read=90, total=100, internal=5)  # 15 records behind


@pytest.fixture
def shadow(console: Console, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Console]:
    """Namespace ``v2`` registered with the challenger model, holding u-2, u-3 and u-4; its workers
    :data:`SHADOW_PROGRESS` (what Kafka would say)."""

    async def progress(settings: Settings, namespace: str, registry: Registry) -> Progress:
        assert namespace == "v2"
        return SHADOW_PROGRESS

    monkeypatch.setattr(admin, "namespace_progress", progress)
    model_file = tmp_path / "challenger.yaml"
    model_file.write_text("extends: default\nname: challenger\n")
    record = namespace_record("v2", model_file, T0)
    console.namespaces.apply(f"{NAMESPACE_PREFIX}v2".encode(), encode_record(record))
    replica = console.namespaces.pick("v2").replica
    for contact, evs in SHADOW_CONTACTS.items():
        replica.apply(contact.encode(), view_bytes(apply_events(None, contact, evs, CHALLENGER), CHALLENGER))
    replica.caught_up.set()
    yield console


# --- who may see and do what -------------------------------------------------------------------------


ADMIN_GETS = ["/console/webhooks", "/console/models"]
ADMIN_POSTS = [
    (f"/console/webhooks/{HOOK}/deliveries/msg_0004/retry", {}),
    (f"/console/webhooks/{HOOK}/retry-failed", {}),
    ("/console/models/promote", {"namespace": "v2", "version": CHALLENGER.version, "active": "scorestream"}),
]


@pytest.mark.parametrize("path", ADMIN_GETS)
def test_a_read_key_gets_403_on_every_admin_page(hook: Console, path: str) -> None:
    answer = hook.client(READ_KEY).get(path)
    assert answer.status_code == 403
    assert "admin" in answer.text and "text/html" in answer.headers["content-type"]


@pytest.mark.parametrize("path", ADMIN_GETS)
def test_signed_out_browsers_are_sent_to_sign_in(hook: Console, path: str) -> None:
    answer = hook.client(None).get(path)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/console/sign-in?next=")


@pytest.mark.parametrize(("path", "fields"), ADMIN_POSTS)
def test_a_read_key_gets_403_on_every_admin_action(hook: Console, path: str, fields: dict[str, str]) -> None:
    reader = hook.client(READ_KEY)
    token = csrf(reader.get("/console").text)  # the read session's own valid token
    answer = reader.post(path, data={"csrf": token, **fields})
    assert answer.status_code == 403
    assert hook.commands.sent == []


@pytest.mark.parametrize(("path", "fields"), ADMIN_POSTS)
def test_an_admin_action_without_the_csrf_token_is_refused(hook: Console, path: str, fields: dict[str, str]) -> None:
    browser = hook.client()
    assert browser.post(path, data=fields).status_code == 403
    assert browser.post(path, data={"csrf": "0" * 64, **fields}).status_code == 403
    assert hook.commands.sent == []


@pytest.mark.parametrize(("path", "fields"), ADMIN_POSTS)
def test_an_admin_action_from_another_site_is_refused(hook: Console, path: str, fields: dict[str, str]) -> None:
    browser = hook.client()
    token = csrf(browser.get("/console/webhooks").text)
    answer = browser.post(path, data={"csrf": token, **fields}, headers={"Origin": "https://evil.example.com"})
    assert answer.status_code == 403 and "another site" in answer.text
    assert hook.commands.sent == []


def test_the_nav_shows_admin_pages_to_admin_keys_only(hook: Console) -> None:
    admin_nav = hook.client().get("/console/webhooks").text
    assert 'href="/console/webhooks"' in admin_nav and 'href="/console/models"' in admin_nav
    read_nav = hook.client(READ_KEY).get("/console").text
    assert "/console/webhooks" not in read_nav and "/console/models" not in read_nav


# --- webhooks ------------------------------------------------------------------------------------------


def test_the_webhooks_page_shows_each_subscriptions_delivery_health(hook: Console) -> None:
    page = hook.client().get("/console/webhooks")
    assert page.status_code == 200
    text = page.text
    assert value(text, f"delivered-{HOOK}") == "3"
    assert value(text, f"failed-{HOOK}") == "2"
    assert value(text, f"pending-{HOOK}") == "2"
    assert float(value(text, f"success-rate-{HOOK}")) == pytest.approx(3 / 5)
    assert "CRM sync" in text and "https://hooks.example.com/in" in text and "failing since" in text
    # recent failures: the failed ones and the one retrying, newest first; not the untried pending one
    shown = re.findall(r'data-testid="failure-(msg_\d+)"', text)
    assert shown == ["msg_0006", "msg_0005", "msg_0004"]
    assert value(text, "attempts-msg_0004") == "3"
    assert "HTTP 500" in text and "connection error" in text
    assert 'data-testid="retry-failed"' in text


def test_health_counts_equal_the_delivery_list_of_the_api(hook: Console) -> None:
    api = Browser(hook.app)
    listed = api.get(f"/v1/webhooks/{HOOK}/deliveries?limit=1000", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    statuses = [d["status"] for d in listed.json()["data"]]
    health = admin.health_of(hook.log.page(HOOK, None, admin.LOG_READ, None))
    assert (health.delivered, health.failed, health.pending) == (
        statuses.count("succeeded"),
        statuses.count("failed"),
        statuses.count("pending"),
    )
    assert health.last_success_ms == T0 + 3000  # delivery 3's attempt
    assert health.last_failure_ms == T0 + 6000  # delivery 6's attempt


def test_retry_queues_the_same_command_as_the_api_and_comes_back_with_a_message(hook: Console) -> None:
    browser = hook.client()
    token = csrf(browser.get("/console/webhooks").text)
    answer = browser.post(f"/console/webhooks/{HOOK}/deliveries/msg_0005/retry", data={"csrf": token})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/webhooks?flash=retry&id=msg_0005"
    [(partition, command)] = hook.commands.sent
    assert (partition, command.op, command.subscription_id, command.delivery_id) == (1, "retry", HOOK, "msg_0005")
    assert command.since_ms == T0 + 5000 and command.requested_ms == NOW
    back = browser.get(answer.headers["location"])
    assert "Retry queued for delivery msg_0005" in back.text


def test_retry_all_failed_queues_a_command_per_partition(hook: Console) -> None:
    browser = hook.client()
    token = csrf(browser.get("/console/webhooks").text)
    answer = browser.post(f"/console/webhooks/{HOOK}/retry-failed", data={"csrf": token})
    assert answer.status_code == 303 and "flash=retry-failed" in answer.headers["location"]
    assert [(p, c.op, c.since_ms) for p, c in hook.commands.sent] == [
        (0, "retry_failed", NOW - 86_400_000),
        (1, "retry_failed", NOW - 86_400_000),
    ]


def test_retrying_an_unknown_delivery_says_so_in_html(hook: Console) -> None:
    browser = hook.client()
    token = csrf(browser.get("/console/webhooks").text)
    answer = browser.post(f"/console/webhooks/{HOOK}/deliveries/msg_nope/retry", data={"csrf": token})
    assert answer.status_code == 404 and "text/html" in answer.headers["content-type"]
    assert "no delivery &#39;msg_nope&#39;" in answer.text or "no delivery 'msg_nope'" in answer.text
    answer = browser.post("/console/webhooks/wh_nope/retry-failed", data={"csrf": token})
    assert answer.status_code == 404 and "no webhook subscription" in answer.text
    assert hook.commands.sent == []


def test_an_unknown_flash_code_shows_nothing(hook: Console) -> None:
    text = hook.client().get("/console/webhooks?flash=<script>&id=x").text
    assert 'data-testid="flash"' not in text and "<script>" not in text.split("</head>")[1]
    long = hook.client().get("/console/models", params={"flash": "promoted" * 50, "id": "x" * 5000})
    assert long.status_code == 200 and 'data-testid="flash"' not in long.text
    cut = hook.client().get("/console/models", params={"flash": "promoted", "id": "<b>" + "x" * 5000})
    assert cut.status_code == 200 and "&lt;b&gt;" + "x" * (admin.MAX_ID - 3) + " is now" in cut.text


def test_no_subscription_shows_what_to_do(console: Console) -> None:
    text = console.client().get("/console/webhooks").text
    assert 'data-testid="empty"' in text and "POST /v1/webhooks" in text


def test_subscriptions_still_loading_is_said_not_a_500(console: Console) -> None:
    console.store.caught_up.clear()
    page = console.client().get("/console/webhooks")
    assert page.status_code == 200 and "still loading webhook subscriptions" in page.text


def test_a_subscription_without_deliveries_says_so(console: Console) -> None:
    console.store.put(HOOK, subscription())
    text = console.client().get("/console/webhooks").text
    assert 'data-testid="no-deliveries"' in text and value(text, f"delivered-{HOOK}") == "0"


# --- models -------------------------------------------------------------------------------------------


def test_the_models_page_with_the_active_model_only_says_how_to_start_a_shadow(console: Console) -> None:
    text = console.client().get("/console/models").text
    assert 'data-testid="model-scorestream"' in text and 'data-testid="no-shadow"' in text
    assert "scorestream shadow --model &lt;file&gt; --name &lt;name&gt;" in text
    assert value(text, "contacts-scorestream") == "3" and value(text, "sampled-scorestream") == "3"
    assert "<svg" in text  # the distribution
    assert 'action="/console/models/promote"' not in text


def test_the_models_page_shows_the_shadow_beside_the_active_model(shadow: Console) -> None:
    browser = shadow.client()
    text = browser.get("/console/models").text
    models = Browser(shadow.app).get("/v1/models", headers={"Authorization": f"Bearer {READ_KEY}"}).json()
    for m in models["models"]:
        assert value(text, f"contacts-{m['namespace']}") == str(m["contacts"])
        assert f'data-testid="model-{m["namespace"]}"' in text and m["model_version"] in text
    assert value(text, "sampled-v2") == "3"
    # the matrix: u-2 and u-3 in both; the same lifecycle, so every one stays in its stage
    assert value(text, "matrix-both-v2") == "2" and value(text, "matrix-moved-v2") == "0"
    cells = {k: int(v) for k, v in re.findall(r'data-k="matrix-v2-([^"]+)" value="(\d+)"', text)}
    assert sum(cells.values()) == 2
    assert 'data-testid="promote-v2"' in text and f'value="{CHALLENGER.version}"' in text
    assert value(text, "behind-v2") == "15" and "90 of 100 source events read" in text
    assert 'data-confirm="Make v2' in text


def test_a_shadow_whose_progress_kafka_cannot_give_is_unknown(shadow: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_coordinator(settings: Settings, namespace: str, registry: Registry) -> Progress:
        raise RuntimeError("no coordinator")

    monkeypatch.setattr(admin, "namespace_progress", no_coordinator)
    page = shadow.client().get("/console/models")
    assert page.status_code == 200 and "unknown: is its worker running?" in page.text
    assert 'data-k="behind-v2"' not in page.text


def test_the_sample_scores_are_the_apis_engagement_scores(shadow: Console) -> None:
    api = Browser(shadow.app)
    headers = {"Authorization": f"Bearer {READ_KEY}"}
    for readers in shadow.namespaces.live():
        sample = admin.take_sample(readers, NOW)
        assert sample.scores, readers.namespace
        for contact, score in sample.scores.items():
            body = api.get(f"/v1/contacts/{contact}?model={readers.namespace}", headers=headers).json()
            assert body["engagement"]["score"] == score
            assert sample.stages[contact] == (body["stage"]["name"] if body["stage"] else admin.NO_STAGE)


def test_the_models_page_compares_each_score_group_with_the_active_models(shadow: Console) -> None:
    """Each group's sampled scores are the API's; the page shows their median and mean per model
    and, for the shadow, its mean's difference from the active model's group of the same id."""
    api = Browser(shadow.app)
    headers = {"Authorization": f"Bearer {READ_KEY}"}
    samples = []
    for readers in shadow.namespaces.live():
        sample = admin.take_sample(readers, NOW)
        assert list(sample.groups) == [g.id for g in readers.model.groups] and sample.groups
        for contact in sample.scores:
            body = api.get(f"/v1/contacts/{contact}?model={readers.namespace}", headers=headers).json()
            assert {g["id"]: g["score"] for g in body["groups"]} == {g: v[contact] for g, v in sample.groups.items()}
        samples.append(sample)
    page = shadow.client().get("/console/models").text
    active, challenger = samples
    deltas = []
    for group_id, scores in active.groups.items():
        mean = statistics.fmean(scores.values())
        assert float(value(page, f"group-mean-scorestream-{group_id}")) == pytest.approx(mean)
        assert float(value(page, f"group-median-scorestream-{group_id}")) == statistics.median(scores.values())
        delta = statistics.fmean(challenger.groups[group_id].values()) - mean
        assert float(value(page, f"group-delta-v2-{group_id}")) == pytest.approx(delta)
        deltas.append(delta)
    assert any(abs(d) > 1 for d in deltas), "the samples differ in some group"
    assert "group-delta-scorestream-" not in page  # the active model is not compared with itself


def test_the_sample_is_capped_and_says_so(console: Console) -> None:
    readers = console.namespaces.active()
    sample = admin.take_sample(readers, NOW, size=2)
    assert len(sample.scores) == 2 and not sample.complete
    assert admin.take_sample(readers, NOW, size=3).complete


def test_the_sample_is_kept_a_minute(console: Console) -> None:
    browser = console.client()
    assert value(browser.get("/console/models").text, "sampled-scorestream") == "3"
    replica = console.namespaces.active().replica
    replica.apply(b"u-9", view_bytes(apply_events(None, "u-9", events("u-9", 2), MODEL), MODEL))
    assert value(browser.get("/console/models").text, "sampled-scorestream") == "3"  # the kept sample
    assert value(browser.get("/console/models").text, "contacts-scorestream") == "4"  # GET /v1/models: now
    console.app.state.clock = lambda: NOW + admin.SAMPLE_TTL_MS
    assert value(browser.get("/console/models").text, "sampled-scorestream") == "4"


def test_a_store_that_cannot_be_read_is_said_not_a_500(shadow: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    def closed(readers: Any, now: int, size: int = admin.SAMPLE) -> admin.Sample:
        if readers.namespace == "v2":
            raise StoreError("view store /x: closed")
        return real(readers, now, size)

    real = admin.take_sample
    monkeypatch.setattr(admin, "take_sample", closed)
    page = shadow.client().get("/console/models")
    assert page.status_code == 200 and "v2: view store /x: closed" in page.text
    assert value(page.text, "sampled-v2") == "0" and value(page.text, "sampled-scorestream") == "3"


def test_histograms_share_their_bins() -> None:
    a = admin.Sample("a", "m@1", NOW, scores={"x": 0.0, "y": 9.5, "z": 40.0})
    b = admin.Sample("b", "m@2", NOW, scores={"x": 12.0})
    bins = admin.bins_of([a, b], tail=0.0)
    assert bins is not None and bins.step == 5.0 and bins.clipped_above is None and bins.clipped_below is None
    series = admin.histograms([a, b], bins)
    assert [lo for _, lo, _ in series["a"]] == [lo for _, lo, _ in series["b"]]
    assert sum(n for n, _, _ in series["a"]) == 3 and sum(n for n, _, _ in series["b"]) == 1
    for name, sample in (("a", a), ("b", b)):
        for score in sample.scores.values():
            n, lo, hi = series[name][bins.index(score)]
            assert n >= 1 and (lo <= score < hi or score == hi == series[name][-1][2])
    assert admin.bins_of([admin.Sample("a", "m@1", NOW)]) is None
    assert admin.histograms([admin.Sample("a", "m@1", NOW)], None) == {"a": []}


def test_a_few_outliers_do_not_squeeze_everyone_into_one_bar() -> None:
    scores = {f"c{i}": float(i % 50) for i in range(1000)} | {"whale": 3000.0, "troll": -400.0}
    sample = admin.Sample("a", "m@1", NOW, scores=scores)
    bins = admin.bins_of([sample])
    assert bins is not None and bins.step <= 5.0  # bands over the bulk (0-49), not over -400..3000
    assert bins.clipped_above is not None and bins.clipped_below is not None
    series = admin.histograms([sample], bins)["a"]
    assert sum(n for n, _, _ in series) == len(scores)  # the outliers counted in the end bands
    assert series[-1][0] >= 1 and series[0][0] >= 1


def test_the_summary_figures() -> None:
    sample = admin.Sample("a", "m@1", NOW, scores={f"c{i}": float(i) for i in range(1, 11)})
    assert admin.summary_of(sample) == admin.Summary(median=5.5, p90=9.0, mean=5.5)
    assert admin.summary_of(admin.Sample("a", "m@1", NOW)) == admin.Summary(None, None, None)


def test_the_stage_matrix_counts_contacts_in_both_by_active_and_shadow_stage() -> None:
    active = admin.Sample("a", "m@1", NOW, stages={"x": "lead", "y": "mql", "z": "lead", "only-a": "sql"})
    shadow = admin.Sample("b", "m@2", NOW, stages={"x": "mql", "y": "mql", "z": "lead", "only-b": "lead"})
    matrix = admin.stage_matrix(active, shadow, ["subscriber", "lead", "mql", "sql"])
    assert matrix.rows == ["lead", "mql"] and matrix.columns == ["lead", "mql"]
    assert matrix.counts == {("lead", "mql"): 1, ("mql", "mql"): 1, ("lead", "lead"): 1}
    assert (matrix.both, matrix.moved) == (3, 1)


def test_the_matrix_on_the_page(console: Console) -> None:
    matrix = admin.Matrix("v2", ["lead", "mql"], ["lead", "mql"], {("lead", "mql"): 4, ("mql", "mql"): 2}, 6)
    context: dict[str, Any] = {
        "models": [],
        "samples": {},
        "summaries": {},
        "chart": "",
        "bins": None,
        "matrices": [matrix],
    }
    text = templates.get_template("models.html").render(
        request=None, viewer=None, nav=[], now_ms=NOW, active="scorestream", sample_size=1, max_lag=1, **context
    )
    assert value(text, "matrix-v2-lead-mql") == "4" and value(text, "matrix-v2-mql-lead") == "0"
    assert value(text, "matrix-moved-v2") == "4" and value(text, "matrix-both-v2") == "6"


class Registry_:
    """The promotion's Kafka side: the API's own registry view, a caught-up progress, writes recorded."""

    def __init__(self, namespaces: Namespaces, progress: Progress) -> None:
        self.namespaces, self.progress = namespaces, progress
        self.written: list[Promotion] = []

    async def progress_of(self, settings: Settings, namespace: str, registry: Registry) -> Progress:
        return self.progress

    async def write(self, settings: Settings, p: Promotion) -> None:
        self.written.append(p)


@pytest.fixture
def kafka(shadow: Console, monkeypatch: pytest.MonkeyPatch) -> Registry_:
    fake = Registry_(shadow.namespaces, Progress(read=10, total=10, internal=0))
    real = promotion.promote_namespace

    async def promote(*args: Any, **kwargs: Any) -> Any:
        return await real(
            *args, registry=shadow.namespaces.registry, progress_of=fake.progress_of, write=fake.write, **kwargs
        )

    monkeypatch.setattr(admin, "promote_namespace", promote)
    return fake


def promote_form(browser: Browser, **override: str) -> dict[str, str]:
    text = browser.get("/console/models").text
    return {"csrf": csrf(text), "namespace": "v2", "version": CHALLENGER.version, "active": "scorestream", **override}


def test_promote_writes_the_promotion_after_the_checks(shadow: Console, kafka: Registry_) -> None:
    browser = shadow.client()
    answer = browser.post("/console/models/promote", data=promote_form(browser))
    assert answer.status_code == 303 and answer.headers["location"] == "/console/models?flash=promoted&id=v2"
    [written] = kafka.written
    assert (written.namespace, written.previous, written.promoted_ms) == ("v2", "scorestream", NOW)
    assert written.from_ms == NOW + promotion.DEFAULT_DELAY_MS


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ({"version": "challenger@0000"}, "v2 now runs challenger@"),
        ({"active": "v0"}, "the active namespace is now scorestream, not v0"),
        ({"namespace": "ghost"}, "ghost is not a running namespace"),
        ({"namespace": "scorestream"}, "scorestream is already the active model"),
        ({"namespace": ""}, "the form names no namespace"),
    ],
    ids=["stale-version", "stale-active", "unknown", "active", "missing"],
)
def test_promote_refuses_a_stale_or_unknown_namespace(
    shadow: Console, kafka: Registry_, override: dict[str, str], said: str
) -> None:
    browser = shadow.client()
    answer = browser.post("/console/models/promote", data=promote_form(browser, **override))
    assert answer.status_code == 409 and said in answer.text and 'data-testid="error"' in answer.text
    assert kafka.written == []


def test_promote_refuses_a_shadow_behind(shadow: Console, kafka: Registry_) -> None:
    kafka.progress = Progress(read=10, total=20_011, internal=0)
    browser = shadow.client()
    answer = browser.post("/console/models/promote", data=promote_form(browser))
    assert answer.status_code == 409 and "20001 records behind" in answer.text
    assert kafka.written == []


def test_retired_namespaces_are_not_shown(shadow: Console) -> None:
    record = msgspec.structs.replace(namespace_record("v2", None, T0), retired_ms=NOW)
    shadow.namespaces.apply(f"{NAMESPACE_PREFIX}v2".encode(), encode_record(record))
    text = shadow.client().get("/console/models").text
    assert 'data-testid="model-v2"' not in text and 'data-testid="no-shadow"' in text
