"""The contact page's customer-value outlook shows what ``GET /v1/contacts/{id}`` answers: historic
and predicted CLV, churn risk and band, P(order), the next order, days between orders; before a
fit, only what needs none. The customer value page shows ``GET /v1/reports/churn-risk``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fastapi import FastAPI

from api.app import create_api
from api.population_reader import PopulationReader
from api.replica import Replica
from console.overview import what_happened
from kafka_io.clients import KafkaConnection
from schemas.settings import Settings
from scorestream import apply_events
from scorestream.clv import BgNbdFit, BgNbdParams, GammaGammaFit, GammaGammaParams
from scorestream.population import ClvFit, PopulationModel
from tests.analytics.archive import MODEL, NOW, generate
from tests.api.view_bytes import view_bytes
from tests.console.test_analytics import Client, _store, population, same
from tests.console.test_analytics import build as analytics_app
from tests.console.test_analytics import values as analytics_values
from tests.console.test_contacts import KEY, READ, api, signed_in, values
from tests.console.test_overview import item
from tests.factories import DAY, make_event

FIT = ClvFit(
    BgNbdFit(BgNbdParams(0.5, 20.0, 0.8, 2.5), -1.0, 500, 10, True),
    GammaGammaFit(GammaGammaParams(6.0, 4.0, 15.0), -1.0, 200, 10, True),
    NOW - DAY,
    500,
)


def build(fitted: bool, last_order_days_ago: int) -> FastAPI:
    r = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    orders = [
        make_event(
            event="Order Completed",
            channel="web",
            user_id="u-1",
            properties={"order_id": f"o-{i}", "revenue": 40.0 + 10 * i, "currency": "USD"},
            timestamp_ms=NOW - (last_order_days_ago + 20 * (2 - i)) * DAY,
        )
        for i in range(3)
    ]
    r.apply(b"u-1", view_bytes(apply_events(None, "u-1", orders, MODEL), MODEL))
    r.caught_up.set()
    population = PopulationReader(kafka=KafkaConnection("127.0.0.1:1"), topic="p")
    population.model = PopulationModel(NOW - DAY, 500, (0,), None, 0.0, FIT if fitted else None)
    settings = Settings(api_keys=f"{KEY},{READ}:read:reader", console_secret="x" * 32)  # type: ignore[arg-type]
    return create_api(settings, model=MODEL, replica=r, clock=lambda: NOW, population=population)


def test_the_outlook_is_the_apis() -> None:
    for days_ago, band in ((2, "Low"), (400, "High")):
        app = build(True, days_ago)
        page = signed_in(app).get("/console/contacts/u-1")
        assert page.status_code == 200, page.text
        shown = values(page.text)
        clv = api(app, "/v1/contacts/u-1")["clv"]
        assert clv["churn_risk_band"] == band == shown["churn-band"]
        for key, field in (
            ("historic-clv", "historic_clv"),
            ("predicted-clv", "predicted_clv"),
            ("churn-risk", "churn_risk"),
            ("p-order", "p_order"),
            ("days-between-orders", "days_between_orders"),
        ):
            assert float(shown[key]) == clv[field], key
        assert clv["days_between_orders"] == 20.0 and clv["historic_clv"] == 150.0
        if clv["next_order_expected"] is None:
            assert shown["next-order"] == "" and "more likely gone" in page.text
        else:
            assert shown["next-order"].replace(" ", "T").startswith(clv["next_order_expected"][:16])
        assert f'class="badge {"good" if band == "Low" else "bad"}"' in page.text


def test_before_a_fit_only_what_needs_none() -> None:
    app = build(False, 2)
    page = signed_in(app).get("/console/contacts/u-1")
    shown = values(page.text)
    assert float(shown["historic-clv"]) == 150.0 and float(shown["days-between-orders"]) == 20.0
    assert "churn-risk" not in shown and "predicted-clv" not in shown and "next-order" not in shown


# --- the customer value page's churn-risk part -------------------------------------------------


def test_the_value_page_shows_the_churn_report(chdb_path: Path) -> None:
    archive = generate(seed=19)
    store = _store(chdb_path, archive)
    try:
        reader = population(archive)
        assert reader.model is not None
        client = Client(analytics_app(store, reader)).sign_in()
        page = client.get("/console/value")
        assert page.status_code == 200 and "No churn risk yet." in page.text  # boundaries, no fit yet
        reader.model = replace(reader.model, fit=FIT)
        body = client.api("/v1/reports/churn-risk")
        page = client.get("/console/value")
        shown = analytics_values(page.text)
        assert sum(b["customers"] for b in body["bands"]) == body["customers"] > 0
        for b in body["bands"]:
            assert same(shown[f"churn-customers-{b['band']}"], b["customers"])
            assert same(shown[f"churn-revenue-{b['band']}"], b["revenue"])
            assert same(shown[f"churn-mean-{b['band']}"], b["mean_risk"])
        assert 'data-testid="churn-bands"' in page.text
    finally:
        store.close_sync()


def test_the_overview_says_a_churn_band_change_in_words() -> None:
    said = [
        what_happened(item(1, "customer.churn_risk_changed", before=before, after=after))
        for before, after in (("Low", "Medium"), (None, "Low"), ("High", None))
    ]
    assert said == ["churn risk Low → Medium", "churn risk Low", "churn risk unknown"]
