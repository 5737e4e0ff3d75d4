"""The churn-risk report: ClickHouse's bands against the core's formula over the generated archive
(each active customer's ``contacts`` row read as x = orders - 1, t_x, T), and its route
(``GET /v1/reports/churn-risk``: the report, 503 ``not_fitted`` before a fit)."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from analytics import churn
from analytics.client import Store
from analytics.migrations import migrate
from api.population_reader import PopulationReader
from kafka_io.clients import KafkaConnection
from scorestream.clv import BgNbdFit, BgNbdParams, GammaGammaFit, GammaGammaParams, p_no_purchase
from scorestream.population import ClvFit, PopulationModel
from scorestream.rules.value import DEFAULT_CLV, ClvSettings
from tests.analytics.archive import NOW, Archive, generate, load
from tests.api.routers.test_reports import get, make_app
from tests.factories import DAY

# a rate of about one order in 40 days: with the archive's first orders 0-60 days before the last,
# ages up to a year and 1-6 orders, every band has customers
BG = BgNbdParams(r=0.5, alpha=20.0, a=0.8, b=2.5)
FIT = ClvFit(
    BgNbdFit(BG, -1.0, 500, 10, True), GammaGammaFit(GammaGammaParams(6.0, 4.0, 15.0), -1.0, 200, 10, True), NOW, 500
)
SETTINGS = ClvSettings(churn_window_days=90.0, medium=0.5, high=0.8)


@pytest.fixture(scope="module")
def archive() -> Archive:
    return generate(seed=13)


@pytest.fixture(scope="module")
def store(chdb_path: Path, archive: Archive) -> Iterator[Store]:
    s = Store(f"chdb://{chdb_path}?database=churn_{uuid.uuid4().hex[:8]}")

    async def setup() -> None:
        await migrate(s)
        await load(s, archive)

    asyncio.run(setup())
    yield s
    s.close_sync()


def expected(archive: Archive, settings: ClvSettings) -> dict[str, tuple[int, float, float]]:
    """Band -> (customers, revenue, sum of risks), from the archive's facts with the core's formula."""
    found: dict[str, tuple[int, float, float]] = {}
    for c in archive.contacts.values():
        if c.status != "active" or c.orders <= 0 or c.first_order is None or c.last_order is None:
            continue
        x = c.orders - 1
        t_x = (c.last_order - c.first_order) / DAY
        age = max((NOW - c.first_order) / DAY, t_x)
        risk = p_no_purchase(BG, settings.churn_window_days, x, t_x if x else 0.0, age)
        band = settings.band(risk)
        n, v, r = found.get(band, (0, 0.0, 0.0))
        found[band] = (n + 1, v + c.revenue, r + risk)
    return found


@pytest.mark.parametrize("settings", [SETTINGS, DEFAULT_CLV])
def test_the_bands_are_the_core_formula_over_the_archive(store: Store, archive: Archive, settings: ClvSettings) -> None:
    report = asyncio.run(churn.churn_report(store, FIT, settings, NOW))
    want = expected(archive, settings)
    assert [b.band for b in report.bands] == ["Low", "Medium", "High"]
    assert [b.min_risk for b in report.bands] == [0.0, settings.medium, settings.high]
    assert report.customers == sum(n for n, _, _ in want.values()) > 20
    for band in report.bands:
        n, revenue, risks = want.get(band.band, (0, 0.0, 0.0))
        assert band.customers == n
        assert math.isclose(band.revenue, revenue, rel_tol=1e-9, abs_tol=1e-6)
        if n == 0:
            assert band.mean_risk is None
        else:
            assert band.mean_risk is not None and math.isclose(band.mean_risk, risks / n, rel_tol=1e-9)
        assert math.isclose(band.share, n / report.customers)
    if settings is SETTINGS:
        assert all(b.customers > 0 for b in report.bands)  # the test exercises each band
    assert math.isclose(sum(b.revenue_share for b in report.bands), 1.0)


def test_the_route_answers_the_report_and_503_before_a_fit(store: Store, archive: Archive) -> None:
    (before,) = get(make_app(store), "/v1/reports/churn-risk")
    assert before.status_code == 503 and before.json()["code"] == "not_fitted"
    population = PopulationReader(kafka=KafkaConnection("127.0.0.1:1"), topic="p")
    population.model = PopulationModel(NOW, 100, (0,), None, 0.0, FIT)
    (r,) = get(make_app(store, population), "/v1/reports/churn-risk")
    assert r.status_code == 200, r.text
    body = r.json()
    want = expected(archive, DEFAULT_CLV)  # the active model's settings: the default model's defaults
    assert {b["band"]: b["customers"] for b in body["bands"]} == {
        band: want.get(band, (0, 0.0, 0.0))[0] for band in ("Low", "Medium", "High")
    }
    assert body["churn_window_days"] == 90.0 and body["model_fitted_at"].startswith("2026-")
