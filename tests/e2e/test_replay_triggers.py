"""Replay announces what live scoring announced: the worker and :class:`analytics.replay.Fold` call
the same fold entry (``scorestream.fold.step``), and trigger ids are deterministic, so replaying
the source topics gives the triggers the worker wrote, id for id.

The contacts here cover what the fold decides: stage changes (lead, MQL, customer), a
disqualification, engagement thresholds, a merge of an anonymous visitor into a known contact, and
late events that put a walk off until the worker's clock ticks it. The RFM segment is left out of
the comparison: the worker judges it against the population's cut of the moment, which a replay
does not have (``Fold(segment_of=None)``: no segment judged).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from analytics.replay import fold_source
from bench.harness import wait_drained
from schemas.model_file import load_model
from tests.e2e.service import Service, wait_for
from tests.e2e.test_replay import settings_of

MODEL = load_model()
CEO = {"email": "ann@acme.com", "title": "CEO", "industry": "software", "employees": 200, "address": {"country": "US"}}
SEEKER = {"email": "jo@acme.com", "title": "VP Marketing", "industry": "software", "employees": 300}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


Record = tuple[str, bytes, bytes]


def msg(kind: str, mid: str, ts: int, **fields: Any) -> Record:
    """A web message keyed by its anonymous id, else its user id: a contact's messages stay in order
    (a contact folded from its events out of order may announce an entry a later event rewrites,
    see tests/scorestream/test_fold.py; replay folds each contact's events at once)."""
    key = str(fields.get("anonymousId") or fields["userId"]).encode()
    return "web", key, orjson.dumps({"type": kind, "messageId": mid, "timestamp": iso(ts), **fields})


def story(t: int) -> tuple[list[Record], list[Record]]:
    """Two publishes: everything in time order, then late events for a contact just walked."""
    first = [
        # a hot lead: lead, MQL, threshold crossings
        msg("identify", "hl-1", t, userId="hot", traits=CEO),
        msg("track", "hl-2", t + 1000, userId="hot", event="Whitepaper Downloaded"),
        msg("track", "hl-3", t + 2000, userId="hot", event="Webinar Registered"),
        msg("page", "hl-4", t + 3000, userId="hot", properties={"path": "/pricing"}),
        msg("page", "hl-5", t + 4000, userId="hot", properties={"path": "/pricing/plans"}),
        # a job seeker: disqualified
        msg("identify", "js-1", t, userId="seeker", traits=SEEKER),
        msg("page", "js-2", t + 1000, userId="seeker", properties={"path": "/careers/sales"}),
        msg("track", "js-3", t + 2000, userId="seeker", event="Demo Requested"),
        # an anonymous visitor who identifies: merged into the known contact
        msg("page", "an-1", t, anonymousId="visitor-1", properties={"path": "/pricing"}),
        msg("track", "an-2", t + 1000, anonymousId="visitor-1", event="Whitepaper Downloaded"),
        msg("identify", "an-3", t + 2000, anonymousId="visitor-1", userId="known", traits=CEO),
        msg("page", "an-4", t + 3000, anonymousId="visitor-1", userId="known", properties={"path": "/pricing/plans"}),
        # a buyer: a customer
        msg("page", "by-1", t, userId="buyer", properties={"path": "/shoes"}),
        msg(
            "track",
            "by-2",
            t + 1000,
            userId="buyer",
            event="Order Completed",
            properties={"order_id": "o-1", "total": 80},
        ),
        # a busy contact, walked to its newest event...
        msg("identify", "bz-1", t, userId="busy", traits=CEO),
        msg("page", "bz-5", t + 5000, userId="busy", properties={"path": "/pricing"}),
    ]
    late = [  # ... then events older than that: the walk is put off, the clock's tick walks them
        msg("track", "bz-2", t + 2000, userId="busy", event="Whitepaper Downloaded"),
        msg("track", "bz-3", t + 3000, userId="busy", event="Webinar Registered"),
        msg("page", "bz-4", t + 4000, userId="busy", properties={"path": "/pricing/plans"}),
    ]
    return first, late


def live_triggers(service: Service) -> list[dict[str, Any]]:
    records = service.read_topic(f"triggers-{service.suffix}", expect=1_000_000, wait_s=1)
    return [orjson.loads(r.value) for r in records]


def comparable(triggers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in triggers if t["type"] != "rfm.segment_changed"}


def test_replay_emits_the_triggers_live_scoring_sent(service: Service) -> None:
    first, late = story(int(time.time() * 1000) - 600_000)
    service.publish(first)
    time.sleep(1.5)  # the first publish folded (most likely) before the late events arrive
    service.publish(late)
    settings = settings_of(service)
    wait_drained(
        service.bootstrap,
        settings.app_id,
        [*settings.source_topics, settings.identity_topic, settings.contacts_topic],
        timeout_s=60,
        quiet_s=1.0,
    )

    fold, records, _ = asyncio.run(fold_source(settings, MODEL))
    assert records == len(first) + len(late) and fold.events == records
    replayed = comparable(fold.triggers)
    kinds = {t["type"] for t in replayed.values()}
    assert {"stage.changed", "contact.disqualified", "score.threshold_crossed"} <= kinds
    assert {t["contact_id"] for t in replayed.values()} >= {"hot", "seeker", "known", "buyer", "busy"}
    assert "anonymous:visitor-1" not in {t["contact_id"] for t in replayed.values()}  # merged, not announced
    assert [t["after"] for t in replayed.values() if t["contact_id"] == "buyer" and t["type"] == "stage.changed"] == [
        "customer"
    ]

    # the worker's clock ticks the busy contact's walk within a second or two: wait for it
    live: dict[str, dict[str, Any]] = {}

    def caught_up() -> bool:
        nonlocal live
        live = comparable(live_triggers(service))
        return live.keys() >= replayed.keys()

    wait_for(caught_up, 60, "the live triggers include every replayed one", lambda: service.logs("worker"), 0.5)
    assert live == replayed  # the same ids, and the same records
