"""The analytics sink follows the models registry's active namespace, on the real broker into real
chDB: contacts and accounts changelogs of two namespaces, A (the app id, the configured model) and
B (registered with the bundled b2c model); the sink archives A's, switches to B's when B is
promoted (B read from its beginning, scored with B's model, ``contacts`` then holding B's rows
only), restarts on B where it left off, and reads A again from its beginning when A is promoted
back. Every check compares ClickHouse with rows computed here from the records written."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from analytics import reports
from analytics.rows import LEDGER_COLUMNS, Ledger, read_contact
from schemas.accounts import encode as encode_account
from schemas.model_file import MODELS, load_model
from schemas.registry import ACTIVE_KEY, NAMESPACE_PREFIX, Promotion, encode_record, namespace_record, promoted
from schemas.settings import Settings
from schemas.state import encode as encode_state
from scorestream import ContactState, Model
from scorestream.accounts import apply_member_updates, member_update
from scorestream.fold import step
from sink.service import Sink
from tests.factories import DAY, DEFAULT_MODEL, HOUR, T0, make_event

MODEL_A = DEFAULT_MODEL
MODEL_B = load_model(MODELS / "b2c.yaml")
CONTACTS = [f"user-{i}" for i in range(5)]  # B never saw the last one
PARTITIONS = 2


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class Namespace:
    """One namespace's changelogs as written here, and what the archive must hold of them."""

    def __init__(self, settings: Settings, name: str, model: Model) -> None:
        ns = settings.in_namespace(name)
        self.name, self.model = name, model
        self.contacts_topic, self.accounts_topic = ns.changelog_topic("contacts"), ns.changelog_topic("accounts")
        self.states: dict[str, ContactState | None] = {}
        self.records: list[Rec] = []  # the contacts changelog, in order

    def fold(self, contact: str, *events: Any) -> bytes:
        state, *_ = step(self.states.get(contact), contact, list(events), self.model)
        assert state is not None
        self.states[contact] = state
        return encode_state(state)

    def latest(self) -> dict[str, tuple[int, int, str]]:
        """contact -> (partition, offset, model version) of its last record: the ``contacts`` rows."""
        return {r.key.decode(): (r.partition, r.offset, self.model.version) for r in self.records if r.key}

    def ledger(self) -> set[tuple[Any, ...]]:
        """The ``score_ledger`` rows of the records (contact, at, cause, engagement, topic, partition, offset)."""
        ledger, out = Ledger(self.model), set()
        changes = [read_contact(r, self.model) for r in self.records]
        ledger.prime(ledger.unknown(changes), {})
        for row in ledger.rows(changes):
            d = dict(zip(LEDGER_COLUMNS, row, strict=True))
            out.add(
                (
                    d["contact_id"],
                    d["at"],
                    d["cause"],
                    round(d["engagement"], 6),
                    d["kafka_topic"],
                    d["kafka_partition"],
                    d["kafka_offset"],
                )
            )
        return out


async def until(check: Callable[[], Awaitable[Any]], what: str, within: float = 60) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {within} s; last: {last!r}")


def test_the_sink_follows_promotions(kafka_bootstrap: str, chdb_url: str) -> None:
    app = f"promo{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = {f"topic_{t}": f"{app}.{t}" for t in ("web", "email", "store", "deadletter", "triggers")}
    values.update(app_id=app, kafka_bootstrap=kafka_bootstrap, clickhouse_url=chdb_url, sink_batch_s=0.2)
    settings = Settings(**values)
    a = Namespace(settings, app, MODEL_A)
    b = Namespace(settings, f"{app}-b", MODEL_B)
    asyncio.run(scenario(settings, a, b))


async def scenario(settings: Settings, a: Namespace, b: Namespace) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, PARTITIONS, 1) for ns in (a, b) for t in (ns.contacts_topic, ns.accounts_topic)]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        w = Writer(settings, producer)
        await write_both(w, a, b)
        to_b, now, archived_a = await promote_b(w, a, b)
        await restart_and_promote_a_back(w, a, b, to_b, now, archived_a)
    finally:
        await producer.stop()


class Writer:
    """Writes the changelog and registry records of the scenario."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer) -> None:
        self.settings, self.producer = settings, producer

    async def contact(self, ns: Namespace, user: str, *events: Any) -> None:
        value = ns.fold(user, *events)
        meta = await self.producer.send_and_wait(ns.contacts_topic, value, key=user.encode())
        ns.records.append(Rec(meta.topic, meta.partition, meta.offset, meta.timestamp, user.encode(), value))

    async def registry(self, key: str, value: bytes) -> None:
        await self.producer.send_and_wait(self.settings.models_topic, value, key=key.encode(), partition=0)


def events(user: str, step_no: int) -> list[Any]:
    t = T0 + step_no * HOUR
    out = [
        make_event(user_id=user, kind="page", event=None, path="/pricing", timestamp_ms=t),
        make_event(user_id=user, event="Demo Requested", timestamp_ms=t + 1),
    ]
    if user == CONTACTS[0] and step_no == 0:
        traits = {"industry": "software", "employees": 300}
        out.append(
            make_event(user_id=user, kind="group", event=None, group_id="acct-1", traits=traits, timestamp_ms=t + 2)
        )
    return out


async def write_both(w: Writer, a: Namespace, b: Namespace) -> None:
    # A ran three steps for every contact; B two, the first in another order (so a contact's
    # offsets in B are sometimes above, sometimes below its offsets in A), the second with the
    # rest of the same events
    for step_no in range(3):
        for user in CONTACTS:
            await w.contact(a, user, *events(user, step_no))
    for user in reversed(CONTACTS[:-1]):
        await w.contact(b, user, events(user, 0)[0])
    for user in CONTACTS[:-1]:
        await w.contact(b, user, *events(user, 0)[1:], *events(user, 1), *events(user, 2))
    for ns in (a, b):
        ceo = ns.states[CONTACTS[0]]
        assert ceo is not None
        update = member_update(ceo, ns.model)
        assert update is not None
        account, _ = apply_member_updates(None, "acct-1", [update], ns.model)
        await w.producer.send_and_wait(ns.accounts_topic, encode_account(account), key=account.account_id.encode())
    assert not {r[1:] for r in a.ledger()} & {r[1:] for r in b.ledger()}  # no sorting-key collisions


async def promote_b(w: Writer, a: Namespace, b: Namespace) -> tuple[Promotion, int, set[tuple[Any, ...]]]:
    """A archived, then B promoted; the promotion, its time and A's rows archived."""
    # no registry topic yet: namespace A
    sink = Sink(w.settings, registry_poll_s=0.3)
    await sink.start()
    try:
        await until(lambda: archived(sink, a.latest(), a.ledger()), "A archived")
        assert sink.stats.namespace == a.name and sink.stats.switches == 0

        # B is registered and promoted: the sink switches, B is read from its beginning
        now = int(time.time() * 1000)
        await w.registry(NAMESPACE_PREFIX + b.name, encode_record(namespace_record(b.name, MODELS / "b2c.yaml", now)))
        to_b = Promotion(namespace=b.name, from_ms=now + 5000, promoted_ms=now, previous=a.name)
        await w.registry(ACTIVE_KEY, encode_record(promoted([], to_b)))
        await until(lambda: archived(sink, b.latest(), a.ledger() | b.ledger()), "B archived")
        assert sink.stats.namespace == b.name and sink.stats.switches == 1
        firsts = await sink.store.query(
            f"SELECT DISTINCT cause FROM score_ledger FINAL WHERE kafka_topic = '{b.contacts_topic}'"
        )
        assert ("first",) in firsts  # compared with B's rows only, not with A's
        accounts = await sink.store.query("SELECT DISTINCT kafka_topic, model_version FROM account_changes FINAL")
        assert (b.accounts_topic, MODEL_B.version) in accounts
        # a contact's history is of one model: B's (active) by default, A's when named
        for ns, named in ((b, None), (a, MODEL_A.version)):
            h = await reports.history(sink.store, MODEL_B, CONTACTS[0], None, T0 + DAY, T0 + DAY, 1000, named)
            expected = sorted(r[1] for r in ns.ledger() if r[0] == CONTACTS[0])
            assert sorted(int(r.at.timestamp() * 1000) for r in h.ledger) == expected
            assert {r.model_version for r in h.ledger} == {ns.model.version}

        # both keep running: only B's changes are archived
        archived_a = a.ledger()
        await w.contact(b, CONTACTS[0], *events(CONTACTS[0], 5))
        await w.contact(a, CONTACTS[0], *events(CONTACTS[0], 5))
        await until(lambda: archived(sink, b.latest(), archived_a | b.ledger()), "B's new record")
    finally:
        await sink.stop()
    return to_b, now, archived_a


async def restart_and_promote_a_back(
    w: Writer, a: Namespace, b: Namespace, to_b: Promotion, now: int, archived_a: set[tuple[Any, ...]]
) -> None:
    # a restart starts on B where it left off (and reads nothing of A)
    await w.contact(b, CONTACTS[1], *events(CONTACTS[1], 6))
    again = Sink(w.settings, registry_poll_s=0.3)
    await again.start()
    try:
        await until(lambda: archived(again, b.latest(), archived_a | b.ledger()), "B after a restart")
        assert again.stats.namespace == b.name and again.stats.switches == 0
        assert again.stats.records == 1  # the one record written while it was down

        # A promoted back: read again from its beginning, its contacts rows replace B's
        back = Promotion(namespace=a.name, from_ms=now + 10_000, promoted_ms=now + 1, previous=b.name)
        await w.registry(ACTIVE_KEY, encode_record(promoted([to_b], back)))
        await until(lambda: archived(again, a.latest(), a.ledger() | b.ledger()), "A again")
        assert again.stats.namespace == a.name and again.stats.switches == 1
    finally:
        await again.stop()


async def archived(sink: Sink, contacts: dict[str, tuple[int, int, str]], ledger: set[tuple[Any, ...]]) -> bool:
    """Whether ``contacts`` and ``score_ledger`` hold exactly these rows."""
    if not sink.migrated.is_set():
        return False
    found = {
        str(c): (int(p), int(o), str(v))
        for c, p, o, v in await sink.store.query(
            "SELECT contact_id, kafka_partition, kafka_offset, model_version FROM contacts FINAL"
        )
    }
    rows = {
        (str(c), int(at), str(cause), round(float(e), 6), str(t), int(p), int(o))
        for c, at, cause, e, t, p, o in await sink.store.query(
            "SELECT contact_id, toUnixTimestamp64Milli(at), toString(cause), engagement, kafka_topic,"
            " kafka_partition, kafka_offset FROM score_ledger FINAL"
        )
    }
    return found == contacts and rows == ledger and sink.idle
