"""End to end: orders from the web and the store reach the population model, distributed over four
contacts partitions, and a contact's RFM and CLV come out of the API's own reader.

The population is small, so every partition summary holds every distinct value: the merged
quintile boundaries must equal the exact ones computed here from the events sent.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from api.population_reader import PopulationReader
from api.replica import Replica
from kafka_io.clients import KafkaConnection
from schemas.events import decode
from schemas.model_file import load_model
from scorestream import ContactState, apply_events
from scorestream.clv import BgNbdParams, p_alive
from scorestream.rfm import DAY_MS, clv_summary, population_boundaries, rfm_score, summary
from scorestream.view import ValueSummary, value_summary
from tests.e2e.service import Service
from tests.factories import iso

MODEL = load_model()
NOW = int(time.time() * 1000)
CUSTOMERS = 120


def order(mid: str, ts: int, user: str, order_id: str, total: float) -> bytes:
    return orjson.dumps(
        {
            "type": "track",
            "event": "Order Completed",
            "messageId": mid,
            "timestamp": iso(ts),
            "userId": user,
            "properties": {"order_id": order_id, "total": total, "currency": "USD"},
        }
    )


def refund(mid: str, ts: int, user: str, order_id: str, total: float | None = None) -> bytes:
    props: dict[str, Any] = {"order_id": order_id}
    if total is not None:
        props["total"] = total
    return orjson.dumps(
        {
            "type": "track",
            "event": "Order Refunded",
            "messageId": mid,
            "timestamp": iso(ts),
            "userId": user,
            "properties": props,
        }
    )


def traffic() -> tuple[list[tuple[str, bytes]], dict[str, float]]:
    """Customers buying like BG/NBD customers (first purchase 30-300 days ago), every other order
    from the store; one order also re-sent by the store; every order of one customer refunded, one partial refund. Also
    each customer's net revenue, counted by hand."""
    rng = random.Random(42)
    out: list[tuple[str, bytes]] = []
    net: dict[str, float] = {}
    placed: dict[str, int] = {}
    for c in range(CUSTOMERS):
        user = f"buyer-{c:03d}"
        rate = rng.gammavariate(0.5, 1 / 20.0)  # purchases per day
        drop = rng.betavariate(0.8, 2.5)  # chance of leaving after each purchase
        nu = rng.gammavariate(3.0, 1 / 60.0)  # the customer's spend scale
        first = NOW - rng.randrange(30, 300) * DAY_MS
        ts, n = first, 0
        while ts < NOW - 3_600_000 and n < 12:
            channel = "store" if n % 2 else "web"
            total = round(max(rng.gammavariate(4.0, 1 / nu), 0.01), 2)
            out.append((channel, order(f"{user}-o{n}", ts, user, f"{user}-{n}", total)))
            net[user] = net.get(user, 0.0) + total
            if c == 0 and n == 0:  # the store system re-sends this web order a minute later: one order
                out.append(("store", order("pos-dup", ts + 60_000, user, f"{user}-0", 999.0)))
            n += 1
            placed[user] = n
            if n > 1 and rng.random() < drop:  # BG/NBD: drop-out only after a repeat purchase
                break
            ts += int(rng.expovariate(rate) * DAY_MS) + 3_600_000
    for n in range(placed["buyer-001"]):  # buyer-001 returns everything: no longer a customer
        out.append(("store", refund(f"refund-full-{n}", NOW - 2 * DAY_MS, "buyer-001", f"buyer-001-{n}")))
    out.append(("web", refund("refund-part", NOW - 2 * DAY_MS, "buyer-002", "buyer-002-0", 5.0)))
    net["buyer-002"] -= 5.0
    return out, net


def reference(events: list[tuple[str, bytes]]) -> dict[str, ContactState]:
    """Every contact's state by the core alone, from the same messages."""
    by_user: dict[str, list[Any]] = {}
    for channel, raw in events:
        event = decode(raw, channel, NOW)
        assert event.user_id is not None
        by_user.setdefault(event.user_id, []).append(event)
    return {user: apply_events(None, user, evs, MODEL) for user, evs in by_user.items()}


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(
        bootstrap=kafka_bootstrap,
        data_dir=Path(tmp_path_factory.mktemp("value")),
        extra_env={
            "SCORESTREAM_POPULATION_INTERVAL_S": "2",
            "SCORESTREAM_POPULATION_MIN_FIT_CUSTOMERS": "20",
            "SCORESTREAM_LOG_LEVEL": "INFO",
        },
    )
    svc.start()
    yield svc
    svc.stop()


async def _read_back(
    service: Service, contact_ids: list[str], ledgers: dict[str, ValueSummary | None], wait_s: float
) -> Any:
    """The API's replica (of the views topic) and population reader on the real topics, until every
    contact's view shows its whole ledger (the summary of the reference's) and a fitted model is
    there; then the value bodies of ``contact_ids``."""
    app_id = f"ss-{service.suffix}"
    replica = Replica(KafkaConnection(service.bootstrap), f"{app_id}.views", f"{app_id}.workers")
    reader = PopulationReader(KafkaConnection(service.bootstrap), f"{app_id}.population", MODEL.value.segments)
    await replica.start()
    await reader.start()
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            states = {c: replica.lookup(c) for c in ledgers}
            complete = all(s is not None and s.value == ledgers[c] for c, s in states.items())
            model = reader.model
            if complete and model is not None and model.fit is not None and model.customers >= CUSTOMERS - 1:
                now = int(time.time() * 1000)
                found = {c: states[c] for c in contact_ids}
                return model, now, {c: reader.value_body(s, now) for c, s in found.items() if s is not None}
            await asyncio.sleep(0.5)
        raise AssertionError(f"no fitted population model in {wait_s} s: {reader.model}\n{service.logs('worker')}")
    finally:
        await reader.stop()
        await replica.stop()


def test_population_model_and_a_contacts_value(service: Service) -> None:
    events, net = traffic()
    expected = reference(events)
    service.publish((channel, None, raw) for channel, raw in events)
    with service.client() as http:
        clv_body = service.wait_for(
            lambda: (
                (r := http.get("/v1/models/clv")).status_code == 200
                and r.json()["customers"] >= CUSTOMERS - 1
                and r.json()
            ),
            timeout=120,
        )
    ledgers = {c: value_summary(s.value) for c, s in expected.items() if s.value is not None}
    watched = ["buyer-000", "buyer-001", "buyer-002", "buyer-007"]
    model, now, bodies = asyncio.run(_read_back(service, watched, ledgers, wait_s=90))

    # the distributed boundaries are the exact quintiles of every customer's facts
    facts = [summary(s.value, now) for s in expected.values()]
    exact = population_boundaries(facts)
    assert model.customers == exact.customers == CUSTOMERS - 1  # buyer-001's only order was refunded
    assert model.boundaries is not None and model.fit is not None
    assert model.boundaries.frequency == exact.frequency
    assert model.boundaries.monetary == pytest.approx(exact.monetary)
    assert model.boundaries.last_order_ms == exact.last_order_ms
    assert clv_body["rfm_boundaries"]["frequency"] == list(exact.frequency)
    assert clv_body["sample_size"] == CUSTOMERS - 1 and clv_body["bgnbd"]["customers"] == CUSTOMERS - 1
    assert clv_body["bgnbd"]["log_likelihood"] < 0 and clv_body["fitted_at"]

    # a contact's value through the API's reader equals the core's answer from the events sent
    assert bodies["buyer-001"] == {"rfm": None, "clv": None}
    for contact in ("buyer-000", "buyer-002", "buyer-007"):
        body = bodies[contact]
        value = expected[contact].value
        want = summary(value, now)
        score = rfm_score(want, model.boundaries, MODEL.value.segments)
        assert score is not None
        rfm = body["rfm"]
        assert (rfm["frequency"], rfm["r"], rfm["f"], rfm["m"], rfm["segment"]) == (
            want.frequency,
            score.r,
            score.f,
            score.m,
            score.segment,
        )
        assert math.isclose(rfm["monetary"], want.monetary)
        s = clv_summary(value, now, DAY_MS)
        assert s is not None
        bg = model.fit.bgnbd.params
        assert body["clv"]["p_alive"] == pytest.approx(p_alive(bg, s.frequency, s.recency, s.T))
        assert body["clv"]["clv_90d"] is not None and body["clv"]["clv_90d"] >= 0.0
    # counted by hand: the store's copy of buyer-000's first order counts once (the earlier web
    # copy wins), the partial refund comes off buyer-002's revenue
    for contact in ("buyer-000", "buyer-002", "buyer-007"):
        assert bodies[contact]["rfm"]["monetary"] == pytest.approx(net[contact])
    published = BgNbdParams(**{k: clv_body["bgnbd"][k] for k in ("r", "alpha", "a", "b")})
    assert published == model.fit.bgnbd.params


def test_a_restarted_worker_rebuilds_its_index_from_the_table(service: Service) -> None:
    """After a restart only the new customer passes through the agent: the others must come from
    the index rebuilt out of the local contacts table."""
    service.kill_worker()
    restarted = datetime.now(tz=UTC)
    service.start_worker()
    service.publish([("web", None, order("late-o0", NOW - DAY_MS, "buyer-late", "late-0", 25.0))])
    with service.client() as http:
        body = service.wait_for(
            lambda: (
                (r := http.get("/v1/models/clv")).status_code == 200
                and datetime.fromisoformat(r.json()["rfm_boundaries"]["computed_at"]) > restarted
                and r.json()["customers"] == CUSTOMERS
                and r.json()
            ),
            timeout=120,
        )
    assert body["rfm_boundaries"]["customers"] == CUSTOMERS  # 119 from the table, buyer-late from the agent
