"""``/v1/regulations`` in process, over ASGI: scopes, bodies, idempotency, the answers' shapes, the
audit log. The service behind is the real one with the fakes of ``test_regulations_service``."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaTimeoutError

from api.app import create_api
from api.replica import Replica
from kafka_io.clients import KafkaConnection
from schemas.model_file import load_model
from schemas.regulations import MAX_SUBJECTS, STORES
from schemas.settings import Settings
from scorestream.privacy import subject_key
from tests.api.test_regulations_service import World, world

READ, WRITE, ADMIN = (f"{s}-key-0123456789abcdef" for s in ("read", "write", "admin"))
KEYS = f"{READ}:read:crm,{WRITE}:write:tracker,{ADMIN}:admin:dpo"
MODEL = load_model()


def call(
    w: World, *requests: tuple[str, str, Any], key: str = ADMIN, headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    """Send the requests in order (method, path, JSON body or None), then wait for the service's
    background work."""
    settings = Settings(api_keys=KEYS, app_id="app")  # type: ignore[arg-type]
    contacts = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    app = create_api(settings, model=MODEL, replica=contacts, regulations=w.service)

    async def go() -> list[httpx.Response]:
        out = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            for method, path, body in requests:
                out.append(
                    await client.request(
                        method, path, json=body, headers={"Authorization": f"Bearer {key}", **(headers or {})}
                    )
                )
                for task in list(w.service.running.values()):
                    await task
        return out

    return asyncio.run(go())


def delete(*ids: str, kind: str = "DELETE_ONLY", subject: str = "USER_ID") -> dict[str, Any]:
    return {"regulationType": kind, "subjectType": subject, "subjectIds": list(ids)}


@pytest.fixture
def w() -> World:
    return world()


def test_read_and_write_keys_are_refused(w: World) -> None:
    for key in (READ, WRITE):
        answers = call(
            w,
            ("POST", "/v1/regulations", delete("u1")),
            ("GET", "/v1/regulations", None),
            ("GET", "/v1/regulations/x", None),
            key=key,
        )
        assert [(r.status_code, r.json()["code"]) for r in answers] == [(403, "insufficient_scope")] * 3
    assert w.writer.sent == []
    (no_key,) = call(w, ("GET", "/v1/regulations", None), key="")
    assert no_key.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"regulationType": "ERASE", "subjectType": "USER_ID", "subjectIds": ["u1"]},
        {"regulationType": "DELETE_ONLY", "subjectType": "PHONE", "subjectIds": ["u1"]},
        delete(),
        delete(""),
        delete("   "),
        delete("x" * 513),
        delete(*(f"u{i}" for i in range(MAX_SUBJECTS + 1))),
        {**delete("u1"), "extra": 1},
        {"regulationType": "DELETE_ONLY", "subjectIds": ["u1"]},
    ],
)
def test_bad_bodies_are_422_problems(w: World, body: dict[str, Any]) -> None:
    (r,) = call(w, ("POST", "/v1/regulations", body))
    assert r.status_code == 422 and r.json()["code"] == "invalid_request", r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert w.writer.sent == []


def test_create_answers_segment_s_shape_and_the_same_request_the_same_id(w: World) -> None:
    first, again, reordered, other_key, got = call(
        w,
        ("POST", "/v1/regulations", delete("u1", "u2")),
        ("POST", "/v1/regulations", delete("u1", "u2")),
        ("POST", "/v1/regulations", delete("u2", "u1", "u2")),
        ("POST", "/v1/regulations", delete("u1", "u2")),
        ("GET", "/v1/regulations", None),
    )
    assert first.status_code == 200, first.text
    rid = first.json()["data"]["regulateId"]
    assert first.json() == {"data": {"regulateId": rid}} and rid.startswith("reg_")
    assert first.headers["location"] == f"/v1/regulations/{rid}"
    assert again.json() == first.json() and reordered.json() == first.json()
    assert other_key.json() == first.json()  # no Idempotency-Key on any: the same
    assert got.json()["data"]["pagination"]["totalEntries"] == 1
    (keyed,) = call(w, ("POST", "/v1/regulations", delete("u1", "u2")), headers={"Idempotency-Key": "ticket-42"})
    assert keyed.json()["data"]["regulateId"] != rid


def test_get_shows_the_status_per_store_and_never_the_ids(w: World) -> None:
    (created,) = call(w, ("POST", "/v1/regulations", delete("u1")))
    rid = created.json()["data"]["regulateId"]
    got, missing = call(w, ("GET", f"/v1/regulations/{rid}", None), ("GET", "/v1/regulations/reg_nope", None))
    body = got.json()["data"]["regulation"]
    assert body["id"] == rid
    assert (body["regulationType"], body["subjectType"], body["subjectCount"]) == ("DELETE_ONLY", "USER_ID", 1)
    assert (body["overallStatus"], body["status"]) == ("FINISHED", "done")
    assert [s["name"] for s in body["stores"]] == list(STORES)
    assert all(s["status"] == "done" and s["startedAt"] and s["finishedAt"] for s in body["stores"])
    assert datetime.fromisoformat(body["createdAt"]) < datetime.fromisoformat(body["finishedAt"])
    assert "u1" not in got.text and "ann@example.com" not in got.text
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")


def test_list_is_newest_first_filtered_and_paged(w: World) -> None:
    w.down = True  # deletions wait for the worker: they stay running until the timeout
    w.service.timeout_s = 0.05
    call(w, *[("POST", "/v1/regulations", delete(f"u{i}", kind="SUPPRESS")) for i in range(5)])
    call(w, ("POST", "/v1/regulations", delete("u9")))
    every = call(w, ("GET", "/v1/regulations?count=2", None))[0].json()["data"]
    assert every["pagination"]["totalEntries"] == 6 and len(every["regulations"]) == 2
    seen = [r["id"] for r in every["regulations"]]
    cursor = every["pagination"]["next"]
    while cursor:
        page = call(w, ("GET", f"/v1/regulations?count=2&cursor={cursor}", None))[0].json()["data"]
        assert page["pagination"]["current"] == cursor
        seen += [r["id"] for r in page["regulations"]]
        cursor = page["pagination"]["next"]
    newest_first = sorted(w.service.regulations.values(), key=lambda r: (-r.created_at_ms, r.id))
    assert seen == [r.id for r in newest_first]
    failed, finished, bad, bad_cursor = call(
        w,
        ("GET", "/v1/regulations?status=failed", None),
        ("GET", "/v1/regulations?status=FINISHED", None),
        ("GET", "/v1/regulations?status=gone", None),
        ("GET", "/v1/regulations?cursor=%%%", None),
    )
    assert [r["regulationType"] for r in failed.json()["data"]["regulations"]] == ["DELETE_ONLY"]
    assert len(finished.json()["data"]["regulations"]) == 5
    assert bad.status_code == 422 and bad_cursor.status_code == 422


def test_not_caught_up_is_503(w: World) -> None:
    w.service.caught_up.clear()
    (r,) = call(w, ("GET", "/v1/regulations", None))
    assert (r.status_code, r.json()["code"]) == (503, "not_ready")


def test_admin_requests_and_regulations_are_audited_without_personal_data(
    w: World, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="scorestream.audit"):
        call(
            w, ("POST", "/v1/regulations", delete("ann@example.com", subject="EMAIL")), ("GET", "/v1/regulations", None)
        )
    lines = [r.__dict__ for r in caplog.records if r.name == "scorestream.audit"]
    assert [line["audit"] for line in lines] == [
        "admin_request",
        "regulation_created",
        "regulation_done",
        "admin_request",
    ]
    assert all(line["key_name"] == "dpo" for line in lines)
    assert lines[0]["route"] == "/v1/regulations" and lines[0]["method"] == "POST"
    created = lines[1]
    assert created["subject_keys"] == [subject_key("email", "ann@example.com")] and created["subject_count"] == 1
    text = " ".join(repr(r.getMessage()) + repr(r.__dict__) for r in caplog.records if r.name == "scorestream.audit")
    assert "ann@example.com" not in text and ADMIN not in text


def test_kafka_not_acknowledging_is_503_and_the_same_request_completes_it(w: World) -> None:
    """The record was written, the entries not: 503; the same request again writes them and
    answers the same regulation (so its 200 means durable too)."""
    w.down = True
    plain = w.writer.send_many
    failures = [KafkaTimeoutError()]

    async def flaky(records: list[tuple[str, bytes, bytes | None, int]]) -> None:
        if failures and records[0][0] == "app.privacy":
            raise failures.pop()
        await plain(records)

    w.writer.send_many = flaky  # type: ignore[method-assign]
    refused, again = call(w, ("POST", "/v1/regulations", delete("u1")), ("POST", "/v1/regulations", delete("u1")))
    assert (refused.status_code, refused.json()["code"]) == (503, "not_ready"), refused.text
    assert refused.headers["retry-after"] == "5"
    assert again.status_code == 200
    (reg,) = w.service.regulations.values()
    assert again.json()["data"]["regulateId"] == reg.id
    assert w.service.privacy_list.get(subject_key("user", "u1")) is not None
    assert subject_key("email", "ann@example.com") in reg.restricted_keys


def test_no_regulation_is_accepted_before_the_replicas_are_read(w: World) -> None:
    """Discovery must see every id the API knows: until the replicas are read, POST is 503 (GET answers)."""
    w.service.ready = lambda: False
    posted, listed = call(w, ("POST", "/v1/regulations", delete("u1")), ("GET", "/v1/regulations", None))
    assert (posted.status_code, posted.json()["code"]) == (503, "not_ready")
    assert listed.status_code == 200 and w.writer.sent == []
