"""The analytics routes in process, over ASGI, against real chDB (the generated archive of
``tests/analytics/archive.py``): keys, 422 and 503, that each route answers what
:mod:`analytics.reports` computes, id resolution, and that the contact routes and their fast path
still work beside ``GET /v1/contacts``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI

from analytics import reports
from analytics.client import Store
from analytics.migrations import migrate
from analytics.reports import decayed
from api.app import create_api
from api.archive import analytics_store
from api.population_reader import PopulationReader
from api.replica import Replica, WorkerStatus
from kafka_io.clients import KafkaConnection
from schemas.model_file import MODELS, load_model
from schemas.settings import Settings
from schemas.times import at_of
from scorestream import apply_events
from scorestream.population import PopulationModel
from scorestream.scoring import band_of
from tests.analytics.archive import MODEL, NOW, Archive, generate, load, rfm_bounds, two_namespaces
from tests.api.view_bytes import view_bytes
from tests.factories import DAY, make_event

T = TypeVar("T")
KEY = "unit-test-key-0123456789"
ROUTES = [
    "/v1/contacts",
    "/v1/contacts/c-001/history",
    "/v1/reports/funnel",
    "/v1/reports/rfm",
    "/v1/reports/personas",
    "/v1/reports/forecast",
    "/v1/reports/groups",
]


def run(coro: Awaitable[T]) -> T:
    async def go() -> T:
        return await coro

    return asyncio.run(go())


@pytest.fixture(scope="module")
def archive() -> Archive:
    return generate(seed=11)


@pytest.fixture(scope="module")
def store(chdb_path: Path, archive: Archive) -> Iterator[Store]:
    s = Store(f"chdb://{chdb_path}?database=api_{uuid.uuid4().hex[:8]}")

    async def setup() -> None:
        await migrate(s)
        await load(s, archive)

    run(setup())
    yield s
    s.close_sync()


def replica() -> Replica:
    """A replica that knows contact c-001 by the anonymous id anon-c1 (the archive does not)."""
    r = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    event = make_event(kind="identify", user_id="c-001", anonymous_id="anon-c1", traits={"title": "CEO"})
    r.apply(b"c-001", view_bytes(apply_events(None, "c-001", [event], MODEL), MODEL))
    r.caught_up.set()
    r.workers["w1"] = WorkerStatus(state="ready", model=MODEL.version, at_ms=NOW)
    return r


def make_app(store: Store | None, population: PopulationReader | None = None) -> FastAPI:
    settings = Settings(api_keys=KEY)  # type: ignore[arg-type]
    app = create_api(settings, model=MODEL, replica=replica(), clock=lambda: NOW, population=population)
    if store is not None:

        async def get() -> Store:
            return store

        app.state.analytics = get
    return app


def get(app: FastAPI, *paths: str, key: bool = True) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {KEY}"} if key else {}

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return [await client.get(p, headers=headers) for p in paths]

    return asyncio.run(go())


def test_every_route_needs_a_key(store: Store) -> None:
    assert [r.status_code for r in get(make_app(store), *ROUTES, key=False)] == [401] * len(ROUTES)


def test_not_ready_without_the_archive() -> None:
    """The default test app: embedded chDB that this process does not run (no sink here)."""
    for r in get(make_app(None), *ROUTES):
        assert r.status_code == 503
        assert r.json()["code"] == "not_ready" and "SCORESTREAM_SINK_IN_API" in r.json()["detail"]


def test_not_ready_before_the_migrations(chdb_path: Path) -> None:
    empty = Store(f"chdb://{chdb_path}?database=api_empty_{uuid.uuid4().hex[:8]}")
    try:
        for r in get(make_app(empty), *ROUTES):
            assert r.status_code == 503 and r.json()["code"] == "not_ready", r.text
    finally:
        empty.close_sync()


def test_the_sinks_archive_is_read_once_migrated_on_clients_of_its_own(store: Store) -> None:
    """Queries run on read stores of the sink's URL (their own chDB clients and threads), not on
    the sink's store: its inserts do not wait behind a report (issue 17)."""

    class FakeSink:
        def __init__(self) -> None:
            self.migrated = asyncio.Event()
            self.store = store

    sink: Any = FakeSink()

    async def go() -> tuple[str, Store, int]:
        getter = analytics_store(Settings(reports_max_concurrent=2), sink)
        try:
            await getter()
        except Exception as exc:
            refused = str(exc)
        sink.migrated.set()
        try:
            async with getter.lease() as read:
                rows = await read.query("SELECT count() FROM contacts")
            return refused, read, int(rows[0][0])
        finally:
            await getter.close()

    refused, got, contacts = asyncio.run(go())
    assert "migrations" in refused
    assert got is not store and got.url == store.url and contacts > 0


def test_a_report_does_not_hold_up_the_sinks_calls(store: Store) -> None:
    """A slow query on a read store; the sink's store answers meanwhile (before the query ends)."""
    sink: Any = SimpleNamespace(migrated=asyncio.Event(), store=store)
    sink.migrated.set()

    async def go() -> list[str]:
        getter = analytics_store(Settings(), sink)
        done: list[str] = []

        async def report() -> None:
            async with getter.lease() as read:
                await read.query("SELECT sleep(2)")
            done.append("report")

        async def sink_call() -> None:
            await asyncio.sleep(0.3)  # the report is running
            await store.query("SELECT count() FROM contacts")
            done.append("sink")

        try:
            await asyncio.gather(report(), sink_call())
        finally:
            await getter.close()
        return done

    assert run(go()) == ["sink", "report"]


def test_beyond_the_cap_is_503_busy_with_retry_after(store: Store) -> None:
    """SCORESTREAM_REPORTS_MAX_CONCURRENT queries run; one more is refused at once."""
    sink: Any = SimpleNamespace(migrated=asyncio.Event(), store=store)
    sink.migrated.set()
    app = make_app(None)
    app.state.analytics = analytics_store(Settings(reports_max_concurrent=1), sink)

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            headers = {"Authorization": f"Bearer {KEY}"}
            async with app.state.analytics.lease():  # the one query allowed is running
                busy = await client.get("/v1/reports/personas", headers=headers)
            after = await client.get("/v1/reports/personas", headers=headers)
        await app.state.analytics.close()
        return busy, after

    busy, after = run(go())
    assert busy.status_code == 503 and busy.json()["code"] == "busy", busy.text
    assert busy.headers["retry-after"] == "1" and busy.headers["content-type"] == "application/problem+json"
    assert "SCORESTREAM_REPORTS_MAX_CONCURRENT" in busy.json()["detail"]
    assert after.status_code == 200, after.text


@pytest.mark.parametrize(
    "path",
    [
        "/v1/contacts?limit=0",
        "/v1/contacts?limit=1001",
        "/v1/contacts?cursor=not-a-cursor",
        "/v1/contacts?status=gone",
        "/v1/contacts?min_engagement=lots",
        "/v1/contacts?rfm_r=6",
        "/v1/contacts?rfm_f=0",
        "/v1/contacts?rfm_r=high",
        "/v1/contacts?group=no-such-group",
        "/v1/contacts?min_score=10",
        "/v1/contacts?group=no-such-group&min_score=10",
        "/v1/reports/personas?group=no-such-group",
        "/v1/reports/overview?group=no-such-group",
        "/v1/contacts/c-001/history?from=2026-09-01T00:00:00Z&to=2026-08-01T00:00:00Z",
        "/v1/reports/funnel?stages=lead,nope",
        "/v1/reports/funnel?stages=lead,lead",
        "/v1/reports/funnel?mode=loose",
        "/v1/reports/forecast?lookback_days=0",
    ],
)
def test_bad_parameters_are_422(store: Store, path: str) -> None:
    (r,) = get(make_app(store), path)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request", r.text


def test_an_unknown_group_is_a_problem_naming_the_models_groups(store: Store) -> None:
    (r,) = get(make_app(store), "/v1/contacts?group=hardwear&min_score=10")
    problem = r.json()
    assert r.status_code == 422 and problem["errors"][0]["parameter"] == "group", r.text
    assert "'hardwear'" in problem["detail"] and MODEL.version in problem["detail"]
    assert all(g.id in problem["detail"] for g in MODEL.groups) and MODEL.groups
    (r,) = get(make_app(store), f"/v1/contacts?group={MODEL.groups[0].id}&min_score=-1000")
    assert r.status_code == 200 and all(
        [g["id"] for g in row["groups"]] == [g.id for g in MODEL.groups] for row in r.json()["data"]
    )


def test_the_groups_report_is_the_archives(store: Store, archive: Archive) -> None:
    (r,) = get(make_app(store), "/v1/reports/groups?stage=lead,mql")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["contacts"] == sum(1 for c in archive.active() if c.stage in ("lead", "mql"))
    assert [g["id"] for g in body["groups"]] == [g.id for g in MODEL.groups] and body["stages"] == ["lead", "mql"]
    assert all(g["without_points"] + g["contacts"] == body["contacts"] for g in body["groups"])


def test_the_sync_list_pages_by_cursor(store: Store, archive: Archive) -> None:
    app = make_app(store)
    ids: list[str] = []
    path = "/v1/contacts?stage=lead,mql,customer&limit=4"
    while True:
        (r,) = get(app, path)
        assert r.status_code == 200
        body = r.json()
        ids += [c["contact_id"] for c in body["data"]]
        if not body["has_more"]:
            break
        path = f"/v1/contacts?stage=lead,mql,customer&limit=4&cursor={body['next_cursor']}"
    expected = sorted(c.id for c in archive.active() if c.stage in ("lead", "mql", "customer"))
    assert sorted(ids) == expected and len(ids) > 4
    (r,) = get(app, "/v1/contacts?min_engagement=30&flag=job_seeker&updated_since=2026-07-01T00:00:00Z")
    wanted = {
        c.id
        for c in archive.active()
        if c.decayed(NOW) >= 30 and "job_seeker" in c.flags and c.updated_at >= 1_782_864_000_000
    }
    assert {c["contact_id"] for c in r.json()["data"]} == wanted


def test_history_resolves_ids_through_the_replica_and_the_archive(store: Store) -> None:
    app = make_app(store)
    by_anonymous, by_email, merged, missing = get(
        app,
        "/v1/contacts/anon-c1/history",  # only the replica knows this anonymous id
        "/v1/contacts/person3@example.com/history",  # the archive's contacts table
        "/v1/contacts/c-005/history",  # merged into c-006
        "/v1/contacts/nobody/history",
    )
    assert by_anonymous.status_code == 200 and by_anonymous.json()["contact_id"] == "c-001"
    assert [row["engagement"] for row in by_anonymous.json()["ledger"]] == [10.0, 45.0, 80.0]
    assert by_email.json()["contact_id"] == "c-003" and merged.json()["contact_id"] == "c-006"
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    (r,) = get(app, "/v1/contacts/c-001/history?from=2026-08-23T00:00:00Z&as_of=2026-09-06T14:13:20Z")
    body = r.json()
    assert body["from"].startswith("2026-08-23") and [row["engagement"] for row in body["ledger"]] == [45.0, 80.0]
    assert body["as_of"]["ledger_at"].startswith("2026-09-01") and body["as_of"]["fit"] == 20.0


def with_population(store: Store, archive: Archive) -> FastAPI:
    bounds = rfm_bounds(archive)
    population = PopulationReader(kafka=KafkaConnection("127.0.0.1:1"), topic="p")
    population.model = PopulationModel(
        computed_at_ms=NOW, customers=bounds.customers, partitions=(0,), boundaries=bounds, rank_error=0.0
    )
    return make_app(store, population)


def test_the_sync_list_lists_an_rfm_cell_page_by_page(store: Store, archive: Archive) -> None:
    """``rfm_r`` + ``rfm_f``: the contacts of that cell of ``GET /v1/reports/rfm``'s grid, every
    one once over the pages; before there are boundaries: 503 ``not_ready``."""
    app = with_population(store, archive)
    (rfm,) = get(app, "/v1/reports/rfm")
    cell = max(rfm.json()["grid"], key=lambda c: c["contacts"])
    assert cell["contacts"] > 3
    ids: list[str] = []
    path = f"/v1/contacts?rfm_r={cell['r']}&rfm_f={cell['f']}&limit=3"
    while True:
        (r,) = get(app, path)
        assert r.status_code == 200, r.text
        ids += [c["contact_id"] for c in r.json()["data"]]
        if not r.json()["has_more"]:
            break
        path = f"/v1/contacts?rfm_r={cell['r']}&rfm_f={cell['f']}&limit=3&cursor={r.json()['next_cursor']}"
    assert len(ids) == len(set(ids)) == cell["contacts"]
    (row,) = get(app, f"/v1/contacts?rfm_r={cell['r']}&limit=1000")
    assert set(ids) <= {c["contact_id"] for c in row.json()["data"]}
    (without,) = get(make_app(store), f"/v1/contacts?rfm_r={cell['r']}")
    assert without.status_code == 503 and without.json()["code"] == "not_ready", without.text
    assert "RFM boundaries" in without.json()["detail"]


def test_reports_answer_what_the_report_functions_compute(store: Store, archive: Archive) -> None:
    bounds = rfm_bounds(archive)
    population = PopulationReader(kafka=KafkaConnection("127.0.0.1:1"), topic="p")
    population.model = PopulationModel(
        computed_at_ms=NOW, customers=bounds.customers, partitions=(0,), boundaries=bounds, rank_error=0.0
    )
    app = make_app(store, population)
    funnel, sequential, rfm, personas, forecast = get(
        app,
        "/v1/reports/funnel?from=2026-06-23T14:13:20Z&to=2026-09-16T14:13:20Z",
        "/v1/reports/funnel?stages=lead,sql,customer&mode=sequential&model=default",
        "/v1/reports/rfm",
        "/v1/reports/personas",
        "/v1/reports/forecast?lookback_days=120",
    )
    assert all(r.status_code == 200 for r in (funnel, sequential, rfm, personas, forecast))
    expected = run(reports.funnel(store, MODEL, reports.default_funnel(MODEL), NOW - 90 * DAY, NOW - 5 * DAY))
    assert funnel.json() == expected.model_dump(mode="json", by_alias=True)
    assert [s["stage"] for s in sequential.json()["stages"]] == ["lead", "sql", "customer"]
    assert sequential.json()["mode"] == "sequential" and sequential.json()["model"] == "default"
    assert sequential.json()["to"].startswith("2026-09-21") and sequential.json()["from"].startswith("2026-06-23")
    assert rfm.json() == run(reports.rfm(store, MODEL, bounds)).model_dump(mode="json")
    assert rfm.json()["segments_from"] == "boundaries" and len(rfm.json()["grid"]) == 25
    assert personas.json() == run(reports.personas(store, MODEL, NOW)).model_dump(mode="json")
    assert forecast.json() == run(reports.forecast(store, MODEL, NOW, 120 * DAY)).model_dump(mode="json")


def test_the_contact_routes_still_answer_beside_the_list(store: Store) -> None:
    """``/v1/contacts`` (the list), ``/v1/contacts/{id}`` (the replica, fast path and full stack)
    and ``/v1/contacts:batchGet`` do not shadow each other."""
    app = make_app(store)

    async def go() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return [
                await client.get("/v1/contacts/c-001", headers=headers),
                await client.get("/v1/contacts/anon-c1", headers=headers),
                await client.post("/v1/contacts:batchGet", json={"ids": ["c-001", "x"]}, headers=headers),
                await client.get("/v1/contacts", headers=headers),
            ]

    one, anonymous, batch, listed = asyncio.run(go())
    assert one.status_code == 200 and one.json()["contact_id"] == "c-001"
    assert anonymous.json()["contact_id"] == "c-001"
    assert batch.json()["not_found"] == ["x"] and len(batch.json()["contacts"]) == 1
    assert listed.status_code == 200 and "data" in listed.json()
    assert getattr(app, "fast_get", None) is not None
    app.fast_get = None  # type: ignore[attr-defined]
    (slow,) = get(app, "/v1/contacts/c-001")
    assert slow.json() == one.json()


def test_history_is_the_active_models_unless_another_is_named(chdb_path: Path) -> None:
    """Contact x archived from two namespaces (A: the b2c model, B: the active one): the history of
    B by default, of A by version or name; A's as-of scores decayed with A's half-life while a live
    namespace runs it."""
    b2c = load_model(MODELS / "b2c.yaml")
    b2c = replace(b2c, half_life_ms=b2c.half_life_ms // 2)  # (the bundled one decays like the default)
    as_of = NOW + 3 * DAY

    async def go() -> list[httpx.Response]:
        store = Store(f"chdb://{chdb_path}?database=api_ns_{uuid.uuid4().hex[:8]}")
        try:
            await migrate(store)
            await two_namespaces(store, b2c.version)
            app = make_app(store)
            iso = {t: at_of(t).isoformat().replace("+00:00", "Z") for t in (NOW + 5 * DAY, as_of)}
            window = f"to={iso[NOW + 5 * DAY]}&as_of={iso[as_of]}"
            responses = []
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
                headers = {"Authorization": f"Bearer {KEY}"}
                for query in ("", f"&model={b2c.version}", "&model=b2c", "&model="):
                    responses.append(await client.get(f"/v1/contacts/x/history?{window}{query}", headers=headers))
                app.state.namespaces = SimpleNamespace(live=lambda: [SimpleNamespace(namespace="old-ns", model=b2c)])
                responses.append(await client.get(f"/v1/contacts/x/history?{window}&model=b2c", headers=headers))
                responses.append(await client.get(f"/v1/contacts/x/history?{window}&model=old-ns", headers=headers))
            return responses
        finally:
            await store.close()

    default, by_version, by_name, empty, live, by_namespace = (r.json() for r in asyncio.run(go()))
    assert by_namespace["model"] == b2c.version and by_namespace["ledger"] == by_version["ledger"]
    assert default["model"] == MODEL.version == empty["model"]
    assert [(r["engagement"], r["model_version"]) for r in default["ledger"]] == [
        (20.0, MODEL.version),
        (70.0, MODEL.version),
    ]
    assert [t["trigger_id"] for t in default["transitions"]] == ["trg_b1"] and default["as_of"]["stage"] == "mql"
    assert empty == default
    assert by_version["model"] == b2c.version and by_name["model"] == "b2c"
    for body in (by_version, by_name):
        assert [r["engagement"] for r in body["ledger"]] == [10.0, 60.0]
        assert [t["trigger_id"] for t in body["transitions"]] == ["trg_a1"]
        assert body["as_of"]["model_version"] == b2c.version and body["as_of"]["stage"] == "sql"
    # no live namespace runs b2c: the active model's half-life; one does: b2c's
    assert by_name["as_of"]["engagement"] == decayed(60.0, NOW + DAY, as_of, MODEL.half_life_ms)
    assert live["as_of"]["engagement"] == decayed(60.0, NOW + DAY, as_of, b2c.half_life_ms)
    assert live["as_of"]["engagement_band"] == band_of(b2c.engagement_bands, live["as_of"]["engagement"])


def test_the_history_route_documents_model() -> None:
    doc = make_app(None).openapi()
    parameters = {p["name"]: p for p in doc["paths"]["/v1/contacts/{contact_id}/history"]["get"]["parameters"]}
    assert "active model" in parameters["model"]["description"]
