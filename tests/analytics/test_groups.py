"""Score groups in the archive: the sync list's group filter and the groups report, against real
chDB, checked against answers computed in Python from the generated rows (each group's raw score
decayed at its own half-life from ``last_seen``, then clamped by its ``max``)."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from analytics import groups, overview, reports
from analytics.client import Store
from analytics.migrations import migrate
from analytics.reports import ContactFilter, InvalidParameter
from analytics.rows import CONTACT_COLUMNS, LEDGER_COLUMNS
from schemas.api_analytics import ContactRowOut
from scorestream.rules.groups import ScoreGroup
from scorestream.scoring import band_of, round_score
from tests.analytics.archive import NOW, Contact, ledger_row
from tests.factories import DAY, HOUR
from tests.grouped import GROUPED_MODEL

MODEL = GROUPED_MODEL


def _group(group_id: str) -> ScoreGroup:
    found = MODEL.group(group_id)
    assert found is not None
    return found


HARDWARE, TRAINING = _group("hardware"), _group("training")


def generate(n: int = 60, seed: int = 11) -> list[Contact]:
    """Active contacts with raw group scores (some with none, some negative, training's often beyond
    its max), a few merged or deleted ones carrying scores the list must not show."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        last_seen = NOW - rng.randrange(0, 40 * DAY) + (HOUR if i % 17 == 0 else 0)  # a few in the future
        groups: dict[str, float] = {}
        if rng.random() < 0.7:
            groups["hardware"] = round(rng.uniform(-20, 120), 3)
        if rng.random() < 0.6:
            groups["training"] = round(rng.uniform(0, 90), 3)
        out.append(
            Contact(
                f"g-{i:03d}",
                NOW - 60 * DAY,
                last_seen,
                "lead",
                NOW - 50 * DAY,
                NOW - i,
                100 + i,
                engagement=10.0,
                groups=groups,
            )
        )
    out[3] = replace(out[3], status="merged", merged_into="g-004", offset=900)
    out[8] = replace(out[8], status="deleted", offset=901)
    for i in range(0, n, 4):
        out[i] = replace(out[i], stage="mql")
    return out


CONTACTS = generate()


def expected_score(c: Contact, group_id: str, now: int = NOW) -> float:
    group = _group(group_id)
    raw = c.groups.get(group_id, 0.0) * math.pow(2.0, -max(now - c.last_seen, 0) / group.half_life_ms)
    limit = group.max if group.max is not None else math.inf
    return min(max(raw, -limit), limit)


def in_fresh_archive(chdb_path: Path, body: Callable[[Store], Awaitable[None]]) -> None:
    async def go() -> None:
        store = Store(f"chdb://{chdb_path}?database=groups_{uuid.uuid4().hex[:8]}")
        try:
            await migrate(store)
            await store.insert("contacts", CONTACT_COLUMNS, [c.row() for c in CONTACTS])
            # a stale version of every contact with other scores (an older offset, inserted later)
            stale = [replace(c, offset=c.offset - 90, groups={"hardware": 999.0}) for c in CONTACTS]
            await store.insert("contacts", CONTACT_COLUMNS, [c.row() for c in stale])
            await body(store)
        finally:
            await store.close()

    asyncio.run(go())


async def listed(store: Store, filters: ContactFilter) -> list[ContactRowOut]:
    page = await reports.contact_list(store, MODEL, filters, reports.START, 1000, NOW, 0)
    assert not page.has_more
    return page.data


@pytest.mark.parametrize(
    ("group", "min_score"),
    [("hardware", None), ("training", None), ("hardware", 25.0), ("training", 29.0), ("hardware", -5.0)],
)
def test_the_sync_list_filters_by_a_groups_score_decayed_to_now(
    chdb_path: Path, group: str, min_score: float | None
) -> None:
    active = [c for c in CONTACTS if c.status == "active"]
    expected = sorted(
        c.id for c in active if group in c.groups and (min_score is None or expected_score(c, group) >= min_score)
    )
    assert expected and len(expected) < len(active)  # the filter selects, and leaves some out

    async def body(store: Store) -> None:
        rows = await listed(store, ContactFilter(group=group, min_score=min_score))
        assert sorted(r.contact_id for r in rows) == expected

    in_fresh_archive(chdb_path, body)


def test_every_row_shows_every_groups_score_as_the_contact_route_does(chdb_path: Path) -> None:
    async def body(store: Store) -> None:
        rows = {r.contact_id: r for r in await listed(store, ContactFilter(include_removed=True))}
        assert len(rows) == len(CONTACTS)
        for c in CONTACTS:
            row = rows[c.id]
            if c.status != "active":
                assert row.groups == []
                continue
            assert [g.id for g in row.groups] == [g.id for g in MODEL.groups]
            shown = {g.id: g for g in row.groups}
            for group in MODEL.groups:
                score = round_score(expected_score(c, group.id))
                assert shown[group.id].score == pytest.approx(score, abs=2e-6)
                assert shown[group.id].band == band_of(group.bands, shown[group.id].score)
        clamped = [c for c in CONTACTS if c.status == "active" and expected_score(c, "training") == TRAINING.max]
        assert clamped, "some training scores are clamped at its max"

    in_fresh_archive(chdb_path, body)


def test_unknown_groups_and_a_min_score_without_a_group_are_refused() -> None:
    with pytest.raises(InvalidParameter, match=r"unknown score group 'hardwear'.*hardware, training") as err:
        reports.group_filter(ContactFilter(group="hardwear"), MODEL)
    assert err.value.param == "group"
    with pytest.raises(InvalidParameter, match="give `group`") as err:
        reports.group_filter(ContactFilter(min_score=3.0), MODEL)
    assert err.value.param == "min_score"
    assert reports.group_filter(ContactFilter(group="training"), MODEL) is TRAINING


# --- the groups report -------------------------------------------------------------------------


@pytest.mark.parametrize("stages", [(), ("lead",), ("mql",)])
def test_the_groups_report_spreads_each_groups_contacts_over_its_bands(
    chdb_path: Path, stages: tuple[str, ...]
) -> None:
    active = [c for c in CONTACTS if c.status == "active" and (not stages or c.stage in stages)]

    async def body(store: Store) -> None:
        report = await groups.groups_report(store, MODEL, NOW, stages)
        assert report.contacts == len(active) and report.stages == list(stages) and report.model == MODEL.version
        assert [g.id for g in report.groups] == [g.id for g in MODEL.groups]
        for group, shown in zip(MODEL.groups, report.groups, strict=True):
            scored = [expected_score(c, group.id) for c in active if group.id in c.groups]
            assert shown.contacts == len(scored) and shown.without_points == len(active) - len(scored)
            assert shown.avg_score == pytest.approx(sum(scored) / len(scored) if scored else 0.0, abs=1e-6)
            assert [b.band for b in shown.bands] == [b.label for b in group.bands]
            for band in shown.bands:
                inside = [s for s in scored if band_of(group.bands, s) == band.band]
                assert band.contacts == len(inside), (group.id, band.band)
                assert band.avg_score == pytest.approx(sum(inside) / len(inside) if inside else 0.0, abs=1e-6)
                assert band.share == pytest.approx(len(inside) / len(scored) if scored else 0.0)
        if not stages:
            hardware = next(g for g in report.groups if g.id == "hardware")
            assert sum(b.contacts > 0 for b in hardware.bands) >= 3, "the data spreads over several bands"
            assert hardware.bands[-1].min is None

    in_fresh_archive(chdb_path, body)


# --- the history ---------------------------------------------------------------------------------


def test_the_history_shows_each_groups_score_at_each_change_and_as_of(chdb_path: Path) -> None:
    def row(at: int, offset: int, groups: dict[str, float]) -> list[Any]:
        values = dict(zip(LEDGER_COLUMNS, ledger_row("h-1", at, 30.0, 10.0, "lead", offset, ["r"], ["m"]), strict=True))
        values.update(model_version=MODEL.version, groups=groups)
        return [values[c] for c in LEDGER_COLUMNS]

    first, second = NOW - 10 * DAY, NOW - 3 * DAY
    rows = [row(first, 1, {"hardware": 40.0}), row(second, 2, {"hardware": 70.0, "training": 38.0})]

    async def body(store: Store) -> None:
        await store.insert("score_ledger", LEDGER_COLUMNS, rows)
        found = await reports.history(store, MODEL, "h-1", None, NOW, NOW, 100)
        shown = [{g.id: g.score for g in r.groups} for r in found.ledger]
        assert shown == [
            {**{g.id: 0.0 for g in MODEL.groups}, "hardware": 40.0},
            {**{g.id: 0.0 for g in MODEL.groups}, "hardware": 70.0, "training": 30.0},  # clamped at its max
        ]
        assert found.as_of is not None
        as_of = {g.id: g for g in found.as_of.groups}
        hardware = 70.0 * math.pow(2.0, -3 * DAY / HARDWARE.half_life_ms)
        training = min(38.0 * math.pow(2.0, -3 * DAY / TRAINING.half_life_ms), 30.0)
        assert as_of["hardware"].score == pytest.approx(hardware, abs=1e-6)
        assert as_of["training"].score == pytest.approx(training, abs=1e-6) and training < 30.0
        assert as_of["training"].band == band_of(TRAINING.bands, as_of["training"].score)

    in_fresh_archive(chdb_path, body)


# --- personas per group ----------------------------------------------------------------------------


def test_personas_show_each_cells_mean_score_of_a_group(chdb_path: Path) -> None:
    personas = ["", "executive", "practitioner"]
    contacts = [replace(c, persona=personas[i % 3], offset=c.offset + 1000) for i, c in enumerate(CONTACTS)]
    active = [c for c in contacts if c.status == "active"]

    async def body(store: Store) -> None:
        await store.insert("contacts", CONTACT_COLUMNS, [c.row() for c in contacts])  # newer offsets
        report = await reports.personas(store, MODEL, NOW, HARDWARE)
        assert report.group == "hardware" and report.contacts == len(active)
        for cell in report.cells:
            inside = [c for c in active if (c.persona or None, c.stage) == (cell.persona, cell.stage)]
            assert cell.contacts == len(inside)
            mean = sum(expected_score(c, "hardware") for c in inside) / len(inside)
            assert cell.avg_group_score == pytest.approx(mean, abs=1e-6)
        plain = await reports.personas(store, MODEL, NOW)
        assert plain.group is None and all(c.avg_group_score is None for c in plain.cells)
        assert [c.avg_engagement for c in plain.cells] == [c.avg_engagement for c in report.cells]

    in_fresh_archive(chdb_path, body)


# --- the overview's movers by a group ----------------------------------------------------------------


def test_the_movers_by_a_group_rank_its_rise(chdb_path: Path) -> None:
    since, seen = NOW - HOUR, NOW - 10 * 60_000
    month = HARDWARE.half_life_ms

    def contact(cid: str, offset: int, groups: dict[str, float]) -> Contact:
        return Contact(cid, NOW - 9 * DAY, seen, "lead", NOW - 9 * DAY, seen, offset, engagement=5.0, groups=groups)

    def row(cid: str, at: int, offset: int, groups: dict[str, float]) -> list[Any]:
        values = dict(zip(LEDGER_COLUMNS, ledger_row(cid, at, 5.0, 10.0, "lead", offset, ["r"], ["m"]), strict=True))
        values.update(model_version=MODEL.version, groups=groups)
        return [values[c] for c in LEDGER_COLUMNS]

    contacts = [
        contact("m-a", 1, {"hardware": 60.0}),  # 20 a day before the window, 60 in it
        contact("m-b", 2, {"hardware": 30.0}),  # new in the window
        contact("m-c", 3, {"training": 20.0}),  # only training rose
        contact("m-d", 4, {"hardware": 40.0}),  # hardware fell from 80
    ]
    ledger = [
        row("m-a", since - DAY, 1, {"hardware": 20.0}),
        row("m-a", seen, 2, {"hardware": 60.0}),
        row("m-b", seen, 3, {"hardware": 30.0}),
        row("m-c", seen, 4, {"training": 20.0}),
        row("m-d", since - DAY, 5, {"hardware": 80.0}),
        row("m-d", seen, 6, {"hardware": 40.0}),
    ]

    async def body(store: Store) -> None:
        await store.command("TRUNCATE TABLE contacts")
        await store.insert("contacts", CONTACT_COLUMNS, [c.row() for c in contacts])
        await store.insert("score_ledger", LEDGER_COLUMNS, ledger)
        found = await overview.overview(store, MODEL, NOW, group=HARDWARE)
        assert found.group == "hardware" and [m.contact_id for m in found.movers] == ["m-a", "m-b"]
        a, b = found.movers
        now_a = 60.0 * math.pow(2.0, -(NOW - seen) / month)
        then_a = 20.0 * math.pow(2.0, -DAY / month)
        assert a.group_score == pytest.approx(now_a, abs=1e-6) and a.group_before == pytest.approx(then_a, abs=1e-6)
        assert a.rise == pytest.approx(now_a - then_a, abs=1e-6) and b.group_before == 0.0
        assert a.engagement == pytest.approx(5.0 * math.pow(2.0, -(NOW - seen) / MODEL.half_life_ms), abs=1e-6)
        overall = await overview.overview(store, MODEL, NOW)
        assert overall.group is None and all(m.group_score is None for m in overall.movers)

    in_fresh_archive(chdb_path, body)
