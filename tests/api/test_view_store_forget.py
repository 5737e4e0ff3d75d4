"""An erased contact's views tombstone makes the API forget it (issue 18): the view and every index
entry still pointing to it (anonymous ids it lists and ones it dropped, an email it changed, the
ids of contacts merged into it) leave the store, in memory and in RocksDB, for the writer, a
reader of its store and a writer restarted on it; an entry another contact took since stays. Then
no route finds them: ``GET /v1/contacts/{id}`` (direct path and FastAPI's), batchGet, and
:func:`api.erasure.api_forgets` says so. The account route lists what the accounts changelog's
latest record names."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from api.account_replica import AccountReplica
from api.app import create_api
from api.erasure import api_forgets
from api.replica import Replica, WorkerStatus
from api.view_store import ANONYMOUS, EMAIL, RocksViewStore, ViewStore
from kafka_io.clients import KafkaConnection
from schemas.accounts import encode as encode_account
from schemas.model_file import load_model
from schemas.settings import Settings
from scorestream import apply_events
from scorestream.accounts import MemberUpdate, apply_member_updates
from tests.api.view_bytes import view_bytes
from tests.factories import T0, make_event

KEY = "unit-test-key-0123456789"
MODEL = load_model()
AUTH = {"Authorization": f"Bearer {KEY}"}


# -- the store ---------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ViewStore]:
    if request.param == "memory":
        yield ViewStore()
        return
    opened = RocksViewStore.open(tmp_path / "api" / "ns")
    yield opened
    opened.close()


def fill(store: ViewStore) -> None:
    """c-1 wrote a-1, a-2, a-old (since dropped from its view) and two emails (it changed); a
    forwarding record's id a-9 points to it; c-2 took a-2 later; c-3 is someone else."""
    store.put("c-1", b"view-1")
    for anon in ("a-1", "a-2", "a-old"):
        store.link_anonymous(anon, "c-1")
    store.link_email("old@acme.com", "c-1")
    store.commit()
    store.link_email("ann@acme.com", "c-1")
    store.link_anonymous("a-9", "c-1", replace=False)
    store.put("c-2", b"view-2")
    store.link_anonymous("a-2", "c-2")
    store.put("c-3", b"view-3")
    store.link_anonymous("a-3", "c-3")
    store.link_email("bob@acme.com", "c-3")
    store.commit()


def assert_forgotten(store: ViewStore) -> None:
    assert store.get("c-1") is None and "c-1" not in store
    assert [store.anonymous_owner(a) for a in ("a-1", "a-old", "a-9")] == [None, None, None]
    assert store.email_owner("ann@acme.com") is None and store.email_owner("old@acme.com") is None
    assert store.owned("c-1") == set()
    # what others hold stays
    assert store.anonymous_owner("a-2") == "c-2"
    assert (store.get("c-3"), store.anonymous_owner("a-3"), store.email_owner("bob@acme.com")) == (
        b"view-3",
        "c-3",
        "c-3",
    )
    assert store.owned("c-3") == {(ANONYMOUS, "a-3"), (EMAIL, "bob@acme.com")}
    assert len(store) == 2


def test_forget_removes_the_view_and_every_index_entry_pointing_to_it(store: ViewStore) -> None:
    fill(store)
    assert store.owned("c-1") == {
        (ANONYMOUS, "a-1"),
        (ANONYMOUS, "a-2"),
        (ANONYMOUS, "a-old"),
        (ANONYMOUS, "a-9"),
        (EMAIL, "old@acme.com"),
        (EMAIL, "ann@acme.com"),
    }
    assert store.forget("c-1") == 5  # a-2 is c-2's now
    store.commit()
    assert_forgotten(store)
    assert store.forget("c-1") == 0  # a second tombstone finds nothing


def test_forget_in_the_batch_that_wrote_the_entries(store: ViewStore) -> None:
    store.put("c-1", b"v")
    store.link_anonymous("a-1", "c-1")
    store.link_email("ann@acme.com", "c-1")
    store.forget("c-1")
    store.put("c-2", b"w")
    store.link_anonymous("a-2", "c-2")
    store.commit()
    assert (store.get("c-1"), store.anonymous_owner("a-1"), store.email_owner("ann@acme.com")) == (None, None, None)
    assert store.anonymous_owner("a-2") == "c-2" and len(store) == 1
    # the contact comes back later (new collection): indexed again
    store.put("c-1", b"v2")
    store.link_anonymous("a-1", "c-1")
    store.commit()
    assert store.anonymous_owner("a-1") == "c-1" and store.owned("c-1") == {(ANONYMOUS, "a-1")}


def test_entries_of_a_store_written_before_the_listing_are_forgotten_from_the_last_view(store: ViewStore) -> None:
    store.put("c-1", b"v")
    store.commit()
    # as an older version wrote them: index entries, no listing under their owner
    if isinstance(store, RocksViewStore):
        store._families[ANONYMOUS][b"a-1"] = b"c-1"
        store._families[EMAIL][b"ann@acme.com"] = b"c-1"
    else:
        store._anonymous["a-1"] = "c-1"
        store._email["ann@acme.com"] = "c-1"
    assert store.owned("c-1") == set()
    assert store.forget("c-1", [(ANONYMOUS, "a-1"), (EMAIL, "ann@acme.com")]) == 2
    store.commit()
    assert store.anonymous_owner("a-1") is None and store.email_owner("ann@acme.com") is None


def test_gone_from_disk_for_a_reader_and_a_restarted_writer(tmp_path: Path) -> None:
    directory = tmp_path / "api" / "ns"
    writer = RocksViewStore.open(directory)
    reader = RocksViewStore.open(directory)
    assert reader.role == "secondary"
    fill(writer)
    reader.catch_up()
    assert reader.anonymous_owner("a-1") == "c-1" and reader.email_owner("ann@acme.com") == "c-1"
    writer.forget("c-1")
    writer.commit()
    reader.catch_up()
    assert_forgotten(reader)
    reader.close()
    writer.close()
    again = RocksViewStore.open(directory)
    try:
        assert again.role == "writer"
        assert_forgotten(again)
    finally:
        again.close()


# -- the replica and the routes ----------------------------------------------------------------


def person_replica(store: ViewStore | None = None) -> Replica:
    """u-1 (anonymous ids a-1 and a-2, email Ann@Acme.com; u-9 merged into it), u-2 someone else."""
    r = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    if store is not None:
        r.store = store
    identify = make_event(kind="identify", user_id="u-1", anonymous_id="a-1", traits={"email": "Ann@Acme.com"})
    page = make_event(kind="page", event=None, channel="web", user_id="u-1", anonymous_id="a-2", path="/pricing")
    r.apply(b"u-1", view_bytes(apply_events(None, "u-1", [identify, page], MODEL), MODEL))
    merged = apply_events(None, "u-9", [make_event(user_id="u-9", anonymous_id="a-9")], MODEL)
    merged.merged_into = "u-1"
    r.apply(b"u-9", view_bytes(merged, MODEL))
    other = make_event(kind="identify", user_id="u-2", anonymous_id="b-1", traits={"email": "bob@acme.com"})
    r.apply(b"u-2", view_bytes(apply_events(None, "u-2", [other], MODEL), MODEL))
    r.store.commit()
    r.caught_up.set()
    r.workers["w1"] = WorkerStatus(state="ready", model=MODEL.version, at_ms=T0)
    return r


PERSON = ["u-1", "a-1", "a-2", "ann@acme.com", " ANN@acme.com", "u-9", "a-9", "anonymous:a-1"]


def erase(r: Replica) -> None:
    r.apply(b"u-1", None)
    r.apply(b"u-9", None)
    r.store.commit()


def apps(replica: Replica) -> list[FastAPI]:
    settings = Settings(api_keys=KEY)  # type: ignore[arg-type]
    return [
        create_api(settings, model=MODEL, replica=replica, clock=lambda: T0 + 1, fast_path=fast)
        for fast in (True, False)
    ]


def statuses(app: FastAPI, idents: list[str]) -> tuple[list[int], dict[str, object]]:
    async def go() -> tuple[list[int], dict[str, object]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            codes = [(await client.get(f"/v1/contacts/{i}", headers=AUTH)).status_code for i in idents]
            batch = await client.post("/v1/contacts:batchGet", json={"ids": idents}, headers=AUTH)
            return codes, batch.json()

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_after_the_tombstone_no_route_finds_the_person(kind: str, tmp_path: Path) -> None:
    store = None if kind == "memory" else RocksViewStore.open(tmp_path / "api" / "ns")
    r = person_replica(store)
    try:
        found = [(i, r.find(i)) for i in PERSON if i != "anonymous:a-1"]
        assert all(f is not None and f.view.contact_id == "u-1" for _, f in found), found
        assert not api_forgets(r, ["u-1", "u-9"], ["a-1", "a-2", "a-9"], ["Ann@Acme.com"])
        for app in apps(r):
            codes, batch = statuses(app, [i for i in PERSON if i != "anonymous:a-1"])
            assert codes == [200] * 7
            assert batch["not_found"] == []
        erase(r)
        assert [r.find(i) for i in PERSON] == [None] * len(PERSON)
        assert api_forgets(r, ["u-1", "u-9"], ["a-1", "a-2", "a-9"], ["Ann@Acme.com"])
        for app in apps(r):
            codes, batch = statuses(app, PERSON)
            assert codes == [404] * len(PERSON)
            assert batch["contacts"] == [] and batch["not_found"] == PERSON
        # the other person is untouched
        other = r.find("bob@acme.com")
        assert other is not None and other.view.contact_id == "u-2" and r.find("b-1") is not None
        # gone from the store, not only unreachable (an index entry of a gone view finds nothing)
        assert r.store.owned("u-1") == set() and r.store.anonymous_owner("a-1") is None
        assert r.store.email_owner("ann@acme.com") is None and r.store.anonymous_owner("a-9") is None
        assert r.store.anonymous_owner("a-2") is None
    finally:
        if store is not None:
            store.close()


def test_a_reader_process_forgets_too_and_drops_its_decoded_copy(tmp_path: Path) -> None:
    directory = tmp_path / "api" / "ns"
    writer = person_replica(RocksViewStore.open(directory))
    reader = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    reader.store = RocksViewStore.open(directory)
    try:
        reader.store.catch_up()
        seen = reader.find("a-1")
        assert seen is not None and "u-1" in reader._decoded
        erase(writer)
        reader.store.catch_up()
        assert [reader.find(i) for i in PERSON] == [None] * len(PERSON)
        assert "u-1" not in reader._decoded  # the decoded view is not kept in memory either
    finally:
        reader.store.close()
        writer.store.close()


def test_an_email_another_contact_took_stays_with_it() -> None:
    r = person_replica()
    took = make_event(kind="identify", user_id="u-3", traits={"email": "ann@acme.com"})
    r.apply(b"u-3", view_bytes(apply_events(None, "u-3", [took], MODEL), MODEL))
    erase(r)
    found = r.find("ann@acme.com")
    assert found is not None and found.view.contact_id == "u-3"
    # u-1's own ids are gone; the email, now someone else's, is not "the erased person" for REG
    assert r.find("a-1") is None
    assert not api_forgets(r, ["u-1"], ["a-1"], ["ann@acme.com"])


def test_api_forgets_waits_for_the_replica_and_tells_new_collection_apart() -> None:
    r = person_replica()
    r.caught_up.clear()
    erase(r)
    assert not api_forgets(r, ["u-1"], [], [])  # not read the views yet: cannot say
    r.caught_up.set()
    assert api_forgets(r, ["u-1"], [], [])
    # the person comes back after a DELETE_ONLY accepted at T0 + 1000: new collection
    later = make_event(user_id="u-1", timestamp_ms=T0 + 5000)
    r.apply(b"u-1", view_bytes(apply_events(None, "u-1", [later], MODEL), MODEL))
    assert not api_forgets(r, ["u-1"], [], [])
    assert api_forgets(r, ["u-1"], [], [], erased_before_ms=T0 + 1000)
    assert not api_forgets(r, ["u-1"], [], [], erased_before_ms=T0 + 9000)


# -- the account route ------------------------------------------------------------------------


def member(contact: str, role: str) -> MemberUpdate:
    return MemberUpdate(
        contact_id=contact,
        account_id="acme",
        at_ms=T0,
        evidence=1,
        role=role,
        score=20.0,
        fit=12.0,
        stage="lead",
        traits={"industry": "retail"},
        traits_at=(T0, "g1"),
    )


def test_the_account_route_lists_the_members_its_latest_record_names() -> None:
    """The account replica follows the accounts changelog: once the account stage's record no
    longer names an erased member (ERASE's account stage), the route does not list it."""
    accounts = AccountReplica(kafka=KafkaConnection("127.0.0.1:1"), changelog_topic="a")
    both, _ = apply_member_updates(None, "acme", [member("ceo", "decision_maker"), member("u-1", "specifier")], MODEL)
    accounts.apply(b"acme", encode_account(both))
    accounts.caught_up.set()
    settings = Settings(api_keys=KEY)  # type: ignore[arg-type]
    app = create_api(settings, model=MODEL, replica=person_replica(), clock=lambda: T0 + 1, accounts=accounts)

    async def members() -> list[str]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            r = await client.get("/v1/accounts/acme", headers=AUTH)
            assert r.status_code == 200
            return [m["contact_id"] for m in r.json()["members"]]

    assert asyncio.run(members()) == ["ceo", "u-1"]
    without, _ = apply_member_updates(None, "acme", [member("ceo", "decision_maker")], MODEL)
    accounts.apply(b"acme", encode_account(without))
    assert asyncio.run(members()) == ["ceo"]
    assert b"u-1" not in accounts.states["acme"]
