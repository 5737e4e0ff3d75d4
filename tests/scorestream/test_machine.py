"""Machine traffic in e-mail (docs/model.md "Machine traffic"): security scanners' clicks and
privacy proxies' opens are kept but scored by the model's ``machine_traffic`` rule, judged from the
events of their message whatever the order in which they arrive."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.state import decode_state, encode
from schemas.view import decode_view, encode_view
from scorestream import ContactState, Event, Model, ModelError, apply_events, engagement_at
from scorestream.contact import absorb
from scorestream.fold import Tick, step
from scorestream.machine import MAX_FACTS, EmailFact, add_facts
from scorestream.rules.machine import CLICKED, DELIVERED, MachineRules
from scorestream.scoring import walked_engagement
from scorestream.state import machine_verdicts
from scorestream.view import engagement_of_view, view_of
from tests.factories import DAY, DEFAULT_MODEL, HOUR, MINUTE, T0, model_from

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECOND = 1_000

RULES: list[dict[str, Any]] = [
    {"id": "email-opened", "match": {"type": "track", "event": "Email Opened"}, "points": 2},
    {
        "id": "email-clicked",
        "match": {"type": "track", "event": "Email Link Clicked"},
        "points": 6,
        "cap": {"points": 18, "window": "7d"},
    },
    {"id": "page", "match": {"type": "page"}, "points": 1},
]
SECTION: dict[str, Any] = {
    "points": 0,
    "click_all_links": {"links": 3, "within": "10s"},
    "click_before_open": True,
    "click_within": "5s",
    "proxy_opens": {"user_agents": ["Mozilla/5.0 (Macintosh;*AppleWebKit/*(KHTML, like Gecko)"]},
    "patterns": [{"field": "user_agent", "op": "matches", "value": "(?i)barracuda|mimecast|proofpoint"}],
}
MODEL = model_from(RULES, machine_traffic=SECTION)
HALF = model_from(RULES, name="half", machine_traffic={**SECTION, "points": 0.5})
PLAIN = model_from(RULES, name="plain")

APPLE_PROXY = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
SAFARI = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"
LINKS = [f"https://example.com/{p}" for p in ("pricing", "demo", "blog", "unsubscribe")]
NOW = T0 + 3 * DAY


def email(
    name: str, ts: int, mid: str, message: str = "e-1", link: str | None = None, agent: str | None = None
) -> Event:
    props: dict[str, Any] = {"email_id": message, "campaign_id": "spring"}
    if link is not None:
        props["link_url"] = link
    return Event(
        message_id=mid,
        kind="track",
        event=name,
        channel="email",
        timestamp_ms=ts,
        user_id="user-1",
        properties=props,
        user_agent=agent,
    )


def delivered(ts: int, mid: str, message: str = "e-1") -> Event:
    return email("Email Delivered", ts, mid, message)


def opened(ts: int, mid: str, message: str = "e-1", agent: str | None = IPHONE) -> Event:
    return email("Email Opened", ts, mid, message, agent=agent)


def clicked(ts: int, mid: str, link: str, message: str = "e-1", agent: str | None = SAFARI) -> Event:
    return email("Email Link Clicked", ts, mid, message, link, agent)


def scanner() -> list[Event]:
    """A security gateway: the delivery, all 4 links fetched 1-3 s later; then a person's click 2 h later."""
    return [
        delivered(T0, "d-1"),
        *(clicked(T0 + (1 + i * 2 // 3) * SECOND, f"scan-{i}", link, agent=None) for i, link in enumerate(LINKS)),
        clicked(T0 + 2 * HOUR, "human-click", LINKS[0]),
    ]


def apple_mpp() -> list[Event]:
    """Apple Mail Privacy Protection: the proxy's open at delivery, a real click the next day."""
    return [
        delivered(T0, "d-2", "e-2"),
        opened(T0 + 800, "mpp-open", "e-2", APPLE_PROXY),
        clicked(T0 + DAY, "next-day-click", LINKS[1], "e-2"),
    ]


def human() -> list[Event]:
    """A person: opens 40 minutes after delivery, clicks one link a minute later."""
    return [
        delivered(T0, "d-3", "e-3"),
        opened(T0 + 40 * MINUTE, "open-40", "e-3"),
        clicked(T0 + 41 * MINUTE, "click-41", LINKS[0], "e-3"),
    ]


def fold(events: Sequence[Event], model: Model = MODEL) -> ContactState:
    return apply_events(None, "user-1", events, model)


def score(state: ContactState, model: Model = MODEL, now: int = NOW) -> float:
    return engagement_at(state, model, now, top=0).score


def decayed(points: float, at: int, model: Model = MODEL, now: int = NOW) -> float:
    return points * math.pow(2.0, -(now - at) / model.half_life_ms)


# --- the model file ------------------------------------------------------------------------------


def test_the_section_is_parsed_with_its_defaults() -> None:
    rules = MachineRules.parse({})
    assert rules is not None
    assert (rules.factor, rules.all_links, rules.all_links_within_ms) == (0.0, 3, 10_000)
    assert (rules.before_open, rules.click_within_ms, rules.proxy_agents) == (True, 5_000, None)
    assert rules.message_keys == ("email_id", "campaign_id")
    assert MachineRules.parse(None) is None and PLAIN.machine is None
    off = MachineRules.parse({"click_all_links": None, "click_within": None, "click_before_open": False})
    assert off is not None and (off.all_links, off.click_within_ms, off.before_open) == (None, None, False)
    assert HALF.machine is not None and HALF.machine.factor == 0.5


def test_the_default_model_judges_machine_traffic() -> None:
    rules = DEFAULT_MODEL.machine
    assert rules is not None and rules.factor == 0.0
    assert rules.proxy_agents is not None and rules.proxy_agents.match(APPLE_PROXY)
    assert not rules.proxy_agents.match(SAFARI) and not rules.proxy_agents.match(IPHONE)
    assert all(machine_verdicts(fold(s, DEFAULT_MODEL), DEFAULT_MODEL) for s in (scanner(), apple_mpp()))
    assert machine_verdicts(fold(human(), DEFAULT_MODEL), DEFAULT_MODEL) == {}


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("zero", "must be a mapping"),
        ({"points": -1}, r"machine_traffic\.points"),
        ({"points": "0"}, r"machine_traffic\.points"),
        ({"click_all_links": {"links": 1}}, r"click_all_links\.links"),
        ({"click_all_links": {"links": 3, "within": "soon"}}, r"click_all_links\.within"),
        ({"click_all_links": 3}, "click_all_links"),
        ({"click_within": "-5s"}, r"machine_traffic\.click_within"),
        ({"click_before_open": "yes"}, "click_before_open"),
        ({"proxy_opens": {"user_agents": []}}, r"proxy_opens\.user_agents"),
        ({"proxy_opens": {"user_agents": ["x"], "within": "never"}}, r"proxy_opens\.within"),
        ({"patterns": [{"field": "user_agent", "op": "matches", "value": "("}]}, r"machine_traffic\.patterns\[0\]"),
        ({"events": {"clicked": ["A"], "opened": ["A"]}}, "named twice"),
        ({"events": {"bounced": ["Email Bounced"]}}, r"machine_traffic\.events"),
        ({"scanners": True}, "unknown key"),
    ],
)
def test_a_bad_section_is_refused_naming_the_place(raw: object, words: str) -> None:
    with pytest.raises(ModelError, match=words):
        model_from(RULES, machine_traffic=raw)


# --- realistic sequences -------------------------------------------------------------------------


def test_a_security_scanner_clicks_count_nothing_and_the_later_human_click_counts() -> None:
    state = fold(scanner())
    found = machine_verdicts(state, MODEL)
    assert sorted(found) == [f"scan-{i}" for i in range(4)]
    assert found["scan-0"] == "4 links clicked within 3 s of delivery"
    assert score(state) == pytest.approx(decayed(6, T0 + 2 * HOUR), abs=1e-6)
    assert score(fold(scanner(), PLAIN), PLAIN) > score(state)  # without the section: capped at 18


def test_apple_privacy_proxy_opens_count_nothing_the_next_day_click_counts() -> None:
    state = fold(apple_mpp())
    assert machine_verdicts(state, MODEL) == {"mpp-open": "opened by a privacy proxy"}
    assert score(state) == pytest.approx(decayed(6, T0 + DAY), abs=1e-6)


def test_a_person_scores_in_full() -> None:
    state = fold(human())
    assert machine_verdicts(state, MODEL) == {}
    assert score(state) == pytest.approx(decayed(2, T0 + 40 * MINUTE) + decayed(6, T0 + 41 * MINUTE), abs=1e-6)
    assert score(state) == pytest.approx(score(fold(human(), PLAIN), PLAIN), abs=1e-6)


@pytest.mark.parametrize(
    ("events", "mid", "reason"),
    [
        ([delivered(T0, "d"), clicked(T0 + 2 * SECOND, "c", LINKS[0])], "c", "clicked 2 s after delivery"),
        ([opened(T0, "o"), clicked(T0 + 4_500, "c", LINKS[0])], "c", "clicked 4.5 s after the first open"),
        ([clicked(T0, "c", LINKS[0]), delivered(T0 + MINUTE, "d")], "c", "clicked before the message was delivered"),
        ([clicked(T0, "c", LINKS[0]), opened(T0 + HOUR, "o")], "c", "clicked before the message was opened"),
        ([clicked(T0, "c", LINKS[0], agent="Mimecast/1.0")], "c", "user agent or event matches a machine pattern"),
        ([opened(T0, "o", agent="Barracuda Link Protection")], "o", "user agent or event matches a machine pattern"),
    ],
)
def test_each_signal_names_its_reason(events: list[Event], mid: str, reason: str) -> None:
    assert machine_verdicts(fold(events), MODEL)[mid] == reason


def test_two_links_within_the_window_or_clicks_far_apart_are_a_persons() -> None:
    two = [delivered(T0, "d"), *(clicked(T0 + HOUR + i * SECOND, f"c{i}", LINKS[i]) for i in range(2))]
    apart = [delivered(T0, "d"), *(clicked(T0 + HOUR + i * MINUTE, f"c{i}", LINKS[i]) for i in range(4))]
    same_link = [delivered(T0, "d"), *(clicked(T0 + HOUR + i * SECOND, f"c{i}", LINKS[0]) for i in range(4))]
    for events in (two, apart, same_link):
        assert machine_verdicts(fold(events), MODEL) == {}


def test_signals_are_per_message() -> None:
    """Three links of three different messages within seconds: no burst; each message's own
    delivery judges its clicks."""
    events = [
        *(delivered(T0 - DAY, f"d{i}", f"e-{i}") for i in range(3)),
        *(clicked(T0 + i * SECOND, f"c{i}", LINKS[i], f"e-{i}") for i in range(3)),
    ]
    assert machine_verdicts(fold(events), MODEL) == {}


def test_a_proxy_open_within_a_window_of_delivery() -> None:
    model = model_from(
        RULES, name="w", machine_traffic={**SECTION, "proxy_opens": {**SECTION["proxy_opens"], "within": "2s"}}
    )
    near = [delivered(T0, "d"), opened(T0 + SECOND, "o", agent=APPLE_PROXY)]
    far = [delivered(T0, "d"), opened(T0 + HOUR, "o", agent=APPLE_PROXY)]
    assert machine_verdicts(fold(near, model), model) == {"o": "opened by a privacy proxy 1 s from delivery"}
    assert machine_verdicts(fold(far, model), model) == {}
    assert machine_verdicts(fold(far[1:], model), model) == {"o": "opened by a privacy proxy"}  # no delivery known


def test_a_factor_scores_machine_events_through_the_caps() -> None:
    """``points: 0.5``: a scanner's clicks earn half, and take cap room as any click does."""
    state = fold(scanner(), HALF)
    expected = sum(decayed(3, T0 + (1 + i * 2 // 3) * SECOND, HALF) for i in range(4)) + decayed(6, T0 + 2 * HOUR, HALF)
    assert score(state, HALF) == pytest.approx(expected, abs=1e-6)
    many = [delivered(T0, "d"), *(clicked(T0 + SECOND + i, f"c{i}", f"https://x/{i}") for i in range(12))]
    assert score(fold(many, HALF), HALF, T0 + MINUTE) <= 18 + 1e-9


def test_machine_events_are_kept_archived_and_counted() -> None:
    state = fold(scanner())
    assert {h.mid for h in state.hits} >= {f"scan-{i}" for i in range(4)}
    assert [f.kind for f in state.email_log].count(DELIVERED) == 1
    assert [f.kind for f in state.email_log].count(CLICKED) == 5


# --- order: a late event re-judges an earlier one ------------------------------------------------


def test_a_late_delivery_re_judges_the_clicks_before_it_arrived() -> None:
    clicks = [clicked(T0 + SECOND, "c", LINKS[0])]
    state = fold(clicks)
    assert machine_verdicts(state, MODEL) == {} and score(state) > 0
    state = apply_events(state, "user-1", [delivered(T0, "d")], MODEL)
    assert machine_verdicts(state, MODEL) == {"c": "clicked 1 s after delivery"}
    assert score(state) == 0.0


def test_a_late_click_makes_a_burst_of_the_earlier_ones() -> None:
    state = fold([clicked(T0 + i * SECOND, f"c{i}", LINKS[i]) for i in range(2)])
    assert machine_verdicts(state, MODEL) == {}
    state = apply_events(state, "user-1", [clicked(T0 + 3 * SECOND, "c2", LINKS[2])], MODEL)
    assert sorted(machine_verdicts(state, MODEL)) == ["c0", "c1", "c2"]


@functools.cache
def lifecycle_model(points: float = 0) -> Model:
    """The default model's lifecycle, with a lead stage entered on an e-mail click."""
    raw = dict(DEFAULT_MODEL.source)
    raw["name"] = f"machine-walk-{points}"
    raw["machine_traffic"] = {**SECTION, "points": points}
    return Model.from_dict(raw)


def test_the_walk_goes_again_from_a_click_a_late_delivery_re_judged() -> None:
    """Engagement crosses a threshold on clicks; the late delivery that makes them a scanner's
    walks the history again: the crossing goes."""
    model = lifecycle_model()
    clicks = [clicked(T0 + (1 + i) * SECOND, f"c{i}", f"https://x/{i}", agent=None) for i in range(2)]
    first = step(None, "user-1", clicks, model)
    assert first.state is not None and first.state.journey is not None
    walked = first.state.journey.cursor
    assert walked is not None and walked.ref_score > 0
    stage_before = first.state.journey.stage  # the state is changed in place by the next step
    tick = Tick(T0 + 10 * SECOND)
    later = step(first.state, "user-1", [delivered(T0, "d"), tick], model)
    assert later.state is not None and later.state.journey is not None and later.state.journey.cursor is not None
    assert later.state.journey.cursor.ref_score == 0.0
    whole = step(None, "user-1", [delivered(T0, "d"), *clicks, tick], model).state
    assert whole is not None and whole.journey is not None
    assert later.state.journey.history == whole.journey.history
    assert later.state.journey.stage == whole.journey.stage != stage_before


# --- the explanation ------------------------------------------------------------------------------


def test_the_explanation_shows_why() -> None:
    state = fold([*scanner(), *apple_mpp()])
    view = engagement_at(state, MODEL, NOW)
    notes = {n.rule_id: n for n in view.machine}
    assert notes["email-clicked"].hits == 4
    assert notes["email-clicked"].reason == "4 links clicked within 3 s of delivery"
    assert notes["email-opened"] == ("email-opened", 1, T0 + 800, "opened by a privacy proxy")
    compact = decode_view(encode_view(view_of(state, MODEL)))
    from_view = engagement_of_view(compact, MODEL, NOW)
    assert from_view.machine == view.machine
    assert from_view.score == view.score
    assert engagement_at(fold(human()), MODEL, NOW).machine == ()


def test_the_state_round_trips_with_its_log() -> None:
    state = fold([*scanner(), *apple_mpp()])
    again = decode_state(encode(state))
    assert again.email_log == state.email_log
    assert machine_verdicts(again, MODEL) == machine_verdicts(state, MODEL)


# --- bounds ---------------------------------------------------------------------------------------


def test_the_log_keeps_the_newest_facts_within_fold_after() -> None:
    log: list[EmailFact] = []
    old = [EmailFact(T0 - 40 * DAY, "old", DELIVERED, "k", "", "")]
    add_facts(log, old, 30 * DAY)
    add_facts(
        log, [EmailFact(T0 + i, f"m{i:04d}", CLICKED, "k2", f"l{i}", "") for i in range(MAX_FACTS + 10)], 30 * DAY
    )
    assert len(log) == MAX_FACTS
    assert log[0].mid == "m0010" and log == sorted(log)


def test_a_merge_brings_the_other_contacts_facts() -> None:
    mine = fold([clicked(T0 + SECOND, "c", LINKS[0])])
    other = apply_events(None, "anon-1", [delivered(T0, "d")], MODEL)
    merged = absorb(mine, other, MODEL)
    assert machine_verdicts(merged, MODEL) == {"c": "clicked 1 s after delivery"}


# --- order independence (hypothesis) -------------------------------------------------------------

_agents = st.sampled_from([None, SAFARI, APPLE_PROXY, "Proofpoint URL Defense"])
_offsets = st.sampled_from([0, 500, SECOND, 2 * SECOND, 4 * SECOND, 7 * SECOND, 40 * MINUTE, 2 * HOUR, DAY])


@st.composite
def email_lists(draw: st.DrawFn, max_size: int = 24) -> list[Event]:
    """Deliveries, opens and clicks of two messages close in time, a page view or two, and a few
    re-sends."""
    drawn = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["Email Delivered", "Email Opened", "Email Link Clicked", "page"]),
                _offsets,
                st.sampled_from(["e-1", "e-2"]),
                st.sampled_from(LINKS),
                _agents,
            ),
            min_size=1,
            max_size=max_size,
        )
    )
    events: list[Event] = []
    for i, (name, offset, message, link, agent) in enumerate(drawn):
        if name == "page":
            events.append(Event(f"m{i:03d}", "page", T0 + offset, "web", user_id="user-1", path="/"))
        else:
            events.append(email(name, T0 + offset, f"m{i:03d}", message, link, agent))
    return events + draw(st.lists(st.sampled_from(events), max_size=4))


def curve(state: ContactState, model: Model) -> list[float]:
    return [engagement_at(state, model, t).score for t in (T0 + 3 * SECOND, T0 + HOUR, T0 + DAY, NOW)]


@PROPERTY
@given(data=st.data(), events=email_lists(), model=st.sampled_from([MODEL, HALF]))
def test_any_order_batching_and_duplicates_give_the_same_state(
    data: st.DataObject, events: list[Event], model: Model
) -> None:
    expected = fold(events, model)
    shuffled = data.draw(st.permutations(events))
    cut = data.draw(st.integers(min_value=0, max_value=len(events)))
    in_two = apply_events(apply_events(None, "user-1", shuffled[:cut], model), "user-1", shuffled[cut:], model)
    one_by_one: ContactState | None = None
    for event in reversed(events):
        one_by_one = apply_events(one_by_one, "user-1", [event], model)
    for actual in (in_two, one_by_one):
        assert actual == expected
        assert machine_verdicts(actual, model) == machine_verdicts(expected, model)
        assert curve(actual, model) == curve(expected, model)


@PROPERTY
@given(data=st.data(), events=email_lists(max_size=16), points=st.sampled_from([0, 0.5]))
def test_the_fold_gives_the_same_journey_in_any_order(data: st.DataObject, events: list[Event], points: float) -> None:
    """Resumed walks (one event a step) restore the caps with the machine verdicts too."""
    model = lifecycle_model(points)
    expected = step(None, "user-1", [*events, Tick(NOW)], model).state
    state: ContactState | None = None
    for event in data.draw(st.permutations(events)):
        state = step(state, "user-1", [event], model).state
    ticked = step(state, "user-1", [Tick(NOW)], model).state
    assert expected is not None and ticked is not None
    assert expected.journey is not None and ticked.journey is not None
    assert [(e.stage, e.entered_ms, e.cause) for e in ticked.journey.history] == [
        (e.stage, e.entered_ms, e.cause) for e in expected.journey.history
    ]
    assert [(f.kind, f.at_ms, f.direction) for f in ticked.journey.fired] == [
        (f.kind, f.at_ms, f.direction) for f in expected.journey.fired
    ]
    assert curve(ticked, model) == curve(expected, model)
    for state in (ticked, expected):  # the walk's own score: the caps restored with the verdicts
        walked = walked_engagement(state, model, NOW)
        assert walked is not None and walked == pytest.approx(engagement_at(state, model, NOW).score, abs=1e-5)


@PROPERTY
@given(events=email_lists())
def test_machine_events_at_zero_points_are_as_if_they_had_not_happened(events: list[Event]) -> None:
    """``points: 0``: the score is the one the other events give on their own (no cap room taken)."""
    state = fold(events)
    machine = machine_verdicts(state, MODEL)
    rest = fold([e for e in events if e.message_id not in machine], PLAIN)
    assert curve(state, MODEL) == pytest.approx(curve(rest, PLAIN), abs=1e-6)
