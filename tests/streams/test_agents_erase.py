"""The worker's side of a regulation's erasure (``streams.agents``), on the stage fakes of
``tests/streams/test_agents_isolation.py``: an ``erase`` order on the contacts topic deletes the
contact (table tombstone, views tombstone, account membership, indexes) and is reported on the
progress topic; an ``erase_link`` order on the identity topic deletes the link and is reported.
The same on the real broker: ``tests/e2e/test_erase_worker.py``."""

from __future__ import annotations

import dataclasses

from prometheus_client import REGISTRY

import streams.agents
from schemas.accounts import decode_account, decode_members
from schemas.regulations import ErasureReport, decode_report, erase_record, progress_key
from schemas.state import Envelope, decode_link
from scorestream import IdentityLink
from scorestream.privacy import Erase, contact_key
from tests.factories import HOUR, T0, make_event
from tests.streams.test_agents_isolation import MODEL, SETTINGS, FakeTopic, Worker, internal, record


class ErasingWorker(Worker):
    """The fakes with a progress topic (where the stages report erasures)."""

    def __init__(self) -> None:
        super().__init__()
        self.progress = FakeTopic("progress")
        self.app.agents.clear()
        self.app.state_flushers.clear()
        self.w = dataclasses.replace(self.w, progress_topic=self.progress)
        self.pipeline = streams.agents.register(self.w, SETTINGS, MODEL, self.acks)

    def reports(self) -> list[ErasureReport]:
        for sent in self.progress.sent:
            assert sent.key == progress_key(decode_report(sent.value)).encode()
        return [decode_report(sent.value) for sent in self.progress.sent]

    def accounts_from_feed(self, offset: int) -> None:
        """What the contacts stage sent to the accounts topic, through the accounts stage."""
        batch = [record("t.accounts", offset + n, sent.value) for n, sent in enumerate(self.topics["accounts"].sent)]
        self.topics["accounts"].sent.clear()
        self.run("accounts", batch)


def erasures(stage: str, found: bool) -> float:
    value = REGISTRY.get_sample_value("scorestream_erasures_total", {"stage": stage, "found": str(found).lower()})
    return value or 0.0


def events(user: str, at: int = T0) -> list[Envelope]:
    return [
        Envelope(
            kind="event",
            event=make_event(
                kind="identify",
                event=None,
                user_id=user,
                anonymous_id=f"a-{user}",
                timestamp_ms=at,
                traits={"email": f"{user}@acme.com"},
            ),
        ),
        Envelope(
            kind="event",
            event=make_event(kind="group", event=None, user_id=user, group_id="acme", timestamp_ms=at + HOUR),
        ),
        Envelope(kind="event", event=make_event(kind="page", event=None, user_id=user, timestamp_ms=at + 2 * HOUR)),
        Envelope(
            kind="event",
            event=make_event(
                event="Order Completed",
                user_id=user,
                timestamp_ms=at + 3 * HOUR,
                properties={"order_id": f"o-{user}-{at}", "total": 50.0},
            ),
        ),
    ]


def test_an_erase_order_deletes_the_contact_everywhere_the_worker_keeps_it_and_reports() -> None:
    worker = ErasingWorker()
    worker.run(
        "contacts",
        [
            record("t.contacts", 0, internal("ann", *events("ann"))),
            record("t.contacts", 1, internal("bob", *events("bob"))),
        ],
    )
    worker.accounts_from_feed(0)
    assert set(decode_account(worker.tables["accounts"]["acme"]).members) == {"ann", "bob"}
    customers = worker.pipeline.population.indexes[0].customers
    assert set(customers) == {"ann", "bob"}

    replica = worker.pipeline.replica
    assert replica is not None
    replica.learn("a-ann", IdentityLink("ann", T0, "m-1"))  # as the changelog follower would
    counted = erasures("contacts", True)
    worker.run("contacts", [record("t.contacts", 2, erase_record("ann", "reg-1"))])
    assert erasures("contacts", True) == counted + 1
    worker.pipeline.views.flush_all()  # as before a commit (views sent within the interval wait)

    assert "ann" not in worker.tables["contacts"] and "bob" in worker.tables["contacts"]
    views = [s for s in worker.topics["views"].sent if s.key == b"ann"]
    assert views[-1].value == b""  # a tombstone (the fake records None as empty bytes)
    (report,) = worker.reports()
    assert (report.target, report.key, report.found, report.namespace) == ("contact", "ann", True, SETTINGS.ns)
    assert (report.user_id, report.email, report.account_id) == ("ann", "ann@acme.com", "acme")
    assert report.regulation_id == "reg-1" and report.at_ms > T0
    assert worker.acks.released == worker.acks.held  # the order's record acknowledged after the tombstone
    assert "ann" not in worker.pipeline.timer_index.due
    assert set(customers) == {"bob"}  # the next population summary and CLV fit exclude her
    assert "a-ann" not in replica.links  # ingest no longer routes her anonymous id straight to her
    assert "a-ann" in report.anonymous_ids

    # the account forgets the member entirely: its record names no erased id
    (sent,) = worker.topics["accounts"].sent
    (update,) = decode_members(sent.value).items
    assert update.erased and update.contact_id == "ann"
    worker.accounts_from_feed(10)
    account = decode_account(worker.tables["accounts"]["acme"])
    assert set(account.members) == {"bob"} and contact_key("ann") in account.erased
    assert b"ann" not in worker.tables["accounts"]["acme"].replace(b"ann@", b"")  # no member named ann


def test_a_redelivered_order_finds_nothing_and_events_after_it_start_a_new_contact() -> None:
    worker = ErasingWorker()
    worker.run("contacts", [record("t.contacts", 0, internal("ann", *events("ann")))])
    worker.run("contacts", [record("t.contacts", 1, erase_record("ann", "reg-1"))])
    worker.run("contacts", [record("t.contacts", 1, erase_record("ann", "reg-1"))])  # redelivered
    first, again = worker.reports()
    assert first.found and not again.found and again.user_id is None
    assert "ann" not in worker.tables["contacts"]

    # one inbox: the last events, the order, then new collection: only the new one stays
    later = events("ann", T0 + 30 * 24 * HOUR)
    inbox = internal("ann", *events("ann"), Envelope(kind="erase", erase=Erase("reg-2")), *later)
    worker.run("contacts", [record("t.contacts", 2, inbox)])
    fresh = ErasingWorker()
    fresh.run("contacts", [record("t.contacts", 0, internal("ann", *later))])
    assert worker.tables["contacts"]["ann"] == fresh.tables["contacts"]["ann"]


def test_an_erase_link_order_deletes_the_link_and_reports_its_contact() -> None:
    worker = ErasingWorker()
    identify = make_event(kind="identify", event=None, user_id="ann", anonymous_id="a-1", traits={})
    worker.run("identity", [record("t.identity", 0, internal("a-1", Envelope(kind="event", event=identify)))])
    assert decode_link(worker.tables["identity"]["a-1"]).contact_id == "ann"

    worker.run("identity", [record("t.identity", 1, erase_record("a-1", "reg-1", link=True))])
    assert "a-1" not in worker.tables["identity"]
    (report,) = worker.reports()
    assert (report.target, report.key, report.found, report.linked_contact) == ("link", "a-1", True, "ann")
    assert worker.dead == []

    counted = erasures("identity", False)
    worker.run("identity", [record("t.identity", 2, erase_record("a-1", "reg-1", link=True))])
    assert not worker.reports()[-1].found
    assert erasures("identity", False) == counted + 1

    # an erase_link that reached the contacts topic is parked as empty, not folded
    worker.run("contacts", [record("t.contacts", 0, erase_record("a-1", "reg-1", link=True))])
    assert [s.headers["scorestream.reason"] for s in worker.dead] == ["empty_envelope"]
