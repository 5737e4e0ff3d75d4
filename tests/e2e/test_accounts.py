"""End to end: group calls and engagement into real Kafka topics; the account's buying centre out of
the real API, and its stage changes on the triggers topic."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from schemas.model_file import load_model
from tests.e2e.service import Service

MODEL = load_model()
NOW = int(time.time() * 1000)
ACCOUNT = "acct-globex"
ACCOUNT_TRAITS = {"name": "Globex", "industry": "software", "employees": 400, "address": {"country": "PL"}}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def msg(kind: str, mid: str, ts: int, **fields: Any) -> bytes:
    return orjson.dumps({"type": kind, "messageId": mid, "timestamp": iso(ts), **fields})


def joins(user: str, title: str, ts: int) -> list[tuple[str, bytes | None, bytes]]:
    """A person identifies with a title and is grouped with the account."""
    return [
        ("web", user.encode(), msg("identify", f"{user}-id", ts, userId=user, traits={"title": title})),
        (
            "web",
            user.encode(),
            msg("group", f"{user}-grp", ts + 1, userId=user, groupId=ACCOUNT, traits=ACCOUNT_TRAITS),
        ),
    ]


def account(http: httpx.Client) -> dict[str, Any] | None:
    r = http.get(f"/v1/accounts/{ACCOUNT}")
    return r.json() if r.status_code == 200 else None


def test_coverage_grows_as_members_of_different_roles_engage(service: Service) -> None:
    t = NOW - 600_000
    service.publish(
        [
            *joins("ceo-1", "CEO", t),
            *joins("buyer-1", "Procurement Manager", t),
            *joins("eng-1", "Senior Software Engineer", t),
            ("web", b"ceo-1", msg("track", "ceo-demo", t + 1000, userId="ceo-1", event="Demo Requested")),
        ]
    )
    with service.client() as http:
        # one engaged decision maker: the account is engaged, not yet buying
        first = service.wait_for(
            lambda: (
                (body := account(http)) is not None
                and len(body["members"]) == 3
                and body["coverage"]["roles_engaged"] == ["decision_maker"]
                and body
            )
        )
        assert first["stage"]["name"] == "engaged"
        assert first["traits"]["name"] == "Globex"
        assert first["fit"]["grade"] == "A" and first["fit"]["score"] == 70.0
        roles = {m["contact_id"]: m["role"] for m in first["members"]}
        assert roles == {"ceo-1": "decision_maker", "buyer-1": "buyer", "eng-1": "specifier"}
        ceo = next(m for m in first["members"] if m["contact_id"] == "ceo-1")
        as_of = int(datetime.fromisoformat(first["engagement"]["as_of"]).timestamp() * 1000)
        expected = 40.0 * math.pow(2.0, -(as_of - (t + 1000)) / MODEL.half_life_ms)
        assert math.isclose(ceo["engagement"], expected, abs_tol=1e-4)
        assert math.isclose(first["engagement"]["score"], 1.5 * ceo["engagement"], abs_tol=1e-4)
        assert ceo["engaged"] and not next(m for m in first["members"] if m["contact_id"] == "buyer-1")["engaged"]

        # the buyer engages: two roles including a buyer, enough engagement -> buying
        service.publish(
            [
                ("web", b"buyer-1", msg("page", "buy-p1", t + 2000, userId="buyer-1", properties={"path": "/pricing"})),
                ("web", b"buyer-1", msg("page", "buy-p2", t + 3000, userId="buyer-1", properties={"path": "/pricing"})),
            ]
        )
        second = service.wait_for(
            lambda: (
                (body := account(http)) is not None
                and body["coverage"]["roles_engaged"] == ["decision_maker", "buyer"]
                and body
            )
        )
        assert second["stage"]["name"] == "buying"
        assert [(h["stage"], h["rule"]) for h in second["stage"]["history"]] == [
            ("target", "initial"),
            ("engaged", "engaged"),
            ("buying", "buying"),
        ]
        assert second["stage"]["history"][-1]["exited_at"] is None

        # the engineer engages too: three roles covered
        service.publish(
            [("email", b"eng-1", msg("track", "eng-wp", t + 4000, userId="eng-1", event="Whitepaper Downloaded"))]
        )
        third = service.wait_for(
            lambda: (
                (body := account(http)) is not None
                and body["coverage"]["roles_engaged"] == ["decision_maker", "buyer", "specifier"]
                and body
            )
        )
        assert third["coverage"]["missing_roles"] == ["influencer", "gatekeeper"]
        assert third["coverage"]["engaged_members"] == 3
        assert third["engagement"]["score"] > second["engagement"]["score"]

        missing = http.get("/v1/accounts/no-such-account")
        assert missing.status_code == 404
        assert missing.json()["code"] == "not_found"
        assert httpx.get(f"{service.url}/v1/accounts/{ACCOUNT}").status_code == 401

    records = service.read_topic(f"triggers-{service.suffix}", expect=100, wait_s=10)
    changes = [
        body
        for r in records
        if (body := orjson.loads(r.value))["type"] == "account.stage_changed" and body["account_id"] == ACCOUNT
    ]
    assert [(c["before"], c["after"], c["rule"]) for c in changes] == [
        ("target", "engaged", "engaged"),
        ("engaged", "buying", "buying"),
    ]
    assert all(r.key == ACCOUNT.encode() for r in records if orjson.loads(r.value)["account_id"] == ACCOUNT)
    assert all(c["id"].startswith("trg_") and c["model_version"] == MODEL.version for c in changes)
    assert len({c["id"] for c in changes}) == 2
