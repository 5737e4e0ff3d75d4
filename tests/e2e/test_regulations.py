"""End to end, a regulation through ``/v1/regulations`` on the real broker, worker and API (with
its embedded chDB sink): a user with an anonymous history (page views as an anonymous id, then an
identify linking it, with an email) is scored and archived; ``DELETE_ONLY`` of the user id reaches
``done`` with every store reported (privacy list, worker, api, archive, deliveries, dead letters),
the user is then 404 by every id and the email, the privacy topic holds the erasure of every id
(hashes only), the regulation's record no longer holds the plaintext id, its progress records
are tombstoned; another user is untouched. The whole proof of the issue (every archive table,
replay, shadow, unsuppress, the collector): ``tests/e2e/test_privacy.py``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas.regulations import STORES, decode_entry, decode_regulation
from scorestream.privacy import subject_key
from tests.e2e.service import Service, archived, latest_values
from tests.factories import segment_at as msg

TOKEN = uuid.uuid4().hex[:8]
USER, ANON, OTHER = f"reg-user-{TOKEN}", f"reg-anon-{TOKEN}", f"reg-other-{TOKEN}"
EMAIL = f"reg.user.{TOKEN}@example.com"
NOW = int(time.time() * 1000)


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = archived(kafka_bootstrap, Path(tmp_path_factory.mktemp("regulations")))
    svc.start()
    yield svc
    svc.stop()


def test_delete_only_reaches_done_in_every_store_and_the_user_is_gone(service: Service) -> None:
    s = service.settings
    t = NOW - 3_600_000
    a, u = ANON.encode(), USER.encode()
    service.publish(
        [
            ("web", a, msg("page", t, anonymousId=ANON, properties={"path": "/pricing"})),
            ("web", a, msg("page", t + 1000, anonymousId=ANON, properties={"path": "/demo"})),
            ("web", a, msg("identify", t + 2000, userId=USER, anonymousId=ANON, traits={"email": EMAIL})),
            ("web", u, msg("track", t + 3000, userId=USER, event="Demo Requested")),
            ("web", OTHER.encode(), msg("identify", t, userId=OTHER, traits={"title": "CEO"})),
        ]
    )
    with service.client() as http:
        service.wait_for(
            lambda: (r := http.get(f"/v1/contacts/{USER}")).status_code == 200 and ANON in r.text and EMAIL in r.text,
            timeout=90,
        )
        assert http.get(f"/v1/contacts/{OTHER}").status_code == 200

        def archived() -> bool:  # the sink wrote the user's score ledger (so the archive has rows to erase)
            r = http.get(f"/v1/contacts/{USER}/history")
            return r.status_code == 200 and len(r.json()["ledger"]) > 0

        service.wait_for(archived, timeout=90, interval=0.5)
        body = {"regulationType": "DELETE_ONLY", "subjectType": "USER_ID", "subjectIds": [USER]}
        created = http.post("/v1/regulations", json=body)
        assert created.status_code == 200, created.text
        rid = created.json()["data"]["regulateId"]
        assert created.headers["location"] == f"/v1/regulations/{rid}"
        assert http.post("/v1/regulations", json=body).json() == created.json()  # the same request: the same one

        def finished() -> dict[str, Any] | None:
            r = http.get(f"/v1/regulations/{rid}")
            reg: dict[str, Any] = r.json()["data"]["regulation"]
            return reg if reg["status"] in ("done", "failed") else None

        started = time.monotonic()
        reg = service.wait_for(finished, timeout=180, interval=0.5)
        took = time.monotonic() - started
        assert reg["status"] == "done" and reg["overallStatus"] == "FINISHED", [
            (x["name"], x["status"], x["detail"]) for x in reg["stores"]
        ]
        stores = {st["name"]: st for st in reg["stores"]}
        assert list(stores) == list(STORES)
        assert all(st["status"] == "done" and st["finishedAt"] for st in stores.values()), stores
        assert stores["privacy_list"]["count"] >= 3  # the user id, the anonymous id, the email
        assert stores["worker"]["count"] >= 2  # the user's contact and its merged anonymous contact
        assert stores["archive"]["detail"] != "no archive" and stores["archive"]["count"] > 0, stores["archive"]
        assert "expire after" in stores["deadletter"]["detail"]
        assert USER not in http.get(f"/v1/regulations/{rid}").text
        print(f"\nDELETE_ONLY of one person with history: accepted -> done in {took:.1f} s")

        for ident in (USER, ANON, EMAIL):
            r = http.get(f"/v1/contacts/{ident}")
            assert (r.status_code, r.json()["code"]) == (404, "not_found"), ident
        assert http.get(f"/v1/contacts/{OTHER}").status_code == 200
        listed = http.get("/v1/regulations", params={"status": "done"}).json()["data"]["regulations"]
        assert rid in [x["id"] for x in listed]

    privacy = latest_values(s, s.privacy_topic)
    for kind, value in (("user", USER), ("anonymous", ANON), ("email", EMAIL)):
        raw = privacy.get(subject_key(kind, value).encode())  # type: ignore[arg-type]
        assert raw is not None, kind
        entry = decode_entry(raw)
        assert entry.erased_before_ms is not None and entry.suppressed_from_ms is None
    assert all(USER.encode() not in (v or b"") and EMAIL.encode() not in (v or b"") for v in privacy.values())
    record = decode_regulation(latest_values(s, s.regulations_topic)[rid.encode()] or b"")
    assert record.status == "done" and record.subject_ids == [] and record.subject_keys == [subject_key("user", USER)]
    progress = {k: v for k, v in latest_values(s, s.regulation_progress_topic).items() if k.startswith(rid.encode())}
    assert progress and all(v is None for v in progress.values())


def test_the_cli_reads_the_regulation(service: Service, capsys: pytest.CaptureFixture[str]) -> None:
    from deploy import regulations
    from deploy.cli import _parser
    from tests.e2e.service import API_KEY

    args = _parser().parse_args(["regulations", "--url", service.url, "--key", API_KEY, "list", "--status", "done"])
    assert regulations.command(args, httpx.Client(base_url=service.url)) == 0
    assert '"overallStatus": "FINISHED"' in capsys.readouterr().out
