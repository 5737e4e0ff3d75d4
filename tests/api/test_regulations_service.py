"""The regulation service's state machine (:mod:`api.regulations`) with fakes at its edges: a
recording writer (the topics), replicas holding views, a fake worker answering erase orders with
reports, a fake archive and deliveries eraser. The same service on the real broker, worker and
API: ``tests/e2e/test_regulations.py``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from api.regulations import Namespace, Person, RegulationService, forgotten, merged_entry, regulation_id
from kafka_io.partitioner import partition_for
from schemas.api_regulations import RegulationIn
from schemas.regulations import (
    MAX_SUBJECTS,
    REGULATION_RECORD_BYTES,
    STORES,
    ErasureReport,
    PrivacyEntry,
    Regulation,
    StoreStatus,
    decode_entry,
    decode_regulation,
    encode_json,
    progress_key,
)
from schemas.settings import Settings
from schemas.state import decode_batch
from scorestream.privacy import SubjectKind, subject_key
from scorestream.view import ContactView

NOW = 1_790_000_000_000
DAY = 86_400_000
SETTINGS = Settings(app_id="app")
PARTITIONS = 4
ANN: list[tuple[SubjectKind, str]] = [("user", "u1"), ("anonymous", "a1"), ("email", "ann@example.com")]


@dataclass
class Store:
    anonymous: dict[str, str] = field(default_factory=dict)
    emails: dict[str, str] = field(default_factory=dict)

    def anonymous_owner(self, anonymous_id: str) -> str | None:
        return self.anonymous.get(anonymous_id)

    def email_owner(self, email: str) -> str | None:
        return self.emails.get(email)


@dataclass
class FakeReplica:
    """Views by contact id, the anonymous-id and email indexes; ``find`` as the API looks up."""

    views: dict[str, ContactView] = field(default_factory=dict)
    store: Store = field(default_factory=Store)

    def add(self, view: ContactView) -> None:
        self.views[view.contact_id] = view
        target = view.merged_into or view.contact_id
        for anon in view.anonymous_ids:
            self.store.anonymous[anon] = target
        if view.email:
            self.store.emails[view.email] = target

    def forget(self, contact_id: str) -> None:
        self.views.pop(contact_id, None)
        for index in (self.store.anonymous, self.store.emails):
            for k in [k for k, v in index.items() if v == contact_id]:
                del index[k]

    def decoded(self, contact_id: str) -> Any:
        view = self.views.get(contact_id)
        return None if view is None else SimpleNamespace(view=view)

    def find(self, ident: str) -> Any:
        for cid in (ident, "anonymous:" + ident, self.store.anonymous.get(ident), self.store.emails.get(ident)):
            if cid is not None and (found := self.decoded(cid)) is not None:
                return found
        return None


@dataclass
class Sent:
    topic: str
    key: str
    value: bytes | None
    partition: int


@dataclass
class FakeWriter:
    sent: list[Sent] = field(default_factory=list)
    on_send: Callable[[Sent], None] | None = None

    async def send(self, topic: str, key: bytes, value: bytes | None, partition: int) -> None:
        record = Sent(topic, key.decode(), value, partition)
        self.sent.append(record)
        if self.on_send is not None:
            self.on_send(record)

    async def send_many(self, records: list[tuple[str, bytes, bytes | None, int]]) -> None:
        for topic, key, value, partition in records:
            await self.send(topic, key, value, partition)

    async def partitions(self, topic: str) -> int:
        return PARTITIONS

    async def close(self) -> None:
        pass

    def on(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]


def person_views() -> list[ContactView]:
    """A user ``u1`` who identified from anonymous id ``a1`` (merged in), with an email."""
    return [
        ContactView(
            contact_id="u1",
            model_version="m",
            user_id="u1",
            anonymous_ids=["a1"],
            email="ann@example.com",
            merged_ids=["anonymous:a1"],
        ),
        ContactView(contact_id="anonymous:a1", model_version="m", anonymous_ids=["a1"], merged_into="u1"),
        ContactView(contact_id="u2", model_version="m", user_id="u2", anonymous_ids=["a2"], email="bob@example.com"),
    ]


@dataclass
class World:
    """The service with its fakes; ``worker`` answers orders (per namespace) unless ``down``."""

    replicas: dict[str, FakeReplica]
    writer: FakeWriter
    service: RegulationService
    archive_calls: list[dict[str, Any]]
    delivery_calls: list[list[str]]
    down: bool = False
    extra: dict[str, ErasureReport] = field(default_factory=dict)  # what a report adds beyond the view
    delay_s: float = 0.0
    answered: int = 0

    def answer(self, sent: Sent) -> None:
        if self.down or not sent.topic.endswith((".contacts", ".identity")):
            return
        ns = sent.topic.rsplit(".", 1)[0]
        item = decode_batch(sent.value or b"").items[0]
        assert item.env.erase is not None
        assert partition_for(sent.key.encode(), PARTITIONS) == sent.partition
        replica = self.replicas[ns]
        reg = item.env.erase.regulation_id
        if item.env.kind == "erase_link":
            owner = replica.store.anonymous.get(sent.key)
            report = ErasureReport(reg, ns, "link", sent.key, owner is not None, NOW, linked_contact=owner)
        else:
            view = replica.views.get(sent.key)
            report = ErasureReport(reg, ns, "contact", sent.key, view is not None, NOW)
            if view is not None:
                report.user_id, report.anonymous_ids, report.email = view.user_id, view.anonymous_ids, view.email
                report.merged_ids, report.merged_into = view.merged_ids, view.merged_into
                replica.forget(sent.key)
            if (more := self.extra.get(sent.key)) is not None:
                report.merged_ids = [*report.merged_ids, *more.merged_ids]
        copy = msgspec.json.decode(encode_json(report), type=ErasureReport)
        if self.delay_s:  # a slow worker: one report every delay_s
            self.answered += 1
            asyncio.get_running_loop().call_later(self.answered * self.delay_s, self.service.apply_report, copy)
        else:
            self.service.apply_report(copy)


def world(namespaces: tuple[str, ...] = ("app",), archive: bool = True, timeout_s: float = 5.0) -> World:
    replicas = {ns: FakeReplica() for ns in namespaces}
    for replica in replicas.values():
        for view in person_views():
            replica.add(view)
    writer = FakeWriter()
    archive_calls: list[dict[str, Any]] = []
    delivery_calls: list[list[str]] = []

    async def erase(store: Any, **ids: Any) -> dict[str, int]:
        assert store == "the archive"
        archive_calls.append(ids)
        return {"events": 7, "score_ledger": 3, "triggers": 0}

    async def get_store() -> Any:
        return "the archive"

    async def forget(settings: Settings, contact_ids: list[str]) -> int:
        delivery_calls.append(contact_ids)
        return 2

    def check(replica: FakeReplica, contact_ids: Any, anonymous_ids: Any, emails: Any, **_: Any) -> bool:
        return all(replica.find(i) is None for i in [*contact_ids, *anonymous_ids, *emails])

    clock = iter(range(NOW, NOW + 10**9, 10))
    service = RegulationService(
        SETTINGS,
        lambda: [Namespace(ns, r) for ns, r in replicas.items()],
        writer=writer,
        archive=get_store if archive else None,
        archive_erase=erase,
        forget_deliveries=forget,
        api_forgets=check,
        clock=lambda: next(clock),
        timeout_s=timeout_s,
        poll_s=0.01,
    )
    service.caught_up.set()
    w = World(replicas, writer, service, archive_calls, delivery_calls)
    writer.on_send = w.answer
    return w


def body(kind: str = "DELETE_ONLY", subject: str = "USER_ID", ids: tuple[str, ...] = ("u1",)) -> RegulationIn:
    return RegulationIn(regulationType=kind, subjectType=subject, subjectIds=list(ids))  # type: ignore[arg-type]


def run(w: World, *bodies: RegulationIn, key: str | None = None) -> list[Any]:
    """Accept each body and wait until the service finished carrying them out."""

    async def go() -> list[Any]:
        out = []
        for b in bodies:
            reg, _ = await w.service.accept(b, key, "ops")
            await w.service.running[reg.id]
            out.append(w.service.regulations[reg.id])
        return out

    return asyncio.run(go())


def entry(w: World, kind: str, value: str) -> PrivacyEntry | None:
    return w.service.entries.get(subject_key(kind, value))  # type: ignore[arg-type]


def test_a_deletion_reaches_done_in_every_store_and_forgets_the_plaintext_ids() -> None:
    w = world(namespaces=("app", "app-shadow"))
    (reg,) = run(w, body())
    assert reg.status == "done", reg.stores
    assert [n for n in STORES if reg.stores[n].status == "done"] == list(STORES)
    assert reg.subject_ids == [] and reg.subject_keys == [subject_key("user", "u1")]
    # every id of the person restricted from the acceptance instant; the other person untouched
    for kind, value in (("user", "u1"), ("anonymous", "a1"), ("email", "ann@example.com")):
        found = entry(w, kind, value)
        assert found == PrivacyEntry(reg.id, None, reg.created_at_ms), (kind, value)
        assert w.service.privacy_list.contact_erased("u1")
    assert entry(w, "user", "u2") is None and entry(w, "anonymous", "a2") is None
    # erase orders for both contacts and the link, in both namespaces, on the right partitions
    for ns in ("app", "app-shadow"):
        assert sorted(s.key for s in w.writer.on(f"{ns}.contacts")) == ["anonymous:a1", "u1"]
        assert [s.key for s in w.writer.on(f"{ns}.identity")] == ["a1"]
        assert w.replicas[ns].find("u1") is None and w.replicas[ns].find("u2") is not None
    assert w.archive_calls == [
        {
            "user_ids": ["u1"],
            "anonymous_ids": ["a1"],
            "emails": ["ann@example.com"],
            "contact_ids": ["u1", "anonymous:a1"],
        }
    ]
    assert w.delivery_calls == [["u1", "anonymous:a1"]]
    assert reg.stores["archive"].count == 10 and "events: 7" in (reg.stores["archive"].detail or "")
    assert reg.stores["deliveries"].count == 2
    assert reg.stores["worker"].count == 4  # per namespace: u1 and anonymous:a1 (the link went with u1)
    assert "expire after 30 days" in (reg.stores["deadletter"].detail or "")
    # the last record written has no plaintext ids; the progress records are tombstoned
    last = decode_regulation(w.writer.on("app.regulations")[-1].value or b"")
    assert last.status == "done" and last.subject_ids == [] and last.finished_at_ms is not None
    tombstones = {s.key for s in w.writer.on("app.regulation-progress") if s.value is None}
    assert f"{reg.id}/app/contact/u1" in tombstones and f"{reg.id}/app-shadow/link/a1" in tombstones
    assert all(s.value is None for s in w.writer.on("app.regulation-progress"))


def test_the_subjects_are_restricted_before_the_answer() -> None:
    w = world()
    w.down = True

    async def go() -> None:
        _, created = await w.service.accept(body(ids=("a1",), subject="ANONYMOUS_ID"), None, "ops")
        assert created
        # acked before accept returned: the record, then the entries of every id the replica knows
        assert w.writer.sent[0].topic == "app.regulations"
        assert decode_regulation(w.writer.sent[0].value or b"").subject_ids == ["a1"]
        keys = {s.key for s in w.writer.on("app.privacy")}
        assert keys == {subject_key(k, v) for k, v in ANN}
        assert w.service.privacy_list.get(subject_key("user", "u1")) is not None
        await w.service.stop()

    asyncio.run(go())


def test_a_report_naming_more_ids_gets_them_restricted_and_erased() -> None:
    w = world()
    w.replicas["app"].views["u1"].merged_ids.append("anonymous:old")  # not in any index
    w.extra["anonymous:a1"] = ErasureReport("", "app", "contact", "anonymous:a1", True, NOW, merged_ids=["u9"])
    (reg,) = run(w, body())
    assert reg.status == "done"
    assert entry(w, "anonymous", "old") is not None and entry(w, "user", "u9") is not None
    contacts = {s.key for s in w.writer.on("app.contacts")}
    assert contacts == {"u1", "anonymous:a1", "anonymous:old", "u9"}
    assert {s.key for s in w.writer.on("app.identity")} == {"a1", "old"}


def test_an_email_finds_its_contact() -> None:
    w = world()
    (reg,) = run(w, body(subject="EMAIL", ids=("  Ann@Example.com ",)))
    assert reg.status == "done"
    assert {s.key for s in w.writer.on("app.contacts")} == {"u1", "anonymous:a1"}
    assert entry(w, "email", "ann@example.com") is not None


def test_a_worker_that_does_not_answer_fails_the_regulation_and_a_retry_finishes_it() -> None:
    w = world(timeout_s=0.2)
    w.down = True
    (reg,) = run(w, body())
    assert reg.status == "failed"
    assert reg.stores["privacy_list"].status == "done"
    assert reg.stores["worker"].status == "failed"
    assert "not reported, none for 0.2 s" in (reg.stores["worker"].detail or "")
    assert reg.stores["archive"].status == "pending" and w.archive_calls == []
    assert reg.subject_ids == ["u1"]  # kept to be carried out again
    assert w.service._due(reg, (reg.finished_at_ms or 0) + 61_000, first=False)
    w.down = False
    w.writer.sent.clear()

    async def again() -> Any:
        return await w.service.carry_out(reg.id)

    done = asyncio.run(again())
    assert done.status == "done" and done.subject_ids == []
    assert all(s.status == "done" for s in done.stores.values())


def test_no_archive_is_done_with_no_archive() -> None:
    w = world(archive=False)
    (reg,) = run(w, body())
    assert reg.status == "done"
    assert reg.stores["archive"].detail == "no archive"


def test_suppress_then_unsuppress_lifts_the_suppression_of_every_id() -> None:
    w = world()
    w.down = True  # suppression sends no orders
    suppress, unsuppress = run(w, body("SUPPRESS"), body("UNSUPPRESS"))
    assert suppress.status == "done" and unsuppress.status == "done"
    assert [n for n, s in suppress.stores.items() if s.detail != "not applicable"] == ["privacy_list"]
    assert w.writer.on("app.contacts") == []
    tombstoned = [s.key for s in w.writer.on("app.privacy") if s.value is None]
    assert sorted(tombstoned) == sorted(subject_key(k, v) for k, v in ANN)
    assert len(w.service.privacy_list) == 0


def test_unsuppress_keeps_the_erased_past() -> None:
    w = world()
    deleted, unsuppress = run(w, body("SUPPRESS_WITH_DELETE"), body("UNSUPPRESS"))
    assert deleted.status == "done" and unsuppress.status == "done"
    found = entry(w, "user", "u1")
    assert found is not None and found.suppressed_from_ms is None
    assert found.erased_before_ms == deleted.created_at_ms
    assert w.service.privacy_list.contact_erased("u1")


def test_the_same_request_within_a_day_is_the_same_regulation() -> None:
    w = world()
    w.down = True

    async def go() -> list[str]:
        ids = []
        for b, key in (
            (body(ids=("u1", "u2", "u1")), None),
            (body(ids=("u2", "u1")), None),  # same ids, another order: the same
            (body(ids=("u2", "u1")), "k1"),  # another Idempotency-Key: another
            (body("SUPPRESS", ids=("u2", "u1")), None),  # another type: another
        ):
            reg, _ = await w.service.accept(b, key, "ops")
            ids.append(reg.id)
        await w.service.stop()
        return ids

    ids = asyncio.run(go())
    assert ids[0] == ids[1] and len(set(ids)) == 3
    assert len({s.key for s in w.writer.on("app.regulations")}) == 3
    # the 24-hour rule: the day after, still the same until 24 h after the first
    reg = w.service.regulations[ids[0]]
    b = body(ids=("u1", "u2"))
    assert w.service.find_existing(b, None, reg.created_at_ms + DAY - 1) is reg
    assert w.service.find_existing(b, None, reg.created_at_ms + DAY) is None


def test_regulation_ids_depend_on_every_part() -> None:
    base = regulation_id("DELETE_ONLY", "USER_ID", ["a", "b"], None, 1)
    assert base == regulation_id("DELETE_ONLY", "USER_ID", ["b", "a", "a"], None, 1)
    others = [
        regulation_id("SUPPRESS", "USER_ID", ["a", "b"], None, 1),
        regulation_id("DELETE_ONLY", "EMAIL", ["a", "b"], None, 1),
        regulation_id("DELETE_ONLY", "USER_ID", ["a"], None, 1),
        regulation_id("DELETE_ONLY", "USER_ID", ["a", "b"], "k", 1),
        regulation_id("DELETE_ONLY", "USER_ID", ["a", "b"], None, 2),
        regulation_id("DELETE_ONLY", "USER_ID", ["ab"], None, 1),
    ]
    assert base not in others and len(set(others)) == len(others)


def test_entries_merge_the_earliest_suppression_and_the_latest_erasure() -> None:
    old = PrivacyEntry("r1", suppressed_from_ms=100, erased_before_ms=100)
    assert merged_entry(old, PrivacyEntry("r2", None, 200)) == PrivacyEntry("r2", 100, 200)
    assert merged_entry(old, PrivacyEntry("r2", 300, None)) == PrivacyEntry("r2", 100, 100)
    assert merged_entry(None, PrivacyEntry("r2", 300, None)) == PrivacyEntry("r2", 300, None)


def test_the_followed_topics_fill_the_service() -> None:
    w = world()
    s = w.service
    rec = SimpleNamespace
    key = subject_key("user", "x")
    s.apply_record(rec(topic="app.privacy", key=key.encode(), value=encode_json(PrivacyEntry("r", 5, None))))
    assert s.privacy_list.get(key) is not None and decode_entry(encode_json(s.entries[key])).suppressed_from_ms == 5
    s.apply_record(rec(topic="app.privacy", key=key.encode(), value=None))
    assert s.privacy_list.get(key) is None
    found = ErasureReport("r", "app", "contact", "u1", True, NOW, anonymous_ids=["a1"])
    again = ErasureReport("r", "app", "contact", "u1", False, NOW + 1)  # a redelivered order found nothing
    for report in (found, again):
        s.apply_record(
            rec(topic="app.regulation-progress", key=progress_key(report).encode(), value=encode_json(report))
        )
    assert s.reports["r"][("app", "contact", "u1")].anonymous_ids == ["a1"]


def test_forgotten_lists_what_a_replica_still_finds() -> None:
    w = world()
    person = Person()
    person.add("user", "u1")
    person.add("email", "bob@example.com")
    left = forgotten([Namespace("app", w.replicas["app"])], person)
    assert left == [subject_key("user", "u1"), subject_key("email", "bob@example.com")]


@pytest.mark.parametrize("kind", ["DELETE_ONLY", "SUPPRESS"])
def test_finishing_audits_without_personal_data(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    w = world()
    with caplog.at_level("INFO", logger="scorestream.audit"):
        (reg,) = run(w, body(kind))
    lines = [r for r in caplog.records if r.name == "scorestream.audit"]
    assert [r.audit for r in lines] == ["regulation_done"]  # type: ignore[attr-defined]
    line = lines[0].__dict__
    assert line["regulation_id"] == reg.id and line["key_name"] == "ops" and line["subject_count"] == 1
    assert line["subject_keys"] == [subject_key("user", "u1")]
    assert "u1" not in repr({k: v for k, v in line.items() if k not in ("msg", "args")}).replace(reg.id, "")


def test_an_archive_this_process_cannot_reach_fails_the_archive_store_at_once() -> None:
    from api.archive import AnalyticsUnavailable, Archive

    def elsewhere() -> None:
        raise AnalyticsUnavailable("its embedded chDB is opened by another process")

    w = world()
    w.service.archive = Archive(None, 2, elsewhere)
    (reg,) = run(w, body())
    assert reg.status == "failed" and reg.stores["archive"].status == "failed"
    assert reg.stores["archive"].detail == "the archive: its embedded chDB is opened by another process"
    assert reg.stores["deliveries"].status == "done"  # the stores after it do not wait for it
    assert reg.subject_ids == ["u1"]

    # carried out again once the archive is reachable: only the failed store runs again
    async def store() -> str:
        return "the archive"

    w.service.archive = store
    done = asyncio.run(w.service.carry_out(reg.id))
    assert done.status == "done" and done.stores["archive"].count == 10
    assert w.delivery_calls == [["u1", "anonymous:a1"]]  # done before: not asked again


def test_unfinished_regulations_are_resumed_by_one_process_of_the_host(tmp_path: Any) -> None:
    """A regulation left pending (its process died) is carried out by the process that holds the
    host's resume lock; another process on the same data directory leaves it alone."""
    first, second = world(), world()
    for w in (first, second):
        w.service.settings = SETTINGS.model_copy(update={"data_dir": tmp_path})
        w.service.retry_s = 3600

    async def go() -> None:
        reg, _ = await first.service.accept(body(), None, "ops")
        await first.service.running[reg.id]
        # a copy of it as the topic would give it to another process, before anything ran
        pending = decode_regulation(first.writer.on("app.regulations")[0].value or b"")
        assert pending.status == "pending"
        first.writer.sent.clear()
        first.service.regulations = {reg.id: pending}
        second.service.regulations = {reg.id: decode_regulation(encode_json(pending))}
        loops = [asyncio.create_task(w.service._resume_loop()) for w in (first, second)]
        for _ in range(200):
            await asyncio.sleep(0.01)
            if first.service.regulations[reg.id].status == "done":
                break
        for loop in loops:
            loop.cancel()
        assert first.service.regulations[reg.id].status == "done"
        assert second.service.regulations[reg.id].status == "pending" and second.writer.sent == []
        await first.service.stop()
        assert second.service._resumer()  # the lock is free again once its holder stopped
        await second.service.stop()

    asyncio.run(go())


def test_a_regulation_of_many_people_writes_in_batches() -> None:
    """MAX_SUBJECTS user ids: their entries and orders go out in a few batches (one round trip each, not
    one per record), and the service's own work stays small (the figure is printed)."""
    w = world()
    batches: list[int] = []
    plain_send = w.writer.send_many

    async def counted(records: list[tuple[str, bytes, bytes | None, int]]) -> None:
        batches.append(len(records))
        await plain_send(records)

    w.writer.send_many = counted  # type: ignore[method-assign]
    ids = tuple(f"bulk-{i}" for i in range(MAX_SUBJECTS))
    started = time.perf_counter()
    (reg,) = run(w, body(ids=ids))
    took = time.perf_counter() - started
    print(f"\n{MAX_SUBJECTS} people through the service's state machine (fakes at the edges): {took:.2f} s")
    assert reg.status == "done" and reg.stores["privacy_list"].count == MAX_SUBJECTS
    assert len(w.writer.on("app.privacy")) == MAX_SUBJECTS and len(w.writer.on("app.contacts")) == MAX_SUBJECTS
    assert len(batches) <= 5 and max(batches) == MAX_SUBJECTS  # entries, orders, progress tombstones


def test_a_slow_worker_that_progresses_is_waited_for_and_its_progress_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timeout counts from the last report, not from the start: three reports 0.25 s apart
    take longer than a 0.4 s timeout and still finish; the record shows how many are in."""
    monkeypatch.setattr("api.regulations.PROGRESS_S", 0.0)
    w = world(timeout_s=0.4)
    w.delay_s = 0.25
    (reg,) = run(w, body())
    assert reg.status == "done", reg.stores["worker"]
    details = [decode_regulation(s.value or b"").stores["worker"].detail for s in w.writer.on("app.regulations")]
    assert "0 of 3 erase orders reported" in details and "2 of 3 erase orders reported" in details


def test_the_largest_regulation_record_fits_the_regulations_topic() -> None:
    """MAX_SUBJECTS people with 64 anonymous ids, an email and a user id each: the record holding
    every key it restricted stays under the topic's max.message.bytes (REGULATION_RECORD_BYTES)."""
    people = [f"person-{i:04d}-{'x' * 480}" for i in range(MAX_SUBJECTS)]
    keys = [subject_key("anonymous", f"{p}-{a}") for p in people for a in range(64)]
    keys += [subject_key("user", p) for p in people] + [subject_key("email", f"{p}@example.com") for p in people]
    record = Regulation(
        id="reg_x",
        regulation_type="SUPPRESS_WITH_DELETE",
        subject_type="USER_ID",
        created_at_ms=0,
        subject_ids=people,
        subject_keys=[subject_key("user", p) for p in people],
        restricted_keys=keys,
        stores={name: StoreStatus(status="running", detail="x" * 200) for name in STORES},
    )
    assert 1024 * 1024 < len(encode_json(record)) < REGULATION_RECORD_BYTES
