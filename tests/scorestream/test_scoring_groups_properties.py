"""Score groups as functions of the set of events: the same events in any order, any batching,
with duplicates, folded into the base or kept, merged from two contacts or seen by one, give the
same group scores; a group's score decays at its own half-life; the view gives the state's."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorestream import ContactState, Event, Model, absorb, apply_events, engagement_at
from scorestream.scoring import GroupView, group_scores
from scorestream.view import engagement_of_view, groups_of_view, view_of
from tests.factories import DAY, MINUTE, T0

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def raw_model(**storage: Any) -> dict[str, Any]:
    """Rules of no group; ``product`` (7 days, weight 2, max 60, a cap and a once-only award);
    ``content`` (the overall half-life, apart: weight 0, a negative rule); ``email`` (40 days,
    weight 0.5)."""
    raw: dict[str, Any] = {
        "name": "groups-properties",
        "engagement": {
            "half_life": "3d",
            "rules": [
                {"id": "page-view", "match": {"type": "page"}, "points": 1, "cap": {"points": 3, "window": "1d"}},
                {"id": "unsubscribed", "match": {"type": "track", "event": "Unsubscribed"}, "points": -25},
            ],
            "groups": [
                {
                    "id": "product",
                    "half_life": "7d",
                    "weight": 2,
                    "max": 60,
                    "rules": [
                        {
                            "id": "pricing",
                            "match": {"type": "page", "path": "/pricing*"},
                            "points": 10,
                            "cap": {"points": 20, "window": "1d"},
                        },
                        {
                            "id": "demo",
                            "match": {"type": "track", "event": "Demo Requested"},
                            "points": 40,
                            "once": True,
                        },
                    ],
                },
                {
                    "id": "content",
                    "weight": 0,
                    "rules": [
                        {"id": "download", "match": {"type": "track", "event": "Ebook Downloaded"}, "points": 15},
                        {"id": "careers", "match": {"type": "page", "path": "/careers*"}, "points": -10},
                    ],
                },
                {
                    "id": "email",
                    "half_life": "40d",
                    "weight": 0.5,
                    "rules": [
                        {
                            "id": "clicked",
                            "match": {"type": "track", "event": "Email Link Clicked"},
                            "points": 6,
                            "cap": {"points": 18, "window": "7d"},
                        }
                    ],
                },
            ],
        },
    }
    if storage:
        raw["storage"] = storage
    return raw


MODEL = Model.from_dict(raw_model())
# old hits fold into the base (and the second base of the groups of another half-life)
FOLDING = Model.from_dict(raw_model(max_hits_per_contact=8, dedupe_memory=64, fold_after="1d"))
# read at or after the newest event (a folded base is as of its instant: no reading of the past)
INSTANTS = (T0 + 5 * DAY, T0 + 8 * DAY, T0 + 30 * DAY)

_times = st.integers(min_value=0, max_value=5 * 24 * 4).map(lambda q: T0 + q * 15 * MINUTE)
_pages: st.SearchStrategy[dict[str, Any]] = st.builds(
    dict, kind=st.just("page"), path=st.sampled_from(["/", "/pricing", "/pricing/team", "/careers"])
)
_tracks: st.SearchStrategy[dict[str, Any]] = st.builds(
    dict,
    kind=st.just("track"),
    event=st.sampled_from(["Demo Requested", "Ebook Downloaded", "Email Link Clicked", "Unsubscribed", "Nothing"]),
)


@st.composite
def event_lists(draw: st.DrawFn, max_size: int = 30, prefix: str = "m", anonymous: str | None = None) -> list[Event]:
    """Distinct events plus a few exact re-sends."""
    drawn = draw(st.lists(st.tuples(st.one_of(_pages, _tracks), _times), min_size=1, max_size=max_size))
    events = [
        Event(
            message_id=f"{prefix}{i:03d}",
            timestamp_ms=ts,
            channel="web",
            user_id=None if anonymous else "user-1",
            anonymous_id=anonymous,
            **fields,
        )
        for i, (fields, ts) in enumerate(drawn)
    ]
    return events + draw(st.lists(st.sampled_from(events), max_size=5))


def fold(batches: Sequence[Sequence[Event]], model: Model = MODEL, contact_id: str = "user-1") -> ContactState:
    state: ContactState | None = None
    for batch in batches:
        state = apply_events(state, contact_id, batch, model)
    assert state is not None
    return state


def scores(state: ContactState, model: Model = MODEL) -> list[tuple[GroupView, ...]]:
    return [group_scores(state, model, t) for t in INSTANTS]


def close(a: Sequence[tuple[GroupView, ...]], b: Sequence[tuple[GroupView, ...]]) -> bool:
    """Group scores equal but for float rounding (scores are rounded to 6 decimals)."""
    return all(
        x.id == y.id and math.isclose(x.score, y.score, rel_tol=1e-9, abs_tol=1e-6)
        for xs, ys in zip(a, b, strict=True)
        for x, y in zip(xs, ys, strict=True)
    )


@PROPERTY
@given(events=event_lists(), data=st.data())
def test_group_scores_do_not_depend_on_order_batching_or_duplicates(events: list[Event], data: st.DataObject) -> None:
    whole = scores(fold([events]))
    shuffled = data.draw(st.permutations(events))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=6)))
    batches = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    assert scores(fold(batches)) == whole
    assert scores(fold([events, events[: len(events) // 2]])) == whole  # re-sent later


@PROPERTY
@given(
    events=event_lists(),
    gap1=st.integers(min_value=0, max_value=20 * DAY),
    gap2=st.integers(min_value=0, max_value=20 * DAY),
)
def test_each_group_decays_at_its_own_half_life(events: list[Event], gap1: int, gap2: int) -> None:
    """With no event between, a group's score at t2 is its score at t1 decayed at the group's
    half-life (the raw sum; a clamped group once it is under its max)."""
    state = fold([events])
    t1 = max(e.timestamp_ms for e in events) + gap1
    t2 = t1 + gap2
    for group, at1, at2 in zip(
        MODEL.groups, group_scores(state, MODEL, t1), group_scores(state, MODEL, t2), strict=True
    ):
        if group.max is not None and abs(at1.score) >= group.max:
            continue  # clamped at t1: what it decays from is the raw sum, not shown
        expected = at1.score * 2 ** (-(t2 - t1) / group.half_life_ms)
        assert math.isclose(at2.score, expected, rel_tol=1e-6, abs_tol=2e-6), group.id


@PROPERTY
@given(events=event_lists(max_size=40), data=st.data())
def test_folding_old_hits_gives_the_group_scores_of_kept_hits(events: list[Event], data: st.DataObject) -> None:
    """In time order (an event later than the allowed lateness is judged against what was kept:
    ``scorestream.contact``), in batches of any size."""
    kept = fold([events])
    order = sorted(events, key=lambda e: (e.timestamp_ms, e.message_id))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(order)), max_size=8)))
    batches = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
    folded = fold([b for b in batches if b], FOLDING)
    assert close(scores(folded, FOLDING), scores(kept))
    for t in INSTANTS:
        assert math.isclose(
            engagement_at(folded, FOLDING, t).score, engagement_at(kept, MODEL, t).score, rel_tol=1e-9, abs_tol=1e-6
        )


@PROPERTY
@given(user=event_lists(max_size=15), anon=event_lists(max_size=15, prefix="a", anonymous="x"))
def test_merging_two_contacts_gives_the_group_scores_of_one(user: list[Event], anon: list[Event]) -> None:
    merged = absorb(fold([user]), fold([anon], contact_id="anonymous:x"), MODEL)
    one = fold([[*user, *anon]])
    assert close(scores(merged), scores(one))
    again = absorb(copy.deepcopy(merged), fold([anon], contact_id="anonymous:x"), MODEL)
    assert scores(again) == scores(merged)  # a second merge adds nothing


def test_merging_two_folded_contacts_merges_their_second_bases() -> None:
    """Both contacts folded old hits into their bases (the product and email groups' second bases
    at 7 and 40 days): the merge decays each to the later base instant at the group's half-life.
    (No cap or once-only award is in play: a folded award is not judged again.)"""
    user = [
        Event(message_id=f"u{i}", timestamp_ms=T0 + i * 36 * 3_600_000, kind="page", path="/pricing", channel="web")
        for i in range(12)
    ]
    anon = [
        Event(
            message_id=f"a{i}",
            timestamp_ms=T0 + i * 8 * DAY + 60_000,
            kind="track",
            event="Email Link Clicked",
            channel="web",
        )
        for i in range(12)
    ]
    anon = [dataclasses.replace(e, anonymous_id="x") for e in anon]
    source = fold([[e] for e in anon], FOLDING, contact_id="anonymous:x")
    target = fold([[e] for e in user], FOLDING)
    assert source.group_base and target.group_base
    merged = absorb(target, source, FOLDING)
    one = fold([[e] for e in sorted([*user, *anon], key=lambda e: e.timestamp_ms)])
    for t in (T0 + 90 * DAY, T0 + 200 * DAY):
        assert close([group_scores(merged, FOLDING, t)], [group_scores(one, MODEL, t)])


@PROPERTY
@given(events=event_lists(max_size=40), folding=st.booleans())
def test_the_view_gives_the_states_group_scores(events: list[Event], folding: bool) -> None:
    model = FOLDING if folding else MODEL
    state = fold([[e] for e in events], model)
    view = view_of(state, model)
    for t in (view.engagement_ms, *INSTANTS):
        at = max(t, view.engagement_ms)
        assert close([groups_of_view(view, model, at)], [group_scores(state, model, at)])
        assert math.isclose(
            engagement_of_view(view, model, at).score, engagement_at(state, model, at).score, abs_tol=1e-6
        )


def test_weights_and_half_lives_in_one_contact() -> None:
    """A hand-computed case: one event per group at T0, read 14 days later."""
    events = [
        Event(message_id="p", timestamp_ms=T0, kind="page", path="/pricing", channel="web", user_id="u"),
        Event(message_id="d", timestamp_ms=T0, kind="track", event="Ebook Downloaded", channel="web", user_id="u"),
        Event(message_id="c", timestamp_ms=T0, kind="track", event="Email Link Clicked", channel="web", user_id="u"),
    ]
    state = fold([events])
    at = T0 + 14 * DAY
    product, content, email = group_scores(state, MODEL, at)
    assert math.isclose(product.score, 10 * 2 ** (-14 / 7), abs_tol=1e-6)  # 2.5
    assert math.isclose(content.score, 15 * 2 ** (-14 / 3), abs_tol=1e-6)
    assert math.isclose(email.score, 6 * 2 ** (-14 / 40), abs_tol=1e-6)
    overall = (1 + 2 * 10 + 0 * 15 + 0.5 * 6) * 2 ** (-14 / 3)  # page view, pricing x2, download x0, click x0.5
    assert math.isclose(engagement_at(state, MODEL, at).score, overall, abs_tol=1e-6)
    # a merged-away duplicate of the same events changes nothing
    copy_events = [dataclasses.replace(e, user_id=None, anonymous_id="y") for e in events]
    merged = absorb(state, fold([copy_events], contact_id="anonymous:y"), MODEL)
    assert group_scores(merged, MODEL, at) == (product, content, email)
