"""End to end, a person's export (``GET /v1/contacts/{id}/export``) on the real broker, worker and
API with its embedded chDB sink: a person with an anonymous history, an identify with an email, a
demo request, an order and a dead letter naming them; the export, asked by their email, holds
their live state and what the archive holds about every id linked to them (events with their
properties, the dead letter's bytes, score ledger, contacts rows, orders), nothing of another
person, and the audit log line has no id."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.e2e.service import Service, archived
from tests.factories import segment_at as msg

TOKEN = uuid.uuid4().hex[:8]
USER, ANON, OTHER = f"exp-user-{TOKEN}", f"exp-anon-{TOKEN}", f"exp-other-{TOKEN}"
EMAIL = f"Exp.User.{TOKEN}@Example.com"
NOW = int(time.time() * 1000)


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = archived(kafka_bootstrap, Path(tmp_path_factory.mktemp("export")))
    svc.start()
    yield svc
    svc.stop()


def test_the_export_holds_the_live_state_and_the_archive_of_every_linked_id(service: Service) -> None:
    t = NOW - 3_600_000
    a, u = ANON.encode(), USER.encode()
    order = {"order_id": f"o-{TOKEN}", "revenue": 120.5, "currency": "EUR"}
    service.publish(
        [
            ("web", a, msg("page", t, anonymousId=ANON, properties={"path": "/pricing"})),
            ("web", a, msg("identify", t + 1000, userId=USER, anonymousId=ANON, traits={"email": EMAIL})),
            ("web", u, msg("track", t + 2000, userId=USER, event="Demo Requested")),
            ("store", u, msg("track", t + 3000, userId=USER, event="Order Completed", properties=order)),
            ("web", u, orjson.dumps({"type": "nope", "messageId": f"bad-{TOKEN}", "userId": USER})),
            ("web", OTHER.encode(), msg("identify", t, userId=OTHER, traits={"title": "CEO"})),
        ]
    )
    with service.client() as http:
        service.wait_for(lambda: (r := http.get(f"/v1/contacts/{USER}")).status_code == 200 and ANON in r.text, 90)

        def exported() -> dict[str, Any] | None:
            r = http.get(f"/v1/contacts/{EMAIL.lower()}/export")
            if r.status_code != 200:
                return None
            body: dict[str, Any] = r.json()
            held = body["archive"]
            statuses = {e["status"] for e in held["events"]}
            ready = held["status"] == "complete" and held["score_ledger"] and statuses == {"accepted", "rejected"}
            return body if ready and len(held["events"]) >= 5 and body["orders"] else None

        body = service.wait_for(exported, timeout=120, interval=0.5)
        r = http.get(f"/v1/contacts/{USER}/export")
        assert (
            r.headers["content-disposition"].startswith("attachment;") and USER not in r.headers["content-disposition"]
        )

    assert body["contact_id"] == USER
    identity = body["identity"]
    assert identity["user_id"] == USER and ANON in identity["anonymous_ids"] and identity["email"] == EMAIL.lower()
    assert body["current"]["contact_id"] == USER and body["current"]["engagement"]["score"] > 0
    held = body["archive"]
    kinds = sorted(e["type"] for e in held["events"] if e["status"] == "accepted")
    assert kinds == ["identify", "page", "track", "track"]
    page = next(e for e in held["events"] if e["type"] == "page")
    assert page["anonymous_id"] == ANON and page["properties"] == {"path": "/pricing"}  # the anonymous past
    (bad,) = [e for e in held["events"] if e["status"] == "rejected"]
    assert USER in bad["raw"]  # the dead letter, matched by its bytes
    assert all(OTHER not in orjson.dumps(e).decode() for e in held["events"])
    assert {c["contact_id"] for c in held["contacts"]} >= {USER}
    assert all(row["contact_id"] in (USER, f"anonymous:{ANON}") for row in held["score_ledger"])
    (bought,) = body["orders"]
    assert bought["properties"]["order_id"] == order["order_id"]
