"""The console's score-quality and journey pages in process, against chDB holding the hand-built
archives of ``tests/analytics/test_score_quality.py`` and ``test_journey_facts.py``: every number the
pages show equals what the JSON routes answer for the same parameters; bad input and an archive that
is not there are messages, never a 500."""

from __future__ import annotations

import asyncio
import html
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from fastapi import FastAPI

from analytics.client import Store
from analytics.rows import CONTACT_COLUMNS, EVENT_COLUMNS
from api.app import create_api
from api.replica import Replica
from kafka_io.clients import KafkaConnection
from schemas.settings import Settings
from schemas.times import at_of
from scorestream import apply_events
from tests.analytics import test_journey_facts as jf
from tests.analytics import test_score_quality as qf
from tests.api.view_bytes import view_bytes
from tests.console.test_analytics import KEY, READ, Client, same, values
from tests.factories import DAY, DEFAULT_MODEL, make_event

NOW = qf.NOW


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[Store]:
    s = Store(f"chdb://{chdb_path}?database=console_quality_{uuid.uuid4().hex[:8]}")
    events, contacts = jf.build()

    async def setup() -> None:
        await qf.fill(s, *qf.hand_built())
        await s.insert("events", EVENT_COLUMNS, events)
        await s.insert("contacts", CONTACT_COLUMNS, contacts)

    asyncio.run(setup())
    yield s
    s.close_sync()


def build(store: Store | None) -> FastAPI:
    settings = Settings(api_keys=f"{KEY},{READ}:read:reader", console_secret="y" * 32)  # type: ignore[arg-type]
    replica = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    replica.caught_up.set()
    app = create_api(settings, model=DEFAULT_MODEL, replica=replica, clock=lambda: NOW)
    if store is not None:

        async def get() -> Store:
            return store

        app.state.analytics = get
    return app


def api_request(page: str) -> tuple[str, dict[str, str]]:
    """The JSON request a page names (``GET /v1/...?...``), as a path and its parameters."""
    shown = html.unescape(page.split('data-testid="api-query">GET ')[1].split("</code>")[0])
    path, _, query = shown.partition("?")
    return path, dict(parse_qsl(query))


def day(ms: int) -> str:
    return at_of(ms).date().isoformat()


def test_the_pages_need_a_session(store: Store) -> None:
    client = Client(build(store))
    for path in ("/console/score-quality", "/console/journey"):
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/console/sign-in?next=")


def test_score_quality_shows_the_apis_numbers(store: Store) -> None:
    client = Client(build(store)).sign_in()
    # one scoring instant: the midnight after the ledger rows at T (decayed about ten hours)
    first = day(qf.T + DAY)
    answer = client.get("/console/score-quality", params={"from": first, "to": first, "horizon": "30d"})
    assert answer.status_code == 200, answer.text
    shown = values(answer.text)
    assert 'data-testid="api-query"' in answer.text and "Score quality" in answer.text
    path, params = api_request(answer.text)
    body = client.api(path, **params)
    assert len(body["snapshots"]) == 1
    (m,) = body["models"]
    assert m["n"] == 8  # c1, c2, c3, c4, c5, c6, the visitor and c10, as in the hand-built example
    name = m["model"]
    assert same(shown[f"n-{name}"], m["n"]) and same(shown[f"auc-{name}"], m["auc"])
    assert same(shown[f"base-{name}"], m["base_rate"])
    for c in m["deciles"]:
        assert same(shown[f"decile-n-{name}-{c['key']}"], c["n"])
        assert same(shown[f"decile-rate-{name}-{c['key']}"], c["rate"])  # under 30: none, shown as a dash
    assert 'data-testid="quality-note"' in answer.text  # too few for a base rate and an AUC: said so


def test_a_stage_outcome_and_bad_input(store: Store) -> None:
    client = Client(build(store)).sign_in()
    first = day(qf.T + DAY)
    ok = client.get("/console/score-quality", params={"from": first, "to": first, "outcome": "stage:customer"})
    assert ok.status_code == 200 and "stage:customer" in ok.text
    group = DEFAULT_MODEL.groups[0].id
    grouped = client.get("/console/score-quality", params={"from": first, "to": first, "group": group})
    assert grouped.status_code == 200 and f"score: group {group}" in grouped.text
    for params in ({"horizon": "5y"}, {"outcome": "stage:nope"}, {"from": "yesterday"}, {"group": "nope"}):
        bad = client.get("/console/score-quality", params=params)
        assert bad.status_code == 400 and 'data-testid="form-error"' in bad.text


def test_the_journey_page_shows_the_apis_numbers(store: Store) -> None:
    client = Client(build(store)).sign_in()
    answer = client.get("/console/journey", params={"from": day(jf.FROM), "to": day(jf.TO)})
    assert answer.status_code == 200, answer.text
    shown = values(answer.text)
    path, params = api_request(answer.text)
    body = client.api(path, **params)
    assert body["buyers"] == 3
    assert same(shown["journey-buyers"], body["buyers"]) and same(shown["journey-touches"], body["touches"]["median"])
    assert same(shown["journey-offline"], body["offline_first"]["share"])
    for c in body["by_channel"]:
        assert same(shown[f"channel-mean-{c['channel']}"], c["touches"]["mean"])
        assert same(shown[f"channel-share-{c['channel']}"], c["share_of_touches"])
    empty = client.get("/console/journey", params={"from": day(NOW), "to": day(NOW)})
    assert empty.status_code == 200 and 'data-testid="empty"' in empty.text


def test_unavailable_archive_is_a_message() -> None:
    client = Client(build(None)).sign_in()
    for path in ("/console/score-quality", "/console/journey"):
        answer = client.get(path)
        assert answer.status_code == 200 and 'data-testid="unavailable"' in answer.text, path


def test_the_contact_pages_journey_card_loads_the_contacts_journey(store: Store) -> None:
    app = build(store)
    event = make_event(kind="identify", user_id="ann", anonymous_id="anon-ann", traits={"email": "ann@example.com"})
    app.state.replica.apply(b"ann", view_bytes(apply_events(None, "ann", [event], DEFAULT_MODEL), DEFAULT_MODEL))
    client = Client(app).sign_in()
    contact_page = client.get("/console/contacts/ann")
    assert contact_page.status_code == 200 and 'data-testid="journey-load"' in contact_page.text
    link = "/console/journey/contacts/ann"
    assert f'href="{link}"' in contact_page.text
    part = client.get(link, headers={"X-Console-Fragment": "1"})
    shown = values(part.text)
    body = client.api("/v1/contacts/ann/journey")
    assert "<html" not in part.text and same(shown["journey-before"], body["touches_before_first_order"]["total"])
    assert same(shown["journey-days-to"], body["days_to_first_order"]) and same(shown["journey-touches-all"], 6)
    whole = client.get(link)
    assert whole.status_code == 200 and "<html" in whole.text and 'data-testid="journey-contact"' in whole.text
    nobody = client.get("/console/journey/contacts/nobody", headers={"X-Console-Fragment": "1"})
    assert 'data-testid="unavailable"' in nobody.text and "no contact" in nobody.text
