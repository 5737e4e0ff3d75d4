"""``/v1/webhooks`` in process, over ASGI, with an in-memory subscription store, a recording command
sender, a fake resolver and the real delivery log fed directly (no Kafka).

The same routes against the real broker (the Kafka store, its read-your-writes, the command and
delivery topics) are covered in ``tests/e2e/test_webhooks_api.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import msgspec
import pytest
from pydantic import ValidationError

from api.app import create_api
from api.replica import Replica
from api.webhook_backend import MANUAL, WebhookBackend
from api.webhook_store import DeliveryLog, KafkaSubscriptionStore, LazyProducer, NotVisible, Written
from kafka_io.clients import KafkaConnection
from schemas.model_file import load_model
from schemas.settings import Settings
from schemas.webhooks import (
    AttemptRecord,
    CommandRecord,
    DeliveryRecord,
    SigningSecret,
    SubscriptionRecord,
    encode,
)
from scorestream import Model
from scorestream.delivery import delivery_id
from tests.grouped import GROUPED_MODEL

KEY = "unit-test-key-0123456789"
NOW = 1_790_000_000_000
HOUR = 3_600_000
DAY = 24 * HOUR
MODEL = load_model()
PUBLIC = "https://hooks.example.com/in"
ADDRESSES = {
    "hooks.example.com": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "rebind.example.com": ["93.184.215.14", "10.0.0.5"],
    "metadata.example.com": ["169.254.169.254"],
    "nat64.example.com": ["64:ff9b::7f00:1"],  # an AAAA that reaches 127.0.0.1 through NAT64
    "sixtofour.example.com": ["2002:a9fe:a9fe::1"],  # 6to4 of 169.254.169.254
    "dns64.example.com": ["64:ff9b::5db8:d70e"],  # NAT64 of the public 93.184.215.14: allowed
}


@dataclass
class MemoryStore:
    """The subscription store's interface over a dict: writes are visible at once."""

    records: dict[str, SubscriptionRecord] = field(default_factory=dict)
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None
    writes: list[tuple[str, SubscriptionRecord | None]] = field(default_factory=list)
    # called before a write lands: stands for another process writing in between
    before_write: Callable[[MemoryStore, str], None] | None = None
    invisible: bool = False

    def get(self, sub_id: str) -> SubscriptionRecord | None:
        return self.records.get(sub_id)

    def all(self) -> list[SubscriptionRecord]:
        return list(self.records.values())

    def put(self, sub_id: str, record: SubscriptionRecord | None) -> SubscriptionRecord | None:
        previous = self.records.pop(sub_id, None)
        if record is not None:
            self.records[sub_id] = record
        return previous

    async def write(self, sub_id: str, record: SubscriptionRecord | None) -> Written:
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook(self, sub_id)
        self.writes.append((sub_id, record))
        previous = self.put(sub_id, record)
        if self.invisible:
            raise NotVisible("not read back in time")
        return Written(previous)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


@dataclass
class Commands:
    sent: list[tuple[int, CommandRecord]] = field(default_factory=list)
    count: int = 4

    async def partitions(self) -> int:
        return self.count

    async def send(self, partition: int, command: CommandRecord) -> None:
        self.sent.append((partition, command))


async def resolve(host: str, port: int) -> list[str]:
    with contextlib.suppress(ValueError):
        return [str(ipaddress.ip_address(host))]  # an IP literal resolves to itself, as getaddrinfo does
    if host not in ADDRESSES:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return ADDRESSES[host]


@dataclass
class Api:
    store: MemoryStore
    log: DeliveryLog
    commands: Commands
    settings: Settings
    model: Model = MODEL

    def call(self, *requests: tuple[str, str, dict[str, Any] | None]) -> list[httpx.Response]:
        """Send the requests in order (``(method, path, json body or None)``) with the API key."""
        contacts = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
        backend = WebhookBackend(store=self.store, deliveries=self.log, commands=self.commands, resolve=resolve)
        app = create_api(self.settings, model=self.model, replica=contacts, clock=lambda: NOW, webhooks=backend)
        headers = {"Authorization": f"Bearer {KEY}"}

        async def go() -> list[httpx.Response]:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
                return [await client.request(m, p, json=body, headers=headers) for m, p, body in requests]

        return asyncio.run(go())

    def one(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.call((method, path, body))[0]

    def create(self, **fields: Any) -> dict[str, Any]:
        r = self.one("POST", "/v1/webhooks", {"url": PUBLIC, "events": ["*"], **fields})
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body


def make_api(allow_private: bool = False) -> Api:
    store = MemoryStore()
    store.caught_up.set()
    log = DeliveryLog(kafka=KafkaConnection("127.0.0.1:1"), topic="d")
    log.caught_up.set()
    settings = Settings(api_keys=KEY, webhook_allow_private=allow_private)  # type: ignore[arg-type]
    return Api(store, log, Commands(), settings)


@pytest.fixture
def api() -> Api:
    return make_api()


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["code"]


def test_create_shows_the_secret_once(api: Api) -> None:
    created = api.create(events=["stage.changed", "score.threshold_crossed"], stages=["mql"], description="CRM")
    assert created["id"].startswith("wh_") and created["secret"].startswith("whsec_")
    assert created["events"] == ["score.threshold_crossed", "stage.changed"]
    assert created["stages"] == ["mql"] and created["segments"] is None and created["enabled"] is True
    assert created["created_at"] == created["updated_at"] == iso(NOW)
    stored = api.store.records[created["id"]]
    assert [s.secret for s in stored.secrets] == [created["secret"]] and stored.revision == 1

    got, listed = api.call(("GET", f"/v1/webhooks/{created['id']}", None), ("GET", "/v1/webhooks", None))
    assert got.status_code == 200 and listed.status_code == 200
    assert got.json() == {k: v for k, v in created.items() if k != "secret"}
    assert [w["id"] for w in listed.json()["data"]] == [created["id"]]
    for r in (got, listed):
        assert created["secret"] not in r.text and '"secret"' not in r.text


def test_two_creates_get_different_ids_and_secrets(api: Api) -> None:
    a, b = api.create(), api.create()
    assert a["id"] != b["id"] and a["secret"] != b["secret"]
    assert len(api.one("GET", "/v1/webhooks").json()["data"]) == 2


def test_created_disabled(api: Api) -> None:
    created = api.create(enabled=False)
    assert created["enabled"] is False and created["disabled_reason"] == MANUAL
    assert created["disabled_at"] is not None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/in", "must use HTTPS"),
        ("https://127.0.0.1/in", "loopback"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[::1]:8443/in", "loopback"),
        ("https://localhost/in", "local name"),
        ("https://metadata.example.com/in", "metadata.example.com resolves to a non-public address"),
        ("https://rebind.example.com/in", "10.0.0.5 is a private address"),
        ("https://nowhere.example.com/in", "cannot resolve nowhere.example.com"),
        ("https://user:pw@hooks.example.com/in", "credentials"),
        ("ftp://hooks.example.com/in", "absolute http(s)"),
    ],
)
def test_refused_urls(api: Api, url: str, reason: str) -> None:
    r = api.one("POST", "/v1/webhooks", {"url": url, "events": ["*"]})
    assert error(r) == (422, "invalid_url")
    assert reason in r.json()["detail"]
    assert api.store.writes == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://[64:ff9b::7f00:1]/in", "127.0.0.1 is a loopback address (embedded in 64:ff9b::7f00:1)"),
        ("https://[64:ff9b::a9fe:a9fe]/in", "169.254.169.254 is a link-local address"),
        ("https://[64:ff9b:1::808:808]/in", "local-use NAT64"),
        ("https://[::7f00:1]/in", "IPv4-compatible"),
        ("https://[::127.0.0.1]/in", "IPv4-compatible"),
        ("https://[::ffff:127.0.0.1]/in", "127.0.0.1 is a loopback address"),
        ("https://[::ffff:10.0.0.1]/in", "10.0.0.1 is a private address"),
        ("https://[::ffff:0:7f00:1]/in", "SIIT"),
        ("https://[2002:7f00:1::]/in", "127.0.0.1 is a loopback address (embedded in 2002:7f00:1::)"),
        ("https://[2001::1]/in", "Teredo"),
        ("https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/in", "Teredo"),
        ("https://[fec0::1]/in", "site-local"),
        ("https://nat64.example.com/in", "nat64.example.com resolves to a non-public address: 127.0.0.1"),
        ("https://sixtofour.example.com/in", "169.254.169.254 is a link-local address"),
    ],
)
def test_ipv6_wrappings_of_private_addresses_are_refused(api: Api, url: str, reason: str) -> None:
    r = api.one("POST", "/v1/webhooks", {"url": url, "events": ["*"]})
    assert error(r) == (422, "invalid_url")
    assert reason in r.json()["detail"]
    assert api.store.writes == []


def test_ipv6_wrappings_of_public_addresses_are_accepted(api: Api) -> None:
    for url in ("https://[64:ff9b::808:808]/in", "https://[2002:808:808::1]/in", "https://dns64.example.com/in"):
        assert api.one("POST", "/v1/webhooks", {"url": url, "events": ["*"]}).status_code == 201, url


def test_private_webhooks_are_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="SCORESTREAM_WEBHOOK_ALLOW_PRIVATE=true is refused"):
        Settings(env="production", api_keys=KEY, webhook_allow_private=True)  # type: ignore[arg-type]
    assert Settings(env="production", api_keys=KEY).webhook_allow_private is False  # type: ignore[arg-type]
    assert Settings(env="development", webhook_allow_private=True).webhook_allow_private is True


def test_private_urls_when_allowed() -> None:
    api = make_api(allow_private=True)
    for url in ("http://127.0.0.1:9000/in", "http://nowhere.example.com/in"):  # no lookup when allowed
        assert api.one("POST", "/v1/webhooks", {"url": url, "events": ["*"]}).status_code == 201


def test_bad_bodies_are_invalid_requests(api: Api) -> None:
    bodies: list[dict[str, Any]] = [
        {"url": PUBLIC, "events": ["no.such.type"]},
        {"url": PUBLIC, "events": []},
        {"url": PUBLIC},
        {"url": PUBLIC, "events": ["*"], "secret": "whsec_mine"},
    ]
    for body in bodies:
        r = api.one("POST", "/v1/webhooks", body)
        assert error(r) == (422, "invalid_request"), body
    assert "unknown event types" in api.one("POST", "/v1/webhooks", bodies[0]).json()["detail"]


def test_routes_need_the_api_key(api: Api) -> None:
    contacts = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    backend = WebhookBackend(store=api.store, deliveries=api.log, commands=api.commands, resolve=resolve)
    app = create_api(api.settings, model=MODEL, replica=contacts, webhooks=backend)

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return [await client.get("/v1/webhooks"), await client.post("/v1/webhooks", json={})]

    assert [error(r) for r in asyncio.run(go())] == [(401, "unauthorized"), (401, "unauthorized")]


def test_patch_changes_only_the_given_fields(api: Api) -> None:
    created = api.create(events=["stage.changed"], stages=["mql"], segments=["champions"], description="a")
    path = f"/v1/webhooks/{created['id']}"
    r = api.one("PATCH", path, {"description": "b", "stages": None})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["description"] == "b" and body["stages"] is None
    assert body["segments"] == ["champions"] and body["events"] == ["stage.changed"] and body["url"] == PUBLIC
    stored = api.store.records[created["id"]]
    assert stored.revision == 2 and stored.secrets[0].secret == created["secret"]

    writes = len(api.store.writes)
    assert api.one("PATCH", path, {}).json() == body  # nothing given, nothing written
    assert api.one("PATCH", path, {"description": "b"}).status_code == 200  # nothing changes
    assert len(api.store.writes) == writes and api.store.records[created["id"]].revision == 2


def test_a_group_filter_is_kept_and_checked_against_the_models_groups(api: Api) -> None:
    api.model = GROUPED_MODEL
    created = api.create(events=["score.threshold_crossed"], groups=["hardware"])
    assert created["groups"] == ["hardware"]
    stored = api.store.records[created["id"]]
    assert stored.groups == ["hardware"] and stored.filter().groups == frozenset({"hardware"})
    path = f"/v1/webhooks/{created['id']}"
    assert api.one("PATCH", path, {"groups": ["hardware", "training"]}).json()["groups"] == ["hardware", "training"]
    assert api.one("PATCH", path, {"groups": None}).json()["groups"] is None
    assert api.store.records[created["id"]].filter().groups is None

    refused = api.one("POST", "/v1/webhooks", {"url": PUBLIC, "events": ["*"], "groups": ["hardwear"]})
    assert error(refused) == (422, "invalid_request")
    problem = refused.json()
    assert "'hardwear'" in problem["detail"] and all(g.id in problem["detail"] for g in GROUPED_MODEL.groups)
    assert problem["errors"][0]["pointer"] == "#/groups"
    assert error(api.one("PATCH", path, {"groups": ["nope"]})) == (422, "invalid_request")
    assert api.store.records[created["id"]].groups is None
    api.model = Model.from_dict(
        {"name": "bare", "engagement": {"rules": [{"id": "p", "match": {"type": "page"}, "points": 1}]}}
    )
    assert "none" in api.one("POST", "/v1/webhooks", {"url": PUBLIC, "events": ["*"], "groups": ["x"]}).json()["detail"]


def test_patch_refusals(api: Api) -> None:
    sub = api.create()["id"]
    path = f"/v1/webhooks/{sub}"
    assert error(api.one("PATCH", path, {"url": "https://127.0.0.1/x"})) == (422, "invalid_url")
    for body in ({"url": None}, {"events": None}, {"enabled": None}, {"events": ["nope"]}, {"id": "wh_x"}):
        assert error(api.one("PATCH", path, body)) == (422, "invalid_request"), body
    assert error(api.one("PATCH", "/v1/webhooks/wh_nope", {"description": "x"})) == (404, "not_found")
    assert api.store.records[sub].revision == 1


def test_enabling_forgets_failures(api: Api) -> None:
    sub = api.create()["id"]
    dispatcher_disabled = msgspec.structs.replace(
        api.store.records[sub],
        enabled=False,
        failing_since_ms=NOW - 100 * HOUR,
        disabled_ms=NOW - HOUR,
        disabled_reason="failing for 5 days",
        revision=2,
    )
    api.store.put(sub, dispatcher_disabled)
    shown = api.one("GET", f"/v1/webhooks/{sub}").json()
    assert shown["enabled"] is False and shown["disabled_reason"] == "failing for 5 days"
    assert shown["failing_since"] is not None

    body = api.one("PATCH", f"/v1/webhooks/{sub}", {"enabled": True}).json()
    assert body["enabled"] is True
    assert (body["disabled_at"], body["disabled_reason"], body["failing_since"]) == (None, None, None)
    assert api.store.records[sub].revision == 3

    off = api.one("PATCH", f"/v1/webhooks/{sub}", {"enabled": False}).json()
    assert off["enabled"] is False and off["disabled_reason"] == MANUAL


def test_a_concurrent_write_is_not_lost(api: Api) -> None:
    sub = api.create()["id"]

    def dispatcher_disables(store: MemoryStore, sub_id: str) -> None:
        current = store.records[sub_id]
        store.put(sub_id, msgspec.structs.replace(current, failing_since_ms=NOW - HOUR, revision=current.revision + 1))

    api.store.before_write = dispatcher_disables
    body = api.one("PATCH", f"/v1/webhooks/{sub}", {"description": "renamed"}).json()
    stored = api.store.records[sub]
    # the change was applied again on top of the dispatcher's record: both survive
    assert body["description"] == stored.description == "renamed"
    assert stored.failing_since_ms == NOW - HOUR and stored.revision == 3
    assert [w[1].description if w[1] else None for w in api.store.writes[-2:]] == ["renamed", "renamed"]


def test_a_subscription_deleted_meanwhile_stays_deleted(api: Api) -> None:
    sub = api.create()["id"]

    def dispatcher_deletes(store: MemoryStore, sub_id: str) -> None:
        store.put(sub_id, None)

    api.store.before_write = dispatcher_deletes
    r = api.one("PATCH", f"/v1/webhooks/{sub}", {"description": "renamed"})
    assert error(r) == (404, "not_found")
    assert sub not in api.store.records and api.store.writes[-1] == (sub, None)


def test_delete(api: Api) -> None:
    sub = api.create()["id"]
    deleted, got, again = api.call(
        ("DELETE", f"/v1/webhooks/{sub}", None),
        ("GET", f"/v1/webhooks/{sub}", None),
        ("DELETE", f"/v1/webhooks/{sub}", None),
    )
    assert deleted.status_code == 204 and deleted.content == b""
    assert error(got) == (404, "not_found") and error(again) == (404, "not_found")
    assert api.store.writes[-1] == (sub, None)


def test_rotation_overlaps_the_old_secret(api: Api) -> None:
    created = api.create()
    path = f"/v1/webhooks/{created['id']}/rotate-secret"
    r = api.one("POST", path)  # no body: the configured overlap
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["secret"].startswith("whsec_") and first["secret"] != created["secret"]
    assert first["previous_expires_at"] == iso(NOW + DAY)  # + SCORESTREAM_WEBHOOK_SECRET_OVERLAP_S
    stored = api.store.records[created["id"]]
    assert stored.secrets == [
        SigningSecret(first["secret"], NOW),
        SigningSecret(created["secret"], NOW, NOW + DAY),
    ]
    assert stored.signing_secrets(NOW + 1) == [first["secret"], created["secret"]]
    shown = api.one("GET", f"/v1/webhooks/{created['id']}")
    assert shown.json()["secret_overlap_until"] == iso(NOW + DAY)
    assert first["secret"] not in shown.text and created["secret"] not in shown.text

    second = api.one("POST", path, {"overlap_s": 60}).json()
    secrets = api.store.records[created["id"]].secrets
    assert [s.secret for s in secrets] == [second["secret"], first["secret"], created["secret"]]
    assert secrets[1].expires_ms == NOW + 60_000 and secrets[2].expires_ms == NOW + DAY

    third = api.one("POST", path, {"overlap_s": 0}).json()  # no overlap: the current secret stops at once
    secrets = api.store.records[created["id"]].secrets
    assert [s.secret for s in secrets] == [third["secret"], first["secret"], created["secret"]]


def test_rotation_drops_expired_secrets(api: Api) -> None:
    sub = api.create()["id"]
    current = api.store.records[sub]
    old = [SigningSecret("whsec_" + "A" * 44, NOW - 5 * HOUR, NOW - HOUR), *current.secrets]
    api.store.put(sub, msgspec.structs.replace(current, secrets=[*current.secrets, old[0]]))
    new = api.one("POST", f"/v1/webhooks/{sub}/rotate-secret", {"overlap_s": 3600}).json()["secret"]
    assert [s.secret for s in api.store.records[sub].secrets] == [new, current.secrets[0].secret]
    bad = api.one("POST", f"/v1/webhooks/{sub}/rotate-secret", {"overlap_s": -1})
    assert error(bad) == (422, "invalid_request")
    assert error(api.one("POST", "/v1/webhooks/wh_nope/rotate-secret")) == (404, "not_found")


def test_a_new_secret_is_shown_even_when_not_read_back_in_time(api: Api) -> None:
    api.store.invisible = True
    created = api.create()
    assert created["secret"].startswith("whsec_") and created["id"] in api.store.records
    r = api.one("PATCH", f"/v1/webhooks/{created['id']}", {"description": "x"})
    assert error(r) == (503, "unavailable") and "saved but not visible yet" in r.json()["detail"]


def test_test_send_is_a_command_on_the_subscriptions_partition(api: Api) -> None:
    sub = api.create()["id"]
    r = api.one("POST", f"/v1/webhooks/{sub}/test")
    assert r.status_code == 202, r.text
    body = r.json()
    [(partition, command)] = api.commands.sent
    assert partition == zlib.crc32(sub.encode()) % 4
    assert command == CommandRecord(op="test", subscription_id=sub, request_id=body["request_id"], requested_ms=NOW)
    assert body == {
        "status": "queued",
        "request_id": command.request_id,
        "delivery_id": delivery_id("test_" + command.request_id, sub),
    }
    assert error(api.one("POST", "/v1/webhooks/wh_nope/test")) == (404, "not_found")


def delivery(
    sub: str, n: int, status: str = "failed", partition: int = 2, created_ms: int | None = None
) -> DeliveryRecord:
    at = NOW - (100 - n) * 1000 if created_ms is None else created_ms
    return DeliveryRecord(
        id=f"msg_{sub}_{n:03d}",
        subscription_id=sub,
        type="stage.changed",
        key=f"u-{n}",
        partition=partition,
        seq=n,
        body='{"type":"stage.changed"}',
        created_ms=at,
        updated_ms=at + 5000,
        status=status,  # type: ignore[arg-type]
        trigger_id=f"t-{n}",
        attempt_count=1,
        attempts=[AttemptRecord(at_ms=at, outcome="http_error", latency_ms=12.5, status_code=500, response="oops")],
        next_attempt_ms=None if status != "pending" else at + 300_000,
        reason="schedule spent" if status == "failed" else None,
    )


def feed(log: DeliveryLog, *records: DeliveryRecord) -> None:
    for record in records:
        log.apply(record.id.encode(), encode(record))


def test_delivery_log_pages_newest_first(api: Api) -> None:
    sub, other = api.create()["id"], api.create()["id"]
    feed(api.log, *(delivery(sub, n, "failed" if n % 2 else "succeeded") for n in range(10)), delivery(other, 50))
    base = f"/v1/webhooks/{sub}/deliveries"
    everything, page1, failed, mine, foreign = api.call(
        ("GET", base, None),
        ("GET", f"{base}?limit=4", None),
        ("GET", f"{base}?status=failed&limit=2", None),
        ("GET", f"{base}/msg_{sub}_003", None),
        ("GET", f"{base}/msg_{other}_050", None),
    )
    assert [d["key"] for d in everything.json()["data"]] == [f"u-{n}" for n in range(9, -1, -1)]
    assert [d["key"] for d in page1.json()["data"]] == ["u-9", "u-8", "u-7", "u-6"]
    assert [d["key"] for d in failed.json()["data"]] == ["u-9", "u-7"]
    page2 = api.one("GET", f"{base}?limit=4&before={page1.json()['data'][-1]['id']}")
    assert [d["key"] for d in page2.json()["data"]] == ["u-5", "u-4", "u-3", "u-2"]
    one = mine.json()
    assert one["id"] == f"msg_{sub}_003" and one["status"] == "failed" and one["reason"] == "schedule spent"
    assert one["attempts"] == [
        {
            "at": iso(NOW - 97_000),
            "outcome": "http_error",
            "status_code": 500,
            "latency_ms": 12.5,
            "error": None,
            "response": "oops",
            "manual": False,
        }
    ]
    assert "body" not in one
    assert error(foreign) == (404, "not_found")
    for bad in ("?status=lost", "?limit=0", "?limit=1001", f"?before=msg_{other}_050"):
        assert error(api.one("GET", base + bad)) == (422, "invalid_request"), bad
    assert error(api.one("GET", "/v1/webhooks/wh_nope/deliveries")) == (404, "not_found")


def test_delivery_updates_replace_and_tombstones_remove() -> None:
    log = DeliveryLog(kafka=KafkaConnection("127.0.0.1:1"), topic="d", per_subscription=3)
    feed(log, delivery("wh_a", 1, "pending"))
    feed(log, delivery("wh_a", 1, "succeeded"))
    assert [r.status for r in log.page("wh_a", None, 10, None)] == ["succeeded"]
    assert log.by_id["msg_wh_a_001"].body == ""  # bodies are not kept
    log.apply(b"msg_wh_a_001", None)
    assert log.page("wh_a", None, 10, None) == [] and log.by_id == {}
    log.apply(b"msg_junk", b"{not json")  # logged and skipped
    assert log.by_id == {}


def test_delivery_log_keeps_the_latest_per_subscription() -> None:
    log = DeliveryLog(kafka=KafkaConnection("127.0.0.1:1"), topic="d", per_subscription=3)
    feed(log, *(delivery("wh_a", n) for n in range(200)), delivery("wh_b", 1))
    kept = log.by_subscription["wh_a"]
    assert 3 <= len(kept) <= 3 + 100  # trimmed back to 3 whenever it grows 100 beyond
    assert [r.key for r in log.page("wh_a", None, 3, None)] == ["u-199", "u-198", "u-197"]
    assert set(log.by_id) == {*kept, "msg_wh_b_001"}


def test_retry_goes_to_the_deliverys_partition(api: Api) -> None:
    sub = api.create()["id"]
    feed(api.log, delivery(sub, 7, partition=3))
    r = api.one("POST", f"/v1/webhooks/{sub}/deliveries/msg_{sub}_007/retry")
    assert r.status_code == 202, r.text
    [(partition, command)] = api.commands.sent
    assert partition == 3
    assert (command.op, command.subscription_id, command.delivery_id) == ("retry", sub, f"msg_{sub}_007")
    # the dispatcher reads the deliveries partition from the delivery's creation, not from 0
    assert command.since_ms == api.log.by_id[f"msg_{sub}_007"].created_ms == NOW - 93_000
    assert r.json() == {"status": "queued", "request_id": command.request_id, "delivery_id": f"msg_{sub}_007"}
    assert error(api.one("POST", f"/v1/webhooks/{sub}/deliveries/msg_unknown/retry")) == (404, "not_found")


def test_retry_failed_asks_every_partition(api: Api) -> None:
    sub = api.create()["id"]
    default, given, future, bad = api.call(
        ("POST", f"/v1/webhooks/{sub}/deliveries:retry-failed", None),
        ("POST", f"/v1/webhooks/{sub}/deliveries:retry-failed?since=2026-09-21T00:00:00Z", None),
        ("POST", f"/v1/webhooks/{sub}/deliveries:retry-failed?since=2030-01-01T00:00:00Z", None),
        ("POST", f"/v1/webhooks/{sub}/deliveries:retry-failed?since=yesterday", None),
    )
    assert default.status_code == 202 and given.status_code == 202
    assert error(future) == (422, "invalid_request") and error(bad) == (422, "invalid_request")
    assert [p for p, _ in api.commands.sent] == [0, 1, 2, 3, 0, 1, 2, 3]
    first, second = api.commands.sent[:4], api.commands.sent[4:]
    assert {c.op for _, c in api.commands.sent} == {"retry_failed"}
    assert {c.since_ms for _, c in first} == {NOW - 24 * HOUR}
    assert {c.since_ms for _, c in second} == {1_789_948_800_000}  # 2026-09-21T00:00:00Z
    assert {c.request_id for _, c in first} == {default.json()["request_id"]}
    assert default.json()["delivery_id"] is None


def test_not_ready_until_the_store_caught_up(api: Api) -> None:
    api.store.caught_up.clear()
    api.log.caught_up.clear()
    ready, listed, created = api.call(
        ("GET", "/readyz", None),
        ("GET", "/v1/webhooks", None),
        ("POST", "/v1/webhooks", {"url": PUBLIC, "events": ["*"]}),
    )
    assert ready.status_code == 503 and ready.json()["detail"]["webhooks_caught_up"] is False
    assert ready.json()["detail"]["deliveries_caught_up"] is False
    assert error(listed) == (503, "not_ready") and error(created) == (503, "not_ready")
    api.store.caught_up.set()
    sub = api.create()["id"]
    assert error(api.one("GET", f"/v1/webhooks/{sub}/deliveries")) == (503, "not_ready")


@dataclass
class AckingProducer(LazyProducer):
    """Acknowledges every send at the next offset; ``on_send`` runs before the acknowledgement
    (stands for the store's follower reading the record that early)."""

    next_offset: int = 0
    on_send: Callable[[bytes, bytes | None, int], None] | None = None

    async def send(self, topic: str, key: bytes, value: bytes | None, partition: int | None = None) -> Any:
        offset, self.next_offset = self.next_offset, self.next_offset + 1
        if self.on_send is not None:
            self.on_send(key, value, offset)
        return SimpleNamespace(offset=offset)


def record(sub: str, description: str) -> SubscriptionRecord:
    secret = SigningSecret("whsec_" + "B" * 44, NOW)
    return SubscriptionRecord(sub, PUBLIC, ["*"], [secret], NOW, NOW, description=description)


def test_store_writes_answer_once_read_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Kafka store's read-your-writes: a write returns the record it replaced once the follower
    has applied it, whether the follower reads it before or after the acknowledgement."""
    producer = AckingProducer(kafka=KafkaConnection("127.0.0.1:1"))
    store = KafkaSubscriptionStore(kafka=KafkaConnection("127.0.0.1:1"), topic="w", producer=producer)
    a1, a2, a3 = record("wh_a", "one"), record("wh_a", "two"), record("wh_a", "three")

    async def go() -> list[Written]:
        loop = asyncio.get_running_loop()
        written = []
        # read back after the acknowledgement

        def later(key: bytes, value: bytes | None, offset: int) -> None:
            loop.call_soon(store.apply, key, value, offset)

        def after_another(key: bytes, value: bytes | None, offset: int) -> None:
            store.apply(key, encode(a3), offset - 1)
            store.apply(key, value, offset)

        producer.on_send = later
        written.append(await store.write("wh_a", a1))
        # read back before it
        producer.on_send = store.apply
        written.append(await store.write("wh_a", a2))
        # someone else's write lands between ours and the follower's reading of ours
        producer.next_offset += 1  # the other write's offset
        producer.on_send = after_another
        written.append(await store.write("wh_a", None))
        # never read back
        producer.on_send = None
        monkeypatch.setattr("api.webhook_store.VISIBLE_TIMEOUT_S", 0.05)
        with pytest.raises(NotVisible):
            await store.write("wh_b", record("wh_b", "lost"))
        return written

    assert asyncio.run(go()) == [Written(None), Written(a1), Written(a3)]
    assert store.get("wh_a") is None and store.all() == []
