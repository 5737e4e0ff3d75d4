"""Score groups end to end on the real broker: a model with two groups (``tests/grouped.py``) run by
the real worker, API (with the analytics sink into embedded chDB) and webhook dispatcher. Events
for both groups are published; the API shows both group scores, the CRM's sync list filters by a
group's score from the archive, and a subscriber filtered to one group gets only that group's
``score.threshold_crossed`` while an unfiltered one gets both groups' crossings."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
import yaml

from tests.e2e.service import Service, archived
from tests.e2e.test_analytics import msg
from tests.grouped import GROUPED_MODEL
from tests.webhook_receiver import Receiver


@pytest.fixture(scope="module")
def flow(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Receiver]]:
    data = Path(tmp_path_factory.mktemp("groups"))
    model = data / "grouped.yaml"
    model.write_text(yaml.safe_dump(dict(GROUPED_MODEL.source), sort_keys=False))
    svc = archived(
        kafka_bootstrap,
        data,
        model=model,
        extra_env={"SCORESTREAM_WEBHOOK_ALLOW_PRIVATE": "true", "SCORESTREAM_SINK_BATCH_S": "0.2"},
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


def contact(svc: Service, contact_id: str) -> dict[str, Any] | None:
    with svc.client() as api:
        r = api.get(f"/v1/contacts/{contact_id}")
    return r.json() if r.status_code == 200 else None


def groups(body: dict[str, Any]) -> dict[str, float]:
    return {g["id"]: g["score"] for g in body["groups"]}


def listed(svc: Service, query: str) -> list[str] | None:
    with svc.client() as api:
        r = api.get(f"/v1/contacts?{query}&limit=1000")
    return sorted(row["contact_id"] for row in r.json()["data"]) if r.status_code == 200 else None


def crossings(receiver: Receiver, path: str, secret: str) -> list[dict[str, Any]]:
    out = []
    for request in [r for r in receiver.received if r.path == path]:
        body: dict[str, Any] = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
        out.append(body["data"])
    return out


def test_two_groups_through_the_api_the_sync_list_and_a_filtered_webhook(flow: tuple[Service, Receiver]) -> None:
    svc, receiver = flow
    with svc.client() as api:
        only_hardware = api.post(
            "/v1/webhooks",
            json={"url": receiver.url("/hw"), "events": ["score.threshold_crossed"], "groups": ["hardware"]},
        )
        every_group = api.post(
            "/v1/webhooks", json={"url": receiver.url("/all"), "events": ["score.threshold_crossed"]}
        )
        assert only_hardware.status_code == 201 and every_group.status_code == 201, only_hardware.text
        refused = api.post("/v1/webhooks", json={"url": receiver.url("/x"), "events": ["*"], "groups": ["hardwear"]})
        assert refused.status_code == 422 and "hardware" in refused.json()["detail"]
    time.sleep(1.0)  # the dispatcher reads the subscriptions topic

    now = int(time.time() * 1000) - 60_000

    def page(mid: str, user: str, path: str, at: int) -> tuple[str, bytes, bytes]:
        return ("web", user.encode(), msg("page", mid, at, userId=user, properties={"path": path}))

    svc.publish(
        [
            page("g-hw-1", "hw-buyer", "/hardware/routers", now),
            page("g-hw-2", "hw-buyer", "/hardware/switches", now + 1000),
            (
                "web",
                b"hw-buyer",
                msg("track", "g-hw-3", now + 2000, userId="hw-buyer", event="Hardware Quote Requested"),
            ),
            page("g-tr-1", "learner", "/training/intro", now),
            page("g-tr-2", "learner", "/training/advanced", now + 1000),
            page("g-both-1", "browser", "/hardware/routers", now),
            page("g-both-2", "browser", "/training/intro", now + 1000),
        ]
    )

    # the API: both groups' scores beside the overall engagement
    buyer = svc.wait_for(lambda: (b := contact(svc, "hw-buyer")) and groups(b)["hardware"] > 50 and b, timeout=120)
    learner = svc.wait_for(lambda: (b := contact(svc, "learner")) and groups(b)["training"] > 10 and b)
    mixed = svc.wait_for(lambda: (b := contact(svc, "browser")) and groups(b)["training"] > 0 and b)
    assert groups(buyer)["hardware"] == pytest.approx(60.0, abs=0.01) and groups(buyer)["training"] == 0.0
    assert groups(learner)["training"] == pytest.approx(16.0, abs=0.01) and groups(learner)["hardware"] == 0.0
    assert groups(mixed)["hardware"] == pytest.approx(10.0, abs=0.01)
    assert groups(mixed)["training"] == pytest.approx(8.0, abs=0.01)
    assert {t["rule"] for t in next(g for g in buyer["groups"] if g["id"] == "hardware")["top"]} == {
        "hardware-page",
        "hardware-quote",
    }

    # the sync list from the archive, by a group's score decayed to now
    assert svc.wait_for(lambda: listed(svc, "group=hardware&min_score=40") == ["hw-buyer"], timeout=60)
    assert listed(svc, "group=hardware") == ["browser", "hw-buyer"]
    assert listed(svc, "group=training&min_score=12") == ["learner"]
    with svc.client() as api:
        unknown = api.get("/v1/contacts?group=hardwear")
        assert unknown.status_code == 422 and "hardware, training" in unknown.json()["detail"]
        row = next(r for r in api.get("/v1/contacts?group=training").json()["data"] if r["contact_id"] == "learner")
        assert {g["id"]: g["score"] for g in row["groups"]}["training"] == pytest.approx(16.0, abs=0.01)
        report = api.get("/v1/reports/groups").json()
        by_group = {g["id"]: g for g in report["groups"]}
        assert by_group["hardware"]["contacts"] == 2 and by_group["training"]["contacts"] == 2

    # webhooks: the unfiltered subscriber gets both groups' crossings; the filtered one hardware's only
    secrets = (only_hardware.json()["secret"], every_group.json()["secret"])

    def all_groups() -> set[str | None] | None:
        got = {c.get("group") for c in crossings(receiver, "/all", secrets[1])}
        return got if {"hardware", "training"} <= got else None

    svc.wait_for(all_groups, timeout=60)
    hardware = crossings(receiver, "/hw", secrets[0])
    assert hardware and {c.get("group") for c in hardware} == {"hardware"}
    assert {c["contact_id"] for c in hardware} == {"hw-buyer"}  # the browser's 10 points cross no threshold
    every = crossings(receiver, "/all", secrets[1])
    assert {c["id"] for c in hardware} == {c["id"] for c in every if c.get("group") == "hardware"}
