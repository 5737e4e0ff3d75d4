"""Door to door: events in through the HTTP collector, scored by the worker, the stage change
signed and delivered by the dispatcher to a subscription made over the API, and the delivery
log, test send and manual retry seen through the API.

Every part is the real process: API (with its collector), worker and dispatcher on the session's
broker, a real HTTP receiver; signatures are checked with the independent ``standardwebhooks``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import standardwebhooks

from tests.e2e.service import WRITE_KEY, Service
from tests.webhook_receiver import Receiver

CEO = {"email": "ada@acme.com", "title": "CEO", "industry": "software", "employees": 200, "address": {"country": "US"}}


@pytest.fixture(scope="module")
def flow(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Receiver]]:
    svc = Service(
        bootstrap=kafka_bootstrap,
        data_dir=Path(tmp_path_factory.mktemp("flow")),
        extra_env={
            "SCORESTREAM_WEBHOOK_ALLOW_PRIVATE": "true",
            "SCORESTREAM_WEBHOOK_RETRY_SCHEDULE": "0.3,0.6,1.2",
            "SCORESTREAM_WEBHOOK_TIMEOUT_S": "2",
        },
    )
    receiver = Receiver().start()
    svc.start()
    dispatcher = svc._spawn("dispatcher", "dispatcher.log")
    try:
        yield svc, receiver
    finally:
        dispatcher.terminate()
        dispatcher.wait(timeout=30)
        svc.stop()
        receiver.stop()


def send(svc: Service, path: str, body: dict[str, Any]) -> None:
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    r = httpx.post(f"{svc.url}{path}", content=orjson.dumps(body), headers={"authorization": auth}, timeout=10)
    assert r.status_code == 200, r.text


def verified(secret: str, request: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    return parsed


def test_a_stage_change_reaches_the_subscriber_signed_retried_and_logged(flow: tuple[Service, Receiver]) -> None:
    svc, receiver = flow
    receiver.rules["/crm"] = lambda req, seen: (503, {}) if seen == 0 else (200, {})
    with svc.client() as api:
        created = api.post(
            "/v1/webhooks",
            json={"url": receiver.url("/crm"), "events": ["stage.changed"], "stages": ["mql"], "description": "CRM"},
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        secret, hook_id = hook["secret"], hook["id"]
        assert secret.startswith("whsec_") and "secret" not in api.get(f"/v1/webhooks/{hook_id}").json()

        start = datetime.now(UTC) - timedelta(hours=5)

        def at(hours: int) -> str:
            return (start + timedelta(hours=hours)).isoformat()

        send(svc, "/v1/identify", {"userId": "ada", "traits": CEO, "timestamp": at(0)})
        send(
            svc,
            "/v1/batch",
            {
                "batch": [
                    {"type": "track", "userId": "ada", "event": "Whitepaper Downloaded", "timestamp": at(1)},
                    {"type": "track", "userId": "ada", "event": "Webinar Registered", "timestamp": at(2)},
                    {"type": "page", "userId": "ada", "properties": {"path": "/pricing"}, "timestamp": at(3)},
                    {"type": "page", "userId": "ada", "properties": {"path": "/pricing/plans"}, "timestamp": at(4)},
                ]
            },
        )

        def mql_requests() -> list[Any]:
            return [r for r in receiver.received if r.path == "/crm"]

        svc.wait_for(lambda: len(mql_requests()) >= 2, timeout=60)
        first, second = mql_requests()[:2]
        assert first.webhook_id == second.webhook_id, "a retry carries the same webhook-id"
        body = verified(secret, second)
        assert body["type"] == "stage.changed"
        assert body["data"]["contact_id"] == "ada" and body["data"]["after"] == "mql"
        assert body["data"]["before"] == "lead" and body["data"]["cause"] is not None
        assert len([r for r in receiver.received if r.path == "/crm"]) == 2, "only the MQL change passes the filter"

        def delivery() -> dict[str, Any] | None:
            r = api.get(f"/v1/webhooks/{hook_id}/deliveries")
            done = [d for d in r.json()["data"] if d["status"] == "succeeded"] if r.status_code == 200 else []
            return done[0] if done else None

        logged = svc.wait_for(delivery, timeout=30)
        assert logged["id"] == first.webhook_id and logged["attempt_count"] == 2
        assert [a["status_code"] for a in logged["attempts"]] == [503, 200]

        # a test send goes to this subscription only, whatever its filter
        queued = api.post(f"/v1/webhooks/{hook_id}/test")
        assert queued.status_code == 202, queued.text
        svc.wait_for(lambda: any(verified(secret, r)["type"] == "webhook.test" for r in mql_requests()), timeout=30)

        # a manual retry sends the same delivery again, recorded as manual
        retried = api.post(f"/v1/webhooks/{hook_id}/deliveries/{logged['id']}/retry")
        assert retried.status_code == 202, retried.text
        svc.wait_for(lambda: sum(r.webhook_id == logged["id"] for r in mql_requests()) == 3, timeout=30)

        def manual() -> bool:
            one = api.get(f"/v1/webhooks/{hook_id}/deliveries/{logged['id']}").json()
            return bool(one["attempt_count"] == 3 and one["attempts"][-1]["manual"])

        svc.wait_for(manual, timeout=30)


def test_a_rotated_secret_and_the_old_one_both_sign_during_the_overlap(flow: tuple[Service, Receiver]) -> None:
    svc, receiver = flow
    with svc.client() as api:
        hook = api.post("/v1/webhooks", json={"url": receiver.url("/rotated"), "events": ["*"]}).json()
        rotated = api.post(f"/v1/webhooks/{hook['id']}/rotate-secret", json={"overlap_s": 3600})
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["secret"]
        time.sleep(0.5)  # the dispatcher reads the rotation from the subscriptions topic
        assert api.post(f"/v1/webhooks/{hook['id']}/test").status_code == 202
        request = svc.wait_for(lambda: next((r for r in receiver.received if r.path == "/rotated"), None), timeout=30)
    assert verified(new_secret, request)["type"] == "webhook.test"
    assert verified(hook["secret"], request)["type"] == "webhook.test"
