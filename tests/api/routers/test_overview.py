"""``GET /v1/reports/overview`` in process, over ASGI, against real chDB: a key, 503 without the
archive, 422 on bad parameters, and the body :mod:`analytics.overview` computes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from analytics import overview
from analytics.client import Store
from tests.analytics.archive import MODEL, NOW
from tests.analytics.test_overview import loaded
from tests.api.routers.test_reports import KEY, make_app


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[Store]:
    yield from loaded(chdb_path, "overview")


def get(app: FastAPI, path: str, key: bool = True) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}"} if key else {}

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(go())


def test_it_needs_a_key(store: Store) -> None:
    assert get(make_app(store), "/v1/reports/overview", key=False).status_code == 401


def test_not_ready_without_the_archive() -> None:
    r = get(make_app(None), "/v1/reports/overview")
    assert r.status_code == 503 and r.json()["code"] == "not_ready"


@pytest.mark.parametrize("query", ["window_minutes=0", "window_minutes=x", "movers=101", "movers=-1"])
def test_bad_parameters_are_422(store: Store, query: str) -> None:
    r = get(make_app(store), f"/v1/reports/overview?{query}")
    assert r.status_code == 422, r.text


def test_the_body_is_the_reports(store: Store) -> None:
    r = get(make_app(store), "/v1/reports/overview")
    assert r.status_code == 200, r.text
    expected = asyncio.run(overview.overview(store, MODEL, NOW))
    assert r.json() == expected.model_dump(mode="json")
    body = r.json()
    assert [m["contact_id"] for m in body["movers"]] == ["b", "a", "g"]
    assert {s["stage"]: s["contacts"] for s in body["stages"]}["lead"] == 3


def test_window_and_movers_are_passed_on(store: Store) -> None:
    body = get(make_app(store), "/v1/reports/overview?window_minutes=120&movers=1").json()
    assert body["window_minutes"] == 120 and len(body["movers"]) == 1
