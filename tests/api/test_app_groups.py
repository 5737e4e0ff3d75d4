"""Score groups in the API, in process over ASGI with the replica fed directly: the contact
routes (single and batch, the direct fast path too) show every group beside the overall
engagement, decayed to the request's time at the group's own half-life; ``GET /v1/model``
describes the groups."""

from __future__ import annotations

import asyncio
import math

import httpx
from fastapi import FastAPI

from api.app import create_api
from api.replica import Replica, WorkerStatus
from kafka_io.clients import KafkaConnection
from schemas.settings import Settings
from scorestream import apply_events
from tests.api.view_bytes import view_bytes
from tests.factories import DAY, make_event
from tests.grouped import GROUPED_MODEL

KEY = "unit-test-key-0123456789"
T = 1_790_000_000_000
MODEL = GROUPED_MODEL


def app_at(now: int) -> FastAPI:
    replica = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    events = [
        make_event(kind="page", event=None, channel="web", user_id="u-1", path="/hardware/router", timestamp_ms=T),
        make_event(event="Hardware Quote Requested", channel="web", user_id="u-1", timestamp_ms=T + 1),
        make_event(kind="page", event=None, channel="web", user_id="u-1", path="/training/intro", timestamp_ms=T + 2),
    ]
    replica.apply(b"u-1", view_bytes(apply_events(None, "u-1", events, MODEL), MODEL))
    replica.caught_up.set()
    replica.workers["w1"] = WorkerStatus(state="ready", model=MODEL.version, at_ms=T)
    return create_api(Settings(api_keys=KEY), model=MODEL, replica=replica, clock=lambda: now)  # type: ignore[arg-type]


def get(app: FastAPI, *requests: tuple[str, str]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            headers = {"Authorization": f"Bearer {KEY}"}
            out = []
            for method, path in requests:
                body = {"ids": ["u-1", "nobody"]} if method == "POST" else None
                out.append(await client.request(method, path, json=body, headers=headers))
            return out

    return asyncio.run(go())


def test_a_contact_shows_each_group_decayed_at_its_own_half_life() -> None:
    later = T + 30 * DAY  # hardware's half-life: its 50 points are 25; training's (7 days): 8 -> 8 / 2^(30/7)
    one, batch = get(app_at(later), ("GET", "/v1/contacts/u-1"), ("POST", "/v1/contacts:batchGet"))
    assert one.status_code == 200 and batch.status_code == 200, one.text
    body = one.json()
    assert batch.json()["contacts"] == [body]
    groups = {g["id"]: g for g in body["groups"]}
    assert [g["id"] for g in body["groups"]] == [g.id for g in MODEL.groups]
    hardware, training = groups["hardware"], groups["training"]
    assert math.isclose(hardware["score"], 50 * math.pow(2, -(later - T - 1) / (30 * DAY)), rel_tol=1e-6)
    assert hardware["band"] == "3" and hardware["half_life_days"] == 30.0
    assert [c["rule"] for c in hardware["top"]] == ["hardware-quote", "hardware-page"]
    assert hardware["top"][0]["description"] == "Asked for a hardware quote"
    assert math.isclose(training["score"], 8 * math.pow(2, -(later - T - 2) / (7 * DAY)), rel_tol=1e-5)
    assert training["band"] == "cold" and training["half_life_days"] == 7.0
    # the overall score counts hardware (weight 1) at the overall half-life, not training (weight 0)
    overall = {c["rule"]: c["points"] for c in body["engagement"]["top"]}
    assert "training-page" not in overall and overall["hardware-quote"] < hardware["top"][0]["points"]
    (fresh,) = get(app_at(T + 2), ("GET", "/v1/contacts/u-1"))
    assert {g["id"]: g["score"] for g in fresh.json()["groups"]} == {
        **{g.id: 0.0 for g in MODEL.groups},
        "hardware": 50.0,
        "training": 8.0,
    }


def test_the_model_route_describes_the_groups() -> None:
    (r,) = get(app_at(T), ("GET", "/v1/model"))
    assert r.status_code == 200
    groups = {g["id"]: g for g in r.json()["groups"]}
    assert list(groups) == [g.id for g in MODEL.groups]
    assert groups["hardware"] == {
        "id": "hardware",
        "description": "Interest in the hardware line",
        "half_life_days": 30.0,
        "weight": 1.0,
        "max": None,
        "bands": [
            {"label": "1", "min": 60.0},
            {"label": "2", "min": 30.0},
            {"label": "3", "min": 10.0},
            {"label": "4", "min": None},
        ],
        "thresholds": [20.0, 50.0],
        "rules": ["hardware-page", "hardware-quote"],
    }
    assert groups["training"]["weight"] == 0.0 and groups["training"]["max"] == 30.0
    assert [b["label"] for b in groups["training"]["bands"]] == ["hot", "warm", "cold"]
