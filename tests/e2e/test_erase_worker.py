"""End to end, the worker's side of an erasure (``streams/agents.py``), on the real broker and
worker: a user with an anonymous history (linked by an identify), an order and an account is
scored; ``erase`` orders for the user and ``anonymous:<a>`` and an ``erase_link`` for ``a`` are
sent by hand on the namespace's internal topics (as the API's regulation service sends them);
then the stages report on the progress topic, the tombstones are on the contacts and identity
changelogs and on the views topic, the account's changelog record no longer names the user, the
API answers 404, and a worker restarted on an empty disk (its tables restored from the
changelogs) does not bring the contact back."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faust.stores.rocksdb import RocksDBOptions

from kafka_io import clients
from kafka_io.partitioner import partition_for
from schemas.accounts import decode_account
from schemas.regulations import ErasureReport, decode_report, erase_record
from schemas.settings import Settings
from tests.e2e.service import Service, latest_values
from tests.factories import segment_at

NOW = int(time.time() * 1000)
USER, ANON, KEEP, ACCOUNT = "u-erase-1", "a-erase-1", "u-keep-1", "acct-erase"
EMAIL = "erase.me@example.com"
REG = "reg-e2e-1"


def msg(kind: str, mid: str, ts: int, **fields: Any) -> bytes:
    return segment_at(kind, ts, mid, **fields)


def wait(service: Service, check: Callable[[], Any], timeout: float = 90) -> Any:
    return service.wait_for(check, timeout=timeout, interval=0.5)


async def _send_orders(s: Settings) -> None:
    producer = clients.producer(s, acks="all")
    await producer.start()
    try:
        orders = [
            (s.contacts_topic, USER, erase_record(USER, REG)),
            (s.contacts_topic, f"anonymous:{ANON}", erase_record(f"anonymous:{ANON}", REG)),
            (s.identity_topic, ANON, erase_record(ANON, REG, link=True)),
        ]
        for topic, key, value in orders:
            raw = key.encode()
            await producer.send_and_wait(topic, value, key=raw, partition=partition_for(raw, s.partitions))
    finally:
        await producer.stop()


def reports(s: Settings) -> dict[str, ErasureReport]:
    return {
        key.decode(): decode_report(value)
        for key, value in latest_values(s, s.regulation_progress_topic).items()
        if value is not None and key.decode().startswith(f"{REG}/")
    }


def stored_keys(tables: Path, table: str) -> set[bytes]:
    """Every key of a worker's local RocksDB partitions of ``table`` (the worker stopped)."""
    keys: set[bytes] = set()
    options: Any = RocksDBOptions()
    for path in tables.rglob(f"{table}-*.db"):
        db = options.open(path, read_only=True)
        try:
            keys.update(k for k, _ in db.items() if isinstance(k, bytes))
        finally:
            db.close()
    return keys


def test_the_worker_erases_a_person_when_ordered(service: Service) -> None:
    s = service.settings
    t = NOW - 3_600_000
    service.publish(
        [
            ("web", ANON.encode(), msg("page", "e-p1", t, anonymousId=ANON, properties={"path": "/pricing"})),
            ("web", ANON.encode(), msg("page", "e-p2", t + 1000, anonymousId=ANON, properties={"path": "/demo"})),
            (
                "web",
                ANON.encode(),
                msg("identify", "e-id", t + 2000, userId=USER, anonymousId=ANON, traits={"email": EMAIL}),
            ),
            ("web", USER.encode(), msg("group", "e-grp", t + 3000, userId=USER, groupId=ACCOUNT, traits={"name": "X"})),
            (
                "store",
                USER.encode(),
                msg(
                    "track",
                    "e-ord",
                    t + 4000,
                    userId=USER,
                    event="Order Completed",
                    properties={"order_id": "o-e1", "total": 120.0},
                ),
            ),
            ("web", KEEP.encode(), msg("identify", "k-id", t, userId=KEEP, traits={"title": "CEO"})),
            ("web", KEEP.encode(), msg("group", "k-grp", t + 1, userId=KEEP, groupId=ACCOUNT, traits={"name": "X"})),
        ]
    )
    with service.client() as http:

        def scored() -> bool:
            body = http.get(f"/v1/contacts/{USER}")
            account = http.get(f"/v1/accounts/{ACCOUNT}")
            return (
                body.status_code == 200
                and ANON in body.text
                and account.status_code == 200
                and {m["contact_id"] for m in account.json()["members"]} == {USER, KEEP}
            )

        wait(service, scored)
        before = latest_values(s, s.changelog_topic("contacts"))
        assert before.get(USER.encode()) is not None and before.get(f"anonymous:{ANON}".encode()) is not None

        asyncio.run(_send_orders(s))

        # every order is reported, with the ids that lead further
        got = wait(service, lambda: r if len(r := reports(s)) == 3 else None)
        user = got[f"{REG}/{s.ns}/contact/{USER}"]
        assert user.found and user.user_id == USER and ANON in user.anonymous_ids and user.email == EMAIL
        assert user.account_id == ACCOUNT and f"anonymous:{ANON}" in user.merged_ids
        forwarding = got[f"{REG}/{s.ns}/contact/anonymous:{ANON}"]
        assert forwarding.found and forwarding.merged_into == USER
        link = got[f"{REG}/{s.ns}/link/{ANON}"]
        assert link.found and link.linked_contact == USER

        # tombstones: contacts and identity changelogs, the views topic
        def tombstoned() -> bool:
            contacts = latest_values(s, s.changelog_topic("contacts"))
            identity = latest_values(s, s.changelog_topic("identity"))
            views = latest_values(s, s.views_topic)
            return (
                USER.encode() in contacts
                and contacts[USER.encode()] is None
                and contacts.get(f"anonymous:{ANON}".encode(), b"") is None
                and identity.get(ANON.encode(), b"") is None
                and views.get(USER.encode(), b"") is None
                and contacts.get(KEEP.encode()) is not None
            )

        wait(service, tombstoned)

        # the account no longer names the user; the other member stays
        def account_forgot() -> bool:
            raw = latest_values(s, s.changelog_topic("accounts")).get(ACCOUNT.encode())
            return raw is not None and USER.encode() not in raw and set(decode_account(raw).members) == {KEEP}

        wait(service, account_forgot)
        members = wait(
            service,
            lambda: (
                (r := http.get(f"/v1/accounts/{ACCOUNT}")).status_code == 200
                and [m["contact_id"] for m in r.json()["members"]] == [KEEP]
            ),
        )
        assert members
        wait(service, lambda: http.get(f"/v1/contacts/{USER}").status_code == 404)

    # a new machine: the worker's tables come back from the changelogs, without the erased
    assert service.worker is not None
    service.worker.terminate()
    service.worker.wait(timeout=60)
    tables = service.data_dir / "worker"
    shutil.rmtree(tables)
    service.start_worker()
    service.publish([("web", KEEP.encode(), msg("identify", "k-id2", NOW, userId=KEEP, traits={"plan": "restored"}))])
    with service.client() as http:

        def carried_on() -> bool:
            r = http.get(f"/v1/contacts/{KEEP}")
            return r.status_code == 200 and r.json()["traits"].get("plan") == "restored"

        wait(service, carried_on, timeout=120)
        assert http.get(f"/v1/contacts/{USER}").status_code == 404
    service.worker.terminate()
    service.worker.wait(timeout=60)
    contacts = stored_keys(tables, "contacts")
    assert KEEP.encode() in contacts  # restored from the changelog
    assert USER.encode() not in contacts and f"anonymous:{ANON}".encode() not in contacts
    assert ANON.encode() not in stored_keys(tables, "identity")
    service.start_worker()  # the module's service as it was (stopped by the fixture)
