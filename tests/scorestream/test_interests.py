"""The interest profile (scorestream.interests): exact decay, a function of the set of events
(any order, batching, duplicates, a merge), bounded, free orders bought, the cart's payload."""

from __future__ import annotations

import math
import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.state import encode
from schemas.triggers import Trigger
from scorestream import Event, Model, ModelError, absorb, apply_events
from scorestream.fold import Tick, step
from scorestream.interests import (
    MAX_ENTRIES,
    MAX_FOLDED_IDS,
    Interests,
    affinities,
    cart_payload,
    interest_gate,
    interests_view,
    profile_at,
)
from scorestream.rules.interests import InterestRules, glob_regex
from scorestream.state import ContactState
from scorestream.triggers import journey_triggers
from tests.factories import DAY, DEFAULT_MODEL, HOUR, T0, make_event

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECTION: dict[str, Any] = {
    "half_life": "10d",
    "top": 3,
    "not_bought": 2,
    "events": {"Product Viewed": 1, "Product Added": 3, "Order Completed": 5},
    "paths": [{"path": "/shop/shoes*", "category": "shoes", "points": 2}, {"path": "/shop/*", "category": "shop"}],
}
# no engagement rules at all: interest events match none, and still count once each
MODEL = Model.from_dict({"name": "interests", "interests": SECTION})
_RULES = MODEL.interests
assert _RULES is not None
RULES: InterestRules = _RULES
H = 10 * DAY


def viewed(pid: str, at: int, category: str = "shoes", brand: str = "acme", **props: Any) -> Event:
    return make_event(
        event="Product Viewed",
        channel="web",
        timestamp_ms=at,
        properties={"product_id": pid, "category": category, "brand": brand, "name": f"The {pid}", **props},
    )


def added(pid: str, at: int, category: str = "shoes", brand: str = "acme") -> Event:
    return make_event(
        event="Product Added",
        channel="web",
        timestamp_ms=at,
        properties={"product_id": pid, "category": category, "brand": brand},
    )


def order(at: int, *pids: str, revenue: float = 0.0, category: str = "shoes") -> Event:
    products = [{"product_id": p, "category": category, "brand": "acme", "price": 0} for p in pids]
    return make_event(
        event="Order Completed",
        channel="store",
        timestamp_ms=at,
        properties={"order_id": f"o-{at}", "revenue": revenue, "products": products},
    )


def page(path: str, at: int) -> Event:
    return make_event(kind="page", event=None, name="Shop", path=path, channel="web", timestamp_ms=at)


def fold(events: list[Event], model: Model = MODEL, state: ContactState | None = None) -> ContactState:
    return apply_events(state, "user-1", events, model)


def profile(state: ContactState, at: int) -> dict[str, float]:
    assert state.interests is not None
    return affinities(state.interests, RULES, at)[1]


def close(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12) for k in a)


# --- the section -------------------------------------------------------------------------------


def test_the_section_parses_with_defaults_and_names_what_is_wrong() -> None:
    rules = InterestRules.parse({})
    assert rules is not None
    assert rules.half_life_ms == 30 * DAY and rules.top == 10 and rules.not_bought == 5 and rules.keep == 40
    assert rules.max_entries == MAX_ENTRIES == 64
    assert (parsed := InterestRules.parse({"max_entries": 1000})) is not None and parsed.max_entries == 1000
    assert rules.events["Order Completed"] == 5.0 and "Order Completed" in rules.bought
    assert InterestRules.parse(None) is None
    for bad, where in (
        ({"top": 0}, "interests.top"),
        ({"top": "ten"}, "interests.top"),
        ({"colour": 1}, "unknown key"),
        ({"events": {"Product Viewed": "one"}}, "interests.events"),
        ({"events": {"Product Viewed": -1}}, "interests.events"),
        ({"paths": [{"path": "/x*"}]}, r"interests.paths\[0\].category"),
        ({"paths": "/x"}, "interests.paths"),
        ({"half_life": "soon"}, "interests.half_life"),
        ({"top": 20, "keep": 10}, "interests.keep"),
        ({"max_entries": 7}, "interests.max_entries"),
        ({"max_entries": True}, "interests.max_entries"),
    ):
        with pytest.raises(ModelError, match=where):
            Model.from_dict({"name": "m", "interests": bad})


def test_path_globs_are_anchored_with_star_and_question_mark_only() -> None:
    assert RULES.category_of_path("/shop/shoes/running") is not None
    found = RULES.category_of_path("/shop/shoes-red")
    assert found is not None and found.category == "shoes"  # the first match wins
    found = RULES.category_of_path("/shop/bags")
    assert found is not None and found.category == "shop"
    assert RULES.category_of_path("/blog/shop/shoes") is None
    assert glob_regex("/a?[b]*") == r"^/a.\[b\].*$"


# --- the arithmetic ----------------------------------------------------------------------------


def test_affinity_is_the_sum_of_exactly_decayed_points_per_category_brand_and_product() -> None:
    events = [viewed("p1", T0), added("p1", T0 + DAY), viewed("p2", T0 + 3 * DAY, category="bags", brand="zed")]
    now = T0 + 10 * DAY
    found = profile(fold(events), now)

    def d(points: float, at: int) -> float:
        return points * 2 ** (-(now - at) / H)

    assert found["c:shoes"] == pytest.approx(d(1, T0) + d(3, T0 + DAY), rel=1e-12)
    assert found["b:acme"] == pytest.approx(d(1, T0) + d(3, T0 + DAY), rel=1e-12)
    assert found["p:p1"] == pytest.approx(d(1, T0) + d(3, T0 + DAY), rel=1e-12)
    assert found["c:bags"] == pytest.approx(d(1, T0 + 3 * DAY), rel=1e-12)
    assert found["p:p2"] == pytest.approx(0.5**0.7, rel=1e-12)  # 7 days of a 10-day half-life
    assert found["c:bags"] < found["c:shoes"]


def test_an_order_counts_per_product_and_page_paths_count_for_their_category() -> None:
    events = [order(T0, "p1", "p2", "p3", revenue=30), page("/shop/shoes/trail", T0), page("/about", T0)]
    found = profile(fold(events), T0)
    assert found["c:shoes"] == 3 * 5 + 2
    assert found["p:p2"] == 5 and found["b:acme"] == 15
    assert "c:shop" not in found


def test_a_free_order_counts_as_bought_so_its_products_are_not_seen_but_not_bought() -> None:
    events = [viewed("p1", T0), viewed("p2", T0), added("p3", T0 + HOUR), order(T0 + 2 * HOUR, "p1", revenue=0)]
    state = fold(events)
    assert state.interests is not None
    assert state.interests.bought == {"p1": T0 + 2 * HOUR}
    view = interests_view(state.interests, RULES)
    assert view is not None
    assert [a.key for a in view.not_bought] == ["p3", "p2"]  # p3 (3 points) ahead of p2 (1)
    assert view.not_bought[1].name == "The p2"
    assert "p1" in [a.key for a in view.products]


def test_a_duplicate_counts_once_even_when_no_engagement_rule_matched_it() -> None:
    event = viewed("p1", T0)
    state = fold([event, event])
    state = fold([event], state=state)
    assert MODEL.matching_rules(event) == [] and state.hits == []
    assert profile(state, T0) == {"c:shoes": 1.0, "b:acme": 1.0, "p:p1": 1.0}


def test_events_that_say_nothing_of_interests_keep_no_profile() -> None:
    state = fold([make_event(event="Email Opened"), page("/about", T0), make_event(kind="identify", event=None)])
    assert state.interests is None


# --- the set of events, not their order --------------------------------------------------------

CATEGORIES = ["shoes", "bags", "hats", "coats"]


@st.composite
def interest_events(draw: st.DrawFn, max_size: int = 40) -> list[Event]:
    n = draw(st.integers(1, max_size))
    out = []
    for i in range(n):
        at = T0 + draw(st.integers(0, 60 * DAY))
        kind = draw(st.sampled_from(["view", "add", "order", "page", "other"]))
        pid = f"p{draw(st.integers(0, 6))}"
        category = draw(st.sampled_from(CATEGORIES))
        if kind == "view":
            out.append(viewed(pid, at, category=category))
        elif kind == "add":
            out.append(added(pid, at, category=category))
        elif kind == "order":
            out.append(order(at, pid, f"p{i % 7}", revenue=draw(st.sampled_from([0.0, 10.0]))))
        elif kind == "page":
            out.append(page(draw(st.sampled_from(["/shop/shoes/x", "/shop/bags", "/home"])), at))
        else:
            out.append(make_event(event="Email Opened", timestamp_ms=at))
    return out


def batched(events: list[Event], rng: random.Random) -> ContactState:
    shuffled = list(events) + rng.sample(events, k=min(len(events), 5))  # duplicates too
    rng.shuffle(shuffled)
    state: ContactState | None = None
    i = 0
    while i < len(shuffled):
        j = i + rng.randint(1, 7)
        state = apply_events(state, "user-1", shuffled[i:j], MODEL)
        i = j
    assert state is not None
    return state


@PROPERTY
@given(events=interest_events(), seed=st.integers(0, 10_000))
def test_any_order_batching_and_duplicates_give_the_same_profile(events: list[Event], seed: int) -> None:
    one = fold(events)
    other = batched(events, random.Random(seed))
    assert other.interests == one.interests  # below MAX_ENTRIES: the very same state
    # byte for byte as the tables write it (maps in key order, not arrival order): a worker that
    # re-reads its input after a crash writes the same changelog record
    assert encode(other) == encode(one)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_past_the_kept_entries_the_folded_profile_is_the_same_up_to_rounding(seed: int) -> None:
    rng = random.Random(seed)
    events = [
        viewed(f"p{rng.randint(0, 9)}", T0 + rng.randint(0, 90 * DAY), category=rng.choice(CATEGORIES))
        for _ in range(3 * MAX_ENTRIES)
    ]
    one, other = fold(events), batched(events, rng)
    assert one.interests is not None and len(one.interests.entries) <= MAX_ENTRIES
    now = T0 + 100 * DAY
    assert close(profile(other, now), profile(one, now))
    exact = {
        f"c:{c}": math.fsum(2 ** (-(now - e.timestamp_ms) / H) for e in events if e.properties["category"] == c)
        for c in {e.properties["category"] for e in events}
    }
    assert close({k: v for k, v in profile(one, now).items() if k.startswith("c:")}, exact)


@PROPERTY
@given(events=interest_events(), cut=st.integers(0, 40), seed=st.integers(0, 10_000))
def test_a_merge_of_two_contacts_is_the_profile_of_all_their_events(events: list[Event], cut: int, seed: int) -> None:
    rng = random.Random(seed)
    mine, theirs = events[:cut], events[cut:]
    both = rng.sample(events, k=min(3, len(events)))  # events both contacts saw (a redelivery)
    visitor = apply_events(None, "anonymous:a", [*theirs, *both], MODEL)
    user = apply_events(None, "user-1", [*mine, *both], MODEL)
    merged = absorb(user, visitor, MODEL)
    merged = absorb(merged, visitor, MODEL)  # a redelivered absorb adds nothing
    expected = fold(events)
    if expected.interests is None:
        assert merged.interests is None or not affinities(merged.interests, RULES, T0)[1]
        return
    at = T0 + 70 * DAY
    assert close(profile(merged, at), profile(expected, at))
    assert merged.interests is not None and merged.interests.bought == expected.interests.bought


@PROPERTY
@given(events=interest_events(), later=st.integers(0, 400 * DAY))
def test_the_view_decayed_to_any_later_instant_is_the_profile_at_that_instant(events: list[Event], later: int) -> None:
    state = fold(events)
    if state.interests is None:
        return
    view = interests_view(state.interests, RULES)
    assert view is not None and view.at_ms == state.interests.ref_ms
    at = view.at_ms + later
    read = profile_at(view, RULES, at)
    full = affinities(state.interests, RULES, at)[1]
    for item in read.categories:
        assert item.affinity == pytest.approx(full[f"c:{item.key}"], rel=1e-9)
    assert [a.key for a in read.categories] == [
        k[2:]
        for k, _ in sorted(((k, v) for k, v in full.items() if k.startswith("c:")), key=lambda kv: (-kv[1], kv[0]))
    ][: RULES.top]
    assert profile_at(view, RULES, view.at_ms - DAY).at_ms == view.at_ms  # a clock behind: as at the view
    # decay composes: decayed to a first instant, then on to ``at``, is decayed to ``at`` at once
    halfway = profile_at(view, RULES, view.at_ms + later // 3)
    again = profile_at(halfway, RULES, at)
    for one, two in zip(again.categories + again.products, read.categories + read.products, strict=True):
        assert one.key == two.key and one.affinity == pytest.approx(two.affinity, rel=1e-12)


# --- bounds -----------------------------------------------------------------------------------


def test_the_profile_stays_bounded_and_keeps_the_strongest_keys() -> None:
    events = [viewed(f"p{i}", T0 + i * 1000, category=f"cat-{i}", brand=f"b-{i}") for i in range(2000)]
    events += [viewed("star", T0 + i, category="loved") for i in range(50)]
    state = fold(events)
    interests = state.interests
    assert interests is not None
    assert len(interests.entries) <= MAX_ENTRIES
    for prefix in ("c:", "b:", "p:"):
        assert sum(k.startswith(prefix) for k in interests.base) <= RULES.keep
    view = interests_view(interests, RULES)
    assert view is not None and view.categories[0].key == "loved" and view.products[0].key == "star"
    assert len(interests.folded_ids) <= min(MODEL.dedupe_memory, MAX_FOLDED_IDS)
    assert len(interests.names) <= MAX_ENTRIES + 2 * RULES.keep  # names of what it can still show
    assert interests.names["star"] == (T0 + 49, "The star")


def test_orders_and_carts_are_kept_by_their_latest_stamp_whatever_the_order() -> None:
    events = [order(T0 + i * HOUR, f"p{i}") for i in range(300)] + [
        added(f"p{i}", T0 + i * HOUR + 1) for i in range(300)
    ]
    one = fold(events)
    other = batched(events, random.Random(3))
    assert one.interests is not None and other.interests is not None
    assert one.interests.bought == other.interests.bought and len(one.interests.bought) == 256
    assert one.interests.carted == other.interests.carted
    assert min(one.interests.bought.values()) == T0 + 44 * HOUR  # the 256 latest orders


# --- the abandoned cart ------------------------------------------------------------------------


def test_an_abandoned_cart_announces_the_top_interests_and_the_products_not_bought() -> None:
    assert DEFAULT_MODEL.interests is not None
    events = [
        viewed("boot", T0, category="hardware"),
        viewed("tee", T0 + 1, category="apparel"),
        order(T0 + 2, "tee", revenue=0, category="apparel"),  # a free order: bought
        added("boot", T0 + HOUR, category="hardware"),
        added("tee", T0 + HOUR + 1, category="apparel"),  # put in the cart again after its order
        added("sock", T0 + HOUR + 2, category="apparel"),
    ]
    folded = step(None, "user-1", [*events, Tick(T0 + 3 * HOUR)], DEFAULT_MODEL)
    carts = [t for t in folded.triggers if t["type"] == "cart.abandoned"]
    assert len(carts) == 1
    trigger = carts[0]
    interests = trigger["interests"]
    assert [p["id"] for p in interests["cart_not_bought"]] == ["sock", "tee", "boot"]
    assert interests["cart_not_bought"][2]["name"] == "The boot"
    assert [c["key"] for c in interests["categories"]] == ["apparel", "hardware"]  # 1+5+3+3 against 1+3
    assert len(interests["products"]) == 3
    Trigger.model_validate_json(orjson.dumps(trigger))
    # the id is the change's, not the payload's: the same abandonment without interests has it
    assert folded.state is not None and folded.state.journey is not None
    plain = journey_triggers(None, folded.state.journey, "user-1", DEFAULT_MODEL, DEFAULT_MODEL.lifecycle)  # type: ignore[arg-type]
    assert trigger["id"] in {t["id"] for t in plain}


def test_the_cart_payload_counts_only_what_happened_by_the_abandonment() -> None:
    state = fold([added("a", T0), added("b", T0 + 5 * HOUR), viewed("z", T0 + 5 * HOUR, category="late")])
    payload = cart_payload(state.interests, RULES, T0 + HOUR)
    assert [p["id"] for p in payload["cart_not_bought"]] == ["a"]
    assert [c["key"] for c in payload["categories"]] == ["shoes"]
    assert payload["categories"][0]["affinity"] == pytest.approx(3 * 2 ** (-HOUR / H), abs=1e-6)
    assert cart_payload(None, RULES, T0) == {"categories": [], "brands": [], "products": [], "cart_not_bought": []}


def test_the_state_with_interests_survives_its_encoding() -> None:
    from schemas.state import decode_state, encode

    state = fold([viewed("p1", T0), order(T0 + 1, "p1"), added("p2", T0 + 2)])
    assert isinstance(state.interests, Interests)
    assert decode_state(encode(state)) == state


# --- consent -----------------------------------------------------------------------------------

CONSENTED = Model.from_dict(
    {"name": "consented", "interests": SECTION, "consent": {"engagement": ["marketing"], "default": "granted"}}
)


def consent(at: int, granted: bool) -> Event:
    return make_event(kind="identify", event=None, timestamp_ms=at, traits={}, consent={"marketing": granted})


@settings(max_examples=30, deadline=None)
@given(order_=st.permutations(list(range(5))))
def test_a_withdrawal_takes_the_later_events_out_of_the_profile_in_any_order(order_: list[int]) -> None:
    """As for hits: an interest event counts when the consent in effect at its instant allows it; a
    withdrawal (even one that arrives late) takes out the events after it, a later grant puts the
    events after the grant back; an event whose own consent denies never counts."""
    own_denial = make_event(
        event="Product Viewed",
        timestamp_ms=T0 + 5 * HOUR,
        properties={"product_id": "p4", "category": "denied"},
        consent={"marketing": False},
    )
    events = [
        viewed("p1", T0, category="before"),
        consent(T0 + HOUR, False),
        viewed("p2", T0 + 2 * HOUR, category="withdrawn"),
        consent(T0 + 3 * HOUR, True),
        viewed("p3", T0 + 4 * HOUR, category="granted"),
        own_denial,
    ]
    state = apply_events(None, "user-1", [events[i] for i in order_] + [events[5]], CONSENTED)
    assert state.interests is not None
    assert own_denial.message_id not in {e.mid for e in state.interests.entries}  # never folded in
    gate = interest_gate(state.consent_log, CONSENTED.consent)
    view = interests_view(state.interests, CONSENTED.interests, gate)
    assert view is not None
    assert {c.key for c in view.categories} == {"before", "granted"}
    assert {c.key for c in (interests_view(state.interests, CONSENTED.interests) or view).categories} == {
        "before",
        "withdrawn",
        "granted",
    }  # the withdrawn one is kept, not counted: a later grant at its instant would count it again


def test_without_a_consent_section_the_gate_lets_everything_through() -> None:
    assert interest_gate([(T0, ())], None) is None
    rules = CONSENTED.consent
    assert rules is not None
    assert interest_gate([], rules) is None  # granted by default, nothing said since
    gate = interest_gate([(T0, ()), (T0 + HOUR, ("marketing",))], rules)
    assert gate is not None and gate(T0 - 1) and not gate(T0) and not gate(T0 + HOUR - 1) and gate(T0 + HOUR)
