"""B2B accounts: buying roles, member updates, coverage, the account stage graph, configuration."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorestream import Model, ModelError, apply_events, engagement_at
from scorestream.accounts import (
    AccountState,
    MemberUpdate,
    account_view,
    apply_member_updates,
    member_update,
    member_updates,
)
from scorestream.contact import absorb
from scorestream.rules.accounts import OTHER, ROLES
from scorestream.rules.common import Predicate
from tests.factories import DAY, DEFAULT_MODEL, HOUR, T0, make_event

MODEL = DEFAULT_MODEL
CONFIG = MODEL.accounts
HALF_LIFE = MODEL.half_life_ms


def update(contact: str, role: str, score: float, at_ms: int = T0, **fields: Any) -> MemberUpdate:
    values: dict[str, Any] = {
        "contact_id": contact,
        "account_id": "acme",
        "at_ms": at_ms,
        "evidence": 1,
        "role": role,
        "score": score,
        "fit": 0.0,
    }
    values.update(fields)
    return MemberUpdate(**values)


def fold(*updates: MemberUpdate, state: AccountState | None = None) -> AccountState:
    result, _ = apply_member_updates(state, "acme", list(updates), MODEL)
    return result


# --- buying roles ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traits", "role"),
    [
        ({"title": "CEO"}, "decision_maker"),
        ({"title": "VP Marketing"}, "decision_maker"),
        ({"title": "Head of Engineering"}, "decision_maker"),
        ({"title": "Procurement Manager"}, "buyer"),
        ({"title": "Office Manager"}, "gatekeeper"),
        ({"title": "Senior Software Engineer"}, "specifier"),
        ({"title": "Product Manager"}, "influencer"),
        ({"title": "Intern"}, OTHER),
        ({}, OTHER),
        # an explicit trait wins over the title, in any spelling or alias
        ({"title": "CEO", "buying_role": "buyer"}, "buyer"),
        ({"title": "CEO", "buying_role": "Decision Maker"}, "decision_maker"),
        ({"title": "Intern", "buying_role": "user"}, "specifier"),
        ({"title": "Intern", "buying_role": "GATEKEEPER"}, "gatekeeper"),
        # an explicit value that names no role is ignored: the rules decide
        ({"title": "CEO", "buying_role": "janitor"}, "decision_maker"),
        ({"title": "CEO", "buying_role": 3}, "decision_maker"),
    ],
)
def test_role_rules(traits: dict[str, Any], role: str) -> None:
    assert CONFIG.role_of(traits) == role


def test_role_rules_are_tried_in_model_order() -> None:
    model = Model.from_dict(
        {
            "name": "t",
            "accounts": {
                "roles": [
                    {"role": "influencer", "when": [{"field": "title", "op": "contains", "value": "manager"}]},
                    {"role": "buyer", "when": [{"field": "title", "op": "contains", "value": "procurement"}]},
                ]
            },
        }
    )
    assert model.accounts.role_of({"title": "Procurement Manager"}) == "influencer"
    assert model.accounts.role_of({"title": "Procurement"}) == "buyer"


# --- what a contact reports --------------------------------------------------------------------


def contact(user: str, *events: Any) -> Any:
    return apply_events(None, user, list(events), MODEL)


def test_no_account_no_update() -> None:
    state = contact("u1", make_event(user_id="u1", kind="track", event="Demo Requested"))
    assert member_update(state, MODEL) is None
    assert member_updates(state, MODEL) == []


def test_member_update_carries_role_scores_customer_and_group_traits() -> None:
    state = contact(
        "u1",
        make_event(
            user_id="u1", kind="identify", event=None, timestamp_ms=T0, traits={"title": "CTO", "email": "a@b.c"}
        ),
        make_event(
            user_id="u1",
            kind="group",
            event=None,
            timestamp_ms=T0 + 1,
            group_id="acme",
            traits={"name": "Acme", "employees": 400},
        ),
        make_event(user_id="u1", kind="track", event="Demo Requested", timestamp_ms=T0 + HOUR),
        make_event(
            user_id="u1",
            kind="track",
            event="Order Completed",
            channel="store",
            timestamp_ms=T0 + 2 * HOUR,
            properties={"order_id": "o1", "total": 100.0},
        ),
    )
    got = member_update(state, MODEL)
    assert got is not None
    assert (got.contact_id, got.account_id, got.role, got.member) == ("u1", "acme", "decision_maker", True)
    assert got.at_ms == T0 + 2 * HOUR
    assert got.score == engagement_at(state, MODEL, T0 + 2 * HOUR).score
    assert got.score > 40
    assert got.fit == 30.0  # senior-title 25 + business-email 5
    assert got.customer is True
    assert got.traits == {"name": "Acme", "employees": 400}
    assert got.traits_at is not None and got.traits_at[0] == T0 + 1


def test_a_refunded_only_order_is_not_a_customer() -> None:
    state = contact(
        "u1",
        make_event(user_id="u1", kind="group", event=None, group_id="acme"),
        make_event(user_id="u1", event="Order Completed", properties={"order_id": "o1", "total": 50.0}),
        make_event(user_id="u1", event="Order Refunded", timestamp_ms=T0 + 1, properties={"order_id": "o1"}),
    )
    got = member_update(state, MODEL)
    assert got is not None and got.customer is False


def test_moving_to_another_account_leaves_the_old_one() -> None:
    state = contact(
        "u1",
        make_event(user_id="u1", kind="group", event=None, group_id="old", timestamp_ms=T0),
        make_event(user_id="u1", kind="group", event=None, group_id="new", timestamp_ms=T0 + 1),
    )
    by_account = {u.account_id: u for u in member_updates(state, MODEL)}
    assert by_account["new"].member is True
    assert by_account["old"].member is False
    # the departure beats the old account's last live snapshot of this member
    old_live = update("u1", "other", 0.0, at_ms=T0, account_id="old", evidence=by_account["old"].evidence)
    folded, _ = apply_member_updates(None, "old", [by_account["old"], old_live], MODEL)
    assert not folded.members["u1"].active
    assert account_view(folded, MODEL, T0).members == ()


def test_a_merged_contact_leaves_and_its_target_takes_the_account() -> None:
    anon = contact(
        "anonymous:a1",
        make_event(user_id=None, anonymous_id="a1", kind="group", event=None, group_id="acme", traits={"plan": "pro"}),
    )
    user = contact("u1", make_event(user_id="u1", kind="identify", event=None, timestamp_ms=T0 - 10))
    merged = absorb(user, anon, MODEL)
    got = member_update(merged, MODEL)
    assert got is not None and got.account_id == "acme" and got.traits == {"plan": "pro"}
    anon.merged_into = "u1"
    left = member_update(anon, MODEL)
    assert left is not None and left.member is False and left.contact_id == "anonymous:a1"


# --- coverage and engagement -------------------------------------------------------------------


def test_coverage_grows_as_members_of_different_roles_engage() -> None:
    state = fold(update("ceo", "decision_maker", 20.0))
    view = account_view(state, MODEL, T0)
    assert view.roles_engaged == ("decision_maker",)
    assert "buyer" in view.missing_roles and "decision_maker" not in view.missing_roles
    state = fold(update("buyer", "buyer", 5.0), state=state)  # a member below the threshold
    assert account_view(state, MODEL, T0).roles_engaged == ("decision_maker",)
    state = fold(update("buyer", "buyer", 12.0, at_ms=T0 + 1), state=state)
    state = fold(update("eng", "specifier", 30.0), update("nobody", OTHER, 99.0), state=state)
    view = account_view(state, MODEL, T0 + 1)
    assert view.roles_engaged == ("decision_maker", "buyer", "specifier")
    assert view.missing_roles == ("influencer", "gatekeeper")
    assert len(view.members) == 4


def test_account_engagement_is_role_weighted_and_decays() -> None:
    state = fold(update("ceo", "decision_maker", 40.0), update("eng", "specifier", 20.0, at_ms=T0 - HALF_LIFE))
    now = T0 + HALF_LIFE
    view = account_view(state, MODEL, now)
    expected = CONFIG.weights["decision_maker"] * 20.0 + CONFIG.weights["specifier"] * 5.0
    assert math.isclose(view.engagement, expected, rel_tol=1e-9)
    ceo = next(m for m in view.members if m.contact_id == "ceo")
    assert math.isclose(ceo.engagement, 20.0) and ceo.engaged
    eng = next(m for m in view.members if m.contact_id == "eng")
    assert not eng.engaged  # 5 < engaged_member (10): the role is no longer covered
    assert view.roles_engaged == ("decision_maker",)
    # read before a snapshot (clock skew): never grown
    assert math.isclose(account_view(state, MODEL, T0 - 10 * DAY).members[0].engagement, 40.0)


def test_account_fit_from_group_traits() -> None:
    traits = {"industry": "Software", "employees": 400, "address": {"country": "PL"}}
    state = fold(update("u", OTHER, 0.0, traits=traits, traits_at=(T0, "g1")))
    view = account_view(state, MODEL, T0)
    assert view.fit == 70.0
    assert view.fit_grade == "A"
    assert set(view.fit_rules) == {"account-target-industry", "account-size-mid", "account-target-country"}
    # a later group call changes one trait; the others stay
    state = fold(update("v", OTHER, 0.0, traits={"employees": 5000}, traits_at=(T0 + 1, "g2")), state=state)
    assert state.traits == {"industry": "Software", "employees": 5000, "address": {"country": "PL"}}
    assert account_view(state, MODEL, T0).fit == 80.0


# --- the stage graph ---------------------------------------------------------------------------


def stages(state: AccountState) -> list[tuple[str, str]]:
    return [(e.stage, e.rule) for e in state.history]


def test_stages_chain_and_record_history() -> None:
    state, changes = apply_member_updates(None, "acme", [update("ceo", "decision_maker", 10.0)], MODEL)
    assert state.stage == "target" and changes == []  # 15 < 30
    state, changes = apply_member_updates(
        state, "acme", [update("ceo", "decision_maker", 40.0, at_ms=T0 + HOUR)], MODEL
    )
    assert [(c.before, c.after, c.rule) for c in changes] == [("target", "engaged", "engaged")]
    # a second engaged role with a decision maker: buying
    state, changes = apply_member_updates(state, "acme", [update("eng", "specifier", 20.0, at_ms=T0 + 2 * HOUR)], MODEL)
    assert [(c.before, c.after) for c in changes] == [("engaged", "buying")]
    assert changes[0].at_ms == T0 + 2 * HOUR
    assert stages(state) == [("target", "initial"), ("engaged", "engaged"), ("buying", "buying")]
    assert [(e.entered_ms, e.exited_ms) for e in state.history] == [
        (T0, T0 + HOUR),
        (T0 + HOUR, T0 + 2 * HOUR),
        (T0 + 2 * HOUR, None),
    ]
    # target -> engaged -> buying at once when everything arrives together
    direct, changes = apply_member_updates(
        None, "acme", [update("ceo", "decision_maker", 40.0), update("eng", "specifier", 20.0)], MODEL
    )
    assert direct.stage == "buying" and [c.after for c in changes] == ["engaged", "buying"]


def test_buying_needs_a_decision_maker_or_a_buyer() -> None:
    state = fold(update("a", "specifier", 50.0), update("b", "influencer", 50.0))
    assert account_view(state, MODEL, T0).roles_engaged == ("specifier", "influencer")
    assert state.stage == "engaged"
    state = fold(update("c", "buyer", 10.0), state=state)
    assert state.stage == "buying"


def test_hysteresis_and_backward_moves() -> None:
    # buying at 1.5*40 + 1*20 = 80
    state = fold(update("ceo", "decision_maker", 40.0), update("eng", "specifier", 20.0))
    assert state.stage == "buying"
    # between the leave (40) and enter (60) thresholds: stays buying
    state = fold(update("ceo", "decision_maker", 20.0, at_ms=T0 + 1), state=state)
    state = fold(update("eng", "specifier", 15.0, at_ms=T0 + 2), state=state)
    assert math.isclose(account_view(state, MODEL, T0 + 2).engagement, 45.0)
    assert state.stage == "buying"
    # exactly at the leave threshold: still buying
    state = fold(update("eng", "specifier", 10.0, at_ms=T0 + 3), state=state)
    assert math.isclose(account_view(state, MODEL, T0 + 3).engagement, 40.0)
    assert state.stage == "buying"
    # below 40: back to engaged (not further: 15 <= engagement)
    state, changes = apply_member_updates(state, "acme", [update("eng", "specifier", 9.0, at_ms=T0 + 4)], MODEL)
    assert [(c.before, c.after, c.rule) for c in changes] == [("buying", "engaged", "buying-cooled")]
    # engaged stays down to 15, below the entry threshold of 30
    state = fold(update("ceo", "decision_maker", 4.0, at_ms=T0 + 5), state=state)
    assert math.isclose(account_view(state, MODEL, T0 + 5).engagement, 15.0)
    assert state.stage == "engaged"
    # decay alone, seen at the next update, takes it to target
    later = T0 + 5 + HALF_LIFE
    state, changes = apply_member_updates(state, "acme", [update("x", OTHER, 0.0, at_ms=later)], MODEL)
    assert [(c.after, c.rule, c.at_ms) for c in changes] == [("target", "engaged-cooled", later)]
    assert [s for s, _ in stages(state)] == ["target", "engaged", "buying", "engaged", "target"]


def test_customer_from_any_stage_and_back() -> None:
    state = fold(update("ceo", "decision_maker", 40.0), update("eng", "specifier", 20.0))
    assert state.stage == "buying"
    state, changes = apply_member_updates(
        state, "acme", [update("eng", "specifier", 20.0, at_ms=T0 + 1, customer=True)], MODEL
    )
    assert [(c.before, c.after) for c in changes] == [("buying", "customer")]
    # the only customer leaves (refunded): back to target, then straight on to where it belongs
    state, changes = apply_member_updates(
        state, "acme", [update("eng", "specifier", 20.0, at_ms=T0 + 2, customer=False)], MODEL
    )
    assert [(c.before, c.after) for c in changes] == [
        ("customer", "target"),
        ("target", "engaged"),
        ("engaged", "buying"),
    ]


def test_a_repeated_update_changes_nothing() -> None:
    u = update("ceo", "decision_maker", 40.0)
    state = fold(u)
    history = list(state.history)
    state, changes = apply_member_updates(state, "acme", [u, u], MODEL)
    assert changes == [] and state.history == history


# --- order independence ------------------------------------------------------------------------

_updates = st.builds(
    update,
    contact=st.sampled_from(["c1", "c2", "c3", "c4"]),
    role=st.sampled_from([*ROLES, OTHER]),
    score=st.floats(min_value=-20, max_value=80, allow_nan=False),
    at_ms=st.integers(min_value=T0, max_value=T0 + 5 * DAY),
    evidence=st.integers(min_value=0, max_value=3),
    customer=st.booleans(),
    member=st.booleans(),
    traits=st.dictionaries(st.sampled_from(["industry", "employees"]), st.integers(0, 3), max_size=2),
    traits_at=st.one_of(st.none(), st.tuples(st.integers(T0, T0 + 3), st.sampled_from(["m1", "m2"]))),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_updates, min_size=1, max_size=12), st.randoms(use_true_random=False), st.integers(1, 4))
def test_members_and_traits_do_not_depend_on_order_or_batching(
    updates: list[MemberUpdate], rnd: Any, chunk: int
) -> None:
    one = fold(*updates)
    shuffled = [*updates, *rnd.sample(updates, k=len(updates) // 2)]  # with duplicates
    rnd.shuffle(shuffled)
    other: AccountState | None = None
    for start in range(0, len(shuffled), chunk):
        other = fold(*shuffled[start : start + chunk], state=other)
    assert other is not None
    assert other.members == one.members
    assert other.traits == one.traits
    assert other.updated_ms == one.updated_ms
    at = one.updated_ms + DAY
    a, b = account_view(one, MODEL, at), account_view(other, MODEL, at)
    assert (a.engagement, a.roles_engaged, a.members, a.fit) == (b.engagement, b.roles_engaged, b.members, b.fit)


def test_the_later_snapshot_wins_whatever_the_order() -> None:
    old, new = update("c", "buyer", 50.0, at_ms=T0), update("c", "buyer", 5.0, at_ms=T0 + 1)
    assert fold(old, new).members["c"].score == fold(new, old).members["c"].score == 5.0
    # same instant: more evidence wins (a late event changed the score at the newest event)
    less, more = update("c", "buyer", 50.0, evidence=3), update("c", "buyer", 40.0, evidence=4)
    assert fold(less, more).members["c"].score == fold(more, less).members["c"].score == 40.0


# --- configuration -----------------------------------------------------------------------------


def raw_model(accounts: Any) -> dict[str, Any]:
    return {"name": "t", "engagement": {"rules": []}, "accounts": accounts}


def test_defaults_without_an_accounts_section() -> None:
    model = Model.from_dict({"name": "t"})
    assert model.accounts.transitions == ()
    assert model.accounts.initial_stage == "target"
    assert model.accounts.role_of({"title": "CEO"}) == OTHER
    assert model.accounts.role_of({"buying_role": "buyer"}) == "buyer"
    state, changes = apply_member_updates(None, "a", [update("c", "buyer", 99.0, account_id="a")], model)
    assert state.stage == "target" and changes == []


def test_the_default_model_parses_its_accounts_section() -> None:
    assert CONFIG.stages == ("target", "customer", "engaged", "buying")
    assert [r.role for r in CONFIG.roles] == ["decision_maker", "buyer", "gatekeeper", "specifier", "influencer"]
    buying = next(t for t in CONFIG.transitions if t.id == "buying")
    assert isinstance(buying.when[0], Predicate)
    # the accounts section is part of the version hash
    raw = copy.deepcopy(dict(MODEL.source))
    raw["accounts"]["engaged_member"] = 11
    assert Model.from_dict(raw).version != MODEL.version


def test_customer_stages_are_those_only_a_customer_member_enters() -> None:
    assert CONFIG.customer_stages == ("customer",)
    assert Model.from_dict({"name": "t"}).accounts.customer_stages == ()

    def stages(*transitions: dict[str, Any]) -> tuple[str, ...]:
        model = Model.from_dict(raw_model({"stages": {"transitions": list(transitions)}}))
        return model.accounts.customer_stages

    won = {"field": "customers", "op": "gte", "value": 1}
    assert stages({"id": "w", "from": "*", "to": "won", "when": [won]}) == ("won",)
    gt0 = {"field": "customers", "op": "gt", "value": 0}
    hot = {"field": "engagement", "op": "gte", "value": 50}
    assert stages({"id": "w", "from": "*", "to": "won", "when": [hot, gt0]}) == ("won",)
    assert stages({"id": "w", "from": "*", "to": "won", "when": [{"any": [won, gt0]}]}) == ("won",)
    # not when a customer member is only one option, or another way in needs none
    assert stages({"id": "w", "from": "*", "to": "won", "when": [{"any": [won, hot]}]}) == ()
    assert stages({"id": "w", "from": "*", "to": "won", "when": [won]}, {"id": "h", "from": "*", "to": "won"}) == ()
    assert (
        stages({"id": "w", "from": "*", "to": "won", "when": [{"field": "customers", "op": "gte", "value": 0}]}) == ()
    )
    # a stage beyond a customer stage that needs more customers is one too; the initial stage never
    more = {"field": "customers", "op": "gte", "value": 3}
    assert stages(
        {"id": "w", "from": "*", "to": "won", "when": [won]},
        {"id": "x", "from": ["won"], "to": "expanded", "when": [more]},
        {"id": "back", "from": ["won"], "to": "target", "when": [won]},
    ) == ("won", "expanded")


@pytest.mark.parametrize(
    ("accounts", "message"),
    [
        ([], "'accounts' must be a mapping"),
        ({"colour": 1}, r"accounts: unknown key\(s\) \['colour'\]"),
        ({"roles": {}}, "accounts.roles: expected a list"),
        ({"roles": [{"role": "boss", "when": [{"field": "title"}]}]}, r"accounts.roles\[0\]: 'role' must be one of"),
        ({"roles": [{"role": "buyer"}]}, r"accounts.roles\[0\] \(buyer\): 'when' must be a non-empty list"),
        ({"roles": [{"role": "buyer", "when": [{"field": "title", "op": "near"}]}]}, "unknown op 'near'"),
        ({"roles": [{"role": "buyer", "when": [{"any": []}]}]}, "'any' takes a non-empty list"),
        ({"weights": {"boss": 1}}, "accounts.weights: unknown role 'boss'"),
        ({"weights": {"buyer": -1}}, r"accounts.weights.buyer: must be >= 0"),
        ({"weights": {"buyer": "x"}}, "accounts.weights.buyer: expected a number"),
        ({"engaged_member": "ten"}, "accounts.engaged_member: expected a number"),
        ({"fit": {"rules": [{"id": "x", "points": 1}]}}, "accounts.fit rule 'x': 'when' must be a non-empty list"),
        ({"fit": {"grades": [{"label": "A"}]}}, r"accounts.fit.grades\[0\]: expected"),
        ({"engagement": {"bands": []}}, "accounts.engagement.bands: expected a non-empty list"),
        ({"stages": {"initial": ""}}, "accounts.stages.initial: expected a stage name"),
        ({"stages": {"transitions": [{"from": "a", "to": "b"}]}}, r"transitions\[0\]: needs a non-empty string 'id'"),
        ({"stages": {"transitions": [{"id": "t", "from": "target"}]}}, "account transition 't': 'to' must be"),
        ({"stages": {"transitions": [{"id": "t", "from": [], "to": "b"}]}}, "'from' must be a stage, a list"),
        (
            {"stages": {"transitions": [{"id": "t", "from": "target", "to": "b", "when": [{"field": "score"}]}]}},
            "unknown signal 'score'",
        ),
        (
            {"stages": {"transitions": [{"id": "t", "from": "nowhere", "to": "b"}]}},
            r"'from' names stage\(s\) \['nowhere'\] no transition reaches",
        ),
        (
            {"stages": {"transitions": [{"id": "t", "from": "*", "to": "b"}, {"id": "t", "from": "*", "to": "c"}]}},
            r"duplicate id\(s\) \['t'\]",
        ),
    ],
)
def test_config_errors(accounts: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        Model.from_dict(raw_model(accounts))
