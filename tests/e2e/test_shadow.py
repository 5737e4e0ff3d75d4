"""End to end on the real broker: a shadow model beside the active one, then promoted.

Model A is the default; model B differs in one rule (a contact becomes a ``lead`` on any
engagement, not at 10 points), so a contact with one page view is a ``subscriber`` under A and a
``lead`` under B. Both see every event; what each announces on the public ``triggers`` topic is
decided by the registry's cut in event time.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from schemas.model_file import read_model_source
from tests.e2e.service import REPO, Service, wait_for

SHADOW = "shadow-b"


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def page(mid: str, user: str, ts: int) -> bytes:
    return orjson.dumps({"type": "page", "messageId": mid, "userId": user, "timestamp": iso(ts), "properties": {}})


def identify(mid: str, user: str, ts: int) -> bytes:
    traits = {"email": f"{user}@example.org"}
    return orjson.dumps({"type": "identify", "messageId": mid, "userId": user, "timestamp": iso(ts), "traits": traits})


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(bootstrap=kafka_bootstrap, data_dir=Path(tmp_path_factory.mktemp("shadow")))
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def model_b(service: Service) -> Path:
    source = read_model_source()
    source["name"] = "e2e-shadow-b"
    for transition in source["lifecycle"]["transitions"]:
        if transition["id"] == "engaged":
            transition["when"] = [{"field": "engagement", "op": "gt", "value": 0}]
    path = service.data_dir / "model-b.yaml"
    path.write_text(yaml.safe_dump(source))
    return path


def cli(service: Service, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *args],
        env=service.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def triggers_on(service: Service, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in service.read_topic(topic, expect=1_000_000, wait_s=1.5)]


def get(service: Service, path: str) -> Any:
    with service.client() as http:
        r = http.get(path)
        return r.json() if r.status_code == 200 else None


def test_a_shadow_runs_beside_the_active_model_and_is_promoted(service: Service, model_b: Path) -> None:
    now = int(time.time() * 1000)
    active_ns = f"ss-{service.suffix}"
    service.publish(
        [
            ("web", None, page("p1-a", "early-a", now - 3_600_000)),
            ("web", None, identify("p1-b", "early-b", now - 3_500_000)),
        ]
    )
    early_a = wait_for(
        lambda: get(service, "/v1/contacts/early-a"),
        60,
        "early-a scored by the active model",
        lambda: service.logs("worker"),
    )
    assert early_a["stage"]["name"] == "subscriber"
    wait_for(lambda: get(service, "/v1/contacts/early-b"), 60, "early-b scored")

    # the shadow: replays the sources from their beginning, compares, then keeps running live
    diff_json = service.data_dir / "shadow-diff.json"
    log = (service.data_dir / "shadow.log").open("w")
    shadow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploy.cli",
            "shadow",
            "--model",
            str(model_b),
            "--name",
            SHADOW,
            "--json",
            str(diff_json),
        ],
        env=service.env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: diff_json.exists() or shadow.poll() is not None,
            120,
            "the shadow caught up and compared",
            lambda: (service.data_dir / "shadow.log").read_text()[-3000:],
        )
        assert shadow.poll() is None, (service.data_dir / "shadow.log").read_text()[-3000:]
        compared = orjson.loads(diff_json.read_bytes())
        assert compared["active"] == active_ns and compared["shadow"] == SHADOW
        assert compared["diff"]["contacts"] == {"live": 2, "replay": 2, "both": 2}
        assert compared["diff"]["stage_moves"] == {"subscriber": {"lead": 1}}

        # both visible in the API
        shadow_a = wait_for(
            lambda: get(service, f"/v1/contacts/early-a?model={SHADOW}"), 60, "the API serves the shadow"
        )
        assert shadow_a["stage"]["name"] == "lead"
        assert get(service, "/v1/contacts/early-a")["stage"]["name"] == "subscriber"
        listed = {m["namespace"]: m for m in get(service, "/v1/models")["models"]}
        assert listed[active_ns]["role"] == "active" and listed[SHADOW]["role"] == "shadow"

        # before any promotion the active namespace announces everything; the shadow keeps its own
        public = triggers_on(service, f"triggers-{service.suffix}")
        assert {t["model_version"] for t in public} == {early_a["model_version"]}
        private = wait_for(lambda: triggers_on(service, f"{SHADOW}.triggers"), 30, "the shadow's own triggers")
        assert {(t["contact_id"], t["after"]) for t in private if t["type"] == "stage.changed"} >= {
            ("early-a", "lead"),
            ("early-b", "lead"),
        }

        promoted = cli(service, "promote", SHADOW, "--delay", "2")
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        time.sleep(2.5)  # past the cut
        cut = int(time.time() * 1000) - 500
        after = int(time.time() * 1000)
        service.publish(
            [
                ("web", None, identify("p2-a", "late-id", after)),  # both models: lead, dated after the cut
                ("web", None, page("p2-b", "late-page", after)),  # only B: lead
                ("web", None, identify("p2-c", "straggler", cut - 600_000)),  # dated before the cut
            ]
        )

        def announced() -> list[dict[str, Any]] | None:
            found = [t for t in triggers_on(service, f"triggers-{service.suffix}") if t["type"] == "stage.changed"]
            mine = [t for t in found if t["contact_id"] in ("late-id", "late-page", "straggler")]
            return mine if len(mine) >= 3 else None

        mine = wait_for(announced, 60, "the changes after promotion announced")
        time.sleep(2)  # anything announced twice would be there by now
        mine = announced() or []
        by_contact = {t["contact_id"]: t for t in mine}
        assert len(mine) == 3, mine  # each change once, whichever worker saw it first
        b_version = compared["model_version"]
        assert by_contact["late-id"]["model_version"] == b_version
        assert by_contact["late-page"]["model_version"] == b_version
        assert by_contact["straggler"]["model_version"] == early_a["model_version"]  # before the cut: A's

        # the API's default is now B, with every event (none lost while both ran)
        assert get(service, "/v1/contacts/early-a")["stage"]["name"] == "lead"
        late = wait_for(lambda: get(service, "/v1/contacts/late-page"), 30, "late-page in the new active model")
        assert late["model_version"] == b_version and late["stage"]["name"] == "lead"
        listed = {m["namespace"]: m for m in get(service, "/v1/models")["models"]}
        assert listed[SHADOW]["role"] == "active" and listed[active_ns]["role"] == "shadow"

        models = cli(service, "models")
        assert models.returncode == 0 and SHADOW in models.stdout
    finally:
        shadow.terminate()
        shadow.wait(timeout=60)
        log.close()
