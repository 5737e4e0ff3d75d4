"""The overview report against real chDB: contacts per stage in the model's order and the top
movers of the last hour, on a handful of contacts whose numbers are worked out by hand (re-read
rows, a stale contact version, another model's ledger and a merged contact included)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from analytics import overview
from analytics.client import Store
from analytics.migrations import migrate
from analytics.rows import CONTACT_COLUMNS, LEDGER_COLUMNS
from schemas.api_overview import OverviewOut
from tests.analytics.archive import MODEL, NOW, Contact, ledger_row
from tests.analytics.test_client import with_store

H = MODEL.half_life_ms
SINCE = NOW - overview.HOUR_MS
MINUTE = 60_000


def contact(cid: str, stage: str, engagement: float, last_seen: int = NOW, offset: int = 10, **more: Any) -> Contact:
    return Contact(
        cid, NOW - 30 * H, last_seen, stage, NOW - H, last_seen, offset, engagement=engagement, fit=35.0, **more
    )


def row(
    cid: str, at: int, engagement: float, offset: int, version: str = MODEL.version, kind: str = "score"
) -> list[Any]:
    values = dict(
        zip(LEDGER_COLUMNS, ledger_row(cid, at, engagement, 35.0, "lead", offset, ["r"], [f"m{offset}"]), strict=True)
    )
    values.update(model_version=version, kind=kind)
    return list(values.values())


CONTACTS = [
    contact("a", "lead", 50.0),  # 20 at SINCE exactly, 50 ten minutes ago: +30
    contact("b", "mql", 40.0, user_id="u-b", email="b@example.com"),  # new in the window: +40
    contact("c", "lead", 80.0, last_seen=NOW - 2 * overview.HOUR_MS),  # nothing in the window
    contact("d", "sql", 10.0),  # 40 a half-life before SINCE (20 then), 10 now: fell
    contact("f", "customer", 90.0),  # only another model's rows in the window
    contact("g", "lead", 30.0),  # 40 a half-life before SINCE (20 then), 30 now: +10
    contact("h", "", 5.0),  # no stage
    contact("m", "lead", 70.0, status="merged", merged_into="a"),  # not active
]
LEDGER = [
    row("a", SINCE, 20.0, 1),
    row("a", NOW - 10 * MINUTE, 50.0, 2),
    row("b", NOW - 30 * MINUTE, 40.0, 3),
    row("c", NOW - 2 * overview.HOUR_MS, 80.0, 4),
    row("d", SINCE - H, 40.0, 5),
    row("d", NOW - 5 * MINUTE, 10.0, 6),
    row("f", NOW - 5 * MINUTE, 90.0, 7, version="other@1"),
    row("g", SINCE - H, 40.0, 8),
    row("g", NOW - MINUTE, 30.0, 9),
    row("m", NOW - MINUTE, 70.0, 10),
    row("g", SINCE - 2 * H, 99.0, 11, version="other@1"),  # another model's, earlier: ignored
]


def loaded(chdb_path: Path, name: str) -> Iterator[Store]:
    """A migrated archive of its own (database ``<name>_<random>``) holding :func:`load`'s rows, for
    the module's duration (the route's and the console's tests)."""
    store = Store(f"chdb://{chdb_path}?database={name}_{uuid.uuid4().hex[:8]}")

    async def setup() -> None:
        await migrate(store)
        await load(store)

    asyncio.run(setup())
    yield store
    store.close_sync()


async def load(store: Store) -> None:
    await store.insert("contacts", CONTACT_COLUMNS, [c.row() for c in CONTACTS])
    # a stale version of b (older offset, inserted later) and a second copy of every row
    await store.insert("contacts", CONTACT_COLUMNS, [replace(CONTACTS[1], stage="lead", offset=1).row()])
    await store.insert("contacts", CONTACT_COLUMNS, [c.row() for c in CONTACTS])
    await store.insert("score_ledger", LEDGER_COLUMNS, LEDGER)
    await store.insert("score_ledger", LEDGER_COLUMNS, LEDGER[1:])


def report(url: str, **options: Any) -> OverviewOut:
    found: list[OverviewOut] = []

    async def body(store: Store) -> None:
        await load(store)
        found.append(await overview.overview(store, MODEL, NOW, **options))

    with_store(url, body)
    return found[0]


def test_contacts_per_stage_in_the_models_order(chdb_url: str) -> None:
    out = report(chdb_url)
    assert [(s.stage, s.contacts) for s in out.stages] == [
        ("lead", 3),
        ("mql", 1),
        ("sql", 1),
        ("customer", 1),
        (None, 1),
    ]
    assert out.contacts == 7
    assert [s.share for s in out.stages][:2] == [3 / 7, 1 / 7]


def test_top_movers_rise_from_the_hour_before_largest_first(chdb_url: str) -> None:
    out = report(chdb_url)
    assert [(m.contact_id, m.engagement_before, m.engagement, m.rise) for m in out.movers] == [
        ("b", 0.0, 40.0, 40.0),
        ("a", 20.0, 50.0, 30.0),
        ("g", 20.0, 30.0, 10.0),
    ]
    b = out.movers[0]
    assert (b.user_id, b.email, b.stage, b.engagement_band, b.fit_grade) == ("u-b", "b@example.com", "mql", "2", "B")
    assert b.grade == "B2"
    assert out.model == MODEL.version and out.window_minutes == 60
    assert int(out.since.timestamp() * 1000) == SINCE and int(out.as_of.timestamp() * 1000) == NOW


def test_movers_are_limited_and_decay_to_now(chdb_url: str) -> None:
    """A later request time: every score decays by the same factor over the extra hour, and the
    limit keeps the largest."""
    later = NOW + overview.HOUR_MS
    found: list[OverviewOut] = []

    async def body(store: Store) -> None:
        await load(store)
        found.append(await overview.overview(store, MODEL, later, window_ms=2 * overview.HOUR_MS, limit=2))

    with_store(chdb_url, body)
    factor = 2 ** (-overview.HOUR_MS / H)
    out = found[0]
    assert [m.contact_id for m in out.movers] == ["b", "a"]
    b, a = out.movers
    assert abs(b.engagement - 40.0 * factor) < 1e-6 and b.engagement_before == 0.0
    # the window starts at SINCE: a's row there is its engagement then, undecayed
    assert a.engagement_before == 20.0 and abs(a.rise - (50.0 * factor - 20.0)) < 1e-6


def test_the_active_contacts_alone_are_the_reports_total(chdb_url: str) -> None:
    found: list[int] = []

    async def body(store: Store) -> None:
        await load(store)
        found.append(await overview.active_contacts(store))
        found.append((await overview.overview(store, MODEL, NOW)).contacts)

    with_store(chdb_url, body)
    assert found == [7, 7]  # the merged contact is not one


def test_an_empty_archive_has_no_stages_and_no_movers(chdb_url: str) -> None:
    found: list[OverviewOut] = []

    async def body(store: Store) -> None:
        found.append(await overview.overview(store, MODEL, NOW))

    with_store(chdb_url, body)
    assert found[0].contacts == 0 and found[0].stages == [] and found[0].movers == []


def test_the_body_orders_unknown_stages_after_the_models() -> None:
    out = overview.overview_body([("zeta", 2), ("lead", 1), ("", 1)], [], MODEL, NOW)
    assert [s.stage for s in out.stages] == ["lead", "zeta", None]
    assert asyncio.iscoroutinefunction(overview.overview)
