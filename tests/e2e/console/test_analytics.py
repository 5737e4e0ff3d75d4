"""The analytics pages in a real Chromium on the shared deployment (real broker, worker, API and
archive): the funnel (its default window, then a date range and a mode set through the form), the
customer value grid and its segments, a cell's customers (clicked, then paged) and personas &
forecast show exactly what ``GET /v1/reports/*`` and ``GET /v1/contacts`` answer; a read key sees
no action to take; screenshots on a laptop, and the value page on a phone.

The deployment is shared and may still receive events from other modules' tests: a page and the
API are read a moment apart, so each comparison is retried (a fresh page and a fresh answer) when
the archive changed in between; a real disagreement persists and fails."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from playwright.sync_api import Page

from tests.e2e.console.conftest import PHONE, READ_KEY
from tests.e2e.service import Service

Shot = Callable[[Page, str], Any]
ATTEMPTS = 3


def shown(page: Page, within: str = "body") -> dict[str, str]:
    """Every ``<data data-k>`` inside ``within``: name -> raw value."""
    found: dict[str, str] = page.eval_on_selector_all(
        f"{within} data[data-k]", "els => Object.fromEntries(els.map(e => [e.dataset.k, e.value]))"
    )
    return found


def same(raw: str, value: Any) -> bool:
    if value is None:
        return raw == ""
    return float(raw) == float(value)


def agree(read: Callable[[], list[str]]) -> None:
    """``read()`` lists the differences between a fresh page and a fresh API answer: none, within a
    few attempts (the shared archive may change between the two reads)."""
    differences: list[str] = []
    for _ in range(ATTEMPTS):
        differences = read()
        if not differences:
            return
    raise AssertionError(differences)


def get(http: httpx.Client, path: str, **params: Any) -> Any:
    r = http.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def funnel_differences(figures: dict[str, str], body: dict[str, Any]) -> list[str]:
    out = []
    for s in body["stages"]:
        n = s["stage"]
        pairs = [
            ("entered", s["entered"]),
            ("reached", s["reached"]),
            ("from-start", s["conversion_from_start"]),
            ("median-days", s["median_days_in_stage"]),
            ("velocity-days", s["median_days_from_start"]),
            ("open", s["open_stays"]),
            ("completed", s["completed_stays"]),
        ]
        if n != body["stages"][0]["stage"]:
            pairs.append(("conversion", s["conversion"]))
        out += [
            f"{key}-{n}: {figures.get(f'funnel-{key}-{n}')} != {v}"
            for key, v in pairs
            if not same(figures.get(f"funnel-{key}-{n}", "missing"), v)
        ]
    return out


@pytest.fixture(scope="module")
def boundaries(console_service: Service) -> dict[str, Any]:
    """The RFM report once the workers published the population's boundaries (the grid): at once
    with the package's SCORESTREAM_POPULATION_INTERVAL_S of 3 s, else at the default's first
    refresh (300 s after the worker started)."""
    with httpx.Client(base_url=console_service.url, headers={"Authorization": f"Bearer {READ_KEY}"}) as http:

        def grid() -> dict[str, Any] | None:
            body: dict[str, Any] = get(http, "/v1/reports/rfm")
            return body if body["segments_from"] == "boundaries" and body["customers"] else None

        found: dict[str, Any] = console_service.wait_for(grid, timeout=330)
        return found


def test_the_funnel_shows_the_apis_numbers(
    console_page: Callable[..., Page], api: Callable[[str], httpx.Client], console_service: Service, shot: Shot
) -> None:
    page = console_page(READ_KEY)
    http = api(READ_KEY)

    def default_window() -> list[str]:
        page.goto(f"{console_service.url}/console/funnel")
        figures = shown(page)
        body = get(http, "/v1/reports/funnel", **{"from": figures["funnel-from"], "to": figures["funnel-to"]})
        assert any(s["reached"] for s in body["stages"]), body
        return funnel_differences(figures, body)

    agree(default_window)
    assert page.locator("[data-testid=funnel-chart] svg").count() == 1
    assert page.locator("[data-testid=funnel-row]").count() >= 3
    shot(page, "funnel")

    # a date range and the sequential mode, through the form
    today = datetime.now(UTC).date()
    start, end = today - timedelta(days=7), today - timedelta(days=1)

    def ranged() -> list[str]:
        page.goto(f"{console_service.url}/console/funnel")
        page.fill("input[name=from]", start.isoformat())
        page.fill("input[name=to]", end.isoformat())
        page.select_option("select[name=mode]", "sequential")
        page.click("[data-testid=funnel-form] button[type=submit]")
        page.wait_for_url("**/console/funnel?*mode=sequential*")
        window = {"from": f"{start.isoformat()}T00:00:00Z", "to": f"{(end + timedelta(days=1)).isoformat()}T00:00:00Z"}
        body = get(http, "/v1/reports/funnel", **window, mode="sequential")
        assert body["mode"] == "sequential" and body["stages"][0]["reached"] > 0, body
        figures = shown(page)
        assert figures["funnel-from"].startswith(window["from"][:19]), figures["funnel-from"]
        return funnel_differences(figures, body)

    agree(ranged)
    assert page.input_value("input[name=from]") == start.isoformat()
    assert page.locator("form[method=post]").count() == 1  # sign-out only: nothing to act on
    shot(page, "funnel-range")


def grid_differences(figures: dict[str, str], body: dict[str, Any]) -> list[str]:
    out = []
    for cell in body["grid"]:
        rf = f"{cell['r']}-{cell['f']}"
        if not same(figures.get(f"rfm-contacts-{rf}", "missing"), cell["contacts"]):
            out.append(f"contacts {rf}: {figures.get(f'rfm-contacts-{rf}')} != {cell['contacts']}")
        if not same(figures.get(f"rfm-revenue-{rf}", "missing"), cell["revenue"]):
            out.append(f"revenue {rf}: {figures.get(f'rfm-revenue-{rf}')} != {cell['revenue']}")
    for s in body["segments"]:
        for key in ("contacts", "revenue", "share"):
            if not same(figures.get(f"segment-{key}-{s['segment']}", "missing"), s[key]):
                out.append(f"segment {s['segment']} {key}: {figures.get(f'segment-{key}-' + s['segment'])} != {s[key]}")
    for key in ("customers", "revenue", "non_customers"):
        if not same(figures[f"rfm-{key.replace('_', '-')}"], body[key]):
            out.append(f"{key}: {figures[f'rfm-{key}']} != {body[key]}")
    return out


def cell_ids(page: Page) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        "[data-testid=cell-contact]", "rows => rows.map(r => r.dataset.contactId)"
    )
    return ids


def test_customer_value_grid_and_a_cells_customers(
    console_page: Callable[..., Page],
    api: Callable[[str], httpx.Client],
    console_service: Service,
    boundaries: dict[str, Any],
    shot: Shot,
) -> None:
    page = console_page(READ_KEY)
    http = api(READ_KEY)

    def grid() -> list[str]:
        page.goto(f"{console_service.url}/console/value")
        return grid_differences(shown(page), get(http, "/v1/reports/rfm"))

    agree(grid)
    assert page.locator("[data-testid=rfm-cell]").count() == 25
    shot(page, "value")

    # a click on the busiest cell lists its customers: the sync list's first page of that cell
    cell = max(get(http, "/v1/reports/rfm")["grid"], key=lambda c: c["contacts"])
    assert cell["contacts"] > 0

    def clicked() -> list[str]:
        page.goto(f"{console_service.url}/console/value")
        page.click(f"[data-testid=rfm-cell][data-r='{cell['r']}'][data-f='{cell['f']}'] a")
        page.wait_for_selector("[data-testid=cell-contact]")
        listed = get(http, "/v1/contacts", rfm_r=cell["r"], rfm_f=cell["f"], limit=25)
        expected = [c["contact_id"] for c in listed["data"]]
        return [] if cell_ids(page) == expected else [f"{cell_ids(page)} != {expected}"]

    agree(clicked)
    assert page.url.endswith("/console/value")  # loaded in place
    assert cell["segment"] in page.inner_text("[data-testid=cell-title]")
    assert page.locator(f"[data-testid=rfm-cell][data-r='{cell['r']}'][data-f='{cell['f']}'].selected").count() == 1
    shot(page, "value-cell")

    # another cell: its customers replace the first's, and it alone is marked
    other = next(c for c in get(http, "/v1/reports/rfm")["grid"] if c["contacts"] and c != cell)
    page.click(f"[data-testid=rfm-cell][data-r='{other['r']}'][data-f='{other['f']}'] a")
    page.wait_for_function(
        "title => document.querySelector('[data-testid=cell-title]').textContent.includes(title)",
        arg=f"R {other['r']} · F {other['f']}",
    )
    marked = page.locator("td.selected")
    assert marked.count() == 1 and marked.get_attribute("data-r") == str(other["r"])
    assert marked.get_attribute("data-f") == str(other["f"])

    # a listed customer opens on its contact page
    first = page.locator("[data-testid=cell-contact]").first
    contact_id = first.get_attribute("data-contact-id")
    first.locator("a").first.click()
    page.wait_for_url(f"**/console/contacts/{quote(contact_id or '', safe='')}")
    assert page.locator("main h1").count() == 1


def test_a_cells_customers_page_by_page(
    console_page: Callable[..., Page],
    api: Callable[[str], httpx.Client],
    console_service: Service,
    boundaries: dict[str, Any],
) -> None:
    """Two customers a page (``limit=2``, the page without script first, then the pages loaded in
    place): every customer of the cell once, as the sync list pages them."""
    page = console_page(READ_KEY)
    http = api(READ_KEY)
    cell = max(get(http, "/v1/reports/rfm")["grid"], key=lambda c: c["contacts"])
    assert cell["contacts"] > 2, cell

    def paged() -> list[str]:
        page.goto(f"{console_service.url}/console/value/cell?r={cell['r']}&f={cell['f']}&limit=2")
        seen: list[str] = []
        cursor: str | None = None
        while True:
            listed = get(
                http,
                "/v1/contacts",
                rfm_r=cell["r"],
                rfm_f=cell["f"],
                limit=2,
                **({"cursor": cursor} if cursor else {}),
            )
            expected = [c["contact_id"] for c in listed["data"]]
            if cell_ids(page) != expected:
                return [f"page {len(seen) // 2 + 1}: {cell_ids(page)} != {expected}"]
            seen += expected
            if not listed["has_more"]:
                assert page.locator("[data-testid=cell-next]").count() == 0
                break
            # the next page as the page's own link asks for it, and the API with that cursor too (the
            # shared archive keeps changing: the population's refreshes, stages moved by time)
            href = page.get_attribute("[data-testid=cell-next]", "href") or ""
            cursor = parse_qs(urlsplit(href).query)["cursor"][0]
            before = cell_ids(page)
            page.click("[data-testid=cell-next]")
            page.wait_for_function(
                "before => JSON.stringify([...document.querySelectorAll('[data-testid=cell-contact]')]"
                ".map(r => r.dataset.contactId)) !== before",
                arg=json.dumps(before),
            )
        total = get(http, "/v1/reports/rfm")["grid"]
        now = next(c["contacts"] for c in total if (c["r"], c["f"]) == (cell["r"], cell["f"]))
        return [] if len(seen) == len(set(seen)) == now else [f"{len(seen)} listed, {now} in the cell"]

    agree(paged)
    page.click("[data-testid=cell-first]")
    page.wait_for_function("() => !document.querySelector('[data-testid=cell-first]')")
    assert len(cell_ids(page)) == 2


def test_customer_value_on_a_phone(
    console_page: Callable[..., Page], console_service: Service, boundaries: dict[str, Any], shot: Shot
) -> None:
    page = console_page(READ_KEY, viewport=PHONE)
    page.goto(f"{console_service.url}/console/value")
    assert page.locator("[data-testid=rfm-cell]").count() == 25
    width = page.evaluate("() => document.querySelector('[data-testid=rfm-grid] table').getBoundingClientRect().right")
    assert width <= PHONE["width"], f"the grid overflows a phone: right edge at {width}px"
    shot(page, "value-phone")


def test_personas_and_forecast_show_the_apis_numbers(
    console_page: Callable[..., Page], api: Callable[[str], httpx.Client], console_service: Service, shot: Shot
) -> None:
    page = console_page(READ_KEY)
    http = api(READ_KEY)

    def pipeline() -> list[str]:
        page.goto(f"{console_service.url}/console/pipeline")
        figures = shown(page)
        forecast = get(http, "/v1/reports/forecast")
        personas = get(http, "/v1/reports/personas")
        pairs = [
            ("forecast-expected-revenue", forecast["expected_revenue"]),
            ("forecast-expected-customers", forecast["expected_customers"]),
            ("forecast-per-customer", forecast["value"]["per_customer"]),
            ("accounts-expected-revenue", forecast["accounts"]["expected_revenue"]),
            ("personas-contacts", personas["contacts"]),
        ]
        for s in forecast["stages"]:
            n = s["stage"]
            pairs += [
                (f"forecast-open-{n}", s["open_contacts"]),
                (f"forecast-entered-{n}", s["entered"]),
                (f"forecast-converted-{n}", s["converted"]),
                (f"forecast-conversion-{n}", s["conversion"]),
                (f"forecast-revenue-{n}", s["expected_revenue"]),
            ]
        for cell in personas["cells"]:
            name = f"{cell['persona'] or 'none'}-{cell['stage'] or 'none'}"
            pairs += [(f"persona-contacts-{name}", cell["contacts"]), (f"persona-fit-{name}", cell["avg_fit"])]
        assert personas["contacts"] > 0 and forecast["stages"]
        return [f"{k}: {figures.get(k)} != {v}" for k, v in pairs if not same(figures.get(k, "missing"), v)]

    agree(pipeline)
    assert page.locator("[data-testid=persona-row]").count() >= 2
    assert page.locator("form[method=post]").count() == 1  # sign-out only
    shot(page, "pipeline")
