"""End to end in a real browser: Segment's analytics.js on a page of another origin.

Debian's Chromium (``make browser`` installs it) runs Segment's own browser SDK
(``@segment/analytics-next``, pinned in ``tests/browser/package.json`` and installed by ``npm ci``)
on a page served from ``http://localhost:<port>``; the SDK posts to the collector of the real API
at ``http://127.0.0.1:<port>``, another origin, so every request goes through CORS exactly as on
a customer's site. One send is made to fail (Chromium blocks it through the DevTools protocol:
no request routing, which would make Playwright answer the preflights itself) and is then let
through: the SDK's retry carries ``X-Retry-Count``, passes the preflight, and its event is scored.
A missing Chromium or SDK fails the test (it never skips).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, Page, Request, sync_playwright

from tests.e2e.service import REPO, Service, free_port

CHROMIUM = Path("/usr/lib/chromium/chromium")  # Debian's package `chromium`
SDK_VERSION = "1.84.3"
SDK = REPO / "tests/browser/node_modules/@segment/analytics-next"
BROWSER_KEY = "browser-write-key"  # as a page would hold it: web only
USER = "browser-user-1"


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(
        bootstrap=kafka_bootstrap,
        data_dir=Path(tmp_path_factory.mktemp("svc")),
        extra_env={"SCORESTREAM_WRITE_KEYS": f"{BROWSER_KEY}:web"},
    )
    svc.start()
    yield svc
    svc.stop()


def page_html(api_port: int) -> bytes:
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Pricing - shop</title></head>
<body><h1>Pricing</h1>
<script src="/sdk/index.js"></script>
<script>
  // the SDK's settings inline (Segment's CDN knows no scorestream write key); its telemetry
  // (POST /v1/m) flushed every half second instead of every 30 s
  window.sdk = AnalyticsNext.AnalyticsBrowser.load(
    {{
      writeKey: "{BROWSER_KEY}",
      cdnSettings: {{ integrations: {{ "Segment.io": {{ apiKey: "{BROWSER_KEY}" }} }}, metrics: {{ flushTimer: 500 }} }},
    }},
    {{ integrations: {{ "Segment.io": {{ apiHost: "127.0.0.1:{api_port}/v1", protocol: "http" }} }} }},
  );
</script></body></html>""".encode()


@dataclass
class PageServer:
    """The customer's site: the page and the SDK's files, on its own origin."""

    api_port: int
    port: int = field(default_factory=free_port)
    served: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.served.append(self.path)
                if self.path == "/":
                    body, kind = page_html(site.api_port), "text/html"
                elif self.path == "/favicon.ico":
                    self.send_response(HTTPStatus.NO_CONTENT)
                    self.end_headers()
                    return
                elif self.path.startswith("/sdk/") and "/.." not in self.path:
                    file = SDK / "dist/umd" / self.path.removeprefix("/sdk/")
                    if not file.is_file():
                        self.send_error(HTTPStatus.NOT_FOUND)
                        return
                    body, kind = file.read_bytes(), "text/javascript"
                else:
                    self.send_error(HTTPStatus.NOT_FOUND)
                    return
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}/"  # another origin than the collector's 127.0.0.1

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Sent:
    """One request of the page to the collector, as Chromium made it."""

    method: str
    path: str
    headers: dict[str, str]
    status: int | None = None
    failure: str | None = None


@dataclass
class Watch:
    """What the page did: its requests to the collector, its console errors."""

    api: str
    sent: list[Sent] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    by_request: dict[int, Sent] = field(default_factory=dict)

    def attach(self, page: Page) -> None:
        page.on("request", self._request)
        page.on("requestfinished", lambda r: self._settled(r, None))
        page.on("requestfailed", lambda r: self._settled(r, r.failure or "failed"))
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.console.append(f"pageerror: {exc}"))

    def _request(self, request: Request) -> None:
        if request.url.startswith(self.api):
            sent = Sent(request.method, request.url.removeprefix(self.api), dict(request.headers))
            self.sent.append(sent)
            self.by_request[id(request)] = sent

    def _settled(self, request: Request, failure: str | None) -> None:
        sent = self.by_request.get(id(request))
        if sent is None:
            return
        sent.failure = failure
        if failure is None:
            response = request.response()
            sent.status = response.status if response is not None else None

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.console.append(f"{message.type}: {message.text}")

    def to(self, path: str) -> list[Sent]:
        return [s for s in self.sent if s.path == path and s.method == "POST"]


def until(page: Page, check: Callable[[], Any], timeout_s: float, what: str, watch: Watch) -> Any:
    """Wait with Playwright's own clock (the page's events are delivered only while a Playwright
    call runs), until ``check()`` is truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        page.wait_for_timeout(100)
    raise AssertionError(f"{what}: not within {timeout_s} s; requests {watch.sent}; console {watch.console}")


def contact(http: httpx.Client, ident: str) -> dict[str, Any] | None:
    r = http.get(f"/v1/contacts/{ident}")
    return r.json() if r.status_code == 200 else None


def test_the_browser_sdk_from_another_origin_retries_through_cors_and_is_scored(service: Service) -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make browser` installs Debian's chromium"
    package = SDK / "package.json"
    assert package.exists(), f"{SDK} is missing: `make browser` runs npm ci in tests/browser"
    assert f'"version": "{SDK_VERSION}"' in package.read_text()
    site = PageServer(service.api_port)
    watch = Watch(api=f"{service.url}/v1/")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM))
            try:
                page = browser.new_page()
                watch.attach(page)
                cdp = page.context.new_cdp_session(page)
                cdp.send("Network.enable")
                page.goto(site.url)
                page.evaluate(
                    "() => sdk.page('Pricing', {path: '/pricing', url: location.origin + '/pricing'})"
                    ".then(() => undefined)"
                )
                until(page, lambda: any(s.status == 200 for s in watch.to("p")), 30, "the page view", watch)
                anonymous = page.evaluate("async () => (await sdk.user()).anonymousId()")
                assert isinstance(anonymous, str) and anonymous
                page.evaluate(
                    f"() => sdk.identify('{USER}', {{email: 'Ann.Browser@Acme.com', title: 'VP Marketing'}})"
                    ".then(() => undefined)"
                )
                until(page, lambda: any(s.status == 200 for s in watch.to("i")), 30, "the identify", watch)

                # the track's first send fails; the SDK retries it with X-Retry-Count (a header its
                # preflight must allow), once the collector can be reached again
                cdp.send("Network.setBlockedURLs", {"urls": [f"*127.0.0.1:{service.api_port}/v1/t"]})
                page.evaluate("() => { sdk.track('Demo Requested', {plan: 'pro'}) }")
                until(page, lambda: any(s.failure for s in watch.to("t")), 30, "the blocked track", watch)
                cdp.send("Network.setBlockedURLs", {"urls": []})
                retried = until(
                    page,
                    lambda: [s for s in watch.to("t") if s.status == 200],
                    60,
                    "the retried track",
                    watch,
                )
                # the browser key may send to web only: an offline order from the page is refused
                page.evaluate(
                    "() => { sdk.track('Order Completed', {order_id: 'o-browser', total: 99},"
                    " {context: {channel: 'store'}}) }"
                )
                refused = until(
                    page, lambda: [s for s in watch.to("t") if s.status == 403], 30, "the store order", watch
                )
                until(page, lambda: any(s.status == 200 for s in watch.to("m")), 30, "the SDK's telemetry", watch)
            finally:
                browser.close()
    finally:
        site.stop()

    assert all(s.status == 200 for s in watch.to("p") + watch.to("i")), watch.sent
    blocked = [s for s in watch.to("t") if s.failure]
    assert blocked and all(s.failure == "inspector" for s in blocked), watch.sent  # blocked by the DevTools
    assert "x-retry-count" not in blocked[0].headers  # the first attempt
    assert len(retried) == 1 and int(retried[0].headers["x-retry-count"]) >= 1, watch.sent
    assert len(refused) == 1 and "x-retry-count" not in refused[0].headers  # a 4xx is not retried
    # no CORS errors, no 404 for the telemetry: only the deliberate block and refusal are logged
    expected = ("ERR_BLOCKED_BY_CLIENT", "status of 403")
    assert [line for line in watch.console if not any(e in line for e in expected)] == [], watch.console
    assert not any("cdn.segment.com" in path for path in site.served)

    with service.client() as http:
        scored = service.wait_for(
            lambda: (c := contact(http, USER)) is not None and len(c["engagement"]["top"]) >= 3 and c
        )
        by_anonymous = contact(http, anonymous)
    assert {"page-view", "pricing-page", "demo-requested"} <= {r["rule"] for r in scored["engagement"]["top"]}
    assert scored["engagement"]["score"] > 0
    assert scored["identity"]["email"] == "ann.browser@acme.com"
    assert by_anonymous is not None and by_anonymous["contact_id"] == USER  # the anonymous id links
    assert not service.read_topic(service.topic("store"), expect=1, wait_s=2)  # no order got through
