"""The reports against real chDB: a generated archive (re-reads and stale versions included) loaded
as the sink would, every report checked against answers computed in Python from the generated
facts, and the funnel against ClickHouse's own ``windowFunnel`` on the same rows."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from analytics import reports
from analytics.client import Store
from analytics.migrations import migrate
from analytics.reports import ContactFilter, Position
from analytics.rows import CONTACT_COLUMNS, LEDGER_COLUMNS
from schemas.api_analytics import ContactListOut
from scorestream.rfm import score
from scorestream.rules.value import segment_of
from scorestream.scoring import band_of
from tests.analytics.archive import (
    MODEL,
    NOW,
    OLD_VERSION,
    AccountRow,
    Accounts,
    Archive,
    Contact,
    Transition,
    close,
    forecast_accounts_expect,
    forecast_expect,
    funnel_expect,
    funnel_levels,
    generate,
    generate_accounts,
    ledger_row,
    load,
    load_accounts,
    personas_expect,
    rfm_bounds,
    rfm_expect,
    rounded,
    segments_expect,
    two_namespaces,
)
from tests.factories import DAY

T = TypeVar("T")
FUNNEL = reports.default_funnel(MODEL)


def run(coro: Awaitable[T]) -> T:
    async def go() -> T:
        return await coro

    return asyncio.run(go())


@pytest.fixture(scope="module")
def archive() -> Archive:
    return generate()


@pytest.fixture(scope="module")
def store(chdb_path: Path, archive: Archive) -> Iterator[Store]:
    """One database for the module, migrated with the sink's runner and loaded once."""
    s = Store(f"chdb://{chdb_path}?database=reports_{uuid.uuid4().hex[:8]}")

    async def setup() -> None:
        await migrate(s)
        await load(s, archive)

    run(setup())
    yield s
    s.close_sync()


def fresh(chdb_path: Path, body: Callable[[Store], Awaitable[None]]) -> None:
    """``body`` against an empty, migrated database of its own (tests that insert)."""

    async def go() -> None:
        s = Store(f"chdb://{chdb_path}?database=reports_{uuid.uuid4().hex[:8]}")
        try:
            await migrate(s)
            await body(s)
        finally:
            await s.close()

    asyncio.run(go())


def test_the_archive_holds_duplicates_the_reports_must_ignore(store: Store, archive: Archive) -> None:
    raw = run(store.query("SELECT count(), uniqExact(contact_id) FROM contacts"))[0]
    assert raw[0] > raw[1] == len(archive.contacts)
    triggers = run(store.query("SELECT count(), uniqExact(trigger_id) FROM stage_transitions"))[0]
    assert triggers[0] > triggers[1] == len(archive.transitions)


# --- the sync list -----------------------------------------------------------------------------


def pages(store: Store, filters: ContactFilter, limit: int, now: int = NOW) -> tuple[list[ContactListOut], Position]:
    out: list[ContactListOut] = []
    after = reports.START
    while True:
        page = run(reports.contact_list(store, MODEL, filters, after, limit, now, 0))
        out.append(page)
        after = reports.decode_cursor(page.next_cursor)
        if not page.has_more:
            return out, after


@pytest.mark.parametrize(
    "filters",
    [
        ContactFilter(),
        ContactFilter(stages=("mql", "sql")),
        ContactFilter(min_engagement=20.0),
        ContactFilter(segment="Champions"),
        ContactFilter(flag="student"),
        ContactFilter(updated_since_ms=NOW - 40 * DAY, stages=("customer",)),
        ContactFilter(include_removed=True),
    ],
)
def test_the_sync_list_filters_and_pages_every_contact_once(
    store: Store, archive: Archive, filters: ContactFilter
) -> None:
    def wanted(c: Any) -> bool:
        return (
            (filters.include_removed or c.status == "active")
            and (not filters.stages or c.stage in filters.stages)
            and (filters.min_engagement is None or c.decayed(NOW) >= filters.min_engagement)
            and (filters.segment is None or c.segment == filters.segment)
            and (filters.flag is None or filters.flag in c.flags)
            and (filters.updated_since_ms is None or c.updated_at >= filters.updated_since_ms)
        )

    expected = {c.id: c for c in archive.contacts.values() if wanted(c)}
    assert expected  # the filter selects something
    got, _ = pages(store, filters, limit=7)
    rows = [r for p in got for r in p.data]
    assert sorted(r.contact_id for r in rows) == sorted(expected)  # every one, once
    assert all(len(p.data) == 7 for p in got[:-1]) and len(got[-1].data) <= 7
    for row in rows:
        c = expected[row.contact_id]
        assert row.status == c.status
        if c.status != "active":
            assert row.merged_into == (c.merged_into or None) and row.stage is None
            continue
        # the latest version, never the stale one inserted after it
        assert (row.stage, row.persona, row.flags) == (c.stage, c.persona or None, c.flags)
        assert row.engagement == rounded(c.decayed(NOW)) and row.engagement_at_last_seen == rounded(c.engagement)
        assert row.engagement_band == band_of(MODEL.engagement_bands, row.engagement)
        assert row.grade == f"{band_of(MODEL.fit_grades, c.fit)}{row.engagement_band}"
        assert (row.orders, row.revenue, row.rfm_segment) == (c.orders, c.revenue, c.segment or None)
        assert row.updated_at.timestamp() * 1000 == c.updated_at
        assert row.email == (c.email or None) and row.user_id == (c.user_id or None)


def test_pages_stay_stable_while_contacts_change(chdb_path: Path, archive: Archive) -> None:
    """A contact changed after page 1 was read comes again later with its new values; one changed
    before the reader got to it comes once; a late insert of an old change is not stepped over;
    nobody else is skipped or repeated."""

    async def body(store: Store) -> None:
        contacts = sorted(archive.active(), key=lambda c: c.id)[:30]
        await store.insert("contacts", CONTACT_COLUMNS, [c.row() for c in contacts])
        first = await reports.contact_list(store, MODEL, ContactFilter(), reports.START, 10, NOW, 0)
        seen = [r.contact_id for r in first.data]
        assert seen == [c.id for c in contacts[:10]]  # one insert: one arrival time, then by id
        listed, ahead = contacts[3], contacts[20]
        await asyncio.sleep(0.01)  # a later arrival time than the first insert
        await store.insert(
            "contacts",
            CONTACT_COLUMNS,
            [
                [*_with(listed.row(), stage="sql", kafka_offset=listed.offset + 1)],
                [*_with(ahead.row(), stage="opportunity", kafka_offset=ahead.offset + 1)],
                # an old change the sink inserts late (updated_at long before the page was read)
                [*_with(contacts[0].row(), contact_id="c-late", updated_at=NOW - 90 * DAY)],
            ],
        )
        after = reports.decode_cursor(first.next_cursor)
        rest: list[Any] = []
        while True:
            page = await reports.contact_list(store, MODEL, ContactFilter(), after, 10, NOW, 0)
            rest += page.data
            after = reports.decode_cursor(page.next_cursor)
            if not page.has_more:
                break
        ids = seen + [r.contact_id for r in rest]
        assert sorted(ids) == sorted([c.id for c in contacts] + [listed.id, "c-late"])
        assert ids[-3:] == sorted([listed.id, ahead.id, "c-late"])  # the second arrival, by id
        assert {r.contact_id: r.stage for r in rest[-3:]} == {
            listed.id: "sql",
            ahead.id: "opportunity",
            "c-late": contacts[0].stage,
        }
        # polling with the last cursor: nothing new, and the cursor stays where it was
        again = await reports.contact_list(store, MODEL, ContactFilter(), after, 10, NOW, 0)
        assert again.data == [] and reports.decode_cursor(again.next_cursor) == after

    fresh(chdb_path, body)


def test_rows_still_settling_are_held_back(chdb_path: Path, archive: Archive) -> None:
    async def body(store: Store) -> None:
        await store.insert("contacts", CONTACT_COLUMNS, [c.row() for c in archive.active()[:3]])
        held = await reports.contact_list(store, MODEL, ContactFilter(), reports.START, 10, NOW, 60_000)
        assert held.data == [] and held.next_cursor == reports.encode_cursor(reports.START)
        shown = await reports.contact_list(store, MODEL, ContactFilter(), reports.START, 10, NOW, 0)
        assert len(shown.data) == 3

    fresh(chdb_path, body)


def _with(row: list[Any], **changes: Any) -> list[Any]:
    out = list(row)
    for name, value in changes.items():
        out[CONTACT_COLUMNS.index(name)] = value
    return out


# --- history -----------------------------------------------------------------------------------


def test_history_window_and_as_of(store: Store, archive: Archive) -> None:
    contact = "c-001"
    mine = sorted(
        (t for t in archive.transitions if t.contact == contact and t.version == MODEL.version), key=lambda t: t.at
    )
    ledger_ats = [NOW - 30 * DAY, NOW - 20 * DAY, NOW - 10 * DAY]
    h = run(reports.history(store, MODEL, contact, None, NOW, NOW, 100))
    assert [r.at.timestamp() * 1000 for r in h.ledger] == ledger_ats  # the re-read rows once each
    assert [(r.engagement, r.stage, r.rules, r.message_ids) for r in h.ledger] == [
        (10.0, "subscriber", ["r0"], ["m0"]),
        (45.0, "lead", ["r1"], ["m1"]),
        (80.0, "mql", ["r2"], ["m2"]),
    ]
    assert [(t.from_stage, t.to_stage) for t in h.transitions] == [(t.from_stage, t.to_stage) for t in mine]
    # a window: the middle row only
    h = run(reports.history(store, MODEL, contact, NOW - 25 * DAY, NOW - 15 * DAY, NOW - 15 * DAY, 100))
    assert [r.engagement for r in h.ledger] == [45.0] and not h.truncated
    # as of five days after the second row: its scores, engagement decayed five days
    as_of = NOW - 15 * DAY
    assert h.as_of is not None
    expected = rounded(45.0 * math.pow(2.0, -5 * DAY / MODEL.half_life_ms))
    assert h.as_of.engagement == expected and h.as_of.fit == 20.0
    assert h.as_of.engagement_band == band_of(MODEL.engagement_bands, expected)
    assert h.as_of.ledger_at.timestamp() * 1000 == NOW - 20 * DAY
    by_then = [t for t in mine if t.at <= as_of]
    if by_then and by_then[-1].at > NOW - 20 * DAY:
        assert h.as_of.stage == by_then[-1].to_stage  # time moved the stage after the row
    else:
        assert h.as_of.stage == "lead"
    # before the first row: nothing
    assert run(reports.history(store, MODEL, contact, None, NOW, NOW - 31 * DAY, 100)).as_of is None
    # limit
    h = run(reports.history(store, MODEL, contact, None, NOW, NOW, 2))
    assert len(h.ledger) == 2 and h.truncated


def test_as_of_takes_the_stage_a_later_transition_set(chdb_path: Path) -> None:
    """The ledger row says lead at day 0; a decay-driven move to recycled at day 3 (no ledger
    row); as of day 4 the stage is recycled, engagement decayed four days from the row."""
    from tests.analytics.archive import Transition

    async def body(store: Store) -> None:
        from analytics.rows import TRIGGER_COLUMNS

        await store.insert("score_ledger", LEDGER_COLUMNS, [ledger_row("x", NOW, 50.0, 40.0, "mql", 1, [], [])])
        moves = [Transition("x", NOW + 3 * DAY, "mql", "recycled", MODEL.version, "trg_x1")]
        await store.insert("triggers", TRIGGER_COLUMNS, [t.row(i) for i, t in enumerate(moves)])
        h = await reports.history(store, MODEL, "x", None, NOW + 5 * DAY, NOW + 4 * DAY, 10)
        assert h.as_of is not None and h.as_of.stage == "recycled"
        assert h.as_of.engagement == rounded(50.0 * math.pow(2.0, -4 * DAY / MODEL.half_life_ms))
        h = await reports.history(store, MODEL, "x", None, NOW + 5 * DAY, NOW + 2 * DAY, 10)
        assert h.as_of is not None and h.as_of.stage == "mql"

    fresh(chdb_path, body)


OTHER = "b2c@0123456789ab"  # the model of the namespace promoted away from


def test_history_is_of_one_model(chdb_path: Path) -> None:
    """After a promotion: the active model's history by default, the other one's when named (by
    version or by name); the as-of view never takes the other model's row or stage change."""

    async def body(store: Store) -> None:
        await two_namespaces(store, OTHER)
        await store.command("OPTIMIZE TABLE score_ledger FINAL")
        end, as_of = NOW + 5 * DAY, NOW + DAY + DAY // 2
        h = await reports.history(store, MODEL, "x", None, end, as_of, 10)
        assert h.model == MODEL.version
        assert [(r.engagement, r.model_version) for r in h.ledger] == [(20.0, MODEL.version), (70.0, MODEL.version)]
        assert [t.trigger_id for t in h.transitions] == ["trg_b1"]
        assert h.as_of is not None and h.as_of.ledger_at.timestamp() * 1000 == NOW and h.as_of.stage == "lead"
        assert h.as_of.model_version == MODEL.version
        for name in (OTHER, "b2c"):
            h = await reports.history(store, MODEL, "x", None, end, as_of, 10, name)
            assert h.model == name
            assert [(r.engagement, r.stage) for r in h.ledger] == [(10.0, "lead"), (60.0, "sql")]
            assert [t.trigger_id for t in h.transitions] == ["trg_a1"]
            assert h.as_of is not None and h.as_of.ledger_at.timestamp() * 1000 == NOW + DAY
            assert h.as_of.stage == "sql" and h.as_of.model_version == OTHER
        # as of before B's stage change, after A's: B's row's stage, not A's move
        h = await reports.history(store, MODEL, "x", None, end, NOW + DAY + 1, 10)
        assert h.as_of is not None and h.as_of.stage == "lead"
        assert (await reports.history(store, MODEL, "x", None, end, as_of, 10, "nobody")).ledger == []

    fresh(chdb_path, body)


def test_ids_resolve_like_the_replica(store: Store, archive: Archive) -> None:
    assert run(reports.resolve_contact(store, "c-003")) == "c-003"
    assert run(reports.resolve_contact(store, "PERSON3@example.com ")) == "c-003"  # email, as the replica folds it
    assert run(reports.resolve_contact(store, "c-005")) == "c-006"  # merged: the survivor
    assert run(reports.resolve_contact(store, "nobody")) is None


# --- funnel ------------------------------------------------------------------------------------

WINDOW = (NOW - 90 * DAY, NOW - 5 * DAY)


@pytest.mark.parametrize("sequential", [False, True])
@pytest.mark.parametrize("model", [None, MODEL.version, "default", OLD_VERSION])
def test_the_funnel_matches_an_independent_computation(
    store: Store, archive: Archive, sequential: bool, model: str | None
) -> None:
    got = run(reports.funnel(store, MODEL, FUNNEL, *WINDOW, sequential=sequential, model_version=model))
    expected = funnel_expect(archive, FUNNEL, *WINDOW, sequential, model)
    assert [s.stage for s in got.stages] == FUNNEL
    assert got.stages[0].reached > 0 and any(s.completed_stays for s in got.stages)
    for stage, exp in zip(got.stages, expected, strict=True):
        assert (stage.entered, stage.reached, stage.completed_stays, stage.open_stays) == (
            exp.entered,
            exp.reached,
            exp.completed,
            exp.open,
        ), stage.stage
        assert close(stage.median_days_in_stage, None if exp.median_stay_ms is None else exp.median_stay_ms / DAY)
        assert close(
            stage.median_days_from_start,
            None if exp.median_from_start_ms is None else exp.median_from_start_ms / DAY,
        )
    for prev, cur in zip(got.stages, got.stages[1:], strict=False):
        assert close(cur.conversion, cur.reached / prev.reached if prev.reached else None)


def window_funnel(store: Store, archive_model: str | None, stages: list[str], sequential: bool) -> dict[int, int]:
    """Contacts per level of ClickHouse's ``windowFunnel`` (default mode, the window = the report
    window) over the same stage entries the report reads."""
    conds = ["indexOf(funnel, stage) = 1"] + [
        f"indexOf(funnel, stage) {'=' if sequential else '>='} {k}" for k in range(2, len(stages) + 1)
    ]
    sql = f"""
    WITH {{stages:Array(String)}} AS funnel
    SELECT level, count() FROM (
        SELECT contact, windowFunnel({{window:UInt64}})(toUInt64(t), {", ".join(conds)}) AS level
        FROM ({reports.STAGE_ENTRIES})
        WHERE t >= {{from:Int64}} AND t < {{to:Int64}}
        GROUP BY contact
    ) WHERE level > 0 GROUP BY level
    """
    parameters = {
        "stages": stages,
        "window": WINDOW[1] - WINDOW[0],
        "from": WINDOW[0],
        "to": WINDOW[1],
        "model": archive_model or "",
        "initial": "subscriber",
    }
    return {int(level): int(n) for level, n in run(store.query(sql, parameters))}


@pytest.mark.parametrize("sequential", [False, True])
@pytest.mark.parametrize("stages", [FUNNEL, ["lead", "sql", "customer"], ["mql", "recycled"]])
def test_the_funnel_agrees_with_window_funnel(
    store: Store, archive: Archive, sequential: bool, stages: list[str]
) -> None:
    got = run(reports.funnel(store, MODEL, stages, *WINDOW, sequential=sequential))
    levels = window_funnel(store, None, stages, sequential)
    reached = [sum(n for level, n in levels.items() if level >= k) for k in range(1, len(stages) + 1)]
    assert [s.reached for s in got.stages] == reached
    assert reached[min(2, len(stages) - 1)] > 0  # the comparison goes some steps deep
    # and the Python reference sees the same levels
    python = funnel_levels(archive.entries(), stages, *WINDOW, sequential)
    assert reached == [sum(1 for t in python.values() if len(t) >= k) for k in range(1, len(stages) + 1)]


def test_cumulative_counts_skipped_stages_and_sequential_does_not(store: Store) -> None:
    cumulative = run(reports.funnel(store, MODEL, FUNNEL, *WINDOW))
    sequential = run(reports.funnel(store, MODEL, FUNNEL, *WINDOW, sequential=True))
    assert cumulative.stages[0].reached == sequential.stages[0].reached
    assert all(c.reached >= s.reached for c, s in zip(cumulative.stages, sequential.stages, strict=True))
    assert cumulative.stages[-1].reached > sequential.stages[-1].reached  # customers who skipped a stage


# --- RFM ---------------------------------------------------------------------------------------


def test_rfm_grid_and_segments(store: Store, archive: Archive) -> None:
    bounds = rfm_bounds(archive)
    got = run(reports.rfm(store, MODEL, bounds))
    cells = rfm_expect(archive, bounds)
    assert len(got.grid) == 25 and [(c.r, c.f) for c in got.grid[:2]] == [(5, 1), (5, 2)]
    for cell in got.grid:
        n, v = cells.get((cell.r, cell.f), (0, 0.0))
        assert (cell.contacts, cell.segment) == (n, segment_of(cell.r, cell.f))
        assert math.isclose(cell.revenue, v)
    assert got.customers == sum(n for n, _ in cells.values()) == bounds.customers
    assert got.non_customers == sum(1 for c in archive.active() if c.orders == 0)
    segments = segments_expect(cells)
    assert {s.segment: s.contacts for s in got.segments if s.contacts} == {k: n for k, (n, _) in segments.items()}
    assert {s.segment for s in got.segments} == {rule.name for rule in MODEL.value.segments}  # empty ones too
    assert [s.contacts for s in got.segments] == sorted((s.contacts for s in got.segments), reverse=True)
    assert math.isclose(sum(s.share for s in got.segments), 1.0)
    assert got.segments_from == "boundaries" and got.boundaries is not None


def test_rfm_without_boundaries_counts_the_stored_segments(store: Store, archive: Archive) -> None:
    got = run(reports.rfm(store, MODEL, None))
    expected: dict[str, int] = {}
    for c in archive.active():
        if c.orders > 0:
            expected[c.segment] = expected.get(c.segment, 0) + 1
    assert {s.segment: s.contacts for s in got.segments} == expected
    assert got.grid == [] and got.boundaries is None and got.segments_from == "stored"


def test_the_sync_list_lists_an_rfm_cells_customers(store: Store, archive: Archive) -> None:
    """``rfm_r`` / ``rfm_f`` select the customers of the grid's cells, scored as the grid scores
    them (the same boundaries): every cell's list is its contacts, each once, over pages."""
    bounds = rfm_bounds(archive)
    grid = run(reports.rfm(store, MODEL, bounds)).grid
    members: dict[tuple[int, int], set[str]] = {}
    for c in archive.active():
        if c.orders > 0 and c.last_order is not None:
            key = (score(float(c.last_order), bounds.last_order_ms), score(float(c.orders), bounds.frequency))
            members.setdefault(key, set()).add(c.id)
    assert len(members) > 3  # several cells hold customers
    for cell in grid:
        got, _ = pages(store, ContactFilter(rfm_r=cell.r, rfm_f=cell.f, rfm_boundaries=bounds), limit=5)
        ids = [r.contact_id for p in got for r in p.data]
        assert sorted(ids) == sorted(members.get((cell.r, cell.f), set())) and len(ids) == cell.contacts
    recent, _ = pages(store, ContactFilter(rfm_r=5, rfm_boundaries=bounds), limit=50)
    assert {r.contact_id for p in recent for r in p.data} == set().union(*(m for k, m in members.items() if k[0] == 5))
    loyal, _ = pages(store, ContactFilter(rfm_f=5, stages=("customer",), rfm_boundaries=bounds), limit=50)
    expected = {i for k, m in members.items() if k[1] == 5 for i in m if archive.contacts[i].stage == "customer"}
    assert {r.contact_id for p in loyal for r in p.data} == expected


def test_an_rfm_filter_without_boundaries_is_refused(store: Store) -> None:
    with pytest.raises(reports.InvalidParameter, match="rfm_f: no RFM boundaries"):
        run(reports.contact_list(store, MODEL, ContactFilter(rfm_f=2), reports.START, 5, NOW, 0))


# --- personas ----------------------------------------------------------------------------------


def test_persona_by_stage(store: Store, archive: Archive) -> None:
    got = run(reports.personas(store, MODEL, NOW))
    expected = personas_expect(archive, NOW)
    assert {(c.persona or "", c.stage or ""): c.contacts for c in got.cells} == {k: v[0] for k, v in expected.items()}
    for cell in got.cells:
        _, engagement, fit = expected[(cell.persona or "", cell.stage or "")]
        assert cell.avg_engagement == rounded(engagement) and math.isclose(cell.avg_fit, fit)
    assert got.personas[:3] == ["executive", "practitioner", "shopper"] and got.personas[-1] is None
    assert got.contacts == len(archive.active())
    lc = MODEL.lifecycle
    assert lc is not None and [s for s in lc.stages if s in got.stages] == got.stages


# --- forecast ----------------------------------------------------------------------------------


def test_forecast(store: Store, archive: Archive) -> None:
    lookback = 120 * DAY
    got = run(reports.forecast(store, MODEL, NOW, lookback))
    expected, value, customers = forecast_expect(archive, MODEL, NOW, lookback)
    assert got.customer_stages == ["customer", "evangelist"]
    assert [s.stage for s in got.stages] == list(expected)
    assert got.value.basis == "new_customers" and got.value.customers == customers
    assert math.isclose(got.value.per_customer, value)
    for stage in got.stages:
        open_now, entered, converted = expected[stage.stage]
        assert (stage.open_contacts, stage.entered, stage.converted) == (open_now, entered, converted), stage.stage
        rate = converted / entered if entered else 0.0
        assert math.isclose(stage.expected_revenue, open_now * rate * value)
    assert any(s.converted for s in got.stages) and got.expected_revenue > 0
    assert math.isclose(got.expected_revenue, sum(s.expected_revenue for s in got.stages))


def test_forecast_without_accounts_has_an_empty_accounts_section(store: Store, archive: Archive) -> None:
    """The archive has no account: the accounts pipeline lists the model's open account stages
    with nothing in them, and the contacts pipeline and totals are as without it."""
    got = run(reports.forecast(store, MODEL, NOW, 120 * DAY))
    accounts = got.accounts
    assert (accounts.model, accounts.customer_stages) == (MODEL.version, ["customer"])
    assert [s.stage for s in accounts.stages] == ["target", "engaged", "buying"]
    assert all(
        (s.open_accounts, s.entered, s.converted, s.conversion, s.expected_revenue) == (0, 0, 0, None, 0.0)
        for s in accounts.stages
    )
    assert (accounts.value.basis, accounts.value.customers, accounts.value.per_customer) == ("none", 0, 0.0)
    assert (accounts.expected_customers, accounts.expected_revenue) == (0.0, 0.0)
    assert got.expected_revenue > 0 and math.isclose(got.expected_revenue, sum(s.expected_revenue for s in got.stages))


def known_accounts() -> Accounts:
    """Eight accounts with hand-counted numbers (lookback 100 days; see the test)."""
    d = DAY
    v, old = MODEL.version, OLD_VERSION

    def move(account: str, days_ago: int, a: str, b: str, version: str = v) -> Transition:
        return Transition(account, NOW - days_ago * d, a, b, version, f"t-{account}-{days_ago}-{b}")

    rows = [
        # a1: target -90, engaged -80, buying -60, customer -30
        AccountRow("a1", NOW - 90 * d, "target", 2, 10),
        AccountRow("a1", NOW - 30 * d, "customer", 3, 11, customers=1),
        # a2: target -70, engaged -50; a stale record re-read after the newer one
        AccountRow("a2", NOW - 70 * d, "target", 2, 20),
        AccountRow("a2", NOW - 50 * d, "engaged", 2, 21),
        AccountRow("a2", NOW - 50 * d, "buying", 2, 19),
        # a3: target -40; another namespace's later row says buying (not the active model's)
        AccountRow("a3", NOW - 40 * d, "target", 1, 30),
        AccountRow("a3", NOW - 1 * d, "buying", 1, 3, old, "old-accounts-changelog"),
        # a4: target -200 and engaged -150 (before the lookback), buying -20, customer -5
        AccountRow("a4", NOW - 200 * d, "target", 1, 40),
        AccountRow("a4", NOW - 5 * d, "customer", 1, 41, customers=1),
        # a5: target -30, engaged and buying -10 (a chain)
        AccountRow("a5", NOW - 30 * d, "target", 4, 50),
        AccountRow("a5", NOW - 10 * d, "buying", 4, 51),
        # a6: target -60, every member left since: not open
        AccountRow("a6", NOW - 60 * d, "target", 1, 60),
        AccountRow("a6", NOW - 59 * d, "target", 0, 61),
        # a7: only in a retired model's namespace: target -25, buying -20
        AccountRow("a7", NOW - 25 * d, "target", 2, 1, old, "old-accounts-changelog"),
        AccountRow("a7", NOW - 20 * d, "buying", 2, 2, old, "old-accounts-changelog"),
        # a8: target -50, customer -45, lost -20: back in target
        AccountRow("a8", NOW - 50 * d, "target", 2, 80),
        AccountRow("a8", NOW - 20 * d, "target", 2, 81),
    ]
    transitions = [
        move("a1", 80, "target", "engaged"),
        move("a1", 60, "engaged", "buying"),
        move("a1", 30, "buying", "customer"),
        move("a2", 50, "target", "engaged"),
        move("a4", 150, "target", "engaged"),
        move("a4", 20, "engaged", "buying"),
        move("a4", 5, "buying", "customer"),
        move("a5", 10, "target", "engaged"),
        move("a5", 10, "engaged", "buying"),
        move("a7", 20, "target", "buying", old),
        move("a8", 45, "target", "customer"),
        move("a8", 20, "customer", "target"),
    ]

    def member(cid: str, account: str, revenue: float, first_order_days_ago: int | None, **kw: Any) -> Contact:
        first = None if first_order_days_ago is None else NOW - first_order_days_ago * d
        return Contact(
            cid, NOW - 300 * d, NOW - d, "customer", NOW - d, NOW - d, 1, orders=1 if first else 0,
            revenue=revenue, first_order=first, last_order=first, account_id=account, **kw,
        )  # fmt: skip

    members = [
        member("k1", "a1", 300.0, 30),  # a1: 400, first member order -30: a new customer account
        member("k2", "a1", 100.0, 20),
        member("k3", "a4", 200.0, 5),  # a4: 200, new
        member("k4", "a9", 1000.0, 300),  # a9: a customer account since before the lookback
        member("k5", "", 50.0, 10),  # no account
        member("k6", "a2", 0.0, None),  # no order
        member("k7", "a1", 999.0, 10, status="merged", merged_into="k1"),  # merged into k1
    ]
    return Accounts(rows, transitions, members)


def test_forecast_of_a_known_accounts_pipeline(chdb_path: Path) -> None:
    """Lookback 100 days. Entries in it (every model's transitions; the initial stage at the first
    row): target a1 a2 a3 a5 a6 a7 a8 (a1, a8 became customers since: a8 at -45 after entering
    target at -50, then lost), engaged a1 a2 a5 (a1), buying a1 a4 a5 a7 (a1, a4). Open now (the
    active model's latest rows, members left): target a3 a8, engaged a2, buying a5. Value: new
    customer accounts a1 (300 + 100; k7 merged) and a4 (200): 300 each."""
    lookback = 100 * DAY
    accounts = known_accounts()

    async def body(s: Store) -> None:
        await load_accounts(s, accounts)
        got = await reports.forecast(s, MODEL, NOW, lookback)
        section = got.accounts
        assert section.model == MODEL.version and section.customer_stages == ["customer"]
        assert [(a.stage, a.open_accounts, a.entered, a.converted) for a in section.stages] == [
            ("target", 2, 7, 2),
            ("engaged", 1, 3, 1),
            ("buying", 1, 4, 2),
        ]
        assert [a.conversion for a in section.stages] == [2 / 7, 1 / 3, 1 / 2]
        assert (section.value.basis, section.value.customers, section.value.per_customer) == ("new_customers", 2, 300.0)
        expected = [2 * 2 / 7, 1 / 3, 1 / 2]
        assert all(math.isclose(a.expected_customers, e) for a, e in zip(section.stages, expected, strict=True))
        assert all(math.isclose(a.expected_revenue, 300 * e) for a, e in zip(section.stages, expected, strict=True))
        assert math.isclose(section.expected_customers, sum(expected))
        assert math.isclose(section.expected_revenue, 300 * sum(expected))
        # the contacts pipeline and its totals do not take the accounts in
        assert math.isclose(got.expected_revenue, math.fsum(s.expected_revenue for s in got.stages))
        # of the active model only: a7 and the old model's a7 move are gone; open accounts the same
        mine = await reports.forecast(s, MODEL, NOW, lookback, MODEL.version)
        assert [(a.stage, a.open_accounts, a.entered, a.converted) for a in mine.accounts.stages] == [
            ("target", 2, 6, 2),
            ("engaged", 1, 3, 1),
            ("buying", 1, 3, 2),
        ]
        # the retired model's rows: a3 is buying there, a7 buying
        theirs = await reports.forecast(s, MODEL, NOW, lookback, OLD_VERSION)
        assert theirs.accounts.model == OLD_VERSION
        assert [(a.stage, a.open_accounts, a.entered) for a in theirs.accounts.stages] == [
            ("target", 0, 2),
            ("engaged", 0, 0),
            ("buying", 2, 1),
        ]
        # no customer account in the lookback: every customer account's value
        later = await reports.forecast(s, MODEL, NOW, 4 * DAY)
        assert (later.accounts.value.basis, later.accounts.value.customers) == ("all_customers", 3)
        assert math.isclose(later.accounts.value.per_customer, (400 + 200 + 1000) / 3)

    fresh(chdb_path, body)


@pytest.mark.parametrize("model_version", [None, MODEL.version, OLD_VERSION])
def test_forecast_accounts_match_an_independent_computation(chdb_path: Path, model_version: str | None) -> None:
    accounts = generate_accounts()
    lookback = 120 * DAY
    expected = forecast_accounts_expect(accounts, MODEL, NOW, lookback, model_version)
    assert any(c for _, _, c in expected.stages.values()) and any(o for o, _, _ in expected.stages.values())

    async def body(s: Store) -> None:
        await load_accounts(s, accounts)
        got = (await reports.forecast(s, MODEL, NOW, lookback, model_version)).accounts
        assert {a.stage: (a.open_accounts, a.entered, a.converted) for a in got.stages} == expected.stages
        assert (got.value.basis, got.value.customers) == (expected.basis, expected.customers)
        assert math.isclose(got.value.per_customer, expected.value)
        for a in got.stages:
            open_now, entered, converted = expected.stages[a.stage]
            rate = converted / entered if entered else 0.0
            assert math.isclose(a.expected_revenue, open_now * rate * expected.value)
        assert got.expected_revenue > 0 or model_version == OLD_VERSION

    fresh(chdb_path, body)
