"""End to end on the real broker: a manual adjustment made through the API reaches the worker over
the crm topic, changes the contact's score, its group and its explanation; undone, it is gone; the
sink archived both events and a replay of the archive gives the live state again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analytics.replay import replay
from bench.harness import wait_drained
from schemas.model_file import DEFAULT_MODEL as MODEL_FILE
from schemas.state import decode_state
from tests.e2e.service import Service, archived, shadow_from_archive
from tests.e2e.test_analytics import msg, settings_for
from tests.e2e.test_replay import MODEL
from tests.e2e.test_replay_archive import truncate


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = archived(kafka_bootstrap, Path(tmp_path_factory.mktemp("adjustments")))
    svc.start()
    yield svc
    svc.stop()


def contact(service: Service, contact_id: str) -> dict[str, Any] | None:
    with service.client() as c:
        r = c.get(f"/v1/contacts/{contact_id}")
    return r.json() if r.status_code == 200 else None


def tops(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["rule"]: c for c in body["engagement"]["top"]}


def test_an_adjustment_changes_the_score_is_undone_and_replays(service: Service) -> None:
    now = int(time.time() * 1000)
    page = msg("page", "adj-p-1", now - 60_000, userId="adj-user", properties={"path": "/pricing"})
    service.publish([("web", b"adj-user", page)])
    before = service.wait_for(lambda: contact(service, "adj-user"))
    score = before["engagement"]["score"]

    with service.client() as c:
        made = c.post(
            "/v1/contacts/adj-user/adjustments",
            json={"points": 45, "group": "product", "reason": "Asked for a quote by phone", "by": "Ann"},
        )
        assert made.status_code == 202, made.text
        aid = made.json()["adjustment_id"]
        assert made.headers["location"] == f"/v1/contacts/adj-user/adjustments/{aid}"
        refused = c.post("/v1/contacts/adj-user/adjustments", json={"points": 5, "reason": "x", "group": "nope"})
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_request"

    adjusted = service.wait_for(
        lambda: (b := contact(service, "adj-user")) is not None and "adjustment:product" in tops(b) and b
    )
    assert adjusted["engagement"]["score"] == pytest.approx(score + 45, abs=0.01)  # decayed for seconds only
    note = tops(adjusted)["adjustment:product"]["adjustments"][0]
    assert (note["adjustment_id"], note["reason"], note["by"]) == (aid, "Asked for a quote by phone", "Ann")
    product = {g["id"]: g for g in adjusted["groups"]}["product"]
    assert "adjustment:product" in {t["rule"] for t in product["top"]}
    with service.client() as c:
        listed = c.get("/v1/contacts/adj-user/adjustments").json()["adjustments"]
        assert [(a["adjustment_id"], a["reverted_at"]) for a in listed] == [(aid, None)]
        assert c.delete(f"/v1/contacts/adj-user/adjustments/{aid}").status_code == 202

    undone = service.wait_for(
        lambda: (b := contact(service, "adj-user")) is not None and "adjustment:product" not in tops(b) and b
    )
    assert undone["engagement"]["score"] == pytest.approx(score, abs=0.01)
    with service.client() as c:
        [listed_one] = c.get("/v1/contacts/adj-user/adjustments").json()["adjustments"]
    assert listed_one["reverted_at"] is not None and listed_one["points_now"] == 0

    # one that stays: a replay or a shadow that missed the crm topic would differ from live
    with service.client() as c:
        kept = c.post("/v1/contacts/adj-user/adjustments", json={"points": -20, "reason": "Left the company"})
        assert kept.status_code == 202, kept.text
        kept_id = kept.json()["adjustment_id"]
    service.wait_for(lambda: (b := contact(service, "adj-user")) is not None and "adjustment" in tops(b))

    # the score ledger (from the archive) names the kept adjustment's rule and message id (not
    # necessarily the undone one's: the sink archives the contacts changelog, which holds a state
    # as of each flush of the worker's write-behind cache, and an adjustment undone before the
    # next flush never reaches it; the API's views are sent every batch)
    def ledger_rows() -> list[dict[str, Any]]:
        with service.client() as c:
            r = c.get("/v1/contacts/adj-user/history")
        return [row for row in r.json()["ledger"] if kept_id in row["message_ids"]] if r.status_code == 200 else []

    rows = service.wait_for(ledger_rows, timeout=180)
    assert "adjustment" in rows[0]["rules"]

    # the sink archived the crm topic's events: a replay of the archive is the live state
    settings = settings_for(service, service.env["SCORESTREAM_CLICKHOUSE_URL"])
    assert settings.topic_crm in settings.source_topics
    wait_drained(
        service.bootstrap,
        settings.app_id,
        [*settings.source_topics, settings.identity_topic, settings.contacts_topic],
        timeout_s=60,
        quiet_s=1.0,
    )
    wait_drained(
        service.bootstrap, f"{settings.app_id}-sink", [*settings.source_topics, settings.topic_deadletter], 60, 0.5
    )
    assert service.api is not None
    service.api.terminate()  # releases chDB
    assert service.api.wait(30) in (0, -15), service.logs("api")
    result = replay(settings, MODEL, "archive", live_model=MODEL)
    assert result.events == 4  # the page, the adjustment, its revert, the one kept
    assert result.diff.changed == 0, result.diff.examples
    assert result.live_views == result.replay_views
    state = decode_state(result.states["adj-user"])
    record = state.adjustments[aid]
    assert record.reverted is not None and record.reason == "Asked for a quote by phone"


def test_a_shadow_filled_from_the_archive_holds_the_adjustments(service: Service, tmp_path: Path) -> None:
    """After the first test (the API stopped): the source topics lose every event (as retention
    would); a shadow of the same model filled from the archive (the crm events copied to its
    backfill topic too) has the live scores."""
    assert service.api is not None and service.api.poll() is not None  # chDB released
    settings = settings_for(service, service.env["SCORESTREAM_CLICKHOUSE_URL"])
    asyncio.run(truncate(service.bootstrap, list(settings.source_topics)))
    stdout, report = shadow_from_archive(service, MODEL_FILE, "adjusted", tmp_path / "shadow.json")
    assert "copied" in stdout
    d = report["diff"]
    assert d["contacts"]["live"] == d["contacts"]["replay"] == d["contacts"]["both"] == 1
    assert d["changed"] == 0, d["examples"]
