"""The score-quality report against real chDB: a tiny archive whose rates, lifts, deciles and AUC are
worked out by hand in the comments (orders and stage entries as outcomes, a merge, a decayed score,
a shadow model beside the active one), and ClickHouse's AUC against scikit-learn's
``roc_auc_score`` on a few thousand generated contacts with tied scores."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]  # no stubs

from analytics import score_quality as sq
from analytics.client import Store
from analytics.migrations import migrate
from analytics.reports import InvalidParameter
from analytics.rows import CONTACT_COLUMNS, EVENT_COLUMNS, LEDGER_COLUMNS, TRIGGER_COLUMNS, event_row
from scorestream.scoring import band_of
from tests.analytics.archive import Contact
from tests.analytics.test_rows import rec
from tests.factories import DAY, DEFAULT_MODEL, T0, iso, segment_json
from tests.grouped import GROUPED_MODEL

MODEL = DEFAULT_MODEL
SHADOW = "shadow@5ad0w"
T = T0 + 100 * DAY  # the one snapshot
H = 30 * DAY
NOW = T + 31 * DAY
ACTIVE = sq.Evaluated(MODEL.version, MODEL, "app", "active")
SHADOWED = sq.Evaluated(SHADOW, MODEL, "app-shadow", "shadow")
COLUMNS = tuple(LEDGER_COLUMNS) if "groups" in LEDGER_COLUMNS else (*LEDGER_COLUMNS, "groups")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class Rows:
    def __init__(self) -> None:
        self.offset = 0
        self.ledger: list[list[Any]] = []
        self.events: list[list[Any]] = []
        self.triggers: list[list[Any]] = []

    def next(self) -> int:
        self.offset += 1
        return self.offset

    def score(self, contact: str, at: int, engagement: float, stage: str, fit: float = 40.0, **kw: Any) -> None:
        version = kw.get("version", MODEL.version)
        values: dict[str, Any] = {
            "contact_id": contact,
            "at": at,
            "kind": kw.get("kind", "score"),
            "cause": "events",
            "engagement": engagement,
            "engagement_band": band_of(MODEL.engagement_bands, engagement),
            "fit": fit,
            "fit_grade": band_of(MODEL.fit_grades, fit),
            "stage": stage,
            "rules": [],
            "message_ids": [],
            "merged_into": kw.get("merged_into", ""),
            "model_version": version,
            "kafka_topic": "app-shadow.cl" if version == SHADOW else "app.cl",
            "kafka_partition": 0,
            "kafka_offset": self.next(),
            "written_at": at,
            "groups": kw.get("groups", {}),
        }
        self.ledger.append([values[c] for c in COLUMNS])

    def order(self, user: str, at: int, revenue: float = 10.0) -> None:
        props = {"order_id": f"o-{self.offset}", "revenue": revenue, "currency": "EUR"}
        raw = segment_json(userId=user, anonymousId=None, event="Order Completed", properties=props, timestamp=iso(at))
        row = event_row(rec(raw, "events.web", self.next(), timestamp=at), "web")
        assert row is not None
        self.events.append(row)

    def entered(self, contact: str, at: int, stage: str) -> None:
        offset = self.next()
        values: dict[str, Any] = {
            "id": f"trg-{offset}",
            "type": "stage.changed",
            "at": at,
            "subject": contact,
            "contact_id": contact,
            "account_id": "",
            "before": orjson.dumps("lead").decode(),
            "after": orjson.dumps(stage).decode(),
            "rule": "r",
            "cause": "",
            "model_version": MODEL.version,
            "kafka_topic": "triggers",
            "kafka_partition": 0,
            "kafka_offset": offset,
            "written_at": at,
        }
        self.triggers.append([values[c] for c in TRIGGER_COLUMNS])


def hand_built() -> tuple[Rows, list[list[Any]]]:
    r = Rows()
    # scores at t (rows at t: no decay), stage, and what happened next
    r.score("c1", T, 80.0, "mql")  # orders at t+5d: positive; enters customer at t+2d
    r.order("c1", T + 5 * DAY)
    r.entered("c1", T + 2 * DAY, "customer")
    r.score("c2", T, 60.0, "mql")  # nothing
    r.score("c3", T, 60.0, "lead")  # orders at t+40d: after the horizon, negative
    r.order("c3", T + 40 * DAY)
    r.score("c4", T, 40.0, "lead")  # a free order at t+10d: positive; customer at t+40d: too late
    r.order("c4", T + 10 * DAY, revenue=0.0)
    r.entered("c4", T + 40 * DAY, "customer")
    r.score("c5", T, 20.0, "lead")  # nothing
    r.score("c6", T, 20.0, "customer")  # ordered at t-5d only (before t): negative; customer before t
    r.order("c6", T - 5 * DAY)
    r.entered("c6", T - 5 * DAY, "customer")
    r.score("c7", T - 10 * DAY, 90.0, "mql")  # merged before t: not scored at t
    r.score("c7", T - DAY, 0.0, "", kind="merged", merged_into="c1")
    r.score("anonymous:v8", T, 50.0, "subscriber")  # a visitor, merged into c8 after t, who orders as c8
    r.score("anonymous:v8", T + DAY, 0.0, "", kind="merged", merged_into="c8")
    r.order("c8", T + 3 * DAY)
    r.entered("c8", T + DAY, "customer")
    r.score("c10", T - 14 * DAY, 100.0, "mql")  # 100 a half-life (14 days) before t: 50 at t
    r.score("c9", T + DAY, 90.0, "mql")  # first scored after t: not in
    r.order("c9", T + 2 * DAY)
    # the shadow scores only c1 and the visitor as MQLs, the others lower
    r.score("c1", T, 90.0, "mql", version=SHADOW)
    r.score("anonymous:v8", T, 70.0, "mql", version=SHADOW)
    r.score("c2", T, 10.0, "lead", version=SHADOW)
    r.score("c5", T, 5.0, "lead", version=SHADOW)
    contacts = [
        Contact("anonymous:v8", T, T, "", T, T, 1, status="merged", merged_into="c8").row(),
        Contact("c7", T, T, "", T, T, 1, status="merged", merged_into="c1").row(),
    ]
    return r, contacts


async def fill(store: Store, r: Rows, contacts: list[list[Any]]) -> None:
    await migrate(store)
    await store.insert("score_ledger", COLUMNS, r.ledger)
    await store.insert("score_ledger", COLUMNS, r.ledger[:4])  # a re-read
    await store.insert("events", EVENT_COLUMNS, r.events)
    await store.insert("triggers", TRIGGER_COLUMNS, r.triggers)
    await store.insert("contacts", CONTACT_COLUMNS, contacts)


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[Store]:
    s = Store(f"chdb://{chdb_path}?database=quality_{uuid.uuid4().hex[:8]}")
    run(fill(s, *hand_built()))
    yield s
    s.close_sync()


def report(store: Store, outcome: sq.Outcome, *models: sq.Evaluated) -> Any:
    return run(sq.score_quality(store, models or (ACTIVE,), outcome, T, T + 1, H, DAY, NOW, min_n=1, min_class=1))


def test_orders_by_hand(store: Store) -> None:
    r = report(store, sq.Outcome())
    assert [t.timestamp() * 1000 for t in r.snapshots] == [T]
    m = r.models[0]
    # pairs: c1 80 P, c2 60 N, c3 60 N, c4 40 P, c5 20 N, c6 20 N, v8 50 P, c10 50 N (decayed from 100)
    assert (m.n, m.contacts, m.positives, m.base_rate) == (8, 8, 3, 3 / 8)
    # U = c1: 5 negatives below + v8: 2 below (20, 20) and a tie (c10) counted half + c4: 2 below = 9.5; / (3 x 5)
    assert m.auc == pytest.approx(9.5 / 15, abs=1e-12)
    # ranks of 20,20,40,50,50,60,60,80: 1,1,3,4,4,6,6,8 -> deciles 1 + (10 (rank - 1)) // 8: 1,1,3,4,4,7,7,9
    deciles = {c.key: (c.n, c.positives, c.rate) for c in m.deciles}
    assert deciles == {"1": (2, 0, 0.0), "3": (1, 1, 1.0), "4": (2, 1, 0.5), "7": (2, 0, 0.0), "9": (1, 1, 1.0)}
    top = next(c for c in m.deciles if c.key == "9")
    assert top.lift == pytest.approx(1.0 / (3 / 8)) and top.mean_score == 80.0
    assert [(c.decile, c.mean_score, c.observed_rate) for c in m.calibration][2] == (4, 50.0, 0.5)
    # grades: fit 40 is B; bands 1 (>= 60), 2 (>= 30), 3 (>= 10): B1 c1 c2 c3 (1 of 3), B2 c4 v8 c10 (2 of 3), B3 (0 of 2)
    grades = {c.key: (c.n, c.positives) for c in m.grades}
    assert grades == {"B1": (3, 1), "B2": (3, 2), "B3": (2, 0)}
    stages = {c.key: (c.n, c.positives) for c in m.stages}
    assert stages == {"subscriber": (1, 1), "lead": (3, 1), "mql": (3, 1), "customer": (1, 0)}
    assert [c.key for c in m.stages] == ["subscriber", "lead", "mql", "customer"]  # the model's order


def test_a_stage_outcome_leaves_out_who_was_there_already(store: Store) -> None:
    m = report(store, sq.Outcome("customer")).models[0]
    # c6 is a customer at t: out. Entries in (t, t+30d]: c1 (t+2d), c8 (the visitor's survivor, t+1d); c4's too late
    assert (m.n, m.positives) == (7, 2)
    # U = c1: 5 below (60, 60, 40, 20, 50) + v8: 2 below (40, 20) and c10's tie half = 7.5; / (2 x 5)
    assert m.auc == pytest.approx(0.75, abs=1e-12)


def test_the_shadow_beside_the_active_model(store: Store) -> None:
    r = report(store, sq.Outcome(), ACTIVE, SHADOWED)
    active, shadow = r.models
    assert active.n == 8 and shadow.n == 4 and shadow.role == "shadow"
    # the shadow's MQLs: c1, v8, both ordered (100%); the active model's: c1, c2, c10 (1 of 3)
    mql = next(c for c in r.comparisons if c.group == "mql")
    assert mql.ratio == pytest.approx(3.0)
    assert mql.text == "the shadow's mqls convert 3.0x better (100.0% against 33.3%)"
    assert r.comparisons[-1].group == "all" and r.comparisons[-1].shadow_rate == 1.0  # its AUC: both positives on top


def test_too_little_data_gives_n_and_notes_not_numbers(store: Store) -> None:
    r = run(sq.score_quality(store, (ACTIVE,), sq.Outcome(), T, T + 1, H, DAY, NOW))  # min_n 30, min_class 10
    m = r.models[0]
    assert m.n == 8 and m.base_rate is None and m.auc is None and len(m.notes) == 2
    assert all(c.rate is None and c.note for c in m.deciles)
    early = run(sq.score_quality(store, (ACTIVE,), sq.Outcome(), T, T + 1, H, DAY, T + DAY))  # horizon not over
    assert early.models == [] and early.snapshots == [] and early.notes


def test_parameters_are_checked() -> None:
    assert sq.parse_duration("horizon", "30d") == 30 * DAY and sq.parse_duration("every", "2w") == 14 * DAY
    assert (
        sq.parse_outcome("stage:mql", MODEL) == sq.Outcome("mql") and sq.parse_outcome("order", MODEL).name == "order"
    )
    for bad in ("30", "-1d", "0d", "5y"):
        with pytest.raises(InvalidParameter):
            sq.parse_duration("horizon", bad)
    for bad in ("stage:nope", "stage:subscriber", "orders"):
        with pytest.raises(InvalidParameter):
            sq.parse_outcome(bad, MODEL)
    with pytest.raises(InvalidParameter):
        sq.snapshots(0, 1000 * DAY, DAY, H, 2000 * DAY)


def test_auc_equals_scikit_learns_on_generated_data(chdb_path: Path) -> None:
    rng = random.Random(20)
    r = Rows()
    scores: list[float] = []
    outcomes: list[int] = []
    for i in range(3000):
        score = float(rng.randint(0, 40)) * 2.5  # 41 distinct values: many ties
        ordered = rng.random() < 0.05 + 0.6 * score / 100
        r.score(f"g{i}", T, score, "lead")
        if ordered:
            r.order(f"g{i}", T + rng.randint(1, 29) * DAY)
        scores.append(score)
        outcomes.append(int(ordered))
    s = Store(f"chdb://{chdb_path}?database=quality_gen_{uuid.uuid4().hex[:8]}")
    try:
        run(fill(s, r, []))
        m = run(sq.score_quality(s, (ACTIVE,), sq.Outcome(), T, T + 1, H, DAY, NOW)).models[0]
    finally:
        s.close_sync()
    assert m.n == 3000 and m.positives == sum(outcomes)
    assert m.auc is not None and abs(m.auc - roc_auc_score(outcomes, scores)) < 1e-9
    # deciles go up with the score, and the top one's lift is above 1
    rates = [c.rate for c in m.deciles]
    assert all(x is not None for x in rates) and rates[-1] > rates[0]
    assert m.deciles[-1].lift is not None and m.deciles[-1].lift > 1


def test_a_score_groups_score_by_hand(chdb_path: Path) -> None:
    """``training`` (tests/grouped.py): half-life 7 days, max 30, bands hot >= 20, warm >= 5, cold."""
    model = GROUPED_MODEL
    training = model.group("training")
    assert training is not None
    r = Rows()
    v = model.version
    r.score("g1", T, 10.0, "lead", groups={"training": 50.0}, version=v)  # clamped to 30; orders: positive
    r.order("g1", T + DAY)
    r.score("g2", T, 10.0, "lead", groups={"training": 20.0}, version=v)
    r.score("g3", T, 10.0, "lead", groups={"training": 10.0}, version=v)  # orders: positive
    r.order("g3", T + DAY)
    r.score("g4", T, 10.0, "lead", version=v)  # no points in the group: 0
    r.score("g5", T - 7 * DAY, 10.0, "lead", groups={"training": 40.0}, version=v)  # a half-life before: 20
    s = Store(f"chdb://{chdb_path}?database=quality_group_{uuid.uuid4().hex[:8]}")
    try:
        run(fill(s, r, []))
        evaluated = sq.Evaluated(model.version, model, None, "active", training)
        report = run(sq.score_quality(s, (evaluated,), sq.Outcome(), T, T + 1, H, DAY, NOW, min_n=1, min_class=1))
    finally:
        s.close_sync()
    m = report.models[0]
    assert report.group == "training" and (m.n, m.positives) == (5, 2)
    # g1 (30) above g2, g5 (20) and g4 (0): 3; g3 (10) above g4: 1; U = 4 over 2 x 3
    assert m.auc == pytest.approx(4 / 6, abs=1e-12)
    # the group's bands: B (fit 40) with hot (g1, g2, g5), warm (g3), cold (g4)
    assert {c.key: (c.n, c.positives) for c in m.grades} == {"Bhot": (3, 1), "Bwarm": (1, 1), "Bcold": (1, 0)}
    assert [c.key for c in m.grades] == ["Bhot", "Bwarm", "Bcold"]
    assert max(c.max_score or 0 for c in m.deciles) == 30.0
