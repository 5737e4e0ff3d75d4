"""The analytics reads end to end: the real worker and API on the real broker, the API owning its
embedded chDB and running the sink (the default embedded mode); events published to Kafka show up
in the sync list, the contact's history and the funnel."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.e2e.service import Service


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def msg(kind: str, mid: str, ts: int, **fields: Any) -> bytes:
    return orjson.dumps({"type": kind, "messageId": mid, "timestamp": iso(ts), **fields})


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(
        bootstrap=kafka_bootstrap,
        data_dir=Path(tmp_path_factory.mktemp("reports")),
        extra_env={"SCORESTREAM_SINK_IN_API": "true", "SCORESTREAM_SINK_BATCH_S": "0.2"},
    )
    svc.start()
    yield svc
    svc.stop()


def test_a_hand_raiser_is_listed_with_its_history(service: Service) -> None:
    now = int(time.time() * 1000)
    user, other = "e2e-ceo", "e2e-reader"
    traits = {"email": "ceo@acme.example", "title": "CEO", "employees": 300, "industry": "software"}
    service.publish(
        [
            ("web", user.encode(), msg("identify", "r-1", now - 3000, userId=user, traits=traits)),
            ("web", user.encode(), msg("page", "r-2", now - 2000, userId=user, properties={"path": "/pricing"})),
            ("web", user.encode(), msg("track", "r-3", now - 1000, userId=user, event="Demo Requested")),
            ("web", other.encode(), msg("page", "r-4", now - 1000, userId=other, properties={"path": "/blog"})),
        ]
    )
    with service.client() as http:

        def listed() -> Any:
            r = http.get("/v1/contacts", params={"stage": "sql"})
            return r.status_code == 200 and [c for c in r.json()["data"] if c["contact_id"] == user]

        (row,) = service.wait_for(listed, timeout=90)
        assert row["stage"] == "sql" and row["email"] == "ceo@acme.example" and row["fit_grade"] in ("A", "B")
        live = http.get(f"/v1/contacts/{user}").json()
        assert row["fit"] == live["fit"]["score"] and row["grade"][0] == live["grade"][0]
        # the other contact is not a sales lead
        everyone = http.get("/v1/contacts").json()["data"]
        assert {c["contact_id"] for c in everyone} >= {user, other}
        assert [c["stage"] for c in everyone if c["contact_id"] == other] == ["subscriber"]

        history = http.get(f"/v1/contacts/{user}/history").json()
        assert history["contact_id"] == user and history["ledger"], history
        rules = {rule for entry in history["ledger"] for rule in entry["rules"]}
        assert {"pricing-page", "demo-requested"} <= rules
        assert history["ledger"][-1]["stage"] == "sql"
        assert [t["to_stage"] for t in history["transitions"]][-1] == "sql"
        assert history["as_of"]["stage"] == "sql" and history["as_of"]["engagement"] > 40
        # by email too
        assert http.get("/v1/contacts/CEO@acme.example/history").json()["contact_id"] == user

        funnel = http.get("/v1/reports/funnel", params={"stages": "subscriber,lead,sql"}).json()
        reached = {s["stage"]: s["reached"] for s in funnel["stages"]}
        assert reached["subscriber"] >= 2 and reached["sql"] >= 1
