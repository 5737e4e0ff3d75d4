"""The analytics sink end to end: the real worker, API and webhook dispatcher on the real broker
produce events, dead letters, triggers, deliveries and changelogs; sinks write them into real chDB.

The service runs with ``SCORESTREAM_SINK_IN_API=false`` and the sinks run in this process, each
in a thread with its own event loop, against the test process's chDB directory: chDB allows one
process per directory, so a test cannot read an API's chDB while the API runs. The last test
turns the embedded mode on, stops the API, and then reads what its sink wrote.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError

from analytics.client import Store, connect
from schemas.model_file import load_model
from schemas.settings import Settings
from schemas.webhooks import DELIVERY_DECODER
from sink.service import Sink
from tests.e2e.service import Service
from tests.webhook_receiver import Receiver

T = TypeVar("T")
MODEL = load_model()
NOW = int(time.time() * 1000)
USERS = [f"user-{i}" for i in range(12)]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def msg(kind: str, mid: str, ts: int, **fields: Any) -> bytes:
    return orjson.dumps({"type": kind, "messageId": mid, "timestamp": iso(ts), **fields})


def workload(prefix: str, users: list[str], start: int) -> list[tuple[str, bytes | None, bytes]]:
    """Page views, identifies (every third a CEO), demo requests (every other), two accounts,
    and an anonymous visitor aliased to the first user."""
    out: list[tuple[str, bytes | None, bytes]] = []
    for i, user in enumerate(users):
        t, key = start + i * 1000, user.encode()
        title = "CEO" if i % 3 == 0 else "Engineer"
        out.append(("web", key, msg("page", f"{prefix}{user}-p", t, userId=user, properties={"path": "/pricing"})))
        traits = {"email": f"{user}@example.com", "title": title}
        out.append(("web", key, msg("identify", f"{prefix}{user}-i", t + 1, userId=user, traits=traits)))
        if i % 2 == 0:
            out.append(("email", key, msg("track", f"{prefix}{user}-d", t + 2, userId=user, event="Demo Requested")))
        if i < 4:
            account = f"{prefix}acct-{i % 2}"
            company: dict[str, Any] = {"name": account, "industry": "software", "employees": 300}
            out.append(
                ("store", key, msg("group", f"{prefix}{user}-g", t + 3, userId=user, groupId=account, traits=company))
            )
    visitor = f"{prefix}visitor"
    t = start + len(users) * 1000
    out.append(("web", None, msg("page", f"{prefix}v-p", t, anonymousId=visitor, properties={"path": "/demo"})))
    out.append(("web", users[0].encode(), msg("alias", f"{prefix}v-a", t + 1, userId=users[0], previousId=visitor)))
    return out


BAD: list[tuple[str, bytes | None, bytes]] = [
    ("web", None, b"not json"),
    ("store", None, orjson.dumps({"type": "track", "messageId": "bad-1", "event": "Signed Up"})),
    ("email", None, orjson.dumps({"type": "nope", "messageId": "bad-2", "userId": "x"})),
]


class Background:
    """A sink in a thread with its own event loop; the test calls into it synchronously."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(sink.start())
        self.call(asyncio.wait_for(sink.migrated.wait(), 60))

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return self.call(self.sink.store.query(sql))

    def stop(self) -> None:
        try:
            self.call(self.sink.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def wait(check: Callable[[], T], timeout: float = 60, what: str = "condition", until: Callable[[T], bool] = bool) -> T:
    """Call ``check`` until ``until`` holds for its answer; return the answer."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if until(last):
            return last  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s; last: {last!r}")


async def _read_all(bootstrap: str, topics: list[str]) -> list[Any]:
    """Every record of ``topics`` up to their end offsets now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(t, p) for t in topics for p in sorted(cluster.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


def read_all(svc: Service, *topics: str) -> list[Any]:
    return asyncio.run(_read_all(svc.bootstrap, list(topics)))


async def _committed(bootstrap: str, group: str, topics: list[str]) -> tuple[int, int]:
    """(sum of the group's committed offsets, sum of end offsets) over ``topics``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(t, p) for t in topics for p in sorted(cluster.partitions_for_topic(t) or ())]
        ends = await consumer.end_offsets(tps)
        committed = [await consumer.committed(tp) for tp in tps]
        return sum(c or 0 for c in committed), sum(ends.values())
    finally:
        await consumer.stop()


def committed(svc: Service, group: str, topics: list[str]) -> tuple[int, int]:
    return asyncio.run(_committed(svc.bootstrap, group, topics))


def settings_for(svc: Service, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        k[len("SCORESTREAM_") :].lower(): v for k, v in svc.env.items() if k.startswith("SCORESTREAM_")
    }
    values.update({"clickhouse_url": url, "sink_batch_s": 0.3, **overrides})
    return Settings(**values)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Service]:
    """Worker, API and webhook dispatcher, one subscription to every trigger."""
    svc = Service(
        bootstrap=kafka_bootstrap,
        data_dir=Path(tmp_path_factory.mktemp("analytics")),
        extra_env={"SCORESTREAM_SINK_IN_API": "false", "SCORESTREAM_WEBHOOK_ALLOW_PRIVATE": "true"},
    )
    svc.start()
    dispatcher = svc._spawn("dispatcher", "dispatcher.log")
    try:
        with svc.client() as http:
            created = http.post("/v1/webhooks", json={"url": receiver.url("/all"), "events": ["*"]})
            assert created.status_code == 201, created.text
            sub = created.json()["id"]

            def known() -> bool:  # a test send gets through: the dispatcher knows the subscription
                http.post(f"/v1/webhooks/{sub}/test")
                time.sleep(0.5)
                return bool(receiver.at("/all"))

            wait(known, 30, "the dispatcher to know the subscription")
        yield svc
    finally:
        dispatcher.terminate()
        dispatcher.wait(30)
        svc.stop()


def settle(svc: Service, users: list[str]) -> None:
    """Wait until the API knows ``users`` and every trigger has a succeeded delivery, twice in a
    row."""
    with svc.client() as http:
        wait(lambda: all(http.get(f"/v1/contacts/{u}").status_code == 200 for u in users), 60, "contacts")
    settings = settings_for(svc, "chdb://unused")
    previous: set[str] = set()
    while True:
        ids = {orjson.loads(r.value)["id"] for r in read_all(svc, settings.topic_triggers)}
        deliveries = [DELIVERY_DECODER.decode(r.value) for r in read_all(svc, settings.deliveries_topic)]
        delivered = {d.trigger_id for d in deliveries if d.status == "succeeded"}
        if ids and ids <= delivered and ids == previous:
            return
        previous = ids
        time.sleep(0.5)


def counts(bg: Background) -> dict[str, Any]:
    def one(sql: str) -> int:
        return int(bg.query(sql)[0][0])

    return {
        "accepted": one("SELECT count() FROM events FINAL WHERE status = 'accepted'"),
        "rejected": one("SELECT count() FROM events FINAL WHERE status = 'rejected'"),
        "triggers": one("SELECT count() FROM triggers FINAL"),
        "transitions": one("SELECT count() FROM stage_transitions FINAL"),
        "deliveries": one("SELECT count() FROM webhook_deliveries FINAL"),
        "contacts": one("SELECT count() FROM contacts FINAL"),
        "ledger": one("SELECT count() FROM score_ledger FINAL"),
        "accounts": one("SELECT count() FROM account_changes FINAL"),
        "rejects": one("SELECT count() FROM sink_rejects FINAL"),
    }


def sink_topics(settings: Settings) -> list[str]:
    return [
        *settings.source_topics,
        settings.topic_deadletter,
        settings.topic_triggers,
        settings.deliveries_topic,
        settings.changelog_topic("contacts"),
        settings.changelog_topic("accounts"),
    ]


def test_the_sink_archives_everything_once_and_the_ledger_agrees_with_the_api(service: Service, chdb_url: str) -> None:
    good = workload("a-", USERS, NOW - 3_600_000)
    service.publish([*good, *BAD])
    settle(service, USERS)
    settings = settings_for(service, chdb_url)
    assert len(read_all(service, settings.topic_deadletter)) == len(BAD)

    def truth() -> dict[str, Any]:
        """What the archive must hold, from the topics as they are now, and the archive: equal
        once the sink has caught up (late account triggers may still come: read both again)."""
        trigger_types = {
            (b := orjson.loads(r.value))["id"]: b["type"] for r in read_all(service, settings.topic_triggers)
        }
        deliveries = {r.key.decode(): r.value for r in read_all(service, settings.deliveries_topic)}
        expected = {
            "accepted": len(good),
            "rejected": len(BAD),
            "triggers": len(trigger_types),
            "transitions": sum(1 for t in trigger_types.values() if t in ("stage.changed", "account.stage_changed")),
            "deliveries": len(deliveries),
            "contacts": len({r.key for r in read_all(service, settings.changelog_topic("contacts"))}),
            "accounts": len(read_all(service, settings.changelog_topic("accounts"))),
            "rejects": 0,
        }
        statuses = {k: DELIVERY_DECODER.decode(v).status for k, v in deliveries.items()}
        return {"expected": expected, "found": counts(first), "statuses": statuses, "archived": archived_statuses()}

    def archived_statuses() -> dict[str, str]:
        return {str(k): str(v) for k, v in first.query("SELECT id, status FROM webhook_deliveries FINAL")}

    def agree(t: dict[str, Any]) -> bool:
        return all(t["found"][k] == v for k, v in t["expected"].items()) and t["statuses"] == t["archived"]

    started = time.monotonic()
    first = Background(Sink(settings))
    try:
        both = wait(truth, 60, "archive = topics", agree)
        took = time.monotonic() - started
        expected, found = both["expected"], both["found"]
        assert expected["transitions"] > len(USERS) // 2 and expected["accounts"] >= 2
        assert first.sink.stats.unreadable == 0 and first.sink.stats.skipped >= len(BAD)
        reasons = dict(
            first.query("SELECT reason, count() FROM events FINAL WHERE status = 'rejected' GROUP BY reason")
        )
        assert reasons == {"invalid_json": 1, "missing_identity": 1, "unknown_type": 1}
        sources = first.query("SELECT DISTINCT source_topic FROM events FINAL WHERE status = 'rejected'")
        assert {s for (s,) in sources} <= set(settings.source_topics) and len(sources) == 3
        by_channel = dict(
            first.query("SELECT channel, count() FROM events FINAL WHERE status = 'accepted' GROUP BY channel")
        )
        assert by_channel == {c: sum(1 for ch, _, _ in good if ch == c) for c in ("web", "email", "store")}
        merged = dict(first.query("SELECT contact_id, merged_into FROM score_ledger FINAL WHERE kind = 'merged'"))
        assert merged["anonymous:a-visitor"] == USERS[0] and set(merged.values()) == {USERS[0]}

        # the ledger's last row per contact is the API's answer, decayed from then to the API's now
        ledger = {
            str(c): (int(at), float(e), float(f), str(s))
            for c, at, e, f, s in first.query(
                "SELECT contact_id, argMax(toUnixTimestamp64Milli(at), kafka_offset), argMax(engagement, kafka_offset),"
                " argMax(fit, kafka_offset), argMax(stage, kafka_offset) FROM score_ledger FINAL"
                " WHERE kind = 'score' GROUP BY contact_id"
            )
        }
        assert set(USERS) <= set(ledger)
        with service.client() as http:
            for user in USERS:
                body = http.get(f"/v1/contacts/{user}").json()
                at, engagement, fit, stage = ledger[user]
                as_of = int(datetime.fromisoformat(body["engagement"]["as_of"]).timestamp() * 1000)
                decayed = engagement * math.pow(2.0, -(as_of - at) / MODEL.half_life_ms)
                assert math.isclose(body["engagement"]["score"], decayed, abs_tol=1e-5), (user, body, ledger[user])
                assert body["fit"]["score"] == fit and body["stage"]["name"] == stage
            for account, at, engagement, stage in first.query(
                "SELECT account_id, argMax(toUnixTimestamp64Milli(at), kafka_offset), argMax(engagement, kafka_offset),"
                " argMax(stage, kafka_offset) FROM account_changes FINAL GROUP BY account_id"
            ):
                body = http.get(f"/v1/accounts/{account}").json()
                as_of = int(datetime.fromisoformat(body["engagement"]["as_of"]).timestamp() * 1000)
                decayed = float(engagement) * math.pow(2.0, -(as_of - int(at)) / MODEL.half_life_ms)
                assert (
                    math.isclose(body["engagement"]["score"], decayed, abs_tol=1e-4) and body["stage"]["name"] == stage
                )
        ledger_rows = found["ledger"]
        assert ledger_rows >= len(USERS) + 1
    finally:
        first.stop()

    # a second sink (another group) reads every topic again into the same tables: nothing doubles
    total = committed(service, f"{settings.app_id}-sink", sink_topics(settings))[1]
    again = Background(Sink(settings, group_id=f"{settings.app_id}-again"))
    try:
        wait(lambda: again.sink.stats.records >= total and again.sink.idle, 60, "the second read")
        assert again.sink.stats.rows["events"] == len(good) + len(BAD)  # really inserted a second time
        assert counts(again) == {**expected, "ledger": ledger_rows}
        again.call(again.sink.store.command("OPTIMIZE TABLE events FINAL"))
        assert again.query("SELECT count() FROM events") == [(len(good) + len(BAD),)]
    finally:
        again.stop()
    print(f"\nfirst sink: all rows in {took:.1f} s (chDB start and migrations included)")


class Outage:
    """A ClickHouse that fails every call while ``down`` (fault injection at the client)."""

    def __init__(self) -> None:
        self.down = False
        self.refused = 0

    def connect(self, url: str) -> Client:
        client = connect(url)
        outage = self

        class Flaky:
            def __getattr__(self, name: str) -> Any:
                attr = getattr(client, name)
                if name not in ("insert", "query", "command"):
                    return attr

                def call(*args: Any, **kwargs: Any) -> Any:
                    if outage.down:
                        outage.refused += 1
                        raise OperationalError("ClickHouse is unavailable (test)")
                    return attr(*args, **kwargs)

                return call

        return Flaky()  # type: ignore[return-value]


def test_an_unavailable_clickhouse_delays_the_sink_and_loses_nothing(service: Service, chdb_url: str) -> None:
    settings = settings_for(service, chdb_url)
    outage = Outage()
    group = f"{settings.app_id}-outage"
    bg = Background(Sink(settings, store=Store(chdb_url, outage.connect), group_id=group))
    web = [settings.topic_web]
    try:
        total = committed(service, group, sink_topics(settings))[1]
        wait(lambda: bg.sink.stats.records >= total and bg.sink.idle, 60, "caught up")
        before = counts(bg)["accepted"]
        commits_before = committed(service, group, web)
        outage.down = True
        users = [f"down-{uuid.uuid4().hex[:6]}-{i}" for i in range(5)]
        events = [(ch, k, v) for ch, k, v in workload("o-", users, NOW - 60_000) if ch == "web"]
        service.publish(events)
        wait(lambda: outage.refused >= 3, 30, "failed attempts")
        time.sleep(1.0)
        assert bg.sink.running and bg.sink.stats.failures >= 3
        # nothing committed past what is in ClickHouse
        assert committed(service, group, web)[0] == commits_before[0]
        outage.down = False
        wait(lambda: counts(bg)["accepted"] == before + len(events), 60, "catching up")
        wait(lambda: committed(service, group, web)[0] == commits_before[0] + len(events), 30, "commit")
        assert bg.sink.stats.last_error is not None and "unavailable" in bg.sink.stats.last_error
    finally:
        bg.stop()


def test_the_api_runs_the_sink_with_embedded_chdb(service: Service, chdb_path: Path) -> None:
    """SCORESTREAM_SINK_IN_API with a chdb:// URL (what auto means: ``tests/analytics/test_client.py``):
    the API process owns chDB and its sink archives what arrives; the test reads it once the API
    has stopped."""
    database = f"api_{uuid.uuid4().hex[:8]}"
    url = f"chdb://{chdb_path}?database={database}"
    settings = settings_for(service, url)
    assert service.api is not None
    service.api.terminate()
    service.api.wait(30)
    service.extra_env["SCORESTREAM_SINK_IN_API"] = "true"
    service.extra_env["SCORESTREAM_CLICKHOUSE_URL"] = url
    service.start_api()
    try:
        service.wait_ready()
        users = [f"emb-{uuid.uuid4().hex[:6]}-{i}" for i in range(4)]
        events = workload("e-", users, NOW - 30_000)
        service.publish(events)
        with service.client() as http:
            wait(lambda: all(http.get(f"/v1/contacts/{u}").status_code == 200 for u in users), 60, "contacts")
        topics = sink_topics(settings)
        wait(lambda: (c := committed(service, settings.app_id + "-sink", topics))[0] == c[1], 60, "API sink commits")
    finally:
        service.api.terminate()
        assert service.api.wait(30) in (0, -15), service.logs("api")  # uvicorn re-raises SIGTERM after its shutdown

    async def read() -> tuple[int, int]:
        store = Store(url)
        try:
            accepted = await store.query(
                "SELECT count() FROM events FINAL WHERE status = 'accepted' AND message_id LIKE 'e-%'"
            )
            ledger = await store.query(
                f"SELECT uniqExact(contact_id) FROM score_ledger FINAL WHERE contact_id IN {tuple(users)!r}"
            )
            return int(accepted[0][0]), int(ledger[0][0])
        finally:
            await store.close()

    assert asyncio.run(read()) == (len(events), len(users))
