"""The pure parts of the reports: cursors, chains of transitions, decay, the default funnel and the
shaping of query rows into bodies (no ClickHouse)."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime

import orjson
import pytest

from analytics import reports
from analytics.reports import InvalidParameter, Position
from schemas.api_analytics import ForecastAccountValueOut, ForecastValueOut, TransitionOut
from schemas.model_file import load_model
from scorestream.identity import anonymous_contact_id
from tests.factories import DAY, DEFAULT_MODEL, model_from

MODEL = DEFAULT_MODEL
NOW = 1_790_000_000_000


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@pytest.mark.parametrize("position", [Position(0, ""), Position(NOW, "u-1"), Position(NOW + 1, "ünï/cødé+=?&")])
def test_cursors_round_trip_and_are_url_safe(position: Position) -> None:
    cursor = reports.encode_cursor(position)
    assert reports.decode_cursor(cursor) == position
    assert all(ch.isalnum() or ch in "-_" for ch in cursor)


def _raw(value: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    ["", "!!!", "bm90IGpzb24", _raw([2, 5, "a"]), _raw([1, -1, "a"]), _raw([1, True, "a"]), _raw([1, 5, 7]), _raw({})],
)
def test_a_cursor_not_made_here_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidParameter, match="cursor"):
        reports.decode_cursor(cursor)


def transition(at_ms: int, src: str, dst: str, trigger: str) -> TransitionOut:
    return TransitionOut(
        at=at(at_ms), from_stage=src, to_stage=dst, rule="r", cause=None, model_version="m", trigger_id=trigger
    )


def test_a_chain_at_one_instant_is_ordered_by_its_links_not_its_ids() -> None:
    chain = [
        transition(NOW, "mql", "sql", "trg_a"),
        transition(NOW, "subscriber", "lead", "trg_c"),
        transition(NOW, "lead", "mql", "trg_b"),
        transition(NOW - DAY, "x", "subscriber", "trg_z"),
        transition(NOW + DAY, "sql", "customer", "trg_0"),
    ]
    ordered = reports.chain_order(chain)
    assert [(t.from_stage, t.to_stage) for t in ordered] == [
        ("x", "subscriber"),
        ("subscriber", "lead"),
        ("lead", "mql"),
        ("mql", "sql"),
        ("sql", "customer"),
    ]
    # transitions that do not link up keep their id order
    loose = [transition(NOW, "a", "b", "trg_2"), transition(NOW, "c", "d", "trg_1")]
    assert [t.trigger_id for t in reports.chain_order(loose)] == ["trg_1", "trg_2"]


def test_decay_halves_per_half_life_and_never_grows() -> None:
    h = MODEL.half_life_ms
    assert reports.decayed(40.0, NOW, NOW + h, h) == 20.0
    assert reports.decayed(40.0, NOW, NOW - h, h) == 40.0
    assert reports.decayed(40.0, None, NOW, h) == 40.0
    assert reports.decayed(-8.0, NOW, NOW + 2 * h, h) == -2.0


def test_the_default_funnel_runs_up_to_the_customer_stage() -> None:
    assert reports.default_funnel(MODEL) == ["subscriber", "lead", "mql", "sql", "opportunity", "customer"]
    assert reports.default_funnel(load_model("schemas/models/b2c.yaml")) == ["visitor", "engaged", "cart", "customer"]
    plain = model_from([{"id": "r", "match": {"type": "page"}, "points": 1}])
    assert reports.default_funnel(plain) == []
    with pytest.raises(InvalidParameter, match="at least one stage"):
        reports.check_stages([], plain)
    reports.check_stages(["anything"], plain)  # a model without a lifecycle: any names


@pytest.mark.parametrize(
    ("stages", "message"),
    [(["lead", "nope"], "unknown stage"), (["lead", "lead"], "twice"), ([f"s{i}" for i in range(21)], "at most 20")],
)
def test_funnel_stages_are_checked(stages: list[str], message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        reports.check_stages(stages, MODEL)


def test_funnel_body_conversions_and_empty_steps() -> None:
    steps = [(1, 10, 0.0), (2, 4, 2.0 * DAY), (3, 1, 5.0 * DAY)]
    stays = [("lead", 12, 8, 4, 1.5 * DAY), ("mql", 5, 0, 5, math.nan)]
    body = reports.funnel_body(["lead", "mql", "sql", "customer"], steps, stays, NOW - DAY, NOW, False, None)
    got = [(s.reached, s.conversion, s.conversion_from_start, s.median_days_from_start) for s in body.stages]
    assert got == [(10, None, 1.0, 0.0), (4, 0.4, 0.4, 2.0), (1, 0.25, 0.1, 5.0), (0, 0.0, 0.0, None)]
    lead, mql, sql, _ = body.stages
    assert (lead.entered, lead.completed_stays, lead.open_stays, lead.median_days_in_stage) == (12, 8, 4, 1.5)
    assert (mql.median_days_in_stage, mql.open_stays) == (None, 5)  # no stay has ended yet
    assert (sql.entered, sql.median_days_in_stage) == (0, None)
    assert body.mode == "cumulative" and body.model_dump(by_alias=True)["from"] == at(NOW - DAY)
    nobody = reports.funnel_body(["lead", "mql"], [], [], NOW - DAY, NOW, True, "default")
    assert [(s.reached, s.conversion, s.conversion_from_start) for s in nobody.stages] == [
        (0, None, None),
        (0, None, None),
    ]


def contact(contact_id: str, position: int, engagement_now: float = 12.5, status: str = "active") -> tuple[object, ...]:
    return (
        contact_id,
        position,
        status,
        "",
        "u",
        "",
        "",
        "lead",
        NOW,
        "",
        ["bot"],
        20.0,
        engagement_now,
        40.0,
        "B",
        "",
        0,
        0.0,
        None,
        None,
        NOW - DAY,
        NOW,
        NOW + 5,
        "m@1",
        {},
    )


def test_a_page_and_its_cursor() -> None:
    rows = [contact("a", 7), contact("b", 7), contact("c", 9)]
    page = reports.contact_page(rows, MODEL, reports.START, 2, NOW)
    assert [r.contact_id for r in page.data] == ["a", "b"] and page.has_more
    assert reports.decode_cursor(page.next_cursor) == Position(7, "b")
    last = reports.contact_page(rows[2:], MODEL, Position(7, "b"), 2, NOW)
    assert not last.has_more and reports.decode_cursor(last.next_cursor) == Position(9, "c")
    empty = reports.contact_page([], MODEL, Position(9, "c"), 2, NOW)
    assert empty.data == [] and reports.decode_cursor(empty.next_cursor) == Position(9, "c")
    row = page.data[0]
    assert (row.engagement, row.engagement_band, row.grade, row.engagement_at_last_seen) == (12.5, "3", "B3", 20.0)
    assert (row.email, row.persona, row.stage, row.flags, row.updated_at) == (None, None, "lead", ["bot"], at(NOW + 5))
    gone = reports.contact_row(contact("d", 1, status="merged"), MODEL, NOW)
    assert (gone.engagement_band, gone.grade) == ("", "")


def test_ids_resolve_in_the_replicas_order() -> None:
    rows = [
        (anonymous_contact_id("x1"), "active", "", ""),
        ("x1", "active", "", "x1@acme.com"),
        ("k", "active", "", "bob@acme.com"),
    ]
    assert reports.resolved("x1", rows) == "x1"  # a contact id before an anonymous id
    assert reports.resolved("x1", rows[:1]) == anonymous_contact_id("x1")  # an anonymous visitor's contact
    assert reports.resolved(" Bob@Acme.com", rows) == "k"
    assert reports.resolved("bob@acme.com", [("k", "merged", "m", "bob@acme.com")]) is None
    assert reports.resolved("nobody", rows) is None


def test_rfm_without_boundaries_names_unsegmented_customers() -> None:
    stored = [("Champions", 3, 300.0, 0), ("", 2, 50.0, 7), ("Lost", 0, 0.0, 4)]
    body = reports.rfm_body([], stored, None)
    assert [(s.segment, s.contacts, s.revenue) for s in body.segments] == [("Champions", 3, 300.0), ("(none)", 2, 50.0)]
    assert (body.customers, body.revenue, body.non_customers, body.grid) == (5, 350.0, 11, [])


def test_forecast_body_uses_zero_for_a_stage_nobody_entered() -> None:
    value = ForecastValueOut(per_customer=100.0, customers=4, basis="new_customers")
    body = reports.forecast_body(
        ["lead", "mql"], ["customer"], [("lead", 10), ("mql", 3)], [("lead", 20, 5)], value, NOW, 90 * DAY, None
    )
    lead, mql = body.stages
    assert (lead.conversion, lead.expected_customers, lead.expected_revenue) == (0.25, 2.5, 250.0)
    assert (mql.open_contacts, mql.conversion, mql.expected_revenue) == (3, None, 0.0)
    assert (body.expected_customers, body.expected_revenue, body.lookback_days) == (2.5, 250.0, 90.0)


def test_forecast_body_without_accounts_has_an_empty_accounts_pipeline() -> None:
    value = ForecastValueOut(per_customer=100.0, customers=4, basis="new_customers")
    body = reports.forecast_body(["lead"], ["customer"], [("lead", 10)], [("lead", 20, 5)], value, NOW, DAY, "m@1")
    assert body.accounts.stages == [] and body.accounts.value.basis == "none"
    assert (body.accounts.expected_revenue, body.expected_revenue) == (0.0, 250.0)


def test_the_accounts_pipeline_is_beside_the_totals_not_in_them() -> None:
    open_stages, won = reports.account_forecast_stages(MODEL)
    assert (open_stages, won) == (["target", "engaged", "buying"], ["customer"])
    accounts = reports.forecast_accounts_body(
        open_stages,
        won,
        [("target", 8), ("buying", 2), ("customer", 5)],
        [("target", 10, 1), ("engaged", 4, 2), ("buying", 5, 4)],
        ForecastAccountValueOut(per_customer=1000.0, customers=3, basis="new_customers"),
        "m@1",
    )
    target, engaged, buying = accounts.stages
    assert (target.open_accounts, target.conversion, target.expected_customers) == (8, 0.1, 0.8)
    assert (engaged.open_accounts, engaged.conversion, engaged.expected_revenue) == (0, 0.5, 0.0)
    assert (buying.expected_customers, buying.expected_revenue) == (1.6, 1600.0)
    assert accounts.model == "m@1" and math.isclose(accounts.expected_customers, 2.4)
    assert math.isclose(accounts.expected_revenue, 2400.0)
    value = ForecastValueOut(per_customer=100.0, customers=4, basis="new_customers")
    body = reports.forecast_body(
        ["lead"], ["customer"], [("lead", 10)], [("lead", 20, 5)], value, NOW, DAY, None, accounts
    )
    assert body.accounts == accounts and (body.expected_customers, body.expected_revenue) == (2.5, 250.0)


def test_account_value_falls_back_like_the_customer_value() -> None:
    assert reports.account_value((2, 500.0, 9, 800.0)) == ForecastAccountValueOut(
        per_customer=500.0, customers=2, basis="new_customers"
    )
    assert reports.account_value((0, math.nan, 9, 800.0)).basis == "all_customers"
    assert reports.account_value((0, math.nan, 0, math.nan)).per_customer == 0.0


def test_customer_value_falls_back_to_all_customers_then_none() -> None:
    assert reports.customer_value((2, 50.0, 9, 80.0)).basis == "new_customers"
    fallback = reports.customer_value((0, math.nan, 9, 80.0))
    assert (fallback.basis, fallback.per_customer, fallback.customers) == ("all_customers", 80.0, 9)
    assert reports.customer_value((0, math.nan, 0, math.nan)).basis == "none"


def test_personas_follow_the_models_order() -> None:
    rows = [
        ("", "lead", 2, 10.0, 5.0, 0.0),
        ("shopper", "customer", 1, 3.0, 0.0, 0.0),
        ("executive", "lead", 4, 30.0, 60.0, 0.0),
        ("zeta", "mql", 1, 1.0, 1.0, 0.0),
    ]
    body = reports.personas_body(rows, MODEL, NOW)
    assert body.personas == ["executive", "shopper", "zeta", None]
    assert body.stages == ["lead", "mql", "customer"]
    assert [(c.persona, c.stage) for c in body.cells] == [
        ("executive", "lead"),
        ("shopper", "customer"),
        ("zeta", "mql"),
        (None, "lead"),
    ]
    assert body.contacts == 8
    assert body.group is None and all(c.avg_group_score is None for c in body.cells)
