"""The overview in a real Chromium on the console deployment (a broker, a worker, the API with its
archive; traffic over 14 days and the last hour): the stage counts and the top movers equal ``GET
/v1/reports/overview``, the right-now figures arrive by server-sent events (contacts: the report's
active contacts), a trigger published during the test shows up in the live feed without a
reload, and the page reads on a phone. Screenshots: ``overview`` (desktop), ``overview-phone``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import httpx
from playwright.sync_api import Page

from tests.e2e.console.conftest import ADMIN_KEY, PHONE, READ_KEY
from tests.e2e.service import Service
from tests.factories import segment_at

TOLERANCE = 1e-4  # engagement decays between the page's request and the API's (a 14-day half-life)


def shown(page: Page, name: str) -> list[str]:
    """The raw values of every ``<data data-k=name>`` on the page, in order."""
    values: list[str] = page.eval_on_selector_all(f'data[data-k="{name}"]', "els => els.map(e => e.value)")
    return values


def close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(1.0, abs(b))


def matches(page: Page, body: dict[str, Any]) -> bool:
    """Whether the page shows ``body``'s stage counts and movers (scores within the decay of a moment)."""
    for stage in body["stages"]:
        if shown(page, f"stage-count-{stage['stage'] or 'none'}") != [str(stage["contacts"])]:
            return False
    if shown(page, "stage-total") != [str(body["contacts"])]:
        return False
    ids = page.eval_on_selector_all('[data-testid="mover"]', "els => els.map(e => e.dataset.contactId)")
    if ids != [m["contact_id"] for m in body["movers"]]:
        return False
    pairs = zip(shown(page, "engagement"), shown(page, "rise"), body["movers"], strict=True)
    return all(close(float(e), m["engagement"]) and close(float(r), m["rise"]) for e, r, m in pairs)


def test_the_overview_shows_the_apis_numbers(
    console_page: Callable[..., Page], api: Callable[[str], httpx.Client], shot: Callable[[Page, str], Any]
) -> None:
    http = api(READ_KEY)
    page = console_page(READ_KEY)  # signed in: the overview is where the console opens
    before = http.get("/v1/reports/overview")
    page.reload()
    after = http.get("/v1/reports/overview")
    assert before.status_code == after.status_code == 200, before.text
    bodies = [before.json(), after.json()]
    assert bodies[0]["contacts"] > 0 and bodies[0]["movers"], "the traffic of the last hour has movers"
    # the window slides between the two answers: the page equals one of them
    assert any(matches(page, body) for body in bodies), (bodies, page.inner_text('[data-testid="movers"]'))
    first = page.locator('[data-testid="mover"] a').first
    assert first.get_attribute("href") == f"/console/contacts/{quote(bodies[0]['movers'][0]['contact_id'])}"

    # the right-now figures: pushed every ~2 s; the rate needs two samples
    page.wait_for_function(
        """() => ['events-per-s', 'deadletters', 'deadletters-hour', 'lag']
                 .every(k => document.querySelector(`data[data-k="${k}"]`).value !== '')""",
        timeout=20_000,
    )
    page.wait_for_function("() => document.querySelector('data[data-k=\"contacts\"]').value !== ''")
    assert shown(page, "contacts") == [str(http.get("/v1/reports/overview").json()["contacts"])]
    assert int(shown(page, "lag")[0]) >= 0 and float(shown(page, "events-per-s")[0]) >= 0
    assert page.locator("nav >> text=Webhooks").count() == 0  # a read key sees no admin page
    shot(page, "overview")


def test_a_trigger_published_now_appears_in_the_live_feed(
    console_service: Service, console_page: Callable[..., Page], api: Callable[[str], httpx.Client]
) -> None:
    page = console_page(ADMIN_KEY)
    page.wait_for_selector('[data-testid="feed"]')
    page.evaluate("window.__notReloaded = true")
    time.sleep(1.0)  # the page's stream has subscribed to the feed
    user = f"console-live-{uuid.uuid4().hex[:10]}"
    now = int(time.time() * 1000)
    # a new contact who gives an email: subscriber -> lead ("identified"), a stage.changed trigger
    message = segment_at(
        "identify", now, userId=user, anonymousId=f"anon-{user}", traits={"email": f"{user}@example.com"}
    )
    # Playwright's sync API runs an event loop in this thread: publish (asyncio.run) from another
    with ThreadPoolExecutor(1) as pool:
        pool.submit(console_service.publish, [("web", user.encode(), message)]).result(timeout=30)
    http = api(ADMIN_KEY)

    def contact_id() -> str | None:
        r = http.get(f"/v1/contacts/{user}")
        return str(r.json()["contact_id"]) if r.status_code == 200 else None

    cid = console_service.wait_for(contact_id, timeout=60)
    item = page.locator(f'[data-testid="feed"] li:has(a[href="/console/contacts/{cid}"])')
    item.first.wait_for(timeout=30_000)
    assert "stage.changed" in item.first.inner_text() and "lead" in item.first.inner_text()
    assert page.evaluate("window.__notReloaded") is True  # it came without a reload
    assert page.locator("#feed-empty").is_hidden()


def test_the_overview_reads_on_a_phone(console_page: Callable[..., Page], shot: Callable[[Page, str], Any]) -> None:
    page = console_page(READ_KEY, viewport=PHONE)
    page.wait_for_selector('[data-testid="stages"] table')
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide on a {PHONE['width']} px phone"
    assert page.locator('[data-testid="right-now"] .stat').first.is_visible()
    shot(page, "overview-phone")
