"""The ClickHouse tables and queries the sink relies on, against real chDB."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import SecretStr

from analytics.client import Store, chdb_database, clickhouse_url, redacted, sink_in_api
from analytics.migrations import migrate
from analytics.rows import LAST_LEDGER_ROWS, LEDGER_COLUMNS, last_rows_parameters, scores_of
from schemas.settings import Settings
from tests.factories import T0


def with_store(url: str, body: Callable[[Store], Awaitable[None]]) -> None:
    async def go() -> None:
        store = Store(url)
        try:
            await migrate(store)
            await body(store)
        finally:
            await store.close()

    asyncio.run(go())


def ledger_row(contact: str, offset: int, engagement: float, topic: str = "cl") -> list[object]:
    values = {
        "contact_id": contact,
        "at": T0 + offset,
        "kind": "score",
        "cause": "events",
        "engagement": engagement,
        "engagement_band": "3",
        "fit": 10.0,
        "fit_grade": "C",
        "stage": "lead",
        "rules": ["r"],
        "message_ids": [f"m{offset}"],
        "merged_into": "",
        "model_version": "m@1",
        "kafka_topic": topic,
        "kafka_partition": 0,
        "kafka_offset": offset,
        "written_at": T0,
        "groups": {"hardware": float(offset)} if offset % 2 else {},
    }
    return [values[c] for c in LEDGER_COLUMNS]


def test_a_retried_insert_with_the_same_token_is_dropped_and_final_collapses_rereads(chdb_url: str) -> None:
    async def body(store: Store) -> None:
        rows = [ledger_row("c-1", 5, 1.0), ledger_row("c-1", 9, 2.0)]
        await store.insert("score_ledger", LEDGER_COLUMNS, rows, token="batch-1")
        await store.insert("score_ledger", LEDGER_COLUMNS, rows, token="batch-1")  # a retry that had landed
        assert await store.query("SELECT count() FROM score_ledger") == [(2,)]
        await store.insert("score_ledger", LEDGER_COLUMNS, rows[1:], token="batch-2")  # a re-read, cut differently
        assert await store.query("SELECT count() FROM score_ledger") == [(3,)]
        assert await store.query("SELECT count() FROM score_ledger FINAL") == [(2,)]
        await store.command("OPTIMIZE TABLE score_ledger FINAL")
        assert await store.query("SELECT count() FROM score_ledger") == [(2,)]

    with_store(chdb_url, body)


def test_the_last_ledger_row_before_an_offset(chdb_url: str) -> None:
    async def body(store: Store) -> None:
        rows = [ledger_row("c-1", o, float(o)) for o in (5, 9, 12)] + [ledger_row("c-2", 3, 3.0)]
        # another model namespace's changelog: offsets of its own, never compared with these
        rows += [ledger_row("c-1", 8, 80.0, "b-cl"), ledger_row("c-3", 1, 1.0, "b-cl")]
        await store.insert("score_ledger", LEDGER_COLUMNS, rows)
        unknown = {"c-1": 10, "c-2": 3, "c-3": 99}
        found = scores_of(await store.query(LAST_LEDGER_ROWS, last_rows_parameters(unknown, "cl")))
        assert set(found) == {"c-1"}  # c-2 has nothing before offset 3, c-3 nothing at all
        assert (found["c-1"].engagement, found["c-1"].at_ms, found["c-1"].kind) == (9.0, T0 + 9, "score")
        assert found["c-1"].groups == (("hardware", 9.0),)  # the score groups' raw scores come back
        found = scores_of(await store.query(LAST_LEDGER_ROWS, last_rows_parameters(unknown, "b-cl")))
        assert {c: s.engagement for c, s in found.items()} == {"c-1": 80.0, "c-3": 1.0}

    with_store(chdb_url, body)


def test_urls() -> None:
    assert redacted("http://u:secret@host:8123/db") == "http://u:***@host:8123/db"
    assert redacted("chdb:///var/x") == "chdb:///var/x"
    assert chdb_database("chdb:///var/x?database=a") == "a" and chdb_database("chdb:///var/x") is None


def test_the_api_runs_the_sink_exactly_when_chdb_is_embedded_unless_told(tmp_path: Path) -> None:
    embedded = Settings(data_dir=tmp_path)
    assert clickhouse_url(embedded) == f"chdb://{tmp_path.resolve()}/clickhouse" and sink_in_api(embedded)
    server = Settings(clickhouse_url=SecretStr("http://u:p@ch:8123/analytics"))
    assert not sink_in_api(server) and clickhouse_url(server) == "http://u:p@ch:8123/analytics"
    assert sink_in_api(Settings(clickhouse_url=SecretStr("http://ch:8123"), sink_in_api=True))
    assert not sink_in_api(Settings(data_dir=tmp_path, sink_in_api=False))
    assert "p@" not in repr(server)
