"""``GET /v1/accounts/{id}`` in process, over ASGI, with the accounts replica fed directly."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest

from api.account_replica import AccountReplica
from api.app import create_api
from api.replica import Replica
from kafka_io.clients import KafkaConnection
from schemas.accounts import encode
from schemas.model_file import load_model
from schemas.settings import Settings
from scorestream.accounts import MemberUpdate, apply_member_updates

KEY = "unit-test-key-0123456789"
T0 = 1_790_000_000_000
DAY = 86_400_000
MODEL = load_model()


def member(contact: str, role: str, score: float) -> MemberUpdate:
    return MemberUpdate(
        contact_id=contact,
        account_id="acme",
        at_ms=T0,
        evidence=1,
        role=role,
        score=score,
        fit=12.0,
        stage="lead",
        traits={"industry": "retail", "employees": 5000},
        traits_at=(T0, "g1"),
    )


def get(accounts: AccountReplica, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    settings = Settings(api_keys=KEY)  # type: ignore[arg-type]
    contacts = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    app = create_api(settings, model=MODEL, replica=contacts, clock=lambda: T0 + 14 * DAY, accounts=accounts)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(go())


@pytest.fixture
def replica() -> AccountReplica:
    r = AccountReplica(kafka=KafkaConnection("127.0.0.1:1"), changelog_topic="a")
    state, _ = apply_member_updates(
        None, "acme", [member("ceo", "decision_maker", 40.0), member("eng", "specifier", 20.0)], MODEL
    )
    r.apply(b"acme", encode(state))
    r.caught_up.set()
    return r


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_account_body(replica: AccountReplica) -> None:
    r = get(replica, "/v1/accounts/acme", auth())
    assert r.status_code == 200
    body = r.json()
    assert body["account_id"] == "acme"
    assert body["traits"] == {"industry": "retail", "employees": 5000}
    assert body["fit"] == {"score": 65.0, "grade": "A", "rules": ["account-target-industry", "account-size-large"]}
    # one half-life later: 1.5 x 20 + 1.0 x 10
    assert math.isclose(body["engagement"]["score"], 40.0)
    assert body["engagement"]["band"] == "3" and body["grade"] == "A3"
    assert body["coverage"]["roles_engaged"] == ["decision_maker", "specifier"]
    assert body["coverage"]["missing_roles"] == ["buyer", "influencer", "gatekeeper"]
    assert body["stage"]["name"] == "buying"
    assert [h["stage"] for h in body["stage"]["history"]] == ["target", "engaged", "buying"]
    assert [(m["contact_id"], m["role"], m["engagement"], m["stage"]) for m in body["members"]] == [
        ("ceo", "decision_maker", 20.0, "lead"),
        ("eng", "specifier", 10.0, "lead"),
    ]


def test_unknown_account_is_404_with_the_error_body(replica: AccountReplica) -> None:
    r = get(replica, "/v1/accounts/nobody", auth())
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    body.pop("request_id", None)  # the request's id (tests/api/test_errors.py)
    assert body == {
        "type": "/problems/not_found",
        "title": "Not found",
        "status": 404,
        "detail": "no account with id 'nobody'",
        "instance": "/v1/accounts/nobody",
        "code": "not_found",
    }


def test_the_route_needs_a_key_and_a_loaded_replica(replica: AccountReplica) -> None:
    assert get(replica, "/v1/accounts/acme").status_code == 401
    assert get(replica, "/v1/accounts/acme", {"Authorization": "Bearer wrong-key-0123456789"}).status_code == 401
    loading = AccountReplica(kafka=KafkaConnection("127.0.0.1:1"), changelog_topic="a")
    r = get(loading, "/v1/accounts/acme", auth())
    assert r.status_code == 503 and r.json()["code"] == "not_ready"
