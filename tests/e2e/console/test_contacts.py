"""The contacts pages in a real Chromium on the shared deployment (real broker, worker, API and
archive): search by email and by anonymous id lands on the contact, an unknown id is a 404 page,
and a contact's page shows the numbers ``GET /v1/contacts/{id}`` answers (an identified customer
and an anonymous visitor), with its engagement chart; screenshots on a laptop and a phone.

Engagement decays continuously: the page and the API answer a moment apart, so the page's figure
is compared with the API's decayed to the page's instant (``as-of``), the rule both follow
(``score(t) = score(t0) * 2^(-(t - t0) / H)`` once no new event comes)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page

from tests.e2e.console.conftest import PHONE, READ_KEY, sign_in
from tests.e2e.service import Service

Shot = Callable[[Page, str], Any]


def shown(page: Page) -> dict[str, str]:
    """Every ``<data data-k>`` of the page: name -> raw value."""
    found: dict[str, str] = page.eval_on_selector_all(
        "data[data-k]", "els => Object.fromEntries(els.map(e => [e.dataset.k, e.value]))"
    )
    return found


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def decayed(score: float, from_ms: int, to_ms: int, half_life_ms: int) -> float:
    """``score`` at ``from_ms`` moved to ``to_ms``, earlier or later: no event came in between."""
    return score * math.pow(2, -(to_ms - from_ms) / half_life_ms)


def sync_list(http: httpx.Client) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        r = http.get("/v1/contacts", params={"limit": 1000, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        rows += r.json()["data"]
        if not r.json()["has_more"]:
            return rows
        cursor = r.json()["next_cursor"]


def settled(service: Service) -> list[dict[str, Any]]:
    """The sync list once the deployment has folded and archived the last of its traffic (the
    fixture waits for every contact, not for every event: the worker may still be folding the
    last ones when the first test starts): two reads two seconds apart list the same changes."""
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {READ_KEY}"}) as http:
        before = sync_list(http)
        for _ in range(30):
            time.sleep(2)
            after = sync_list(http)
            if {(r["contact_id"], r["updated_at"]) for r in after} == {
                (r["contact_id"], r["updated_at"]) for r in before
            }:
                return after
            before = after
    raise AssertionError("the deployment kept changing contacts for a minute")


@pytest.fixture(scope="module")
def people(console_service: Service) -> dict[str, dict[str, Any]]:
    """A customer (identified, with an email and orders) and an anonymous visitor, as the API shows them."""
    rows = settled(console_service)
    with httpx.Client(base_url=console_service.url, headers={"Authorization": f"Bearer {READ_KEY}"}) as http:
        customer = max(
            (r for r in rows if r["email"] and r["orders"] > 0), key=lambda r: (r["orders"], r["contact_id"])
        )
        visitor = next(r for r in sorted(rows, key=lambda r: -r["engagement"]) if not r["user_id"])
        out = {}
        for name, row in (("customer", customer), ("visitor", visitor)):
            r = http.get(f"/v1/contacts/{quote(row['contact_id'], safe='')}")
            assert r.status_code == 200, r.text
            out[name] = r.json()
        return out


def check_numbers(page: Page, body: dict[str, Any]) -> None:
    """The page's figures are ``body``'s (engagement decayed to the page's instant)."""
    figures = shown(page)
    at, half_life = int(figures["as-of"]), int(figures["half-life-ms"])
    expect = decayed(body["engagement"]["score"], ms(body["engagement"]["as_of"]), at, half_life)
    assert abs(float(figures["engagement"]) - expect) <= 2e-6, (figures["engagement"], expect)
    assert float(figures["fit"]) == body["fit"]["score"]
    assert figures["grade"] == body["grade"]
    if body["stage"] is not None:
        assert figures["stage"] == body["stage"]["name"]
    rfm, clv = body["rfm"], body["clv"]
    if rfm is None:
        assert "rfm-r" not in figures and "No orders yet" in page.inner_text("[data-testid=value]")
        return
    for key, field in (("rfm-r", "r"), ("rfm-f", "f"), ("rfm-m", "m")):
        assert figures[key] == ("" if rfm[field] is None else str(rfm[field])), key
    assert figures["segment"] == (rfm["segment"] or "")
    assert int(figures["frequency"]) == rfm["frequency"] and float(figures["monetary"]) == rfm["monetary"]
    for key, field in (("clv", "clv_90d"), ("p-alive", "p_alive"), ("expected-purchases", "expected_purchases_90d")):
        if clv[field] is None:
            assert figures[key] == "", key
        else:  # p(alive) and the expectations move with time: the API answered a moment later
            assert math.isclose(float(figures[key]), clv[field], rel_tol=1e-4), (key, figures[key], clv[field])


def check_hot_list(page: Page, http: httpx.Client) -> None:
    """The list's rows are ``GET /v1/contacts?updated_since=...``'s, most engaged first."""
    figures = shown(page)
    since = datetime.fromtimestamp(int(figures["hot-since"]) / 1000, tz=UTC).isoformat()
    listed = http.get("/v1/contacts", params={"updated_since": since, "limit": 1000}).json()
    rows = {r["contact_id"]: r for r in listed["data"]}
    ids = page.eval_on_selector_all("[data-testid=hot-row]", "rows => rows.map(r => r.dataset.contact)")
    at, half_life = int(figures["as-of"]), 14 * 86_400_000
    shown_engagement = [float(figures[f"engagement-{i}"]) for i in ids]
    assert shown_engagement == sorted(shown_engagement, reverse=True)
    assert [r["contact_id"] for r in sorted(rows.values(), key=lambda r: (-r["engagement"], r["contact_id"]))][
        : len(ids)
    ] == ids
    for i in ids:
        expect = decayed(rows[i]["engagement"], ms(listed["as_of"]), at, half_life)
        assert abs(float(figures[f"engagement-{i}"]) - expect) <= 2e-6, i
        assert float(figures[f"fit-{i}"]) == rows[i]["fit"]


def test_search_by_email_and_by_anonymous_id_lands_on_the_contact(
    console_page: Callable[..., Page],
    console_service: Service,
    api: Callable[[str], httpx.Client],
    people: dict[str, dict[str, Any]],
    shot: Shot,
) -> None:
    page = console_page(READ_KEY)
    page.goto(f"{console_service.url}/console/contacts")
    assert page.locator("[data-testid=hot-row]").count() > 0
    shot(page, "contacts")
    check_hot_list(page, api(READ_KEY))
    customer, visitor = people["customer"], people["visitor"]
    for ident, expect in (
        (customer["identity"]["email"].upper(), customer["contact_id"]),
        (customer["identity"]["anonymous_ids"][0], customer["contact_id"]),
        (visitor["identity"]["anonymous_ids"][0], visitor["contact_id"]),
    ):
        page.goto(f"{console_service.url}/console/contacts")
        page.fill("input[name=q]", ident)
        page.click("form[role=search] button")
        page.wait_for_url(f"{console_service.url}/console/contacts/{quote(expect, safe='')}")
        assert page.locator("[data-testid=score-card]").count() == 1


def test_the_contact_pages_show_the_apis_numbers(
    console_page: Callable[..., Page],
    console_service: Service,
    api: Callable[[str], httpx.Client],
    people: dict[str, dict[str, Any]],
    shot: Shot,
) -> None:
    page = console_page(READ_KEY)
    http = api(READ_KEY)
    for name in ("customer", "visitor"):
        contact_id = people[name]["contact_id"]
        answer = page.goto(f"{console_service.url}/console/contacts/{quote(contact_id, safe='')}")
        assert answer is not None and answer.status == 200
        body = http.get(f"/v1/contacts/{quote(contact_id, safe='')}").json()
        check_numbers(page, body)
        assert page.locator("[data-testid=engagement-chart] svg").count() == 1, name
        points = shown(page)
        for c in body["engagement"]["top"]:
            assert f"contribution-{c['rule']}" in points
        shot(page, f"contact-{name}")
    assert people["customer"]["rfm"] is not None, "the customer has orders"


def test_the_contact_page_reads_on_a_phone(
    console_page: Callable[..., Page], console_service: Service, people: dict[str, dict[str, Any]], shot: Shot
) -> None:
    page = console_page(READ_KEY, viewport=PHONE)
    page.goto(f"{console_service.url}/console/contacts/{quote(people['customer']['contact_id'], safe='')}")
    assert page.locator("[data-testid=score-card]").is_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width}px wide on a {PHONE['width']}px screen"
    shot(page, "contact-phone")


def answered_404(service: Service, browser: Browser, paths: list[str], says: str) -> None:
    """Each of ``paths`` answers 404 with a page saying ``says``, and no script or page error.
    Chromium itself logs every document answered 4xx ("Failed to load resource") as a console
    error: that line is the browser's report of the status asked for, not the page's, so the
    console is watched here (not by ``console_page``) and only that one line is let through."""
    context = browser.new_context()
    page = context.new_page()
    messages: list[ConsoleMessage] = []
    errors: list[str] = []
    page.on("console", lambda message: messages.append(message))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        sign_in(page, service, READ_KEY)
        for path in paths:
            answer = page.goto(f"{service.url}{path}")
            assert answer is not None and answer.status == 404, path
            assert says in page.inner_text("[data-testid=not-found]"), path
    finally:
        context.close()
    unexpected = [
        f"{m.text} at {m.location}"
        for m in messages
        if m.type == "error" and not (m.text.startswith("Failed to load resource") and "404" in m.text)
    ]
    assert not unexpected and not errors, (unexpected, errors)


def test_an_unknown_id_is_a_404_page(console_service: Service, browser: Browser) -> None:
    paths = ["/console/contacts/nobody-by-this-id@example.invalid", "/console/contacts?q=nobody-at-all"]
    answered_404(console_service, browser, paths, "No contact with that id or email")
