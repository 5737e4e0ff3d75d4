"""The accounts pages in a real Chromium on the shared deployment: the most engaged accounts are
listed with the figures ``GET /v1/accounts/{id}`` gives, an account's page shows its score, stage,
members with their roles and scores, and buying-centre coverage as the API does, a search by id
lands on it, an unknown id is a 404 page. Engagement is compared decayed to the page's instant
(see ``test_contacts``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
from playwright.sync_api import Browser, Page

from tests.e2e.console.conftest import READ_KEY
from tests.e2e.console.test_contacts import answered_404, decayed, ms, settled, shown
from tests.e2e.service import Service

Shot = Callable[[Page, str], Any]
HALF_LIFE_MS = 14 * 86_400_000  # the default model's engagement half-life (accounts decay with it)


def close(shown_value: str, body: dict[str, Any], score: float, at: int) -> bool:
    return abs(float(shown_value) - decayed(score, ms(body["engagement"]["as_of"]), at, HALF_LIFE_MS)) <= 2e-6


def test_the_account_list_and_page_show_the_apis_numbers(
    console_page: Callable[..., Page], console_service: Service, api: Callable[[str], httpx.Client], shot: Shot
) -> None:
    settled(console_service)
    page = console_page(READ_KEY)
    http = api(READ_KEY)
    page.goto(f"{console_service.url}/console/accounts")
    rows = page.locator("[data-testid=account-row]")
    assert rows.count() > 0, page.inner_text("main")
    shot(page, "accounts")
    ids = [rows.nth(i).get_attribute("data-account") or "" for i in range(rows.count())]
    listed = shown(page)
    engagement = [float(listed[f"engagement-{i}"]) for i in ids]
    assert engagement == sorted(engagement, reverse=True)
    top = ids[0]
    page.click(f"[data-testid=account-row][data-account='{top}'] a")
    page.wait_for_url(f"{console_service.url}/console/accounts/{quote(top, safe='')}")
    body = http.get(f"/v1/accounts/{quote(top, safe='')}").json()
    figures = shown(page)
    at = int(figures["as-of"])
    assert close(figures["engagement"], body, body["engagement"]["score"], at)
    assert float(figures["fit"]) == body["fit"]["score"] and figures["grade"] == body["grade"]
    assert figures.get("stage", "") == (body["stage"]["name"] or "")
    assert int(figures["members"]) == body["coverage"]["members"] and int(figures["customers"]) == body["customers"]
    assert int(figures["roles-engaged"]) == len(body["coverage"]["roles_engaged"])
    missing = page.locator("[data-testid=role-missing]").all_inner_texts()
    assert len(missing) == len(body["coverage"]["missing_roles"])
    for m in body["members"]:
        assert figures[f"role-{m['contact_id']}"] == m["role"]
        assert close(figures[f"member-engagement-{m['contact_id']}"], body, m["engagement"], at)
    assert page.locator("[data-testid=stay]").count() == len(body["stage"]["history"])
    shot(page, "account")
    # a member's link opens its contact page
    first = body["members"][0]["contact_id"]
    page.click(f"[data-testid=member][data-contact='{first}'] a")
    page.wait_for_url(f"{console_service.url}/console/contacts/{quote(first, safe='')}")
    # a search by the account's id lands on it
    page.goto(f"{console_service.url}/console/accounts")
    page.fill("input[name=q]", top)
    page.click("form[role=search] button")
    page.wait_for_url(f"{console_service.url}/console/accounts/{quote(top, safe='')}")


def test_an_unknown_account_is_a_404_page(console_service: Service, browser: Browser) -> None:
    paths = ["/console/accounts/no-such-account", "/console/accounts?q=no-such-account"]
    answered_404(console_service, browser, paths, "No account with that id")
