"""End to end: Segment's own client and plain HTTP through the collector, scores out of the API.

The real API process (its collector) publishes to the real broker; the real worker scores.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import orjson
from segment.analytics import Client  # type: ignore[import-untyped]

from tests.e2e.service import WRITE_KEY, Service


def contact(http: httpx.Client, ident: str) -> dict[str, Any] | None:
    r = http.get(f"/v1/contacts/{ident}")
    return r.json() if r.status_code == 200 else None


def test_segment_client_through_the_collector_scores_a_contact(service: Service) -> None:
    errors: list[Any] = []
    segment = Client(
        WRITE_KEY,
        host=service.url,
        gzip=True,
        on_error=lambda exc, batch: errors.append((exc, batch)),
        upload_interval=0.1,
        max_retries=2,
    )
    segment.identify(
        "seg-1",
        {"email": "Ann.Seg@Acme.com", "title": "VP Marketing", "industry": "software", "employees": 400},
        anonymous_id="seg-anon-1",
    )
    segment.page("seg-1", name="Pricing", properties={"path": "/pricing", "url": "https://shop.example/pricing"})
    segment.track("seg-1", "Demo Requested", {"plan": "pro"})
    segment.group("seg-1", "acct-seg", {"name": "Acme", "industry": "software", "employees": 400})
    segment.flush()
    segment.join()
    assert errors == []
    with service.client() as http:
        body = service.wait_for(
            lambda: (c := contact(http, "seg-1")) is not None and len(c["engagement"]["top"]) >= 3 and c
        )
        by_email = contact(http, "ann.seg@acme.com")
        by_anonymous = contact(http, "seg-anon-1")
        service.wait_for(lambda: (c := contact(http, "seg-1")) is not None and c["account_id"] == "acct-seg")
    assert body["engagement"]["score"] > 0
    assert {"page-view", "pricing-page", "demo-requested"} <= {c["rule"] for c in body["engagement"]["top"]}
    assert body["identity"]["email"] == "ann.seg@acme.com"
    assert body["traits"]["title"] == "VP Marketing"
    assert by_email is not None and by_email["contact_id"] == "seg-1"
    assert by_anonymous is not None and by_anonymous["contact_id"] == "seg-1"


def test_an_accepted_message_is_on_its_channel_topic(service: Service) -> None:
    mid = f"store-{uuid.uuid4().hex}"
    message = {
        "userId": "shopper-1",
        "event": "Order Completed",
        "messageId": mid,
        "properties": {"order_id": "o-1", "total": 120.0},
        "context": {"channel": "store"},
    }
    before = int(time.time() * 1000)
    r = httpx.post(f"{service.url}/v1/track", json=message, auth=(WRITE_KEY, ""), timeout=15)
    assert (r.status_code, r.json()) == (200, {"success": True})
    records = service.read_topic(service.topic("store"), expect=1, wait_s=10)
    found = [rec for rec in records if orjson.loads(rec.value)["messageId"] == mid]
    assert len(found) == 1, records
    record = found[0]
    published = orjson.loads(record.value)
    assert record.key == b"shopper-1"
    assert published["type"] == "track" and published["event"] == "Order Completed"
    assert before <= record.timestamp <= int(time.time() * 1000)  # the record's time is receivedAt
    assert published["timestamp"] == published["receivedAt"]  # no client timestamp
    assert not [
        rec for rec in service.read_topic(service.topic("web"), expect=10**6, wait_s=1) if mid in str(rec.value)
    ]


def test_a_batch_scores_the_valid_and_dead_letters_the_invalid(service: Service) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    batch = {
        "writeKey": WRITE_KEY,
        "sentAt": now,
        "context": {"library": {"name": "curl"}},
        "batch": [
            {"type": "page", "userId": "batch-1", "timestamp": now, "properties": {"path": "/pricing"}},
            {"type": "track", "event": "Demo Requested", "timestamp": now},  # no identity
            {"type": "track", "userId": "batch-1", "event": "Demo Requested", "timestamp": now},
        ],
    }
    r = httpx.post(f"{service.url}/v1/batch", json=batch, timeout=15)
    assert r.status_code == 200
    assert r.json()["accepted"] == 2
    assert [(x["index"], x["reason"]) for x in r.json()["rejected"]] == [(1, "missing_identity")]
    with service.client() as http:
        body = service.wait_for(
            lambda: (c := contact(http, "batch-1")) is not None and len(c["engagement"]["top"]) >= 3 and c
        )
    assert body["engagement"]["score"] > 0
    assert {"page-view", "pricing-page", "demo-requested"} <= {c["rule"] for c in body["engagement"]["top"]}
    dead = [
        (rec, dict(rec.headers))
        for rec in service.read_topic(service.topic("dead"), expect=1, wait_s=10)
        if dict(rec.headers).get("scorestream.source.http") == b"/v1/batch[1]"
    ]
    assert len(dead) == 1
    record, headers = dead[0]
    assert headers["scorestream.reason"] == b"missing_identity"
    assert headers["scorestream.source.topic"] == service.topic("web").encode()
    assert orjson.loads(record.value)["context"] == {"library": {"name": "curl"}}
