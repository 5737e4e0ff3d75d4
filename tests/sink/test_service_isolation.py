"""The sink's per-row isolation (``sink.service``), without Kafka or ClickHouse: a row ClickHouse
refuses on its own is found by inserting in halves and stored in ``sink_rejects``; a contacts
change the ledger fails on costs that change only. The store is a fake at the client edge (the
same with chDB and the broker: ``tests/e2e/test_sink_outage.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest

from analytics.client import Store
from analytics.rows import EVENT_COLUMNS, REJECT_COLUMNS, Ledger, event_row, read_contact
from schemas.model_file import load_model
from schemas.settings import Settings
from schemas.state import encode
from scorestream import apply_events
from sink.service import RowBatch, Sink, refused_row
from tests.analytics.test_rows import Rec
from tests.factories import T0, make_event, segment_json

MODEL = load_model()


class FakeStore:
    """Refuses any insert holding a row with ``bad`` in it; ``down`` fails everything."""

    url = "chdb:///unused"
    embedded = True

    def __init__(self) -> None:
        self.inserted: dict[str, list[Any]] = {}
        self.tokens: list[str | None] = []
        self.down = False

    async def insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str | None = None
    ) -> None:
        if self.down:
            raise ConnectionError("down")
        if any(b"bad" in (r[-1] if isinstance(r[-1], bytes) else b"") for r in rows):
            raise ValueError("Cannot parse input")
        self.tokens.append(token)
        self.inserted.setdefault(table, []).extend(rows)

    async def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        if self.down:
            raise ConnectionError("down")
        return [] if "score_ledger" in sql else [(1,)]  # no ledger rows yet; the probe answers

    async def close(self) -> None:
        pass


def sink(store: FakeStore) -> Sink:
    return Sink(Settings(), model=MODEL, store=cast(Store, store))


def event(i: int, bad: bool = False) -> list[Any]:
    raw = segment_json(type="page", messageId=f"m-{i}", userId="u-1", properties={"path": "/bad" if bad else "/"})
    row = event_row(Rec("events.web", 0, i, T0, None, raw), "web")
    assert row is not None
    return row


def test_a_refused_row_goes_to_sink_rejects_alone_and_the_others_are_inserted() -> None:
    store = FakeStore()
    rows = [event(i, bad=i == 5) for i in range(12)]
    s = sink(store)
    inserted = asyncio.run(s._insert_apart("events", rows, "tok"))
    assert inserted == 11
    assert sorted(r[EVENT_COLUMNS.index("kafka_offset")] for r in store.inserted["events"]) == [
        i for i in range(12) if i != 5
    ]
    (reject,) = store.inserted["sink_rejects"]
    values = dict(zip(REJECT_COLUMNS, reject, strict=True))
    assert (values["kafka_topic"], values["kafka_offset"], values["reason"]) == ("events.web", 5, "insert_refused")
    assert values["value"] == rows[5][-1] and "Cannot parse input" in values["detail"]
    assert s.stats.refused_rows == 1
    # the same parts, the same tokens: a retry of a part that landed is dropped by ClickHouse
    again = FakeStore()
    asyncio.run(sink(again)._insert_apart("events", rows, "tok"))
    assert again.tokens == store.tokens and len(set(store.tokens)) == len(store.tokens)


def test_an_outage_while_inserting_apart_fails_the_batch_for_a_retry() -> None:
    store = FakeStore()
    rows = [event(i, bad=i == 1) for i in range(4)]
    s = sink(store)

    async def go() -> None:
        store.down = True
        await s._insert_apart("events", rows, "tok")

    with pytest.raises(ConnectionError):
        asyncio.run(go())
    assert "sink_rejects" not in store.inserted  # nothing was refused for an outage


def test_refused_row_of_a_table_without_raw_bytes() -> None:
    row = ["trg-1", "stage.changed", T0, "contact", "u-1", "", "a", "b", "r", "", "m@1", "triggers", 3, 9, T0]
    columns = (
        "id", "type", "at", "subject", "contact_id", "account_id", "before", "after", "rule", "cause",
        "model_version", "kafka_topic", "kafka_partition", "kafka_offset", "written_at",
    )  # fmt: skip
    reject = refused_row("triggers", columns, row, ValueError("x"))
    assert reject[:4] == ["triggers", 3, 9, T0] and b"trg-1" in reject[5]


def test_a_ledger_failure_costs_one_change(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeStore()
    s = sink(store)
    batch = RowBatch()
    for i, user in enumerate(["u-1", "u-bug", "u-2"]):
        state = apply_events(None, user, [make_event(kind="page", event=None, user_id=user, path="/")], MODEL)
        batch.changes.append(read_contact(Rec("ss-contacts-changelog", 0, i, T0, user.encode(), encode(state)), MODEL))
    real = Ledger._row

    def row(self: Ledger, before: Any, change: Any) -> Any:
        if change.contact_id == "u-bug":
            raise ArithmeticError("a bug in the ledger")
        return real(self, before, change)

    monkeypatch.setattr(Ledger, "_row", row)
    asyncio.run(s._ledger_rows(batch))
    assert [r[0] for r in batch.rows["score_ledger"]] == ["u-1", "u-2"]
    (reject,) = batch.rows["sink_rejects"]
    assert reject[2] == 1 and reject[6] == "ledger_error" and "ArithmeticError" in reject[7]


def test_the_registry_reader_skips_a_record_it_cannot_read() -> None:
    from kafka_io.registry import RegistryReader
    from schemas.registry import NAMESPACE_PREFIX

    reader = RegistryReader(Settings())
    reader._apply(Rec("scorestream.models", 0, 4, T0, f"{NAMESPACE_PREFIX}v2".encode(), b"\xc1 not a record"))
    reader._apply(Rec("scorestream.models", 0, 5, T0, b"\xff\xfe", b"{}"))
    assert reader.unreadable == 2 and reader.registry.active == Settings().app_id
