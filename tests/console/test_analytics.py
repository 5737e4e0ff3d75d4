"""The console's analytics pages in process, against a migrated chDB archive (the generated one of
``tests/analytics/archive.py``) and a fixed clock: every number the funnel, customer value and
personas & forecast pages show equals what the JSON routes answer for the same parameters; a grid
cell lists exactly the sync list's contacts of that cell, page by page; empty, unavailable and bad
input get a message, never a 500."""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from analytics.client import Store
from analytics.migrations import migrate
from api.app import create_api
from api.population_reader import PopulationReader
from api.replica import Replica
from console import analytics as console_analytics
from kafka_io.clients import KafkaConnection
from schemas.settings import Settings
from scorestream.population import PopulationModel
from tests.analytics.archive import MODEL, NOW, Archive, generate, load, rfm_bounds
from tests.console.test_contacts import Browser

KEY = "console-analytics-admin-0123456789"
READ = "console-analytics-read-0123456789"


@pytest.fixture(scope="module")
def archive() -> Archive:
    return generate(seed=19)


def _store(chdb_path: Path, archive: Archive | None) -> Store:
    s = Store(f"chdb://{chdb_path}?database=console_{uuid.uuid4().hex[:8]}")

    async def setup() -> None:
        await migrate(s)
        if archive is not None:
            await load(s, archive)

    asyncio.run(setup())
    return s


@pytest.fixture(scope="module")
def store(chdb_path: Path, archive: Archive) -> Iterator[Store]:
    s = _store(chdb_path, archive)
    yield s
    s.close_sync()


@pytest.fixture(scope="module")
def empty(chdb_path: Path) -> Iterator[Store]:
    s = _store(chdb_path, None)
    yield s
    s.close_sync()


def population(archive: Archive) -> PopulationReader:
    bounds = rfm_bounds(archive)
    reader = PopulationReader(kafka=KafkaConnection("127.0.0.1:1"), topic="p")
    reader.model = PopulationModel(
        computed_at_ms=NOW, customers=bounds.customers, partitions=(0,), boundaries=bounds, rank_error=0.0
    )
    return reader


def build(store: Store | None, reader: PopulationReader | None = None) -> FastAPI:
    settings = Settings(api_keys=f"{KEY},{READ}:read:reader", console_secret="y" * 32)  # type: ignore[arg-type]
    replica = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    replica.caught_up.set()
    app = create_api(settings, model=MODEL, replica=replica, clock=lambda: NOW, population=reader)
    if store is not None:

        async def get() -> Store:
            return store

        app.state.analytics = get
    return app


class Client(Browser):
    """Requests to ``app`` over ASGI, carrying the console session cookie once signed in."""

    def sign_in(self, key: str = READ) -> Client:
        answer = self.request("POST", "/console/sign-in", data={"key": key, "next": "/console"})
        assert answer.status_code == 303 and self.cookie, answer.text
        return self

    def api(self, path: str, **params: Any) -> Any:
        answer = self.get(path, params=params, headers={"Authorization": f"Bearer {KEY}"})
        assert answer.status_code == 200, answer.text
        return answer.json()


def values(page: str) -> dict[str, str]:
    """Every ``<data data-k=name value=raw>`` of a page."""
    return {html.unescape(k): html.unescape(v) for k, v in re.findall(r'<data data-k="([^"]*)" value="([^"]*)"', page)}


def same(shown: str, raw: Any) -> bool:
    """A shown raw value equals the API's (numbers as numbers; null as empty)."""
    if raw is None:
        return shown == ""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return shown == str(raw)
    return float(shown) == float(raw)


def test_the_pages_need_a_session(store: Store) -> None:
    client = Client(build(store))
    for path in ("/console/funnel", "/console/value", "/console/value/cell?r=5&f=1", "/console/pipeline"):
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/console/sign-in?next=")


def check_funnel(page: dict[str, str], body: dict[str, Any]) -> None:
    assert body["stages"] and any(s["reached"] for s in body["stages"])
    for s in body["stages"]:
        name = s["stage"]
        assert same(page[f"funnel-entered-{name}"], s["entered"])
        assert same(page[f"funnel-reached-{name}"], s["reached"])
        assert same(page[f"funnel-from-start-{name}"], s["conversion_from_start"])
        assert same(page[f"funnel-median-days-{name}"], s["median_days_in_stage"])
        assert same(page[f"funnel-velocity-days-{name}"], s["median_days_from_start"])
        assert same(page[f"funnel-open-{name}"], s["open_stays"])
        assert same(page[f"funnel-completed-{name}"], s["completed_stays"])
        if name != body["stages"][0]["stage"]:
            assert same(page[f"funnel-conversion-{name}"], s["conversion"])
    assert same(page["funnel-start"], body["stages"][0]["reached"])
    assert same(page["funnel-end"], body["stages"][-1]["reached"])


def test_the_funnel_shows_the_apis_numbers_for_the_default_window(store: Store) -> None:
    client = Client(build(store)).sign_in()
    answer = client.get("/console/funnel")
    assert answer.status_code == 200 and "<svg" in answer.text  # the chart
    body = client.api("/v1/reports/funnel")
    page = values(answer.text)
    check_funnel(page, body)
    assert page["funnel-from"].startswith(body["from"][:19]) and page["funnel-to"].startswith(body["to"][:19])
    assert 'value="2026-06-23"' in answer.text  # the form shows the window it used (90 days before now)


def test_the_funnel_for_a_date_range_and_a_mode(store: Store) -> None:
    client = Client(build(store)).sign_in()
    answer = client.get("/console/funnel?from=2026-07-01&to=2026-09-10&mode=sequential&model=default")
    assert answer.status_code == 200
    window = {"from": "2026-07-01T00:00:00Z", "to": "2026-09-11T00:00:00Z"}  # the end date included
    body = client.api("/v1/reports/funnel", **window, mode="sequential", model="default")
    check_funnel(values(answer.text), body)
    assert body["mode"] == "sequential" and body != client.api("/v1/reports/funnel", **window)
    shown = html.unescape(answer.text)
    assert (
        "GET /v1/reports/funnel?from=2026-07-01T00:00:00Z&to=2026-09-11T00:00:00Z&model=default&mode=sequential"
        in shown
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("from=yesterday", "from: 'yesterday' is not a date"),
        ("to=2026-13-01", "to: '2026-13-01' is not a date"),
        ("mode=loose", "mode: cumulative or sequential"),
    ],
)
def test_bad_funnel_input_is_a_message_on_the_page(store: Store, query: str, message: str) -> None:
    answer = Client(build(store)).sign_in().get(f"/console/funnel?{query}")
    assert answer.status_code == 400 and "text/html" in answer.headers["content-type"]
    assert message in html.unescape(answer.text) and 'data-testid="funnel-form"' in answer.text


def test_a_range_that_ends_before_it_starts_says_so(store: Store) -> None:
    answer = Client(build(store)).sign_in().get("/console/funnel?from=2026-09-10&to=2026-07-01")
    assert answer.status_code == 200 and "from: must be before to" in answer.text
    assert 'data-testid="unavailable"' in answer.text


def test_the_value_grid_is_the_rfm_report(store: Store, archive: Archive) -> None:
    client = Client(build(store, population(archive))).sign_in()
    body = client.api("/v1/reports/rfm")
    assert body["segments_from"] == "boundaries" and len(body["grid"]) == 25
    for by in ("contacts", "revenue"):
        answer = client.get(f"/console/value?by={by}")
        assert answer.status_code == 200
        page = values(answer.text)
        for cell in body["grid"]:
            assert same(page[f"rfm-contacts-{cell['r']}-{cell['f']}"], cell["contacts"])
            assert same(page[f"rfm-revenue-{cell['r']}-{cell['f']}"], cell["revenue"])
            link = f'data-r="{cell["r"]}" data-f="{cell["f"]}" data-segment="{cell["segment"]}"'
            assert link in html.unescape(answer.text)
        for s in body["segments"]:
            assert same(page[f"segment-contacts-{s['segment']}"], s["contacts"])
            assert same(page[f"segment-revenue-{s['segment']}"], s["revenue"])
            assert same(page[f"segment-share-{s['segment']}"], s["share"])
        assert same(page["rfm-customers"], body["customers"]) and same(page["rfm-revenue"], body["revenue"])
        assert same(page["rfm-non-customers"], body["non_customers"])
    # the busiest cell is the darkest
    top = max(body["grid"], key=lambda c: c["contacts"])
    darkest = re.search(
        r'class="cell h5" data-testid="rfm-cell" data-r="(\d)" data-f="(\d)"', client.get("/console/value").text
    )
    assert darkest is not None and (int(darkest[1]), int(darkest[2])) == (top["r"], top["f"])


def test_a_cell_lists_the_sync_lists_contacts_of_that_cell_page_by_page(store: Store, archive: Archive) -> None:
    client = Client(build(store, population(archive))).sign_in()
    grid = client.api("/v1/reports/rfm")["grid"]
    cell = max(grid, key=lambda c: c["contacts"])
    assert cell["contacts"] > 2, "the busiest cell needs two pages"
    path: str | None = f"/console/value/cell?r={cell['r']}&f={cell['f']}&limit=2"
    cursor: str | None = None
    shown: list[str] = []
    while path:
        answer = client.get(path, headers={"X-Console-Fragment": "1"})
        assert answer.status_code == 200 and "<html" not in answer.text  # a fragment
        listed = client.api(
            "/v1/contacts", rfm_r=cell["r"], rfm_f=cell["f"], limit=2, **({"cursor": cursor} if cursor else {})
        )
        ids = re.findall(r'data-testid="cell-contact" data-contact-id="([^"]+)"', answer.text)
        assert ids == [c["contact_id"] for c in listed["data"]]
        engagement = [float(v) for v in re.findall(r'data-k="engagement" value="([^"]+)"', answer.text)]
        assert engagement == [c["engagement"] for c in listed["data"]]
        shown += ids
        following = re.search(r'href="([^"]+)" data-load="cell-contacts" data-testid="cell-next"', answer.text)
        assert (following is not None) == listed["has_more"]
        path = html.unescape(following[1]) if following else None
        cursor = listed["next_cursor"]
    assert len(shown) == len(set(shown)) == cell["contacts"]
    default = client.get(f"/console/value/cell?r={cell['r']}&f={cell['f']}", headers={"X-Console-Fragment": "1"})
    assert re.findall(r'data-contact-id="([^"]+)"', default.text) == shown[:25]  # 25 a page by default
    assert cell["segment"] in answer.text


def test_a_cell_without_script_is_a_page_and_bad_scores_are_a_message(store: Store, archive: Archive) -> None:
    client = Client(build(store, population(archive))).sign_in()
    whole = client.get("/console/value/cell?r=5&f=1")
    assert whole.status_code == 200 and "<html" in whole.text and 'id="cell-contacts"' in whole.text
    for query in ("r=6&f=1", "r=x&f=2", "f=3", "r=1&f=1&page=zero", "r=1&f=1&limit=0", "r=1&f=1&limit=101"):
        answer = client.get(f"/console/value/cell?{query}")
        assert answer.status_code == 400 and "text/html" in answer.headers["content-type"], query
    assert "r: a score from 1 to 5 is needed" in client.get("/console/value/cell?r=6&f=1").text
    bad = client.get("/console/value/cell?r=1&f=1&cursor=nonsense", headers={"X-Console-Fragment": "1"})
    assert bad.status_code == 200 and "cursor: not a cursor of this list" in bad.text


def test_value_before_boundaries_shows_the_stored_segments(store: Store) -> None:
    client = Client(build(store)).sign_in()
    body = client.api("/v1/reports/rfm")
    answer = client.get("/console/value")
    page = values(answer.text)
    assert body["grid"] == [] and 'data-testid="rfm-cell"' not in answer.text
    assert "The grid appears once the workers" in answer.text
    for s in body["segments"]:
        assert same(page[f"segment-contacts-{s['segment']}"], s["contacts"])
    assert client.get("/console/value/cell?r=1&f=1", headers={"X-Console-Fragment": "1"}).text.count("RFM boundaries")


def test_empty_archive_says_what_to_do(empty: Store) -> None:
    client = Client(build(empty)).sign_in()
    value = client.get("/console/value")
    assert value.status_code == 200 and "No orders yet: RFM needs customers with orders." in value.text
    funnel = client.get("/console/funnel")
    assert funnel.status_code == 200 and "No contact entered these stages in this date range." in funnel.text
    pipeline = client.get("/console/pipeline")
    assert pipeline.status_code == 200 and "No contacts yet." in pipeline.text
    assert "the forecast needs customers" in pipeline.text


def test_unavailable_archive_is_a_message_not_an_error() -> None:
    client = Client(build(None)).sign_in()  # embedded chDB that this process does not run
    for path in ("/console/funnel", "/console/value", "/console/pipeline"):
        answer = client.get(path)
        assert answer.status_code == 200 and 'data-testid="unavailable"' in answer.text, path
        assert "SCORESTREAM_SINK_IN_API" in answer.text


def test_personas_and_forecast_are_the_apis(store: Store) -> None:
    client = Client(build(store)).sign_in()
    for lookback in (None, 60):
        answer = client.get("/console/pipeline" + (f"?lookback_days={lookback}" if lookback else ""))
        assert answer.status_code == 200
        page = values(answer.text)
        forecast = client.api("/v1/reports/forecast", **({"lookback_days": lookback} if lookback else {}))
        assert forecast["stages"] and forecast["value"]["customers"]
        for key in ("expected_revenue", "expected_customers"):
            assert same(page[f"forecast-{key.replace('_', '-')}"], forecast[key])
        assert same(page["forecast-per-customer"], forecast["value"]["per_customer"])
        assert same(page["forecast-lookback"], forecast["lookback_days"])
        for s in forecast["stages"]:
            n = s["stage"]
            assert same(page[f"forecast-open-{n}"], s["open_contacts"])
            assert same(page[f"forecast-entered-{n}"], s["entered"])
            assert same(page[f"forecast-converted-{n}"], s["converted"])
            assert same(page[f"forecast-conversion-{n}"], s["conversion"])
            assert same(page[f"forecast-customers-{n}"], s["expected_customers"])
            assert same(page[f"forecast-revenue-{n}"], s["expected_revenue"])
        accounts = forecast["accounts"]
        assert same(page["accounts-expected-revenue"], accounts["expected_revenue"])
        for s in accounts["stages"]:
            assert same(page[f"accounts-open-{s['stage']}"], s["open_accounts"])
            assert same(page[f"accounts-conversion-{s['stage']}"], s["conversion"])
        personas = client.api("/v1/reports/personas")
        assert same(page["personas-contacts"], personas["contacts"])
        for cell in personas["cells"]:
            name = f"{cell['persona'] or 'none'}-{cell['stage'] or 'none'}"
            assert same(page[f"persona-contacts-{name}"], cell["contacts"])
            assert same(page[f"persona-engagement-{name}"], cell["avg_engagement"])
            assert same(page[f"persona-fit-{name}"], cell["avg_fit"])
    assert "No persona" in answer.text  # contacts no persona matched have a row


@pytest.mark.parametrize("lookback", ["0", "-3", "lots", "4000"])
def test_a_bad_lookback_is_a_message(store: Store, lookback: str) -> None:
    answer = Client(build(store)).sign_in().get(f"/console/pipeline?lookback_days={lookback}")
    assert answer.status_code == 400 and 'data-testid="form-error"' in answer.text and "lookback:" in answer.text


def test_bad_colouring_is_a_message(store: Store) -> None:
    answer = Client(build(store)).sign_in().get("/console/value?by=mood")
    assert answer.status_code == 400 and "by contacts or by revenue" in answer.text


@pytest.mark.parametrize("top", [1, 2, 4, 5, 7, 14, 99, 1000])
def test_the_legend_names_the_shade_of_every_count(top: int) -> None:
    """Each count from 1 to the largest falls in the legend's range of its own shade, once."""
    ranges = {k: (low, high) for k, low, high in console_analytics.legend(top, whole=True)}
    for count in range(1, top + 1):
        low, high = ranges[console_analytics.shade(count, top)]
        assert low <= count <= high
    assert console_analytics.shade(top, top) == console_analytics.SHADES and console_analytics.shade(0, top) == 0
