"""End to end: ``customer.churn_risk_changed`` on the real broker.

Customers order until the population model has a CLV fit; then a new customer's two orders (the
last 120 days ago) reach the worker. Its first band is announced at an order's instant; the
worker then ticks it at each computed crossing, so the risk's rise over the 120 days without an
order is announced band by band, each at the exact millisecond the band was entered under a fit
the worker published (and the ledger it held), and the last band is the one
``GET /v1/contacts/{id}`` shows.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.events import decode
from schemas.model_file import load_model
from schemas.population import read_record
from scorestream import apply_events
from scorestream.population import PopulationModel, churn_for
from scorestream.rfm import DAY_MS
from scorestream.triggers import trigger_id
from tests.e2e.service import Service
from tests.e2e.test_value import order, traffic

MODEL = load_model()
NEWBIE = "churner-1"


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(
        bootstrap=kafka_bootstrap,
        data_dir=Path(tmp_path_factory.mktemp("churn")),
        extra_env={"SCORESTREAM_POPULATION_INTERVAL_S": "2", "SCORESTREAM_POPULATION_MIN_FIT_CUSTOMERS": "20"},
    )
    svc.start()
    yield svc
    svc.stop()


def _churn_triggers(service: Service, contact: str) -> list[dict[str, Any]]:
    records = service.read_topic(f"triggers-{service.suffix}", expect=100_000, wait_s=3)
    found = [orjson.loads(r.value) for r in records]
    return [t for t in found if t["type"] == "customer.churn_risk_changed" and t["contact_id"] == contact]


def test_the_band_is_announced_at_each_crossing(service: Service) -> None:
    events, _ = traffic()
    service.publish((channel, None, raw) for channel, raw in events)
    with service.client() as http:
        service.wait_for(lambda: http.get("/v1/models/clv").status_code == 200, timeout=120)
        now = int(time.time() * 1000)
        mine = [
            ("web", order("churner-o0", now - 160 * DAY_MS, NEWBIE, "churner-0", 80.0)),
            ("store", order("churner-o1", now - 120 * DAY_MS, NEWBIE, "churner-1", 60.0)),
        ]
        service.publish((channel, None, raw) for channel, raw in mine)
        body = service.wait_for(
            lambda: (
                (r := http.get(f"/v1/contacts/{NEWBIE}")).status_code == 200
                and r.json()["clv"] is not None
                and r.json()["clv"]["churn_risk_band"] is not None
                and r.json()
            ),
            timeout=60,
        )
        band_now = body["clv"]["churn_risk_band"]
        changes = service.wait_for(
            lambda: (found := _churn_triggers(service, NEWBIE)) and found[-1]["after"] == band_now and found,
            timeout=60,
        )
    # what the worker may have held: the first order alone (folded before the second came), or both
    held = [decode(raw, channel, now) for channel, raw in mine]
    ledgers = [apply_events(None, NEWBIE, held[:n], MODEL).value for n in (1, 2)]
    records = service.read_topic(f"ss-{service.suffix}.population", expect=100_000, wait_s=3)
    fits = [m for r in records if isinstance(m := read_record(r.key, r.value), PopulationModel) and m.fit is not None]
    assert fits

    orders_at = {now - 160 * DAY_MS, now - 120 * DAY_MS}  # the worker may fold the two orders apart
    assert changes[0]["before"] is None and changes[0]["at_ms"] in orders_at  # judged at an order's instant
    for earlier, later in itertools.pairwise(changes):
        assert later["before"] == earlier["after"]  # (instants may step back when an order lands in the past)
    assert band_now == "High" and changes[-1]["at_ms"] < now  # 120 days without an order: announced by ticks
    for change in changes:
        assert change["id"] == trigger_id(
            "customer.churn_risk_changed",
            NEWBIE,
            change["at_ms"],
            "churn-risk-bands",
            change["before"],
            change["after"],
        )
        assert change["model_version"] == MODEL.version and change["cause"] is None
    crossings = [c for c in changes if c["at_ms"] not in orders_at]
    assert crossings  # time alone moved the band on
    for change in crossings:  # each at the first millisecond of its band, under a published fit

        def entered(
            model: PopulationModel, ledger: Any, at: int = change["at_ms"], band: str = change["after"]
        ) -> bool:
            judged, before = churn_for(ledger, at, model), churn_for(ledger, at - 1, model)
            return judged is not None and before is not None and judged.band == band != before.band

        assert any(entered(m, ledger) for m in fits for ledger in ledgers), change
