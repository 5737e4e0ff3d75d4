"""The API in process, over ASGI, with its replica fed directly (no Kafka): contract details.

The same routes against the real worker and broker are covered in ``tests/e2e``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_api
from api.replica import Replica, WorkerStatus
from kafka_io.clients import KafkaConnection
from schemas.model_file import load_model
from schemas.settings import Settings
from scorestream import apply_events
from tests.api.view_bytes import view_bytes
from tests.factories import make_event

KEY = "unit-test-key-0123456789"
NOW = 1_790_000_000_000
MODEL = load_model()


@pytest.fixture
def replica() -> Replica:
    r = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    identify = make_event(kind="identify", user_id="u-1", anonymous_id="a-1", traits={"email": "Ann@Acme.com"})
    page = make_event(kind="page", event=None, channel="web", user_id="u-1", path="/pricing")
    r.apply(b"u-1", view_bytes(apply_events(None, "u-1", [identify, page], MODEL), MODEL))
    r.caught_up.set()
    r.workers["w1"] = WorkerStatus(state="ready", model=MODEL.version, at_ms=NOW)
    return r


@pytest.fixture
def app(replica: Replica) -> FastAPI:
    settings = Settings(api_keys=KEY)  # type: ignore[arg-type]
    # httpx's ASGITransport sends no lifespan events, so the replica's Kafka consumer never starts
    return create_api(settings, model=MODEL, replica=replica, clock=lambda: NOW)


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.AsyncClient]:
    yield httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_contact_by_every_identifier(client: httpx.AsyncClient) -> None:
    async def go() -> list[httpx.Response]:
        async with client:
            return [await client.get(f"/v1/contacts/{i}", headers=auth()) for i in ("u-1", "a-1", "ANN@acme.com")]

    responses = asyncio.run(go())
    assert [r.status_code for r in responses] == [200, 200, 200]
    body = responses[0].json()
    assert {r.json()["contact_id"] for r in responses} == {"u-1"}
    assert body["identity"] == {"user_id": "u-1", "anonymous_ids": ["a-1"], "email": "ann@acme.com", "merged_ids": []}
    assert body["engagement"]["as_of"].startswith("2026-09-21")
    assert {c["rule"] for c in body["engagement"]["top"]} == {"page-view", "pricing-page"}
    assert body["grade"] == body["fit"]["grade"] + body["engagement"]["band"]


def test_errors_are_json_with_a_code(client: httpx.AsyncClient) -> None:
    async def go() -> dict[str, httpx.Response]:
        async with client:
            return {
                "missing": await client.get("/v1/contacts/nobody", headers=auth()),
                "no_key": await client.get("/v1/contacts/u-1"),
                "bad_key": await client.get("/v1/contacts/u-1", headers={"Authorization": "Bearer nope"}),
                "empty_batch": await client.post("/v1/contacts:batchGet", json={"ids": []}, headers=auth()),
                "not_json": await client.post("/v1/contacts:batchGet", content=b"{", headers=auth()),
                "no_route": await client.get("/v1/nothing-here", headers=auth()),
            }

    r = asyncio.run(go())
    assert (r["missing"].status_code, r["missing"].json()["code"]) == (404, "not_found")
    assert (r["no_key"].status_code, r["no_key"].json()["code"]) == (401, "unauthorized")
    assert r["no_key"].headers["www-authenticate"] == "Bearer"
    assert (r["bad_key"].status_code, r["bad_key"].json()["code"]) == (401, "unauthorized")
    assert (r["empty_batch"].status_code, r["empty_batch"].json()["code"]) == (422, "invalid_request")
    assert (r["not_json"].status_code, r["not_json"].json()["code"]) == (422, "invalid_request")
    assert (r["no_route"].status_code, r["no_route"].json()["code"]) == (404, "not_found")


def test_not_ready_until_caught_up(client: httpx.AsyncClient, replica: Replica) -> None:
    replica.caught_up.clear()

    async def go() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with client:
            return (
                await client.get("/readyz"),
                await client.get("/healthz"),
                await client.get("/v1/contacts/u-1", headers=auth()),
            )

    ready, health, contact = asyncio.run(go())
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
    assert health.status_code == 200
    assert contact.status_code == 503 and contact.json()["code"] == "not_ready"


def test_merged_contacts_are_followed(replica: Replica, client: httpx.AsyncClient) -> None:
    anon = apply_events(None, "anonymous:a-9", [make_event(kind="page", event=None, anonymous_id="a-9")], MODEL)
    anon.merged_into = "u-1"
    replica.apply(b"anonymous:a-9", view_bytes(anon, MODEL))

    async def go() -> httpx.Response:
        async with client:
            return await client.get("/v1/contacts/a-9", headers=auth())

    assert asyncio.run(go()).json()["contact_id"] == "u-1"
