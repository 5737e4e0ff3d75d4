"""Signing in and out of the console in a real Chromium: a key becomes a session cookie the page's
scripts cannot read, a wrong key is refused, a signed-out browser is sent to the sign-in page and
comes back where it was going, a read key sees no admin page."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from playwright.sync_api import Browser, Page

from tests.e2e.console.conftest import ADMIN_KEY, READ_KEY
from tests.e2e.service import Service


def test_a_wrong_key_is_refused_and_a_right_one_signs_in(console_service: Service, browser: Browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{console_service.url}/console/funnel")  # signed out: to the sign-in page, then back
        assert "/console/sign-in" in page.url
        page.fill("#key", "not-a-key-of-this-api")
        page.click("button[type=submit]")
        assert "not one this API knows" in page.inner_text("[data-testid=sign-in-error]")
        assert not context.cookies()
        page.fill("#key", READ_KEY)
        page.click("button[type=submit]")
        page.wait_for_url(f"{console_service.url}/console/funnel")
        (cookie,) = context.cookies()
        assert cookie["name"] == "scorestream_console" and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/console" and READ_KEY not in cookie["value"]
        assert page.evaluate("document.cookie") == ""  # the page's scripts cannot read it
        page.click("form.who button")  # sign out
        page.wait_for_url(f"{console_service.url}/console/sign-in")
        assert not context.cookies()
        page.goto(f"{console_service.url}/console")
        assert "/console/sign-in" in page.url
    finally:
        context.close()


def test_a_read_key_sees_no_admin_page(console_page: Callable[..., Page], console_service: Service) -> None:
    reader = console_page(READ_KEY)
    links = reader.locator("header nav a").all_inner_texts()
    assert "Webhooks" not in links and "Models" not in links and "Overview" in links
    for path in ("/console/webhooks", "/console/models"):  # asked with the session's cookie: 403, said in words
        answer = reader.request.get(f"{console_service.url}{path}")
        assert answer.status == 403, path
        assert "admin" in answer.text() and "text/html" in answer.headers["content-type"]
    admin = console_page(ADMIN_KEY)
    links = admin.locator("header nav a").all_inner_texts()
    assert "Webhooks" in links and "Models" in links


def test_a_form_without_its_token_or_from_another_site_is_refused(console_service: Service) -> None:
    with httpx.Client(base_url=console_service.url) as http:
        signed = http.post("/console/sign-in", data={"key": ADMIN_KEY, "next": "/console"})
        assert signed.status_code == 303 and "scorestream_console" in http.cookies
        no_token = http.post("/console/sign-out", data={})
        assert no_token.status_code == 403
        elsewhere = http.post("/console/sign-in", data={"key": ADMIN_KEY}, headers={"Origin": "https://evil.example"})
        assert elsewhere.status_code == 403
        assert http.get("/console/sign-in").status_code == 303  # still signed in: the refusals changed nothing
