"""Model namespaces in the API: ``?model=``, ``GET /v1/models``, promotions and retirements.

The registry's records are applied directly (``Namespaces.apply``, as its follower does) and the
namespaces' replicas are fed directly: no broker. Following the registry topic itself (absent at
first, then written) is covered in ``tests/e2e/test_api_namespaces.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from fastapi import FastAPI

from api.account_replica import AccountReplica
from api.app import create_api
from api.namespaces import Namespaces, Readers, UnknownModel
from api.replica import Replica, WorkerStatus
from kafka_io.clients import KafkaConnection
from schemas.model_file import MODELS, load_model, read_model_source
from schemas.registry import ACTIVE_KEY, NAMESPACE_PREFIX, ActiveRecord, Promotion, encode_record, namespace_record
from schemas.settings import Settings
from scorestream import Model, apply_events
from tests.api.view_bytes import view_bytes
from tests.factories import T0, make_event

KEY = "unit-test-key-0123456789"
NOW = T0 + 60_000
DEFAULT = load_model()
SHADOW = Model.from_dict({**read_model_source(), "name": "challenger"})
CUT = T0 + 30_000


@pytest.fixture(scope="module")
def challenger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model file of the shadow namespaces: the default model under another name."""
    path = tmp_path_factory.mktemp("models") / "challenger.yaml"
    path.write_text("extends: default\nname: challenger\n")
    assert load_model(path).version == SHADOW.version
    return path


def register(namespaces: Namespaces, name: str, model_file: Path, retired_ms: int | None = None) -> None:
    record = msgspec.structs.replace(namespace_record(name, model_file, T0), retired_ms=retired_ms)
    namespaces.apply(f"{NAMESPACE_PREFIX}{name}".encode(), encode_record(record))


def promote(namespaces: Namespaces, *promotions: tuple[str, int]) -> None:
    previous = "scorestream"
    done = []
    for name, cut in promotions:
        done.append(Promotion(namespace=name, from_ms=cut, promoted_ms=cut - 5000, previous=previous))
        previous = name
    namespaces.apply(ACTIVE_KEY.encode(), encode_record(ActiveRecord(promotions=done)))


def contact_replica(model: Model, path: str) -> Replica:
    """A caught-up replica with contact u-1, who viewed ``path``, scored by ``model``."""
    r = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    feed(r, model, path)
    return r


def feed(r: Replica, model: Model, path: str) -> None:
    identify = make_event(kind="identify", user_id="u-1", traits={"email": "ann@acme.com"})
    page = make_event(kind="page", event=None, channel="web", user_id="u-1", path=path)
    r.apply(b"u-1", view_bytes(apply_events(None, "u-1", [identify, page], model), model))
    r.caught_up.set()
    r.workers["w1"] = WorkerStatus(state="ready", model=model.version, at_ms=T0)


@pytest.fixture
def app() -> FastAPI:
    settings = Settings(api_keys=KEY)  # type: ignore[arg-type]
    accounts = AccountReplica(kafka=KafkaConnection("127.0.0.1:1"), changelog_topic="a")
    accounts.caught_up.set()
    replica = contact_replica(DEFAULT, "/pricing")
    return create_api(settings, model=DEFAULT, replica=replica, accounts=accounts, clock=lambda: NOW)


@pytest.fixture
def namespaces(app: FastAPI) -> Namespaces:
    found: Namespaces = app.state.namespaces
    return found


@pytest.fixture
def shadow(namespaces: Namespaces, challenger: Path) -> Iterator[Readers]:
    """Namespace ``v2`` registered with the challenger model; u-1 in its replica viewed /docs."""
    register(namespaces, "v2", challenger)
    readers = namespaces.pick("v2")
    feed(readers.replica, SHADOW, "/docs")
    yield readers


def call(app: FastAPI, *requests: tuple[str, str, Any]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return [await client.request(m, p, json=body, headers=headers) for m, p, body in requests]

    return asyncio.run(go())


def get(app: FastAPI, *paths: str) -> list[httpx.Response]:
    return call(app, *(("GET", p, None) for p in paths))


def pages(body: dict[str, Any]) -> set[str]:
    return {c["rule"] for c in body["engagement"]["top"]}


def test_model_picks_the_shadow_by_namespace_or_version(app: FastAPI, shadow: Readers) -> None:
    active, by_name, by_version, explicit_default = get(
        app,
        "/v1/contacts/u-1",
        "/v1/contacts/u-1?model=v2",
        f"/v1/contacts/u-1?model={SHADOW.version}",
        "/v1/contacts/u-1?model=scorestream",
    )
    assert active.json()["model_version"] == DEFAULT.version and "pricing-page" in pages(active.json())
    assert by_name.status_code == 200 and by_name.json()["model_version"] == SHADOW.version
    assert "pricing-page" not in pages(by_name.json())
    assert by_version.json() == by_name.json()
    assert explicit_default.json() == active.json()
    model, shadow_model, clv = get(app, "/v1/model", "/v1/model?model=v2", "/v1/models/clv?model=v2")
    assert (model.json()["name"], model.json()["version"]) == (DEFAULT.name, DEFAULT.version)
    assert (shadow_model.json()["name"], shadow_model.json()["version"]) == ("challenger", SHADOW.version)
    assert clv.status_code == 503 and clv.json()["code"] == "not_fitted"
    (batch,) = call(app, ("POST", "/v1/contacts:batchGet?model=v2", {"ids": ["u-1", "nobody"]}))
    assert [c["model_version"] for c in batch.json()["contacts"]] == [SHADOW.version]
    assert batch.json()["not_found"] == ["nobody"]


def test_a_shadow_not_caught_up_is_not_ready(app: FastAPI, namespaces: Namespaces, challenger: Path) -> None:
    register(namespaces, "v2", challenger)
    contact, batch, account, default_account = call(
        app,
        ("GET", "/v1/contacts/u-1?model=v2", None),
        ("POST", "/v1/contacts:batchGet?model=v2", {"ids": ["u-1"]}),
        ("GET", "/v1/accounts/acme?model=v2", None),
        ("GET", "/v1/accounts/acme", None),
    )
    for r in (contact, batch, account):
        assert r.status_code == 503 and r.json()["code"] == "not_ready", r.text
    assert "v2" in contact.json()["detail"]
    assert default_account.status_code == 404 and default_account.json()["code"] == "not_found"


def test_an_unknown_model_is_404_listing_the_namespaces(app: FastAPI, shadow: Readers) -> None:
    answers = call(
        app,
        ("GET", "/v1/contacts/u-1?model=nope", None),
        ("POST", "/v1/contacts:batchGet?model=nope", {"ids": ["u-1"]}),
        ("GET", "/v1/accounts/acme?model=nope", None),
        ("GET", "/v1/model?model=nope", None),
        ("GET", "/v1/models/clv?model=nope", None),
    )
    for r in answers:
        assert r.status_code == 404 and r.json()["code"] == "unknown_model", r.text
        assert "'nope'" in r.json()["detail"] and "scorestream, v2" in r.json()["detail"]
    with pytest.raises(UnknownModel):
        app.state.namespaces.pick("nope")


def test_models_lists_the_live_namespaces_and_their_roles(app: FastAPI, shadow: Readers) -> None:
    shadow.replica.caught_up.clear()
    (listed,) = get(app, "/v1/models")
    assert listed.status_code == 200
    assert listed.json() == {
        "models": [
            {
                "namespace": "scorestream",
                "model_version": DEFAULT.version,
                "role": "active",
                "registered_at": None,
                "active_from": None,
                "contacts": 1,
                "workers_ready": ["w1"],
                "caught_up": False,  # its population reader has not read its topic
            },
            {
                "namespace": "v2",
                "model_version": SHADOW.version,
                "role": "shadow",
                "registered_at": "2026-09-21T14:13:20Z",
                "active_from": None,
                "contacts": 1,
                "workers_ready": ["w1"],
                "caught_up": False,
            },
        ]
    }

    async def without_a_key() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.get("/v1/models")

    assert asyncio.run(without_a_key()).status_code == 401


def test_a_promotion_switches_the_default_at_once(app: FastAPI, namespaces: Namespaces, shadow: Readers) -> None:
    before = get(app, "/v1/contacts/u-1")[0]
    assert before.json()["model_version"] == DEFAULT.version
    register(namespaces, "scorestream", MODELS / "default.yaml")  # the old one stays, as a shadow
    promote(namespaces, ("v2", CUT))
    contact, model, listed, old = get(
        app, "/v1/contacts/u-1", "/v1/model", "/v1/models", "/v1/contacts/u-1?model=scorestream"
    )
    assert contact.json()["model_version"] == SHADOW.version  # the direct path: the new active namespace
    assert model.json()["version"] == SHADOW.version
    assert [(m["namespace"], m["role"], m["active_from"]) for m in listed.json()["models"]] == [
        ("v2", "active", "2026-09-21T14:13:50Z"),
        ("scorestream", "shadow", None),
    ]
    assert old.json() == before.json()
    assert app.state.replica is shadow.replica and app.state.model is shadow.model
    (ready,) = get(app, "/readyz")
    assert ready.json()["detail"]["namespace"] == "v2"


def test_the_old_default_namespace_is_a_shadow_until_retired(
    app: FastAPI, namespaces: Namespaces, shadow: Readers
) -> None:
    promote(namespaces, ("v2", CUT))
    (old,) = get(app, "/v1/contacts/u-1?model=scorestream")
    assert old.status_code == 200 and old.json()["model_version"] == DEFAULT.version  # no record: its own model
    assert [(r.namespace, r.model.version) for r in namespaces.live()] == [
        ("v2", SHADOW.version),
        ("scorestream", DEFAULT.version),
    ]
    register(namespaces, "scorestream", MODELS / "default.yaml", retired_ms=NOW)
    (retired,) = get(app, "/v1/contacts/u-1?model=scorestream")
    assert retired.status_code == 404 and retired.json()["code"] == "unknown_model"
    assert [r.namespace for r in namespaces.live()] == ["v2"]


def test_a_retired_namespace_is_no_longer_served(
    app: FastAPI, namespaces: Namespaces, shadow: Readers, challenger: Path
) -> None:
    assert get(app, "/v1/contacts/u-1?model=v2")[0].status_code == 200
    register(namespaces, "v2", challenger, retired_ms=NOW)
    by_name, by_version, listed = get(
        app, "/v1/contacts/u-1?model=v2", f"/v1/contacts/u-1?model={SHADOW.version}", "/v1/models"
    )
    assert by_name.status_code == 404 and by_name.json()["code"] == "unknown_model"
    assert by_version.status_code == 404
    assert [m["namespace"] for m in listed.json()["models"]] == ["scorestream"]


def test_readyz_waits_for_the_registry_and_names_the_active_namespace(app: FastAPI, namespaces: Namespaces) -> None:
    readers = namespaces.active()
    readers.population.caught_up.set()
    app.state.webhooks.store.caught_up.set()
    (waiting,) = get(app, "/readyz")
    assert waiting.status_code == 503 and waiting.json()["detail"]["registry_caught_up"] is False
    namespaces.caught_up.set()
    (ready,) = get(app, "/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["detail"]["namespace"] == "scorestream"


def test_readers_start_after_the_registry_is_read_and_stop_when_retired(
    namespaces: Namespaces, challenger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []

    async def start(self: Readers) -> None:
        self.state = "running"
        events.append(("start", self.namespace))

    async def stop(self: Readers) -> None:
        self.state = "stopped"
        events.append(("stop", self.namespace))

    async def read_registry(self: Namespaces) -> None:
        register(self, "old", challenger)
        register(self, "old", challenger, retired_ms=T0)  # its history: never started
        register(self, "v2", challenger)
        self.caught_up.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(Readers, "start", start)
    monkeypatch.setattr(Readers, "stop", stop)
    monkeypatch.setattr(Namespaces, "follow", read_registry)

    async def settle() -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def go() -> None:
        await namespaces.start()
        await settle()
        assert sorted(events) == [("start", "scorestream"), ("start", "v2")]
        events.clear()
        promote(namespaces, ("v2", CUT))
        await settle()
        assert events == []  # the old active namespace is a shadow now
        register(namespaces, "scorestream", MODELS / "default.yaml", retired_ms=NOW)
        await settle()
        assert events == [("stop", "scorestream")]
        events.clear()
        register(namespaces, "v2", challenger, retired_ms=NOW)  # the active one is never stopped
        await settle()
        assert events == [] and namespaces.active().namespace == "v2"
        await namespaces.stop()
        assert events == [("stop", "v2")]

    asyncio.run(go())
