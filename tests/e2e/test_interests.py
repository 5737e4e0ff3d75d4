"""End to end on the real broker: product views, cart adds and a free order build a contact's
interest profile (``GET /v1/contacts/{id}/interests``), a duplicate counts once, and a cart
abandoned an hour later is delivered as a signed webhook carrying the contact's interests and the
cart's products not bought. The default model, real worker, API and dispatcher processes."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import standardwebhooks

from tests.e2e.service import Service
from tests.webhook_receiver import Receiver

HOUR = 3_600_000
HALF_LIFE = 30 * 86_400_000  # the default model's interests.half_life


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def msg(kind: str, mid: str, ts: int, **fields: Any) -> bytes:
    return orjson.dumps({"type": kind, "messageId": mid, "timestamp": iso(ts), "userId": "shopper", **fields})


@pytest.fixture(scope="module")
def shop(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Receiver]]:
    svc = Service(
        bootstrap=kafka_bootstrap,
        data_dir=Path(tmp_path_factory.mktemp("interests")),
        extra_env={"SCORESTREAM_WEBHOOK_ALLOW_PRIVATE": "true", "SCORESTREAM_TIMER_INTERVAL_S": "0.2"},
    )
    receiver = Receiver().start()
    svc.start()
    dispatcher = svc._spawn("dispatcher", "dispatcher.log")
    try:
        yield svc, receiver
    finally:
        dispatcher.terminate()
        dispatcher.wait(timeout=30)
        svc.stop()
        receiver.stop()


def test_views_adds_and_a_free_order_make_the_profile_and_an_abandoned_cart_carries_it(
    shop: tuple[Service, Receiver],
) -> None:
    svc, receiver = shop
    with svc.client() as api:
        hook = api.post("/v1/webhooks", json={"url": receiver.url("/carts"), "events": ["cart.abandoned"]})
        assert hook.status_code == 201, hook.text
        secret = hook.json()["secret"]
        time.sleep(0.5)  # the dispatcher reads the subscription from its topic

        t = int(time.time() * 1000) - 3 * HOUR
        boots = {"product_id": "boot-1", "sku": "B1", "category": "shoes", "brand": "acme", "name": "Trail Boot"}
        hat = {"product_id": "hat-1", "category": "hats", "brand": "zed", "name": "Sun Hat"}
        viewed = msg("track", "in-1", t, event="Product Viewed", properties=boots)
        events = [
            ("web", b"shopper", viewed),
            ("web", b"shopper", viewed),  # a duplicate: counts once
            ("web", b"shopper", msg("track", "in-2", t + 1000, event="Product Viewed", properties=hat)),
            (
                "store",
                b"shopper",
                msg(
                    "track",
                    "in-3",
                    t + 2000,
                    event="Order Completed",
                    properties={"order_id": "free-1", "revenue": 0, "products": [{**hat, "price": 0}]},
                ),
            ),
            ("web", b"shopper", msg("page", "in-4", t + 3000, properties={"path": "/shop/hardware/drills"})),
            ("web", b"shopper", msg("track", "in-5", t + HOUR, event="Product Added", properties=boots)),
        ]
        svc.publish(events)

        def profile() -> dict[str, Any] | None:
            r = api.get("/v1/contacts/shopper/interests")
            body: dict[str, Any] = r.json() if r.status_code == 200 else {}
            return body if len(body.get("categories", [])) == 3 and body.get("seen_not_bought") else None

        body = svc.wait_for(profile, timeout=60)
        as_of = int(datetime.fromisoformat(body["as_of"]).timestamp() * 1000)

        def decayed(points: float, at: int) -> float:
            return points * math.pow(2.0, -(as_of - at) / HALF_LIFE)

        categories = {c["key"]: c["affinity"] for c in body["categories"]}
        assert categories["shoes"] == pytest.approx(decayed(1, t) + decayed(3, t + HOUR), abs=1e-6)
        assert categories["hats"] == pytest.approx(decayed(1, t + 1000) + decayed(5, t + 2000), abs=1e-6)
        assert categories["hardware"] == pytest.approx(decayed(1, t + 3000), abs=1e-6)  # a page path
        assert [(p["id"], p["name"]) for p in body["seen_not_bought"]] == [("boot-1", "Trail Boot")]  # hat: free order
        assert {b["key"] for b in body["brands"]} == {"acme", "zed"}

        def carts() -> list[Any]:
            return [r for r in receiver.received if r.path == "/carts"]

        svc.wait_for(lambda: len(carts()) >= 1, timeout=60)
        delivered = standardwebhooks.Webhook(secret).verify(carts()[0].body, carts()[0].headers)
        data = delivered["data"]
        assert delivered["type"] == "cart.abandoned" and data["contact_id"] == "shopper"
        assert data["at_ms"] == t + 2 * HOUR  # an hour after the last cart activity
        interests = data["interests"]
        assert interests["cart_not_bought"] == [{"id": "boot-1", "name": "Trail Boot"}]
        assert [c["key"] for c in interests["categories"]] == ["hats", "shoes", "hardware"]
        assert interests["categories"][1]["affinity"] == pytest.approx(
            1 * math.pow(2.0, -(2 * HOUR) / HALF_LIFE) + 3 * math.pow(2.0, -HOUR / HALF_LIFE), abs=1e-6
        )
        assert len(carts()) == 1
