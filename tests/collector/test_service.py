"""The HTTP collector's surface in process, over ASGI, with a fake publisher (no Kafka).

Auth forms, limits, gzip, enrichment and clock-skew correction, batch partial rejection, 429 and
503. The same collector against the real broker, worker and Segment's own client is covered in
``tests/e2e/test_collector.py``.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.errors import KafkaConnectionError
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.types import Message, Receive

from api.app import ScorestreamApi, create_api
from api.replica import Replica
from collector.service import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, METRICS_PATH, PATHS, Collector, content_id
from kafka_io.clients import KafkaConnection
from schemas.events import DEADLETTER_HEADERS, MAX_MESSAGE_BYTES, decode
from schemas.model_file import load_model
from schemas.settings import Settings
from tests.factories import T0

API_KEY = "unit-test-key-0123456789"
WEB_KEY, STORE_KEY = "wk-web-0001", "wk-store-0002"
WRITE_KEYS = f"{WEB_KEY}:*,{STORE_KEY}:store"  # web by default and every channel; store only
NOW = T0  # 2026-09-21T14:13:20Z, the collector's clock
NOW_ISO = "2026-09-21T14:13:20.000Z"
MODEL = load_model()
AUTH = (WEB_KEY, "")


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes
    timestamp_ms: int
    headers: list[tuple[str, bytes]] | None

    @property
    def message(self) -> Any:
        return orjson.loads(self.value)


@dataclass
class FakePublisher:
    """Records what it is given; acknowledges at once, on ``release()`` (``hold``) or never with
    ``fail`` as the error."""

    records: list[Sent] = field(default_factory=list)
    ready: bool = True
    hold: bool = False
    fail: BaseException | None = None
    held: list[asyncio.Future[Any]] = field(default_factory=list)
    sent: asyncio.Event = field(default_factory=asyncio.Event)
    starts: int = 0

    async def start(self) -> None:
        self.starts += 1

    async def stop(self) -> None:
        pass

    async def send(
        self, topic: str, key: bytes | None, value: bytes, timestamp_ms: int, headers: list[tuple[str, bytes]] | None
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.records.append(Sent(topic, key, value, timestamp_ms, headers))
        self.sent.set()
        if self.fail is not None:
            future.set_exception(self.fail)
        elif self.hold:
            self.held.append(future)
        else:
            future.set_result(None)
        return future

    def release(self) -> None:
        for future in self.held:
            future.set_result(None)
        self.held.clear()

    def on(self, topic: str) -> list[Sent]:
        return [r for r in self.records if r.topic == topic]


def make_app(publisher: FakePublisher, write_keys: str = WRITE_KEYS, fast_path: bool = True, **extra: Any) -> FastAPI:
    settings = Settings(api_keys=API_KEY, write_keys=write_keys, **extra)  # type: ignore[arg-type]
    replica = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    # httpx's ASGITransport sends no lifespan events: nothing connects to Kafka
    return create_api(
        settings, model=MODEL, replica=replica, clock=lambda: NOW, publisher=publisher, fast_path=fast_path
    )


def collector_of(app: FastAPI) -> Collector:
    assert isinstance(app, ScorestreamApi) and app.collector is not None
    return app.collector


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://collector")


def post(app: FastAPI, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with client(app) as http:
            return await http.post(path, **kwargs)

    return asyncio.run(go())


def get(app: FastAPI, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        async with client(app) as http:
            return await http.get(path)

    return asyncio.run(go())


def track(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "u-1", "event": "Demo Requested", "timestamp": "2026-09-21T14:00:00Z", **fields}


def refusal(r: httpx.Response) -> tuple[int, str]:
    body = r.json()
    assert body["success"] is False and body["message"]
    return r.status_code, body["code"]


# --- auth ----------------------------------------------------------------------------------------


def test_write_key_as_basic_user_or_in_the_body() -> None:
    pub = FakePublisher()
    app = make_app(pub)
    basic = post(app, "/v1/track", json=track(messageId="m1"), auth=AUTH)
    no_colon = post(app, "/v1/track", json=track(messageId="m2"), headers={"Authorization": "Basic d2std2ViLTAwMDE="})
    in_body = post(app, "/v1/track", json=track(messageId="m3", writeKey=STORE_KEY))
    bearer_and_body = post(  # Segment's OAuth form: a token in the header, the write key in the body
        app, "/v1/track", json=track(messageId="m4", writeKey=WEB_KEY), headers={"Authorization": "Bearer tok"}
    )
    assert [r.status_code for r in (basic, no_colon, in_body, bearer_and_body)] == [200, 200, 200, 200]
    assert basic.json() == {"success": True}
    assert [(r.topic, r.message["messageId"]) for r in pub.records] == [
        ("events.web", "m1"),
        ("events.web", "m2"),
        ("events.store", "m3"),  # the store key's default channel
        ("events.web", "m4"),
    ]
    assert all("writeKey" not in r.message for r in pub.records)


def test_missing_or_unknown_write_keys_are_401_and_the_api_key_is_not_one() -> None:
    pub = FakePublisher()
    app = make_app(pub)
    answers = {
        "none": post(app, "/v1/track", json=track()),
        "unknown_basic": post(app, "/v1/track", json=track(writeKey=WEB_KEY), auth=("nope", "")),
        "unknown_body": post(app, "/v1/track", json=track(writeKey="nope")),
        "api_key": post(app, "/v1/track", json=track(), headers={"Authorization": f"Bearer {API_KEY}"}),
        "bad_base64": post(app, "/v1/track", json=track(), headers={"Authorization": "Basic !!!"}),
        "empty_body_key": post(app, "/v1/batch", json={"batch": [track()], "writeKey": ""}),
    }
    for name, r in answers.items():
        assert refusal(r) == (401, "unauthorized"), name
        assert r.headers["www-authenticate"].startswith("Basic")
    assert pub.records == []


def test_without_write_keys_every_route_is_401_and_no_producer_starts() -> None:
    pub = FakePublisher()
    app = make_app(pub, write_keys="")
    for path in sorted(PATHS - {METRICS_PATH}):
        r = post(app, path, json={"batch": [track()]} if path in ("/v1/batch", "/v1/b") else track(), auth=AUTH)
        assert refusal(r) == (401, "unauthorized"), path
        assert "SCORESTREAM_WRITE_KEYS" in r.json()["message"]
    asyncio.run(collector_of(app).start())
    assert pub.starts == 0 and pub.records == []
    asyncio.run(collector_of(make_app(pub)).start())
    assert pub.starts == 1


def test_write_keys_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pub = FakePublisher()
    app = make_app(pub)
    post(app, "/v1/batch", json={"writeKey": STORE_KEY, "batch": [track(), {"type": "track"}]})
    post(app, "/v1/track", json=track(), auth=("secret-guess-123", ""))
    pub.fail = KafkaConnectionError()
    post(app, "/v1/track", json=track(), auth=(STORE_KEY, ""))
    assert "dead-lettered" in caplog.text
    for secret in (WEB_KEY, STORE_KEY, "secret-guess-123"):
        assert secret not in caplog.text
        assert all(secret.encode() not in r.value for r in pub.records)


# --- channels a write key may send to ------------------------------------------------------------


def test_write_key_channels_parse_and_malformed_entries_are_refused() -> None:
    keys = "bare,pos:store,mix:web+email,all:*,again:email+email,old:"
    assert Settings(write_keys=keys).write_key_channels() == {  # type: ignore[arg-type]
        "bare": ("web",),
        "pos": ("store",),
        "mix": ("web", "email"),
        "all": ("web", "email", "store"),
        "again": ("email",),
        "old": ("web",),
    }
    for bad in ("k:fax", "k:web+fax", "k:*+store", "k:web+", ":web", "k:Web"):
        with pytest.raises(ValidationError, match="a write key is `key`") as refused:
            Settings(write_keys=bad)  # type: ignore[arg-type]
        assert "k:" not in str(refused.value).replace("`key:", "")  # the key itself is not shown


def test_a_write_key_sends_to_its_channels_only() -> None:
    pub = FakePublisher()
    app = make_app(pub, write_keys="bare,pos:store,mix:web+email,all:*")

    def single(key: str, channel: str | None, mid: str) -> httpx.Response:
        context = {} if channel is None else {"context": {"channel": channel}}
        return post(app, "/v1/track", json=track(messageId=mid, **context), auth=(key, ""))

    answers = {
        ("bare", None): single("bare", None, "b0"),
        ("bare", "web"): single("bare", "web", "b1"),
        ("bare", "fax"): single("bare", "fax", "b2"),  # not a channel: the key's default, as before
        ("bare", "store"): single("bare", "store", "b3"),
        ("bare", "email"): single("bare", "email", "b4"),
        ("pos", None): single("pos", None, "p0"),
        ("pos", "web"): single("pos", "web", "p1"),
        ("mix", None): single("mix", None, "m0"),
        ("mix", "email"): single("mix", "email", "m1"),
        ("mix", "store"): single("mix", "store", "m2"),
        ("all", "store"): single("all", "store", "a0"),
        ("all", "email"): single("all", "email", "a1"),
    }
    refused = {k for k, r in answers.items() if r.status_code != 200}
    assert refused == {("bare", "store"), ("bare", "email"), ("pos", "web"), ("mix", "store")}
    for k in refused:
        assert refusal(answers[k]) == (403, "channel_not_allowed"), k
    assert "context.channel is 'store'; this write key may send to web only" in answers["bare", "store"].text
    assert "may send to web, email only" in answers["mix", "store"].text
    assert [(r.topic, r.message["messageId"]) for r in pub.records] == [
        ("events.web", "b0"),
        ("events.web", "b1"),
        ("events.web", "b2"),
        ("events.store", "p0"),
        ("events.web", "m0"),
        ("events.email", "m1"),
        ("events.store", "a0"),
        ("events.email", "a1"),
    ]


def test_a_batch_refuses_each_message_asking_for_a_channel_of_another_key() -> None:
    pub = FakePublisher()
    app = make_app(pub, write_keys="bare")
    order = track(event="Order Completed", properties={"order_id": "o-1", "total": 120.0})
    batch = [
        track(messageId="ok-1"),
        {**order, "messageId": "order-1", "context": {"channel": "store"}},
        track(messageId="ok-2", context={"channel": "web"}),
        track(messageId="mail-1", context={"channel": "email"}),
    ]
    r = post(app, "/v1/b", json={"batch": batch, "writeKey": "bare"})
    assert r.status_code == 200 and r.json()["accepted"] == 2
    assert [(x["index"], x["reason"]) for x in r.json()["rejected"]] == [
        (1, "channel_not_allowed"),
        (3, "channel_not_allowed"),
    ]
    assert [x.message["messageId"] for x in pub.on("events.web")] == ["ok-1", "ok-2"]
    assert pub.on("events.store") == [] and pub.on("events.email") == []
    dead = pub.on("events.deadletter")
    assert [d.message["messageId"] for d in dead] == ["order-1", "mail-1"]  # nothing is lost
    headers = dict(dead[0].headers or [])
    assert headers["scorestream.reason"] == b"channel_not_allowed"
    assert headers["scorestream.source.topic"] == b"events.store"  # where it asked to go
    assert headers["scorestream.source.http"] == b"/v1/b[1]"
    # a batch-wide context asking for the store channel: every message is refused, nothing published
    pub.records.clear()
    r = post(app, "/v1/batch", json={"batch": batch[:1], "context": {"channel": "store"}}, auth=("bare", ""))
    assert [(x["index"], x["reason"]) for x in r.json()["rejected"]] == [(0, "channel_not_allowed")]
    assert [x.topic for x in pub.records] == ["events.deadletter"]


# --- routes, enrichment, routing -----------------------------------------------------------------


def test_each_route_sets_the_type_and_the_short_routes_are_aliases() -> None:
    pub = FakePublisher()
    app = make_app(pub)
    bodies: dict[str, dict[str, Any]] = {
        "track": track(),
        "identify": {"userId": "u-1", "traits": {"email": "ann@acme.com"}},
        "page": {"anonymousId": "a-1", "name": "Pricing", "properties": {"path": "/pricing"}},
        "screen": {"anonymousId": "a-1", "name": "Home"},
        "group": {"userId": "u-1", "groupId": "acct-1", "traits": {"name": "Acme"}},
        "alias": {"userId": "u-1", "previousId": "a-1"},
    }
    for kind, body in bodies.items():
        for path in (f"/v1/{kind}", f"/v1/{kind[0]}"):
            r = post(app, path, json={**body, "type": "identify" if kind != "identify" else "track"}, auth=AUTH)
            assert r.status_code == 200, (path, r.text)
    assert [r.message["type"] for r in pub.records] == [k for k in bodies for _ in range(2)]
    short = post(app, "/v1/b", json={"batch": [{**bodies["page"], "type": "page"}]}, auth=AUTH)
    assert short.json() == {"success": True, "accepted": 1, "rejected": []}
    for record in pub.records:  # what the collector publishes, the worker accepts
        decode(record.value, "web", record.timestamp_ms)
        assert record.timestamp_ms == NOW


def test_enrichment_and_clock_skew_correction() -> None:
    pub = FakePublisher()
    app = make_app(pub)
    # the client's clock is an hour fast: it stamped the event 15:00 and sent it at 15:13 by its clock
    skewed = track(messageId="s", timestamp="2026-09-21T15:00:00Z", sentAt="2026-09-21T15:13:00Z")
    no_sent_at = track(messageId="n", timestamp="2026-09-21T12:00:00+02:00")
    no_time = track(messageId="t", timestamp=None)
    original_only = {**track(messageId="o"), "timestamp": None, "originalTimestamp": "2026-09-21T14:10:00Z"}
    for body in (skewed, no_sent_at, no_time, original_only):
        assert post(app, "/v1/track", json=body, auth=AUTH).status_code == 200
    s, n, t, o = (r.message for r in pub.records)
    assert s["receivedAt"] == NOW_ISO
    assert s["originalTimestamp"] == "2026-09-21T15:00:00Z"
    assert s["timestamp"] == "2026-09-21T14:00:20.000Z"  # receivedAt - (sentAt - originalTimestamp)
    assert s["sentAt"] == "2026-09-21T15:13:00Z"
    assert (n["timestamp"], n["originalTimestamp"]) == ("2026-09-21T12:00:00+02:00", "2026-09-21T12:00:00+02:00")
    assert (t["timestamp"], "originalTimestamp" in t) == (NOW_ISO, False)
    assert (o["timestamp"], o["originalTimestamp"]) == ("2026-09-21T14:10:00Z", "2026-09-21T14:10:00Z")
    # the batch's sentAt applies to messages without their own
    batch = {
        "sentAt": "2026-09-21T14:23:20Z",  # ten minutes fast
        "batch": [
            track(messageId="b1", timestamp="2026-09-21T14:20:00Z"),
            track(messageId="b2", sentAt=None),
        ],
    }
    assert post(app, "/v1/batch", json=batch, auth=AUTH).json()["accepted"] == 2
    b1, b2 = (r.message for r in pub.records[4:])
    assert b1["timestamp"] == "2026-09-21T14:10:00.000Z"
    assert b2["timestamp"] == "2026-09-21T13:50:00.000Z"  # 14:13:20 - (14:23:20 - 14:00)
    # a corrected time out of any calendar is the contract's bad_timestamp, not a crash
    absurd = track(timestamp="9999-12-31T23:59:59Z", sentAt="0001-01-01T00:00:00Z")
    assert refusal(post(app, "/v1/track", json=absurd, auth=AUTH)) == (400, "bad_timestamp")


def test_a_missing_message_id_is_a_hash_of_the_content() -> None:
    pub = FakePublisher()
    app = make_app(pub)
    post(app, "/v1/track", json=track(sentAt="2026-09-21T14:13:19Z"), auth=AUTH)
    post(app, "/v1/track", json=track(sentAt="2026-09-21T14:13:20Z"), auth=AUTH)  # the client's retry
    post(app, "/v1/batch", json={"batch": [track()], "sentAt": "2026-09-21T14:13:00Z"}, auth=AUTH)
    post(app, "/v1/track", json=track(event="Order Completed"), auth=AUTH)
    post(app, "/v1/track", json=track(messageId=""), auth=AUTH)
    post(app, "/v1/track", json=track(messageId="mine"), auth=AUTH)
    ids = [r.message["messageId"] for r in pub.records]
    assert ids[0] == ids[1] == ids[2] == ids[4] and ids[0].startswith("auto-")
    assert ids[3] != ids[0] and ids[3].startswith("auto-")
    assert ids[5] == "mine"
    assert content_id({"a": {"x": 1, "y": 2}, "b": 1}) == content_id({"b": 1, "a": {"y": 2, "x": 1}})


def test_batch_context_and_integrations_merge_and_route_the_channel() -> None:
    pub = FakePublisher()
    app = make_app(pub)
    batch = {
        "context": {"ip": "10.0.0.1", "channel": "store", "library": {"name": "pos"}},
        "integrations": {"All": False, "CRM": True},
        "batch": [
            track(messageId="a"),
            track(messageId="b", userId=None, anonymousId="anon-1", context={"channel": "email", "ip": "10.0.0.2"}),
            track(messageId="c", context={"channel": "fax"}, integrations={"CRM": False}),
        ],
    }
    assert post(app, "/v1/batch", json=batch, auth=AUTH).status_code == 200
    a, b, c = pub.records
    assert (a.topic, b.topic, c.topic) == ("events.store", "events.email", "events.web")  # fax: the key's default
    assert (a.key, b.key) == (b"u-1", b"anon-1")
    assert a.message["context"] == batch["context"]
    assert b.message["context"] == {"ip": "10.0.0.2", "channel": "email", "library": {"name": "pos"}}
    assert c.message["integrations"] == {"All": False, "CRM": False}
    assert a.message["integrations"] == {"All": False, "CRM": True}


# --- validation ----------------------------------------------------------------------------------


def test_an_invalid_single_message_is_400_with_the_contract_reason() -> None:
    pub = FakePublisher()
    app = make_app(pub)
    cases = {
        "invalid_field": track(event=None),
        "missing_identity": track(userId=None),
        "bad_timestamp": track(timestamp="1999-12-31T23:59:59Z"),
    }
    for reason, body in cases.items():
        r = post(app, "/v1/track", json=body, auth=AUTH)
        assert refusal(r) == (400, reason)
    assert pub.records == []  # the client was told: no dead letter either


def test_malformed_bodies_are_400_and_publish_nothing_but_the_batch_body_as_a_dead_letter() -> None:
    pub = FakePublisher()
    app = make_app(pub)
    cases = [
        ("/v1/track", b"{not json", "invalid_json"),
        ("/v1/track", b"[1, 2]", "invalid_message"),
        ("/v1/batch", b'{"batch": {"type": "track"}}', "invalid_batch"),
        ("/v1/batch", b'{"messages": []}', "invalid_batch"),
        ("/v1/batch", orjson.dumps({"batch": [track()], "context": "web"}), "invalid_batch"),
        ("/v1/batch", b'{"batch": [' + orjson.dumps(track()) + b', {"x": NaN}]}', "invalid_json"),
    ]
    for path, body, code in cases:
        assert refusal(post(app, path, content=body, auth=AUTH)) == (400, code), body
    # a refused batch body is kept whole, with its reason, for the messages beside the bad one
    kept = [(r.topic, r.value, dict(r.headers or [])["scorestream.reason"]) for r in pub.records]
    assert kept == [("events.deadletter", body, code.encode()) for path, body, code in cases if path == "/v1/batch"]
    # without a write key in the header the body is not trusted: nothing is kept
    pub.records.clear()
    unsigned = b'{"writeKey": "wk-web-0001", "batch": {"type": "track"}}'
    assert refusal(post(app, "/v1/batch", content=unsigned)) == (400, "invalid_batch")
    assert pub.records == []


def test_a_batch_publishes_the_valid_and_dead_letters_the_invalid() -> None:
    pub = FakePublisher()
    app = make_app(pub)
    batch = [
        track(messageId="ok-1"),
        track(messageId="bad-1", userId=None, context={"channel": "store"}),
        "not an object",
        {**track(messageId="ok-2"), "type": "page"},
        {**track(messageId="bad-2"), "type": "purchase"},
    ]
    r = post(app, "/v1/batch", json={"batch": batch}, auth=AUTH)
    assert r.status_code == 200
    assert r.json()["success"] is True and r.json()["accepted"] == 2
    assert [(x["index"], x["reason"]) for x in r.json()["rejected"]] == [
        (1, "missing_identity"),
        (2, "invalid_message"),
        (4, "unknown_type"),
    ]
    assert [x.message["messageId"] for x in pub.on("events.web")] == ["ok-1", "ok-2"]
    dead = pub.on("events.deadletter")
    assert len(dead) == 3
    first = dict(dead[0].headers or [])
    assert list(first)[: len(DEADLETTER_HEADERS)] == list(DEADLETTER_HEADERS)  # the worker's headers
    assert first["scorestream.reason"] == b"missing_identity"
    assert first["scorestream.source.topic"] == b"events.store"  # where it would have gone: replay there
    assert (first["scorestream.source.partition"], first["scorestream.source.offset"]) == (b"-1", b"-1")
    assert first["scorestream.source.http"] == b"/v1/batch[1]"
    assert dead[0].message["messageId"] == "bad-1" and dead[0].message["receivedAt"] == NOW_ISO
    assert dead[1].value == b'"not an object"'
    assert dict(dead[2].headers or [])["scorestream.reason"] == b"unknown_type"


# --- limits and gzip -----------------------------------------------------------------------------


def test_size_and_count_limits() -> None:
    pub = FakePublisher()
    app = make_app(pub)
    big = track(properties={"blob": "x" * MAX_MESSAGE_BYTES})
    just_under = track(properties={"blob": "x" * (MAX_MESSAGE_BYTES - 400)})
    assert refusal(post(app, "/v1/track", json=big, auth=AUTH)) == (400, "too_large")
    assert post(app, "/v1/track", json=just_under, auth=AUTH).status_code == 200
    fat = [track(properties={"blob": "x" * 30_000})] * 20  # 600 KB
    assert refusal(post(app, "/v1/batch", json={"batch": fat}, auth=AUTH)) == (400, "too_large")
    many = [{"type": "track", "userId": "u", "event": "e"}] * (MAX_BATCH_MESSAGES + 1)
    assert refusal(post(app, "/v1/batch", json={"batch": many}, auth=AUTH)) == (400, "too_many_messages")
    assert post(app, "/v1/batch", json={"batch": many[:MAX_BATCH_MESSAGES]}, auth=AUTH).status_code == 200
    # a message within the batch limit but over the message limit is refused alone
    r = post(app, "/v1/batch", json={"batch": [big, just_under]}, auth=AUTH)
    assert [(x["index"], x["reason"]) for x in r.json()["rejected"]] == [(0, "too_large")]
    assert len(pub.on("events.web")) == 1 + MAX_BATCH_MESSAGES + 1


def test_the_body_is_read_with_a_hard_cap() -> None:
    collector = collector_of(make_app(FakePublisher()))
    auth = [(b"authorization", b"Basic d2std2ViLTAwMDE6")]
    consumed: list[int] = []

    def body(n: int, size: int) -> Receive:
        async def receive() -> Message:
            consumed.append(len(consumed))
            return {"type": "http.request", "body": b" " * size, "more_body": len(consumed) < n}

        return receive

    declared = asyncio.run(collector.handle("/v1/batch", [*auth, (b"content-length", b"9999999")], body(1, 10)))
    assert (declared.status, consumed) == (400, [])  # refused on the declared length, nothing read
    streamed = asyncio.run(collector.handle("/v1/batch", auth, body(1000, 64 * 1024)))
    assert streamed.status == 400 and b"too_large" in streamed.body
    assert len(consumed) == MAX_BATCH_BYTES // (64 * 1024) + 1  # stopped at the first chunk over the cap


def test_gzip_bodies_and_bombs() -> None:
    pub = FakePublisher()
    app = make_app(pub)
    body = orjson.dumps({"batch": [track(messageId="gz")]})
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    assert post(app, "/v1/batch", content=gzip.compress(body), headers=headers, auth=AUTH).status_code == 200
    assert pub.records[0].message["messageId"] == "gz"
    bomb = gzip.compress(b'{"batch": [' + b" " * 20_000_000 + b"]}")
    assert len(bomb) < MAX_BATCH_BYTES // 10
    assert refusal(post(app, "/v1/batch", content=bomb, headers=headers, auth=AUTH)) == (400, "too_large")
    truncated = gzip.compress(body)[:-8]
    assert refusal(post(app, "/v1/batch", content=truncated, headers=headers, auth=AUTH)) == (400, "invalid_gzip")
    assert refusal(post(app, "/v1/batch", content=body, headers=headers, auth=AUTH)) == (400, "invalid_gzip")
    brotli = {"Content-Encoding": "br"}
    assert refusal(post(app, "/v1/batch", content=body, headers=brotli, auth=AUTH)) == (415, "unsupported_encoding")
    assert len(pub.records) == 1


# --- durability and back-pressure ----------------------------------------------------------------


def test_429_while_too_many_messages_wait_for_acks() -> None:
    pub = FakePublisher(hold=True)
    app = make_app(pub, collector_max_in_flight=3)
    collector = collector_of(app)
    three = {"batch": [track(messageId=f"m{i}") for i in range(3)]}

    async def go() -> tuple[httpx.Response, httpx.Response, httpx.Response, int]:
        async with client(app) as http:
            first = asyncio.create_task(http.post("/v1/batch", json=three, auth=AUTH))
            while len(pub.held) < 3:
                pub.sent.clear()
                await pub.sent.wait()
            assert not first.done()  # 200 waits for the acknowledgements
            busy = await http.post("/v1/track", json=track(), auth=AUTH)
            waiting = collector.in_flight
            pub.release()
            done = await first
            pub.hold = False
            after = await http.post("/v1/track", json=track(), auth=AUTH)
            return busy, done, after, waiting

    busy, done, after, waiting = asyncio.run(go())
    assert refusal(busy) == (429, "too_many_requests")
    assert busy.headers["retry-after"] == "1" and busy.headers["x-ratelimit-reset"] == "1"
    assert waiting == 3
    assert (done.status_code, after.status_code) == (200, 200)
    assert collector.in_flight == 0
    # a request larger than the limit still passes when nothing else is in flight
    five = {"batch": [track(messageId=f"n{i}") for i in range(5)]}
    assert post(app, "/v1/batch", json=five, auth=AUTH).status_code == 200


def test_503_when_kafka_is_unavailable_fails_or_is_too_slow() -> None:
    pub = FakePublisher(ready=False)
    app = make_app(pub)
    collector = collector_of(app)
    not_ready = post(app, "/v1/track", json=track(), auth=AUTH)
    assert refusal(not_ready) == (503, "unavailable") and not_ready.headers["retry-after"] == "5"
    pub.ready, pub.fail = True, KafkaConnectionError()
    failed = post(app, "/v1/batch", json={"batch": [track()] * 2}, auth=AUTH)
    assert refusal(failed) == (503, "unavailable") and failed.headers["retry-after"] == "5"
    assert collector.in_flight == 0
    pub.fail, pub.hold, collector.send_timeout_s = None, True, 0.05

    async def slow() -> tuple[httpx.Response, int, int]:
        async with client(app) as http:
            r = await http.post("/v1/track", json=track(), auth=AUTH)
        pending = collector.in_flight  # still waiting for the broker after the request gave up
        pub.release()
        await asyncio.sleep(0)
        return r, pending, collector.in_flight

    timed_out, pending, settled = asyncio.run(slow())
    assert refusal(timed_out) == (503, "timeout") and timed_out.headers["retry-after"] == "5"
    assert (pending, settled) == (1, 0)


# --- HTTP details --------------------------------------------------------------------------------


def test_cors_preflight_and_headers() -> None:
    app = make_app(FakePublisher())

    async def go() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with client(app) as http:
            preflight = await http.options("/v1/t", headers={"Origin": "https://shop.example"})
            ok = await http.post(
                "/v1/t", content=orjson.dumps(track(writeKey=WEB_KEY)), headers={"Content-Type": "text/plain"}
            )
            wrong = await http.get("/v1/track")
            return preflight, ok, wrong

    preflight, ok, wrong = asyncio.run(go())
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "Content-Encoding" in preflight.headers["access-control-allow-headers"]
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "*"  # analytics.js: text/plain
    assert refusal(wrong) == (405, "method_not_allowed")


EXPOSED = "Retry-After, X-RateLimit-Reset, X-Request-ID"


def test_a_preflight_allows_the_sdks_retry_header_and_the_headers_asked_for() -> None:
    app = make_app(FakePublisher())

    def preflight(requested: str | None) -> httpx.Response:
        headers = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
        if requested is not None:
            headers["Access-Control-Request-Headers"] = requested

        async def go() -> httpx.Response:
            async with client(app) as http:
                return await http.options("/v1/t", headers=headers)

        return asyncio.run(go())

    def allowed(r: httpx.Response) -> list[str]:
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
        assert "POST" in r.headers["access-control-allow-methods"]
        return [h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")]

    sdk = ["authorization", "content-type", "content-encoding", "x-retry-count"]
    # analytics.js' retry (Chromium lower-cases and sorts the names it asks for)
    assert set(allowed(preflight("authorization,content-type,x-retry-count"))) == set(sdk)
    assert set(allowed(preflight("x-retry-count, x-custom-tenant"))) == {*sdk, "x-custom-tenant"}
    assert allowed(preflight(None)) == sdk
    for odd in ('x-a;b="c"', "x-a, , x-b", "x" * 1100, "x-a\tx-b"):
        assert allowed(preflight(odd)) == sdk, odd
    r = preflight("x-retry-count")
    assert "access-control-request-headers" in r.headers["vary"].lower()
    assert int(r.headers["access-control-max-age"]) >= 600


def test_every_answer_exposes_the_retry_headers_to_the_page() -> None:
    pub = FakePublisher()
    app = make_app(pub, collector_max_in_flight=1)
    answers = {
        200: post(app, "/v1/t", json=track(), auth=AUTH),
        400: post(app, "/v1/t", content=b"{", auth=AUTH),
        401: post(app, "/v1/t", json=track()),
        403: post(app, "/v1/t", json=track(context={"channel": "web"}), auth=(STORE_KEY, "")),
        405: get(app, "/v1/t"),
    }
    collector_of(app).in_flight = 1
    answers[429] = post(app, "/v1/t", json=track(), auth=AUTH)
    collector_of(app).in_flight, pub.ready = 0, False
    answers[503] = post(app, "/v1/t", json=track(), auth=AUTH)
    for status, r in answers.items():
        assert r.status_code == status
        assert r.headers["access-control-allow-origin"] == "*", status
        assert r.headers["access-control-expose-headers"] == EXPOSED, status
    assert answers[429].headers["retry-after"] == answers[429].headers["x-ratelimit-reset"] == "1"


def test_the_sdks_telemetry_is_accepted_and_discarded() -> None:
    series = {"series": [{"type": "Counter", "metric": "analytics_js.invoke", "value": 1, "tags": {"type": "page"}}]}
    for keys in (WRITE_KEYS, ""):  # no write key needed, none configured either
        pub = FakePublisher()
        app = make_app(pub, write_keys=keys)
        ok = post(app, METRICS_PATH, content=orjson.dumps(series), headers={"Content-Type": "text/plain"})
        assert (ok.status_code, ok.json()) == (200, {"success": True})
        assert ok.headers["access-control-allow-origin"] == "*"
        zipped = post(app, METRICS_PATH, content=gzip.compress(b"not even JSON"), headers={"Content-Encoding": "gzip"})
        assert zipped.status_code == 200
        big = post(app, METRICS_PATH, content=b" " * (MAX_MESSAGE_BYTES + 1))
        assert refusal(big) == (400, "too_large") and big.headers["access-control-allow-origin"] == "*"
        assert refusal(get(app, METRICS_PATH)) == (405, "method_not_allowed")
        assert pub.records == [] and pub.starts == 0


def test_the_full_stack_answers_like_the_direct_path() -> None:
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/track", {"json": track(messageId="x"), "auth": AUTH}),
        ("POST", "/v1/batch", {"json": {"batch": [track(), "x"]}, "auth": AUTH}),
        ("POST", "/v1/i", {"json": {"userId": "u", "writeKey": STORE_KEY}}),
        ("POST", "/v1/track", {"content": b"{", "auth": AUTH}),
        ("POST", "/v1/track", {"json": track()}),
        ("OPTIONS", "/v1/b", {}),
        ("OPTIONS", "/v1/t", {"headers": {"Access-Control-Request-Headers": "authorization,x-retry-count"}}),
        ("POST", "/v1/t", {"json": track(context={"channel": "web"}), "auth": (STORE_KEY, "")}),
        ("POST", "/v1/m", {"content": b'{"series": []}'}),
        ("GET", "/v1/batch", {}),
    ]

    def answers(fast_path: bool) -> tuple[list[tuple[int, bytes, list[tuple[str, str]]]], list[Sent]]:
        pub = FakePublisher()
        app = make_app(pub, fast_path=fast_path)

        async def go() -> list[httpx.Response]:
            async with client(app) as http:
                # a given request id (echoed): a generated one would differ between the two apps
                return [
                    await http.request(
                        method, path, **{**kw, "headers": {**kw.get("headers", {}), "X-Request-ID": f"r{i}"}}
                    )
                    for i, (method, path, kw) in enumerate(requests)
                ]

        got = [(r.status_code, r.content, sorted(r.headers.multi_items())) for r in asyncio.run(go())]
        return got, pub.records

    assert answers(True) == answers(False)


def test_openapi_documents_the_collector_without_the_api_key() -> None:
    doc = make_app(FakePublisher()).openapi()
    for kind in ("track", "identify", "page", "screen", "group", "alias", "batch"):
        operation = doc["paths"][f"/v1/{kind}"]["post"]
        assert operation["tags"] == ["collector"]
        assert "security" not in operation
    assert "/v1/t" not in doc["paths"] and "/v1/b" not in doc["paths"]
    assert "security" in doc["paths"]["/v1/model"]["get"]
