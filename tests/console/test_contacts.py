"""The console's contacts pages in process (TestClient), with the contacts replica fed directly and a
migrated chDB archive: search by every identifier, the not-found and bad-input pages, and that the
contact page shows the numbers ``GET /v1/contacts/{id}`` and its history answer."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from analytics.client import Store
from analytics.migrations import migrate
from analytics.reports import decayed
from analytics.rows import CONTACT_COLUMNS, LEDGER_COLUMNS
from api.app import create_api
from api.replica import Replica
from console.contacts import History
from kafka_io.clients import KafkaConnection
from schemas.api_analytics import HistoryOut, LedgerRowOut
from schemas.settings import Settings
from schemas.times import at_of
from scorestream import apply_events
from tests.analytics.archive import MODEL, NOW, ledger_row
from tests.api.view_bytes import view_bytes
from tests.factories import DAY, HOUR, make_event

KEY = "console-unit-key-0123456789"
READ = "console-unit-read-0123456789"


def contact_replica() -> Replica:
    """u-1 (identified, email, pricing pages, an order) and an anonymous visitor v-9."""
    r = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    events = [
        make_event(
            kind="identify",
            user_id="u-1",
            anonymous_id="a-1",
            traits={"email": "Ann@Acme.com", "title": "CEO"},
            timestamp_ms=NOW - 3 * DAY,
        ),
        make_event(kind="page", event=None, channel="web", user_id="u-1", path="/pricing", timestamp_ms=NOW - 2 * DAY),
        make_event(
            kind="track",
            event="Order Completed",
            channel="web",
            user_id="u-1",
            properties={"order_id": "o-1", "revenue": 120.0, "currency": "USD"},
            timestamp_ms=NOW - DAY,
        ),
    ]
    r.apply(b"u-1", view_bytes(apply_events(None, "u-1", events, MODEL), MODEL))
    visitor = [
        make_event(kind="page", event=None, channel="web", anonymous_id="v-9", path="/", timestamp_ms=NOW - HOUR)
    ]
    r.apply(b"anonymous:v-9", view_bytes(apply_events(None, "anonymous:v-9", visitor, MODEL), MODEL))
    r.caught_up.set()
    return r


def build(store: Store | None) -> FastAPI:
    settings = Settings(api_keys=f"{KEY},{READ}:read:reader", console_secret="x" * 32)  # type: ignore[arg-type]
    app = create_api(settings, model=MODEL, replica=contact_replica(), clock=lambda: NOW)
    if store is not None:

        async def get() -> Store:
            return store

        app.state.analytics = get
    return app


class Browser:
    """Requests to ``app`` over ASGI carrying the session cookie it set (redirects not followed)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.cookie: str | None = None

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.cookie:
            headers["Cookie"] = self.cookie

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return await client.request(method, path, headers=headers, **kwargs)

        answer = asyncio.run(go())
        if "set-cookie" in answer.headers:
            self.cookie = answer.headers["set-cookie"].split(";")[0]
        return answer

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)


def signed_in(app: FastAPI, key: str = READ) -> Browser:
    client = Browser(app)
    answer = client.request("POST", "/console/sign-in", data={"key": key, "next": "/console/contacts"})
    assert answer.status_code == 303 and client.cookie
    return client


def api(app: FastAPI, path: str, **params: Any) -> Any:
    answer = Browser(app).get(path, params=params, headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def values(html: str) -> dict[str, str]:
    """Every ``<data data-k=name value=raw>`` of a page."""
    return {
        k: v.replace("&#39;", "'").replace("&amp;", "&")
        for k, v in re.findall(r'<data(?: hidden)? data-k="([^"]+)" value="([^"]*)"', html)
    }


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[Store]:
    """A migrated archive holding u-1's ledger (two changes, one naming its pricing page view) and
    that event, and a contacts row for u-1."""
    s = Store(f"chdb://{chdb_path}?database=console_{uuid.uuid4().hex[:8]}")

    def ledger(at: int, engagement: float, rules: list[str], mids: list[str], offset: int) -> list[Any]:
        return ledger_row("u-1", at, engagement, 20.0, "lead", offset, rules, mids)

    async def setup() -> None:
        await migrate(s)
        await s.insert(
            "score_ledger",
            LEDGER_COLUMNS,
            [
                ledger(NOW - 3 * DAY, 1.0, ["page-view"], ["m-home"], 1),
                ledger(NOW - 2 * DAY, 12.0, ["page-view", "pricing-page"], ["m-pricing"], 2),
            ],
        )
        await s.query(
            "INSERT INTO events (event_time, received_at, status, channel, type, path, message_id, user_id, kafka_topic, "
            "kafka_partition, kafka_offset, raw) VALUES "
            f"(fromUnixTimestamp64Milli({NOW - 2 * DAY}), now64(3), 'accepted', 'web', 'page', '/pricing', 'm-pricing', "
            "'u-1', 'events.web', 0, 7, '{}')"
        )

    asyncio.run(setup())
    yield s
    s.close_sync()


def test_signed_out_goes_to_sign_in() -> None:
    answer = Browser(build(None)).get("/console/contacts/u-1")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/console/sign-in?next=")


@pytest.mark.parametrize("ident", ["u-1", "a-1", "ANN@acme.com", " ann@acme.com "])
def test_search_by_every_identifier_lands_on_the_contact(ident: str) -> None:
    client = signed_in(build(None))
    answer = client.get("/console/contacts", params={"q": ident})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/contacts/u-1"


def test_search_for_an_anonymous_visitor_quotes_its_id() -> None:
    client = signed_in(build(None))
    answer = client.get("/console/contacts", params={"q": "v-9"})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/contacts/anonymous%3Av-9"
    page = client.get(answer.headers["location"])
    assert page.status_code == 200 and "Anonymous visitor" in page.text


def test_no_match_says_so_with_hints() -> None:
    client = signed_in(build(None))
    answer = client.get("/console/contacts", params={"q": "nobody@nowhere.io"})
    assert answer.status_code == 404 and "text/html" in answer.headers["content-type"]
    assert "No contact with that id or email" in answer.text and "anonymousId" in answer.text
    unknown = client.get("/console/contacts/nobody")
    assert unknown.status_code == 404 and "No contact with that id or email" in unknown.text


def test_bad_input_is_an_html_message_not_a_500() -> None:
    client = signed_in(build(None))
    long = client.get("/console/contacts", params={"q": "x" * 600})
    assert long.status_code == 400 and "longer than any id" in long.text
    page = client.get("/console/contacts/" + "y" * 600)
    assert page.status_code == 400 and "longer than any id" in page.text
    blank = client.get("/console/contacts/%20")
    assert blank.status_code == 303 and blank.headers["location"] == "/console/contacts"


def test_without_the_archive_the_page_still_shows_the_contact() -> None:
    """The default test app has no archive in this process: the history says why, the rest shows."""
    app = build(None)
    client = signed_in(app)
    page = client.get("/console/contacts/u-1")
    assert page.status_code == 200
    shown = values(page.text)
    body = api(app, "/v1/contacts/u-1")
    assert float(shown["engagement"]) == body["engagement"]["score"]
    assert 'data-testid="unavailable"' in page.text and "SCORESTREAM_SINK_IN_API" in page.text
    listing = client.get("/console/contacts")
    assert listing.status_code == 200 and "SCORESTREAM_SINK_IN_API" in listing.text


def test_the_contact_page_shows_the_apis_numbers(store: Store) -> None:
    app = build(store)
    client = signed_in(app)
    page = client.get("/console/contacts/u-1")
    assert page.status_code == 200, page.text
    shown = values(page.text)
    body = api(app, "/v1/contacts/u-1")
    assert float(shown["engagement"]) == body["engagement"]["score"] > 0
    assert float(shown["fit"]) == body["fit"]["score"]
    assert shown["grade"] == body["grade"]
    if body["stage"] is None:  # a view without a journey yet: no stage shown, no number made up
        assert "stage" not in shown and "days-in-stage" not in shown and "No stage yet" in page.text
    else:
        assert shown["stage"] == body["stage"]["name"]
        assert float(shown["days-in-stage"]) == body["stage"]["days_in_stage"]
    for c in body["engagement"]["top"]:
        assert float(shown[f"contribution-{c['rule']}"]) == c["points"]
    rfm = body["rfm"]
    assert rfm is not None and int(shown["frequency"]) == rfm["frequency"] == 1
    assert float(shown["monetary"]) == rfm["monetary"] and "$120.00" in page.text
    # the history: the chart, and the pricing rule's change with the event behind it
    assert 'data-testid="engagement-chart"' in page.text and "<svg" in page.text
    assert "<script" not in page.text.split("</head>")[1]  # the CSP allows the console's own file only
    why = page.text.split('data-rule="pricing-page"')[1].split("</li>\n  \n")[0]
    assert "page /pricing" in why


def test_the_hottest_list_is_the_sync_list_most_engaged_first(store: Store) -> None:
    """The archive's contacts rows of the week, as ``GET /v1/contacts?updated_since=`` gives them."""

    async def rows() -> None:
        def row(cid: str, engagement: float, offset: int) -> list[Any]:
            values: dict[str, Any] = {c: None for c in CONTACT_COLUMNS}
            values.update(
                contact_id=cid, updated_at=NOW - HOUR, status="active", merged_into="", user_id=cid, email="",
                account_id="", first_seen=NOW - DAY, last_seen=NOW - HOUR, stage="lead", stage_since=NOW - DAY,
                persona="", flags=[], engagement=engagement, engagement_band="3", fit=10.0, fit_grade="C",
                rfm_segment="", orders=0, revenue=0.0, first_order_at=None, last_order_at=None,
                model_version=MODEL.version, kafka_partition=0, kafka_offset=offset, groups={},
            )  # fmt: skip
            return [values[c] for c in CONTACT_COLUMNS]

        await store.insert("contacts", CONTACT_COLUMNS, [row("cold-1", 2.0, 1), row("hot-1", 50.0, 2)])

    asyncio.run(rows())
    app = build(store)
    client = signed_in(app)
    page = client.get("/console/contacts")
    assert page.status_code == 200
    order = [chunk.split('"')[0] for chunk in page.text.split('data-testid="hot-row" data-contact="')[1:]]
    assert order.index("hot-1") < order.index("cold-1")
    since = values(page.text)["hot-since"]
    listed = api(
        app, "/v1/contacts", limit=1000, updated_since=datetime.fromtimestamp(int(since) / 1000, tz=UTC).isoformat()
    )
    by_id = {r["contact_id"]: r for r in listed["data"]}
    shown = values(page.text)
    assert float(shown["engagement-hot-1"]) == by_id["hot-1"]["engagement"]
    assert float(shown["fit-cold-1"]) == by_id["cold-1"]["fit"]


def test_the_chart_decays_between_changes() -> None:
    """Each change is preceded by the previous engagement decayed to its instant, the history's rule."""

    def row(at: int, engagement: float) -> LedgerRowOut:
        return LedgerRowOut(
            at=at_of(at), kind="score", cause="events", engagement=engagement, engagement_band="3", fit=0.0,
            fit_grade="D", stage=None, rules=[], message_ids=[], merged_into=None, model_version=MODEL.version,
        )  # fmt: skip

    body = HistoryOut(
        contact_id="u-1", model=MODEL.version, to=at_of(NOW), ledger=[row(NOW - 14 * DAY, 40.0), row(NOW, 30.0)],
        transitions=[], truncated=False, as_of=None, **{"from": None},
    )  # fmt: skip
    points = History(body, {}).points(MODEL.half_life_ms)
    assert points == [
        (NOW - 14 * DAY, 40.0),
        (NOW, decayed(40.0, NOW - 14 * DAY, NOW, MODEL.half_life_ms)),
        (NOW, 30.0),
    ]
    assert points[1][1] == 20.0  # one half-life (14 days) later
