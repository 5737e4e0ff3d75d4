"""The console's accounts pages in process, with the accounts replica fed directly and a migrated
chDB archive for the list's order: search, not found, and that an account's page shows what
``GET /v1/accounts/{id}`` answers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from analytics.client import Store
from analytics.migrations import migrate
from analytics.rows import ACCOUNT_COLUMNS
from api.account_replica import AccountReplica
from api.app import create_api
from api.replica import Replica
from kafka_io.clients import KafkaConnection
from schemas.accounts import encode
from schemas.settings import Settings
from scorestream.accounts import MemberUpdate, apply_member_updates
from tests.analytics.archive import MODEL, NOW, AccountRow
from tests.console.test_contacts import READ, Browser, api, signed_in, values
from tests.factories import DAY

KEY = "console-unit-key-0123456789"


def member(account: str, contact: str, role: str, score: float) -> MemberUpdate:
    return MemberUpdate(
        contact_id=contact,
        account_id=account,
        at_ms=NOW - DAY,
        evidence=1,
        role=role,
        score=score,
        fit=12.0,
        stage="lead",
        traits={"industry": "retail", "employees": 5000, "name": f"{account.title()} Inc"},
        traits_at=(NOW - DAY, "g1"),
    )


def accounts_replica() -> AccountReplica:
    """acme (a decision maker and a specifier engaged) and globex (one influencer, barely engaged)."""
    r = AccountReplica(kafka=KafkaConnection("127.0.0.1:1"), changelog_topic="a")
    for account, members in {
        "acme": [("ceo", "decision_maker", 40.0), ("eng", "specifier", 20.0)],
        "globex": [("pm", "influencer", 4.0)],
    }.items():
        state, _ = apply_member_updates(None, account, [member(account, *m) for m in members], MODEL)
        r.apply(account.encode(), encode(state))
    r.caught_up.set()
    return r


def build(store: Store | None, accounts: AccountReplica | None = None) -> FastAPI:
    settings = Settings(api_keys=f"{KEY},{READ}:read:reader", console_secret="x" * 32)  # type: ignore[arg-type]
    contacts = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    contacts.caught_up.set()
    app = create_api(
        settings, model=MODEL, replica=contacts, clock=lambda: NOW, accounts=accounts or accounts_replica()
    )
    if store is not None:

        async def get() -> Store:
            return store

        app.state.analytics = get
    return app


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[Store]:
    """account_changes rows for acme and globex (and one for an account the replica no longer has)."""
    s = Store(f"chdb://{chdb_path}?database=console_acc_{uuid.uuid4().hex[:8]}")

    async def setup() -> None:
        await migrate(s)
        rows = [
            AccountRow("globex", NOW - DAY, "target", 1, 1).row(),
            AccountRow("acme", NOW - DAY, "buying", 2, 2).row(),
            AccountRow("gone", NOW - DAY, "target", 1, 3).row(),
        ]
        await s.insert("account_changes", ACCOUNT_COLUMNS, rows)

    asyncio.run(setup())
    yield s
    s.close_sync()


def test_the_account_page_shows_the_apis_numbers() -> None:
    app = build(None)
    page = signed_in(app).get("/console/accounts/acme")
    assert page.status_code == 200, page.text
    shown = values(page.text)
    body = api(app, "/v1/accounts/acme")
    assert float(shown["engagement"]) == body["engagement"]["score"]
    assert float(shown["fit"]) == body["fit"]["score"]
    assert shown["grade"] == body["grade"] and shown["stage"] == body["stage"]["name"]
    assert int(shown["members"]) == body["coverage"]["members"] and int(shown["customers"]) == body["customers"]
    assert int(shown["roles-engaged"]) == len(body["coverage"]["roles_engaged"])
    for m in body["members"]:
        assert float(shown[f"member-engagement-{m['contact_id']}"]) == m["engagement"]
        assert shown[f"role-{m['contact_id']}"] == m["role"]
        assert f'href="/console/contacts/{m["contact_id"]}"' in page.text
    assert page.text.count('data-testid="role-missing"') == len(body["coverage"]["missing_roles"]) > 0
    assert page.text.count('data-testid="stay"') == len(body["stage"]["history"])


def test_search_exact_partial_and_unknown() -> None:
    client = signed_in(build(None))
    exact = client.get("/console/accounts", params={"q": " acme "})
    assert exact.status_code == 303 and exact.headers["location"] == "/console/accounts/acme"
    partial = client.get("/console/accounts", params={"q": "GLO"})
    assert partial.status_code == 200 and 'data-account="globex"' in partial.text
    assert 'data-account="acme"' not in partial.text
    none = client.get("/console/accounts", params={"q": "initech"})
    assert none.status_code == 404 and "No account with that id" in none.text
    unknown = client.get("/console/accounts/initech")
    assert unknown.status_code == 404 and "No account with that id" in unknown.text
    long = client.get("/console/accounts", params={"q": "x" * 600})
    assert long.status_code == 400 and "longer than any account id" in long.text


def test_the_list_is_most_engaged_first_with_the_replicas_figures(store: Store) -> None:
    app = build(store)
    page = signed_in(app).get("/console/accounts")
    assert page.status_code == 200
    order = [chunk.split('"')[0] for chunk in page.text.split('data-testid="account-row" data-account="')[1:]]
    assert order == ["acme", "globex"]  # "gone" is in the archive only: not listed
    shown = values(page.text)
    for account in order:
        body = api(app, f"/v1/accounts/{account}")
        assert float(shown[f"engagement-{account}"]) == body["engagement"]["score"]


def test_an_empty_or_loading_or_unavailable_list_says_what_to_do(store: Store) -> None:
    empty = AccountReplica(kafka=KafkaConnection("127.0.0.1:1"), changelog_topic="a")
    empty.caught_up.set()
    page = signed_in(build(store, empty)).get("/console/accounts")
    assert page.status_code == 200 and "No account yet" in page.text and "group calls" in page.text
    loading = AccountReplica(kafka=KafkaConnection("127.0.0.1:1"), changelog_topic="a")
    answer = signed_in(build(store, loading)).get("/console/accounts/acme")
    assert answer.status_code == 503 and "still loading account state" in answer.text
    no_archive = signed_in(build(None)).get("/console/accounts")
    assert no_archive.status_code == 200 and 'data-testid="unavailable"' in no_archive.text


def test_signed_out_goes_to_sign_in() -> None:
    answer = Browser(build(None)).get("/console/accounts/acme")
    assert answer.status_code == 303 and "/console/sign-in" in answer.headers["location"]
