"""Journey facts and score quality end to end: the real worker and API on the real broker, the API
running the sink into its embedded chDB. A visitor browses anonymously, identifies herself, opens an
e-mail and buys a free product; a shopper walks into a store and buys there first; a reader never
buys. Their events are stamped weeks ago, so the score-quality report has a whole horizon to look at."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.service import Service
from tests.e2e.test_analytics_reports import iso, msg

DAY = 86_400_000


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(
        bootstrap=kafka_bootstrap,
        data_dir=Path(tmp_path_factory.mktemp("quality")),
        extra_env={"SCORESTREAM_SINK_IN_API": "true", "SCORESTREAM_SINK_BATCH_S": "0.2"},
    )
    svc.start()
    yield svc
    svc.stop()


def order(mid: str, at: int, user: str, revenue: float) -> bytes:
    props = {"order_id": mid, "revenue": revenue, "currency": "EUR"}
    return msg("track", mid, at, userId=user, event="Order Completed", properties=props)


def test_journeys_and_score_quality_from_the_archive(service: Service) -> None:
    now = int(time.time() * 1000)
    start = now - 60 * DAY
    visitor, buyer, shopper, reader = "q-anon-1", "q-buyer", "q-shopper", "q-reader"
    # what happened before the scoring instant, then (once the archive has scored it) the order:
    # the ledger keeps a contact's scores as of its newest event per changelog record, so events
    # published at once would all be scored at the last one
    service.publish(
        [
            ("web", visitor.encode(), msg("page", "q-1", start, anonymousId=visitor, properties={"path": "/pricing"})),
            ("web", visitor.encode(), msg("page", "q-2", start + DAY, anonymousId=visitor, properties={"path": "/"})),
            ("web", visitor.encode(), msg("identify", "q-3", start + 2 * DAY, anonymousId=visitor, userId=buyer)),
            ("email", buyer.encode(), msg("track", "q-4", start + 3 * DAY, userId=buyer, event="Email Opened")),
            ("store", shopper.encode(), order("q-6", start + 4 * DAY, shopper, 80.0)),  # a walk-in
            ("web", reader.encode(), msg("page", "q-7", start, userId=reader, properties={"path": "/blog"})),
        ]
    )
    with service.client() as http:

        def scored() -> Any:
            r = http.get(f"/v1/contacts/{buyer}/history")
            return r.status_code == 200 and r.json()["ledger"]

        service.wait_for(scored, timeout=120)
        service.publish([("web", buyer.encode(), order("q-5", start + 10 * DAY, buyer, 0.0))])  # a free order

        def journey() -> Any:
            r = http.get(f"/v1/contacts/{buyer}/journey")
            body = r.json() if r.status_code == 200 else None
            return body if body and body["touches_before_first_order"] and body["touches"]["total"] >= 4 else None

        j = service.wait_for(journey, timeout=60)
        # the visitor's two pages (hers since she identified herself) and the e-mail open
        assert j["touches_before_first_order"] == {"web": 2, "email": 1, "store": 0, "total": 3}, j
        assert j["days_to_first_order"] == pytest.approx(10.0) and j["first_touch_channel"] == "web"

        window: dict[str, str | int] = {"from": iso(start - DAY), "to": iso(now), "min_n": 1}
        report = http.get("/v1/reports/journey", params=window).json()
        assert report["buyers"] == 2 and report["offline_first"]["offline"] == 1, report

        # scored at start + 5 days: the buyer (her free order 5 days later), the shopper (ordered before),
        # the reader; within 30 days only the buyer ordered
        t = start + 5 * DAY

        def quality() -> Any:
            params: dict[str, str | int] = {"from": iso(t), "to": iso(t + 1), "every": "1d", "min_n": 1}
            r = http.get("/v1/reports/score-quality", params=params)
            body = r.json() if r.status_code == 200 else None
            return body if body and body["models"] and body["models"][0]["n"] >= 3 else None

        body = service.wait_for(quality, timeout=60)
        active = body["models"][0]
        assert active["role"] == "active" and active["positives"] == 1 and active["n"] == 3, active
        assert sum(c["n"] for c in active["deciles"]) == 3
