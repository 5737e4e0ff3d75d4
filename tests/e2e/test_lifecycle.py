"""End to end on the real broker: lifecycle stages, flags and time-driven triggers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from schemas.model_file import read_model_source
from tests.e2e.service import Service

CART_TIMEOUT_S = 3


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def msg(kind: str, mid: str, ts: int, **fields: Any) -> bytes:
    return orjson.dumps({"type": kind, "messageId": mid, "timestamp": iso(ts), **fields})


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The default model with the cart timer shortened to seconds, ticks every 0.2 s."""
    data = Path(tmp_path_factory.mktemp("lifecycle"))
    source = read_model_source()
    for timer in source["lifecycle"]["timers"]:
        if timer["id"] == "cart-abandoned":
            timer["after"] = f"{CART_TIMEOUT_S}s"
    source["name"] = "e2e-lifecycle"
    model = data / "model.yaml"
    model.write_text(yaml.safe_dump(source))
    svc = Service(
        bootstrap=kafka_bootstrap,
        data_dir=data,
        model=model,
        extra_env={"SCORESTREAM_TIMER_INTERVAL_S": "0.2"},
    )
    svc.start()
    yield svc
    svc.stop()


def triggers(service: Service, until: Any, timeout: float = 60) -> list[dict[str, Any]]:
    """Every trigger on the service's topic (with ``written_ms``, the record's time), read again
    until ``until(triggers)`` holds."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        records = service.read_topic(f"triggers-{service.suffix}", expect=1_000_000, wait_s=1)
        found = [{**orjson.loads(r.value), "written_ms": r.timestamp} for r in records]
        if until(found):
            return found
    raise AssertionError(f"triggers never satisfied the condition: {found}")


def walked(body: dict[str, Any]) -> bool:
    """Whether the body's journey is walked up to now: no change came due before the request.

    Events arriving out of order put a busy contact's walk off until its tick (``deferred_since``,
    scorestream.fold); the API shows the stored journey until the tick's view arrives (a timer
    interval at most, docs/api.md), so a check of the journey waits for it."""
    stage = body["stage"]
    due = None if stage is None else stage["next_change_at"]
    return due is None or datetime.fromisoformat(due) > datetime.now(UTC)


def contact(service: Service, contact_id: str, check: Any, timeout: float = 60) -> dict[str, Any]:
    with service.client() as http:
        body: dict[str, Any] = service.wait_for(
            lambda: (r := http.get(f"/v1/contacts/{contact_id}")).status_code == 200 and check(r.json()) and r.json(),
            timeout=timeout,
        )
    return body


def test_an_offline_store_purchase_makes_a_contact_a_customer(service: Service) -> None:
    now = int(time.time() * 1000)
    service.publish(
        [
            ("web", None, msg("page", "st-1", now - 60_000, userId="shopper-1", properties={"path": "/shoes"})),
            (
                "store",
                None,
                msg(
                    "track",
                    "st-2",
                    now - 30_000,
                    userId="shopper-1",
                    event="Order Completed",
                    properties={"order_id": "pos-77", "total": 80, "currency": "EUR"},
                ),
            ),
        ]
    )
    body = contact(service, "shopper-1", lambda b: b["stage"] and b["stage"]["name"] == "customer")
    history = body["stage"]["history"]
    assert [(h["stage"], h["rule"]) for h in history] == [("subscriber", "initial"), ("customer", "completed-order")]
    assert history[-1]["cause"] == "st-2"
    assert body["rfm"]["frequency"] == 1 and abs(body["rfm"]["monetary"] - 80 * 1.08) < 1e-6  # EUR -> USD
    found = triggers(service, lambda ts: any(t["contact_id"] == "shopper-1" for t in ts))
    changes = [t for t in found if t["contact_id"] == "shopper-1" and t["type"] == "stage.changed"]
    assert [(t["before"], t["after"], t["rule"], t["cause"]) for t in changes] == [
        ("subscriber", "customer", "completed-order", "st-2")
    ]
    assert changes[0]["id"].startswith("trg_") and changes[0]["model_version"].startswith("e2e-lifecycle@")


def test_an_abandoned_cart_fires_after_its_timeout_with_no_further_events(service: Service) -> None:
    added = int(time.time() * 1000)
    service.publish(
        [
            (
                "web",
                None,
                msg("track", "cart-1", added, userId="carter", event="Product Added", properties={"sku": "x"}),
            )
        ]
    )
    due = added + CART_TIMEOUT_S * 1000

    def carter(ts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [t for t in ts if t["type"] == "cart.abandoned" and t["contact_id"] == "carter"]

    fired = carter(triggers(service, carter))
    assert len(fired) == 1, fired
    assert fired[0]["at_ms"] == due  # stamped with its due time, not the moment it was noticed
    late_ms = fired[0]["written_ms"] - due
    assert 0 <= late_ms < 5_000, late_ms  # written after it was due, by the worker's clock, not by a new event
    body = contact(service, "carter", lambda b: b["stage"] is not None)
    assert body["stage"]["next_change_at"] is None or body["stage"]["next_change_at"] > iso(due)


def test_a_job_seeker_never_reaches_mql(service: Service) -> None:
    t = int(time.time() * 1000) - 600_000
    traits = {"email": "jo@acme.com", "title": "VP Marketing", "industry": "software", "employees": 300}
    events = [
        ("web", b"seeker", msg("identify", "js-1", t, userId="seeker", traits=traits)),
        ("web", b"seeker", msg("page", "js-2", t + 1000, userId="seeker", properties={"path": "/careers/sales"})),
        ("web", b"seeker", msg("track", "js-3", t + 2000, userId="seeker", event="Whitepaper Downloaded")),
        ("web", b"seeker", msg("track", "js-4", t + 3000, userId="seeker", event="Webinar Registered")),
        ("web", b"seeker", msg("page", "js-5", t + 4000, userId="seeker", properties={"path": "/pricing"})),
        ("web", b"seeker", msg("page", "js-6", t + 5000, userId="seeker", properties={"path": "/pricing/plans"})),
        ("web", b"seeker", msg("track", "js-7", t + 6000, userId="seeker", event="Demo Requested")),
    ]
    service.publish(events)
    body = contact(
        service,
        "seeker",
        # keyed by the user, the events reach the worker in order: the newest one (last_seen) folded
        # means all are (keyless records land on any partition and may be folded in any order)
        lambda b: (
            b["last_seen"] is not None
            and b["last_seen"].startswith(iso(t + 6000)[:19])
            and b["identity"]["email"] == "jo@acme.com"
            and walked(b)
        ),
    )
    assert body["flags"] == [{"flag": "job_seeker", "reason": "Viewed careers or jobs pages"}]
    assert body["stage"]["name"] == "disqualified"
    assert not {"mql", "sql"} & {h["stage"] for h in body["stage"]["history"]}
    assert body["engagement"]["score"] > 40 and body["fit"]["score"] >= 35  # it would qualify but for the flag
    found = triggers(
        service, lambda ts: any(t["type"] == "contact.disqualified" and t["contact_id"] == "seeker" for t in ts)
    )
    mine = [t for t in found if t["contact_id"] == "seeker"]
    assert {t["type"] for t in mine} >= {"stage.changed", "contact.disqualified"}
    assert not [t for t in mine if t["type"] == "stage.changed" and t["after"] in ("mql", "sql")]
