"""The proof of issue 18, end to end on the real broker, the real worker, API (with its embedded
chDB sink), webhook dispatcher and a real webhook receiver, through the product's own doors.

A person (user id U, anonymous id A, email E) with an anonymous history, an identify linking A,
orders, a ``group`` call and webhook deliveries, archived everywhere; a ``SUPPRESS_WITH_DELETE``
regulation through ``POST /v1/regulations``; then:

- no API route finds them by U, A or E (contacts, batchGet, sync list, history, export, the
  account's members, the webhook delivery log);
- no row of any archive table (every table of the database, listed from ``system.tables``, every
  String column and array of strings) holds U, A or E; the same scan found them before;
- the latest record of every changelog about them is a tombstone (contacts, identity, views), the
  account's no longer names U;
- a full replay (archive and source topics) and a shadow model filled from the archive do not
  recreate them;
- events sent for them afterwards (by U, by A, with E; on the source topics and through the
  collector with Segment's own python client) are neither scored nor stored (archive, dead letters);
- ``UNSUPPRESS`` U: new events are scored again (a new contact); the deleted past stays deleted
  (the old events sent again do not come back);
- ``DELETE_ONLY`` of another person: deleted, and their new events are collected.

The API runs the sink into a chDB directory of this module's own; chDB allows one process per
directory, so the test reads the archive only while the API is stopped (``api_stopped``), and
starts it again after. The tests run in file order and share the module's ``Proof``.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from segment.analytics import Client as SegmentClient  # type: ignore[import-untyped]

from analytics.client import clickhouse_url, connect
from analytics.replay import replay
from bench.harness import wait_drained
from schemas.model_file import DEFAULT_MODEL as MODEL_FILE
from schemas.model_file import load_model
from schemas.regulations import MAX_SUBJECTS
from schemas.settings import Settings
from schemas.state import decode_state
from tests.e2e.service import REPO, WRITE_KEY, Service, shadow_from_archive, wait_for
from tests.factories import iso
from tests.factories import segment_at as msg
from tests.webhook_receiver import Receiver

MODEL = load_model()
HOUR = 3_600_000
TOKEN = uuid.uuid4().hex[:10]
# the person erased (SUPPRESS_WITH_DELETE, then UNSUPPRESS)
U = f"prf-user-{TOKEN}"
A = f"prf-anon-{TOKEN}"
E = f"prf.person.{TOKEN}@erasure.example"
# a colleague in the same account (the account outlives U) and a bystander scored all along
B = f"prf-colleague-{TOKEN}"
ACCOUNT = f"prf-acct-{TOKEN}"
# the second person (DELETE_ONLY)
Q = f"prf-second-{TOKEN}"
QE = f"prf.second.{TOKEN}@erasure.example"
NEEDLES = (U, A, E)
# an archive column may hold an email as sent (case kept): the scan is case-insensitive
STRING_TYPE = re.compile(r"^(LowCardinality\()?(Nullable\()?(String|FixedString\(\d+\))\)*$")
ARRAY_TYPE = re.compile(r"^Array\((LowCardinality\()?(Nullable\()?String\)*$")
VIEW_ENGINES = ("View", "MaterializedView", "LiveView", "WindowView", "Dictionary")


def history(start: int) -> list[tuple[str, bytes | None, bytes]]:
    """U's past: anonymous page views as A, an identify linking A (a CEO with email E), orders,
    a demo request and a ``group``; B in the same account; Q with an email and an order."""
    traits = {"email": E, "title": "CEO", "industry": "software", "employees": 300, "first_name": "Ada"}
    key = U.encode()
    out: list[tuple[str, bytes | None, bytes]] = [
        ("web", A.encode(), msg("page", start, anonymousId=A, properties={"path": "/pricing"})),
        ("web", A.encode(), msg("page", start + 60_000, anonymousId=A, properties={"path": "/demo"})),
        ("web", A.encode(), msg("page", start + 120_000, anonymousId=A, properties={"path": "/pricing/plans"})),
        ("web", key, msg("identify", start + HOUR, userId=U, anonymousId=A, traits=traits)),
        ("email", key, msg("track", start + 2 * HOUR, userId=U, event="Demo Requested", properties={"email": E})),
        ("web", key, msg("track", start + 3 * HOUR, userId=U, event="Webinar Registered")),
        ("web", key, msg("page", start + 3 * HOUR + 1, userId=U, properties={"path": "/pricing"})),
    ]
    for i in range(2):
        order = {"order_id": f"o-{TOKEN}-{i}", "revenue": 120.0 + i, "total": 120.0 + i, "currency": "EUR"}
        out.append(
            ("store", key, msg("track", start + (4 + i) * HOUR, userId=U, event="Order Completed", properties=order))
        )
    company = {"name": "Proof Ltd", "industry": "software", "employees": 300}
    out.append(("store", key, msg("group", start + 6 * HOUR, userId=U, groupId=ACCOUNT, traits=company)))
    b = B.encode()
    out.append(("web", b, msg("identify", start, userId=B, traits={"email": f"{B}@colleague.example", "title": "CTO"})))
    out.append(("web", b, msg("page", start + 1, userId=B, properties={"path": "/pricing"})))
    out.append(("store", b, msg("group", start + 2, userId=B, groupId=ACCOUNT, traits=company)))
    q = Q.encode()
    out.append(("web", q, msg("identify", start, userId=Q, traits={"email": QE, "title": "Engineer"})))
    out.append(("web", q, msg("page", start + 1, userId=Q, properties={"path": "/pricing"})))
    order = {"order_id": f"oq-{TOKEN}", "revenue": 40.0, "currency": "EUR"}
    out.append(("store", q, msg("track", start + 2, userId=Q, event="Order Completed", properties=order)))
    return out


@dataclass
class Proof:
    """The module's deployment and what the tests learn in order."""

    service: Service
    receiver: Receiver
    dispatcher: subprocess.Popen[bytes]
    hook_id: str = ""
    history: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)
    before: dict[str, int] = field(default_factory=dict)  # archive hits before the regulation
    erased_at_ms: int = 0
    unsuppressed_at_ms: int = 0

    @property
    def settings(self) -> Settings:
        return self.service.settings


@pytest.fixture(scope="module")
def proof(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proof]:
    data = Path(tmp_path_factory.mktemp("privacy"))
    svc = Service(
        bootstrap=kafka_bootstrap,
        data_dir=data,
        extra_env={
            "SCORESTREAM_SINK_IN_API": "true",
            "SCORESTREAM_CLICKHOUSE_URL": f"chdb://{data / 'chdb'}",
            "SCORESTREAM_SINK_BATCH_S": "0.3",
            "SCORESTREAM_WEBHOOK_ALLOW_PRIVATE": "true",
            "SCORESTREAM_WEBHOOK_TIMEOUT_S": "2",
        },
    )
    receiver = Receiver().start()
    svc.start()
    dispatcher = svc._spawn("dispatcher", "dispatcher.log")
    try:
        yield Proof(svc, receiver, dispatcher)
    finally:
        dispatcher.terminate()
        try:
            dispatcher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dispatcher.kill()
        svc.stop()
        receiver.stop()


# --- looking ------------------------------------------------------------------------------------


def logs(p: Proof) -> str:
    return "\n".join(f"--- {n}\n{p.service.logs(n)}" for n in ("api", "worker", "dispatcher"))


def wait(p: Proof, check: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    return wait_for(check, timeout, what, lambda: logs(p), interval)


def contact(http: httpx.Client, ident: str) -> dict[str, Any] | None:
    r = http.get(f"/v1/contacts/{ident}")
    assert r.status_code in (200, 404), r.text
    return r.json() if r.status_code == 200 else None


def unknown(r: httpx.Response) -> bool:
    """A 404 because the contact is unknown (not because the route does not exist)."""
    return r.status_code == 404 and "no route matches" not in r.text


def mentions(value: bytes | str | None, needles: tuple[str, ...] = NEEDLES) -> list[str]:
    """The needles ``value`` contains (case-insensitive: emails)."""
    if value is None:
        return []
    text = (value.decode("utf-8", "replace") if isinstance(value, bytes) else value).casefold()
    return [n for n in needles if n.casefold() in text]


def sink_topics(s: Settings) -> list[str]:
    return [
        *s.source_topics,
        s.topic_deadletter,
        s.topic_triggers,
        s.deliveries_topic,
        s.changelog_topic("contacts"),
        s.changelog_topic("accounts"),
    ]


def drained(p: Proof, sink: bool = True) -> None:
    """The worker has committed every source and internal record, and (``sink``) the API's sink
    every record it archives."""
    s = p.settings
    worker = [*s.source_topics, s.identity_topic, s.contacts_topic]
    wait_drained(s.kafka_bootstrap, s.app_id, worker, timeout_s=120, quiet_s=1.0)
    if sink:
        wait_drained(s.kafka_bootstrap, f"{s.app_id}-sink", sink_topics(s), timeout_s=120, quiet_s=1.0)


async def _latest(bootstrap: str, topic: str) -> tuple[dict[bytes, bytes | None], list[Any]]:
    """The latest value per key of ``topic`` (None: a tombstone) and every record, up to its end now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        parts = cluster.partitions_for_topic(topic)
        if not parts:
            return {}, []  # no such topic (yet): nothing on it
        tps = [TopicPartition(topic, partition) for partition in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(batch)
        latest = {r.key: r.value for r in records if r.key is not None}
        return latest, records
    finally:
        await consumer.stop()


def latest(p: Proof, topic: str) -> tuple[dict[bytes, bytes | None], list[Any]]:
    return asyncio.run(_latest(p.settings.kafka_bootstrap, topic))


@contextmanager
def api_stopped(p: Proof) -> Iterator[Settings]:
    """The API stopped (chDB released) for the block; started again and ready after it."""
    api = p.service.api
    assert api is not None
    api.terminate()
    assert api.wait(60) in (0, -15), p.service.logs("api")
    try:
        yield p.settings
    finally:
        p.service.start_api()
        p.service.wait_ready(120)


def archive_hits(s: Settings, needles: tuple[str, ...] = NEEDLES) -> dict[str, int]:
    """Rows per table holding any needle in any String column or array of strings, over every
    table of the archive's database (``system.tables``: a table added later is covered too)."""
    client = connect(clickhouse_url(s))
    try:
        db = client.query("SELECT currentDatabase()").result_rows[0][0]
        tables = client.query(
            "SELECT name, engine FROM system.tables WHERE database = {db:String} ORDER BY name", parameters={"db": db}
        ).result_rows
        params = {f"n{i}": n for i, n in enumerate(needles)}
        hits: dict[str, int] = {}
        for name, engine in tables:
            if engine in VIEW_ENGINES:
                continue
            columns = client.query(
                "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                parameters={"db": db, "t": name},
            ).result_rows
            terms: list[str] = []
            for column, kind in columns:
                quoted = "`" + str(column).replace("`", "``") + "`"
                for i in range(len(needles)):
                    if STRING_TYPE.match(kind):
                        terms.append(f"positionCaseInsensitive(ifNull(toString({quoted}), ''), {{n{i}:String}}) > 0")
                    elif ARRAY_TYPE.match(kind):
                        terms.append(
                            f"arrayExists(x -> positionCaseInsensitive(ifNull(toString(x), ''), {{n{i}:String}}) > 0, "
                            f"{quoted})"
                        )
                    elif any(t in kind for t in ("String", "Map(", "Tuple(", "JSON", "Object(")):
                        # any other shape that can hold text (a later migration's Map, Tuple, ...):
                        # its text form
                        terms.append(f"positionCaseInsensitive(toString({quoted}), {{n{i}:String}}) > 0")
            if not terms:
                continue
            table = "`" + str(name).replace("`", "``") + "`"
            sql = f"SELECT count() FROM {table} WHERE {' OR '.join(terms)}"  # names from system tables; values bound
            hits[str(name)] = int(client.query(sql, parameters=params).result_rows[0][0])
        return hits
    finally:
        client.close()


def regulate(p: Proof, kind: str, ids: list[str], subject_type: str = "USER_ID") -> tuple[str, int]:
    """``POST /v1/regulations``; the regulation's id and the instant it was sent."""
    at = int(time.time() * 1000)
    with p.service.client() as http:
        r = http.post("/v1/regulations", json={"regulationType": kind, "subjectType": subject_type, "subjectIds": ids})
    assert r.status_code in (200, 202), r.text
    return str(r.json()["data"]["regulateId"]), at


def regulation_of(p: Proof, reg_id: str) -> dict[str, Any]:
    with p.service.client() as http:
        r = http.get(f"/v1/regulations/{reg_id}")
    assert r.status_code == 200, r.text
    return r.json()["data"]["regulation"]  # type: ignore[no-any-return]


def finished(p: Proof, reg_id: str, timeout: float = 180) -> dict[str, Any]:
    """Poll ``GET /v1/regulations/{id}`` until no store is pending or running; fail on a failed one."""

    last: list[dict[str, Any]] = []

    def check() -> dict[str, Any] | None:
        reg = regulation_of(p, reg_id)
        last[:] = [reg]
        stores = {s["name"]: s for s in reg["stores"]}
        failed = {n: s.get("detail") for n, s in stores.items() if s["status"] == "failed"}
        assert not failed and reg["status"] != "failed", f"regulation {reg_id}: stores failed: {failed}\n{reg}"
        if reg["status"] != "done":
            return None
        assert reg["overallStatus"] == "FINISHED" and reg["finishedAt"] is not None, reg
        assert stores and all(s["status"] == "done" for s in stores.values()), reg
        return reg

    try:
        return wait(p, check, timeout, f"regulation {reg_id} done", interval=0.5)  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"the regulation as last seen: {last}\n{exc}") from None


def segment_client(p: Proof) -> tuple[SegmentClient, list[Any]]:
    errors: list[Any] = []
    client = SegmentClient(
        WRITE_KEY,
        host=p.service.url,
        on_error=lambda exc, batch: errors.append((exc, batch)),
        upload_interval=0.1,
        max_retries=2,
    )
    return client, errors


# --- the proof ------------------------------------------------------------------------------------


def test_a_person_with_history_is_everywhere(proof: Proof) -> None:
    """Set-up, and proof the checks can fail: U is found by every route and in the archive."""
    p = proof
    with p.service.client() as http:
        created = http.post("/v1/webhooks", json={"url": p.receiver.url("/crm"), "events": ["*"]})
        assert created.status_code == 201, created.text
        p.hook_id = created.json()["id"]
        time.sleep(1.0)  # the dispatcher reads the subscription from its topic
        now = int(time.time() * 1000)
        p.history = history(now - 3 * 24 * HOUR)
        p.service.publish(p.history)
        body = wait(
            p,
            lambda: (c := contact(http, U)) and c["account_id"] == ACCOUNT and c["rfm"] is not None and c,
            120,
            "U scored, with orders and the account",
        )
        assert A in body["identity"]["anonymous_ids"] and body["identity"]["email"] == E
        assert body["engagement"]["score"] > 0
        assert contact(http, A)["contact_id"] == U  # type: ignore[index]
        assert contact(http, E)["contact_id"] == U  # type: ignore[index]
        wait(p, lambda: contact(http, Q), 60, "Q scored")
        members = wait(
            p,
            lambda: (
                (r := http.get(f"/v1/accounts/{ACCOUNT}")).status_code == 200
                and {m["contact_id"] for m in r.json()["members"]} >= {U, B}
                and r.json()["members"]
            ),
            60,
            "the account with U and B",
        )
        assert {m["contact_id"] for m in members} >= {U, B}
        # the webhook receiver got deliveries about U, and the API's delivery log shows them
        wait(p, lambda: [r for r in p.receiver.received if mentions(r.body, (U,))], 60, "a delivery about U")

        def logged() -> list[Any]:
            r = http.get(f"/v1/webhooks/{p.hook_id}/deliveries", params={"limit": 1000})
            return [d for d in r.json()["data"] if mentions(orjson.dumps(d), (U,))] if r.status_code == 200 else []

        wait(p, logged, 60, "U's delivery in the delivery log")
    drained(p)
    time.sleep(1.0)  # the sink's last insert after its commit
    with api_stopped(p) as s:
        p.before = archive_hits(s)
    found = {t: n for t, n in p.before.items() if n}
    # the scan finds them where the sink put them (if it finds nothing here, "none" later proves nothing)
    assert {"events", "webhook_deliveries"} <= found.keys(), p.before
    assert any(t.startswith("score_ledger") for t in found), p.before
    assert any(t.startswith("contacts") for t in found), p.before
    with p.service.client() as http:  # the routes that will 404 find them now (the API restarted)
        wait(p, lambda: contact(http, U), 60, "U after the API's restart")
        assert http.get(f"/v1/contacts/{U}/history").status_code == 200
        export = http.get(f"/v1/contacts/{U}/export")
        assert export.status_code == 200, export.text
        assert mentions(export.content) == list(NEEDLES), "the export names U, A and E"


def test_suppress_with_delete_reaches_done_on_every_store(proof: Proof) -> None:
    p = proof
    reg_id, p.erased_at_ms = regulate(p, "SUPPRESS_WITH_DELETE", [U])
    again, _ = regulate(p, "SUPPRESS_WITH_DELETE", [U])
    assert again == reg_id, "the same request twice is one regulation"
    reg = finished(p, reg_id)
    stores = {s["name"] for s in reg["stores"]}
    assert {"privacy_list", "worker", "api", "archive", "deliveries", "deadletter"} <= stores, reg
    assert reg["finishedAt"] is not None
    assert not mentions(orjson.dumps(reg)), "a finished regulation shows no plaintext subject id"
    s = p.settings
    # the regulations topic's latest record holds no plaintext subject; the privacy list only hashes
    regs, _ = latest(p, s.regulations_topic)
    assert regs.get(reg_id.encode()) is not None and not mentions(regs[reg_id.encode()])
    _, entries = latest(p, s.privacy_topic)
    assert entries and not [r for r in entries if mentions(r.key) or mentions(r.value)]
    # the progress records of a finished regulation are tombstoned
    progress, _ = latest(p, s.regulation_progress_topic)
    assert [k for k, v in progress.items() if k.startswith(reg_id.encode()) and v is not None] == []


def test_no_api_route_finds_them(proof: Proof) -> None:
    p = proof
    with p.service.client() as http:
        for ident in (U, A, E, f"anonymous:{A}", E.upper()):
            wait(p, lambda: http.get(f"/v1/contacts/{ident}").status_code == 404, 30, f"404 for {ident}")  # noqa: B023
            assert unknown(http.get(f"/v1/contacts/{ident}/history")), ident
            assert unknown(http.get(f"/v1/contacts/{ident}/export")), ident
        r = http.post("/v1/contacts:batchGet", json={"ids": [U, A, E, f"anonymous:{A}", Q]})
        assert r.status_code == 200, r.text
        assert [c["contact_id"] for c in r.json()["contacts"]] == [Q]
        # the CRM's sync list (from the archive), every page, merged and deleted included
        rows: list[Any] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"status": "all", "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = http.get("/v1/contacts", params=params)
            assert page.status_code == 200, page.text
            rows += page.json()["data"]
            cursor = page.json()["next_cursor"]
            if not page.json()["has_more"]:
                break
        assert rows and not [row for row in rows if mentions(orjson.dumps(row))]
        assert any(row["contact_id"] == B for row in rows)
        # the account keeps B, not U
        account = http.get(f"/v1/accounts/{ACCOUNT}")
        assert account.status_code == 200, account.text
        assert {m["contact_id"] for m in account.json()["members"]} == {B}
        assert not mentions(account.content)
        # the webhook delivery log forgets their deliveries
        r = http.get(f"/v1/webhooks/{p.hook_id}/deliveries", params={"limit": 1000})
        assert r.status_code == 200 and not mentions(r.content), r.text


def test_their_tombstones_are_on_every_changelog(proof: Proof) -> None:
    p = proof
    s = p.settings
    contacts, _ = latest(p, s.changelog_topic("contacts"))
    assert U.encode() in contacts and contacts[U.encode()] is None
    anonymous = f"anonymous:{A}".encode()
    assert anonymous in contacts and contacts[anonymous] is None
    assert not [k for k, v in contacts.items() if v is not None and (mentions(k) or mentions(v))]
    identity, _ = latest(p, s.changelog_topic("identity"))
    assert A.encode() in identity and identity[A.encode()] is None
    assert not [k for k, v in identity.items() if v is not None and (mentions(k) or mentions(v))]
    views, _ = latest(p, s.views_topic)
    assert views.get(U.encode(), b"") is None
    assert not [k for k, v in views.items() if v is not None and (mentions(k) or mentions(v))]
    accounts, _ = latest(p, s.changelog_topic("accounts"))
    assert accounts.get(ACCOUNT.encode()) is not None and not mentions(accounts[ACCOUNT.encode()], (U,))
    # their webhook deliveries: tombstoned on the (compacted) deliveries topic
    deliveries, _ = latest(p, s.deliveries_topic)
    assert [k for k, v in deliveries.items() if v is None], "their deliveries' tombstones"
    assert not [k for k, v in deliveries.items() if v is not None and mentions(v)]


def test_events_after_the_regulation_are_neither_scored_nor_stored(proof: Proof) -> None:
    p = proof
    sent_before = len([r for r in p.receiver.received if mentions(r.body)])
    now = int(time.time() * 1000)
    traits = {"email": E, "title": "CEO"}
    p.service.publish(
        [
            ("web", U.encode(), msg("page", now, userId=U, properties={"path": "/pricing"})),
            ("web", A.encode(), msg("page", now + 1, anonymousId=A, properties={"path": "/demo"})),
            ("web", None, msg("identify", now + 2, userId=f"{U}-new", traits={"email": E.upper()})),
            ("email", U.encode(), msg("track", now + 3, userId=U, event="Demo Requested")),
            ("store", U.encode(), msg("track", now + 4, userId=U, event="Order Completed", properties={"revenue": 9})),
        ]
    )
    segment, errors = segment_client(p)
    segment.identify(U, traits, anonymous_id=A)
    segment.page(U, name="Pricing", properties={"path": "/pricing"})
    segment.track(anonymous_id=A, event="Demo Requested")
    segment.identify(anonymous_id=f"{A}-2", traits={"email": E})
    segment.flush()
    segment.join()
    assert errors == [], "a suppressed person's messages are answered as accepted (Segment's 200)"
    # a bystander's events after theirs: once it is scored and everything drained, theirs were seen
    marker = f"prf-marker-{TOKEN}"
    p.service.publish([("web", marker.encode(), msg("page", now + 10, userId=marker, properties={"path": "/x"}))])
    with p.service.client() as http:
        wait(p, lambda: contact(http, marker), 60, "the bystander scored")
        drained(p)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for ident in (U, A, E, f"{U}-new", f"{A}-2"):
                assert contact(http, ident) is None, ident
            time.sleep(0.3)
    assert len([r for r in p.receiver.received if mentions(r.body)]) == sent_before, "no webhook about them"
    s = p.settings
    for topic in (s.topic_deadletter, s.private_deadletter_topic):
        _, records = latest(p, topic)
        assert not [r for r in records if mentions(r.key) or mentions(r.value)], topic


def test_the_archive_holds_nothing_and_replays_and_shadows_do_not_recreate_them(proof: Proof, tmp_path: Path) -> None:
    p = proof
    drained(p)
    time.sleep(1.0)
    with api_stopped(p) as s:
        after = archive_hits(s)
        assert after.keys() >= p.before.keys(), "the scan covers every table it covered before"
        assert {t: n for t, n in after.items() if n} == {}, after

        for source in ("archive", "kafka"):
            result = replay(s, MODEL, source, live_model=MODEL)
            assert result.events > 0, source
            recreated = [k for k in result.states if mentions(k)]
            assert recreated == [], f"{source} replay recreated {recreated}"
            for key, raw in result.states.items():
                state = decode_state(raw)
                assert state.email is None or not mentions(state.email), f"{source}: {key} holds E"
                assert not [a for a in state.anonymous_ids if mentions(a)], f"{source}: {key} holds A"
            assert any(k == B for k in result.states), source

        out = tmp_path / "shadow.json"
        _, report = shadow_from_archive(p.service, MODEL_FILE, "prf-shadow", out)
        shadow_ns = report["shadow"]
        shadow = s.in_namespace(shadow_ns)
        contacts, _ = latest(p, shadow.changelog_topic("contacts"))
        assert B.encode() in contacts, "the shadow rebuilt the others"
        assert not [k for k, v in contacts.items() if v is not None and (mentions(k) or mentions(v))]
        views, _ = latest(p, shadow.views_topic)
        assert not [k for k, v in views.items() if v is not None and (mentions(k) or mentions(v))]
        # its worker stopped with --until-caught-up: retired, as an operator would (a regulation
        # waits for the worker of every live namespace)
        retired = subprocess.run(
            [sys.executable, "-m", "deploy.cli", "retire", shadow_ns],
            env=p.service.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert retired.returncode == 0, retired.stdout[-3000:] + retired.stderr[-3000:]


def test_unsuppress_collects_again_but_the_deleted_past_stays_deleted(proof: Proof) -> None:
    p = proof
    reg_id, p.unsuppressed_at_ms = regulate(p, "UNSUPPRESS", [U])
    finished(p, reg_id)
    now = int(time.time() * 1000)
    p.service.publish([("web", U.encode(), msg("page", now + 1000, userId=U, properties={"path": "/welcome-back"}))])
    with p.service.client() as http:
        back = wait(p, lambda: contact(http, U), 60, "U scored again after UNSUPPRESS")
        assert back["first_seen"] >= iso(p.erased_at_ms)[:19], back
        assert A not in back["identity"]["anonymous_ids"]
        # the deleted past, sent again, does not come back: it is before the erasure instant
        p.service.publish(p.history)
        marker = f"prf-marker2-{TOKEN}"
        p.service.publish([("web", marker.encode(), msg("page", now + 2000, userId=marker, properties={}))])
        wait(p, lambda: contact(http, marker), 60, "the second bystander scored")
        drained(p, sink=False)
        time.sleep(2.0)
        again = contact(http, U)
        assert again is not None and again["first_seen"] == back["first_seen"], again
        assert again["rfm"] is None, "the erased orders stay erased"
        assert again["account_id"] is None
        assert contact(http, A) is None and contact(http, E) is None


def test_delete_only_deletes_and_collects_afterwards(proof: Proof) -> None:
    p = proof
    with p.service.client() as http:
        assert contact(http, Q) is not None
        reg_id, at = regulate(p, "DELETE_ONLY", [Q])
        finished(p, reg_id)
        wait(p, lambda: contact(http, Q) is None and contact(http, QE) is None, 30, "Q forgotten")
        now = int(time.time() * 1000)
        p.service.publish([("web", Q.encode(), msg("page", now + 1000, userId=Q, properties={"path": "/new"}))])
        fresh = wait(p, lambda: contact(http, Q), 60, "Q's new events collected after DELETE_ONLY")
        assert fresh["rfm"] is None and fresh["identity"]["email"] is None, fresh
        assert fresh["first_seen"] >= iso(at)[:19]


async def _compaction_lags(p: Proof) -> dict[str, str | None]:
    from kafka_io.clients import admin
    from kafka_io.topics import topic_configs

    s = p.settings
    names = [
        s.changelog_topic("contacts"),
        s.changelog_topic("identity"),
        s.changelog_topic("accounts"),
        s.views_topic,
        s.regulations_topic,
        s.deliveries_topic,
    ]
    client = admin(p.service.kafka)
    await client.start()
    try:
        configs = await topic_configs(client, names)
    finally:
        await client.close()
    return {name: configs.get(name, {}).get("max.compaction.lag.ms") for name in names}


def test_compaction_removes_their_earlier_records_within_a_bounded_time(proof: Proof) -> None:
    """A tombstone hides a person from readers of the latest value; their earlier records (the
    whole state, email included) stay in the log until compaction. Erasure is only complete once
    that happens, so it must happen within a bounded time on every compacted topic holding
    personal data: ``max.compaction.lag.ms`` set (30 days at most)."""
    p = proof
    _, records = latest(p, p.settings.changelog_topic("contacts"))
    assert [r for r in records if r.value is not None and mentions(r.value, (U,))], "still in the log now"
    lags = asyncio.run(_compaction_lags(p))
    unbounded = {name: lag for name, lag in lags.items() if lag is None or int(lag) > 30 * 24 * HOUR}
    assert unbounded == {}, lags


def test_a_regulation_of_max_subjects_people_is_accepted(proof: Proof) -> None:
    """A regulation of the largest batch is accepted for people with history: each with an
    anonymous id and an email the API knows (three privacy keys each)."""
    p = proof
    now = int(time.time() * 1000)
    people = [f"prf-many-{TOKEN}-{i}" for i in range(MAX_SUBJECTS)]
    p.service.publish(
        (
            "web",
            user.encode(),
            msg("identify", now - HOUR, userId=user, anonymousId=f"{user}-a", traits={"email": f"{user}@many.example"}),
        )
        for user in people
    )
    with p.service.client() as http:
        wait(p, lambda: contact(http, people[-1]) and contact(http, people[0]), 180, "the people visible")
        drained(p, sink=False)
        r = http.post(
            "/v1/regulations", json={"regulationType": "SUPPRESS", "subjectType": "USER_ID", "subjectIds": people}
        )
    assert r.status_code == 200, r.text
