"""The customer-value fields: the model file's windows and churn bands, a customer's outlook
(predicted CLV, P(order), churn risk, next order), the churn band's exact change instants and the
``customer.churn_risk_changed`` trigger of the fold."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.state import decode_state, encode
from schemas.value import ValueOut, value_body
from scorestream.clv import (
    BgNbdFit,
    BgNbdParams,
    GammaGammaFit,
    GammaGammaParams,
    clv,
    median_time_to_purchase,
    p_no_purchase,
)
from scorestream.errors import ModelError
from scorestream.fold import Tick, step
from scorestream.population import ClvFit, PopulationModel, churn_for, value_view
from scorestream.rfm import DAY_MS, CustomerValue, apply_purchase_events, clv_summary
from scorestream.rules.value import DEFAULT_CLV, ClvSettings, ValueConfig
from scorestream.state import ContactState
from tests.factories import DAY, DEFAULT_MODEL, T0, make_event

BG = BgNbdParams(r=0.5, alpha=20.0, a=0.8, b=2.5)
GG = GammaGammaParams(p=6.0, q=4.0, v=15.0)
FITTED_AT = T0 - 5 * DAY
FIT = ClvFit(BgNbdFit(BG, -1.0, 500, 10, True), GammaGammaFit(GG, -1.0, 200, 10, True), FITTED_AT, 500)
POPULATION = PopulationModel(FITTED_AT, 500, (0,), None, 0.001, FIT)
CONFIG = ValueConfig()


def order(order_id: str, ts: int, total: float = 40.0) -> Any:
    return make_event(
        event="Order Completed", channel="web", timestamp_ms=ts, properties={"order_id": order_id, "total": total}
    )


def ledger(*events: Any) -> CustomerValue:
    return apply_purchase_events(None, events, CONFIG)


# --- the model file ----------------------------------------------------------------------------


def test_defaults_are_klaviyos_and_the_bands_split_at_the_levels() -> None:
    assert (DEFAULT_CLV.predicted_clv_days, DEFAULT_CLV.churn_window_days) == (365.0, 90.0)
    assert [DEFAULT_CLV.band(r) for r in (0.0, 0.3299, 0.33, 0.6599, 0.66, 1.0)] == [
        "Low",
        "Low",
        "Medium",
        "Medium",
        "High",
        "High",
    ]
    config = ValueConfig.from_dict({"predicted_clv_days": 180, "churn_risk": {"window_days": 60, "high": 0.8}})
    assert config.clv == ClvSettings(predicted_clv_days=180, churn_window_days=60, medium=0.33, high=0.8)
    assert ValueConfig.from_dict({}).clv == DEFAULT_CLV


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"predicted_clv_days": 0}, r"value\.predicted_clv_days: expected a number of days"),
        ({"predicted_clv_days": "year"}, r"value\.predicted_clv_days"),
        ({"churn_risk": {"window_days": -5}}, r"value\.churn_risk\.window_days"),
        ({"churn_risk": {"medium": 1.2}}, r"value\.churn_risk\.medium: expected a probability"),
        ({"churn_risk": {"medium": 0.7, "high": 0.6}}, r"medium \(0\.7\) must be below high \(0\.6\)"),
        ({"churn_risk": {"low": 0.1}}, r"value\.churn_risk: unknown key\(s\) \['low'\]"),
        ({"churn_risk": [0.3, 0.6]}, r"value\.churn_risk: expected a mapping"),
        ({"churn_risk": {"high": True}}, r"value\.churn_risk\.high"),
    ],
)
def test_bad_settings_name_their_place(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ValueConfig.from_dict(raw)


# --- a customer's outlook ----------------------------------------------------------------------


def test_the_outlook_follows_from_the_fits_and_the_settings() -> None:
    value = ledger(order("A", T0, 30.0), order("B", T0 + 20 * DAY, 50.0), order("C", T0 + 50 * DAY, 70.0))
    now = T0 + 60 * DAY
    view = value_view(value, now, POPULATION)
    assert view is not None and view.outlook is not None
    s = clv_summary(value, now, DAY_MS)
    assert s is not None and (s.frequency, s.recency, s.T) == (2, 50.0, 60.0)
    ahead = view.outlook
    assert ahead.predicted_clv == clv(BG, GG, 2, 50.0, 60.0, 60.0, 365.0)
    assert view.clv_90d is not None and ahead.predicted_clv is not None and ahead.predicted_clv > view.clv_90d
    assert ahead.p_order == 1.0 - p_no_purchase(BG, 365.0, 2, 50.0, 60.0)
    assert ahead.churn_risk == p_no_purchase(BG, 90.0, 2, 50.0, 60.0)
    assert ahead.churn_band == DEFAULT_CLV.band(ahead.churn_risk)
    median = median_time_to_purchase(BG, 2, 50.0, 60.0)
    assert median is not None and ahead.next_order_ms == now + math.ceil(median * DAY_MS)
    assert view.days_between_orders == 25.0
    body = value_body(view)
    ValueOut.model_validate(body)
    clv_body = body["clv"]
    assert clv_body["historic_clv"] == 150.0 and clv_body["predicted_window_days"] == 365.0
    assert clv_body["churn_risk_band"] == ahead.churn_band and clv_body["next_order_expected"] is not None
    # other windows: the model file's
    wider = ClvSettings(predicted_clv_days=730.0, churn_window_days=30.0, medium=0.1, high=0.2)
    other = value_view(value, now, POPULATION, settings=wider)
    assert other is not None and other.outlook is not None
    assert other.outlook.churn_risk == p_no_purchase(BG, 30.0, 2, 50.0, 60.0)
    assert other.outlook.predicted_clv == clv(BG, GG, 2, 50.0, 60.0, 60.0, 730.0)
    assert value_body(other)["clv"]["churn_window_days"] == 30.0


def test_no_outlook_without_a_fit_and_no_median_for_a_customer_probably_gone() -> None:
    value = ledger(order("A", T0), order("B", T0 + DAY))
    view = value_view(value, T0 + 2 * DAY, None)
    assert view is not None and view.outlook is None
    body = value_body(view)["clv"]
    assert (body["churn_risk"], body["churn_risk_band"], body["predicted_clv"]) == (None, None, None)
    assert body["historic_clv"] == 80.0 and body["days_between_orders"] == 1.0
    late = value_view(value, T0 + 3000 * DAY, POPULATION)
    assert late is not None and late.outlook is not None
    assert late.outlook.next_order_ms is None and late.outlook.churn_band == "High"
    single = value_view(ledger(order("A", T0)), T0 + DAY, POPULATION)
    assert single is not None and single.days_between_orders is None


# --- the band's change instants ----------------------------------------------------------------


def test_the_band_changes_at_computable_instants() -> None:
    value = ledger(order("A", T0), order("B", T0 + 10 * DAY), order("C", T0 + 20 * DAY))
    first = churn_for(value, T0 + 20 * DAY, POPULATION)
    assert first is not None and first.band == "Low" and first.entered_ms == T0 + 20 * DAY
    to_medium = first.next_change_ms
    assert to_medium is not None and to_medium > T0 + 20 * DAY
    just_before = churn_for(value, to_medium - 1, POPULATION)
    assert just_before is not None and just_before.band == "Low" and just_before.next_change_ms == to_medium
    medium = churn_for(value, to_medium, POPULATION)
    assert medium is not None and medium.band == "Medium" and medium.entered_ms == to_medium
    assert medium.next_change_ms is not None
    high = churn_for(value, medium.next_change_ms + 40 * DAY, POPULATION)
    assert high is not None and high.band == "High" and high.entered_ms == medium.next_change_ms
    assert high.next_change_ms is None
    assert churn_for(value, T0 + 30 * DAY, None) is None
    assert churn_for(None, T0, POPULATION) is None


# --- the trigger -------------------------------------------------------------------------------


def _churn_of(state: ContactState, as_of_ms: int) -> Any:
    return churn_for(state.value, as_of_ms, POPULATION)


def _run(delay: int) -> tuple[list[dict[str, Any]], ContactState]:
    """Three orders, then a tick whenever something is due, ``delay`` late (the worker's clock),
    until the band is High."""
    events = [order("A", T0), order("B", T0 + 10 * DAY), order("C", T0 + 20 * DAY)]
    folded = step(None, "user-1", events, DEFAULT_MODEL, churn_of=_churn_of)
    triggers = [t for t in folded.triggers if t["type"] == "customer.churn_risk_changed"]
    state = folded.state
    assert state is not None
    for _ in range(50):
        if state.churn_band == "High":
            break
        due = folded.next_due_ms
        assert due is not None
        folded = step(state, "user-1", [Tick(due + delay)], DEFAULT_MODEL, churn_of=_churn_of)
        triggers += [t for t in folded.triggers if t["type"] == "customer.churn_risk_changed"]
        assert folded.state is not None
        state = folded.state
    return triggers, state


def test_the_trigger_fires_at_the_crossing_whatever_the_ticks_lateness() -> None:
    on_time, state = _run(0)
    assert [(t["before"], t["after"]) for t in on_time] == [(None, "Low"), ("Low", "Medium"), ("Medium", "High")]
    assert on_time[0]["at_ms"] == T0 + 20 * DAY
    assert state.churn_band == "High"
    late, _ = _run(7_000)
    assert [t["id"] for t in late] == [t["id"] for t in on_time]
    assert [t["at_ms"] for t in late] == [t["at_ms"] for t in on_time]
    very_late, _ = _run(45 * DAY)  # a worker down for weeks: the Medium band may be skipped, High is the same
    assert very_late[-1]["id"] == on_time[-1]["id"] or very_late[-1]["before"] == "Low"
    assert very_late[-1]["at_ms"] == on_time[-1]["at_ms"]
    assert decode_state(encode(state)).churn_band == "High"


def test_an_order_brings_the_band_back_down() -> None:
    _, state = _run(0)
    folded = step(state, "user-1", [order("D", T0 + 400 * DAY)], DEFAULT_MODEL, churn_of=_churn_of)
    changed = [t for t in folded.triggers if t["type"] == "customer.churn_risk_changed"]
    assert folded.state is not None
    now = churn_for(folded.state.value, T0 + 400 * DAY, POPULATION)
    assert now is not None and now.band != "High"  # a fourth order after 380 days: less risk, not none
    assert [(t["before"], t["after"], t["at_ms"]) for t in changed] == [("High", now.band, T0 + 400 * DAY)]
    assert folded.next_due_ms is not None and folded.next_due_ms > T0 + 400 * DAY


@settings(max_examples=40, deadline=None)
@given(st.permutations(range(4)), st.integers(min_value=1, max_value=4))
def test_the_same_orders_in_any_order_and_batching_give_the_same_band(order_of: list[int], cut: int) -> None:
    events = [order("A", T0), order("B", T0 + 9 * DAY), order("C", T0 + 30 * DAY), order("A", T0)]
    shuffled = [events[i] for i in order_of]
    whole = step(None, "user-1", events, DEFAULT_MODEL, churn_of=_churn_of)
    first = step(None, "user-1", shuffled[:cut], DEFAULT_MODEL, churn_of=_churn_of)
    assert first.state is not None
    second = step(first.state, "user-1", shuffled[cut:], DEFAULT_MODEL, churn_of=_churn_of)
    assert second.state is not None and whole.state is not None
    assert second.state.churn_band == whole.state.churn_band
    at = T0 + 30 * DAY  # the churn judgement (band, entered, next change) is the ledger's, however it came
    assert _churn_of(second.state, at) == _churn_of(whole.state, at) is not None
