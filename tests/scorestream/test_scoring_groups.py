"""Score groups (``engagement.groups``, :mod:`scorestream.rules.groups`): parsing, a group's score
and the overall score from the state and from the view, weights, clamps, bands, caps."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from scorestream import ContactState, Event, Model, apply_events, engagement_at
from scorestream.errors import ModelError
from scorestream.rules.groups import ScoreGroup
from scorestream.scoring import GroupView, group_scores
from scorestream.state import decay
from scorestream.view import engagement_of_view, groups_of_view, view_of
from tests.factories import DAY, DEFAULT_MODEL, HOUR, T0, make_event

OVERALL_HL = 14 * DAY


def groups_raw(**overrides: Any) -> dict[str, Any]:
    """A model with rules of no group and three groups: ``product`` (30 days, weight 2, max 50,
    own bands, thresholds), ``content`` (apart: weight 0) and ``email`` (the overall half-life)."""
    raw: dict[str, Any] = {
        "name": "groups",
        "engagement": {
            "half_life": "14d",
            "rules": [
                {"id": "page-view", "match": {"type": "page"}, "points": 1},
                {"id": "unsubscribed", "match": {"type": "track", "event": "Unsubscribed"}, "points": -25},
            ],
            "groups": [
                {
                    "id": "product",
                    "description": "Interest in the product",
                    "half_life": "30d",
                    "weight": 2,
                    "max": 50,
                    "bands": [{"label": "hot", "min": 30}, {"label": "cold", "min": -math.inf}],
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
                        {"id": "download", "match": {"type": "track", "event": "Ebook Downloaded"}, "points": 15}
                    ],
                },
                {
                    "id": "email",
                    "rules": [
                        {"id": "clicked", "match": {"type": "track", "event": "Email Link Clicked"}, "points": 6},
                    ],
                },
            ],
        },
    }
    raw["engagement"].update(overrides)
    return raw


MODEL = Model.from_dict(groups_raw())


def fold(events: list[Event], model: Model = MODEL) -> ContactState:
    return apply_events(None, "user-1", events, model)


def pricing(ts: int, **kw: Any) -> Event:
    return make_event(kind="page", event=None, channel="web", path="/pricing", timestamp_ms=ts, **kw)


def track(name: str, ts: int, **kw: Any) -> Event:
    return make_event(event=name, channel="web", timestamp_ms=ts, **kw)


def by_id(views: tuple[GroupView, ...]) -> dict[str, GroupView]:
    return {v.id: v for v in views}


# --- parsing -------------------------------------------------------------------------------------


def test_groups_parse_in_file_order_with_defaults() -> None:
    product, content, email = MODEL.groups
    assert [g.id for g in MODEL.groups] == ["product", "content", "email"]
    assert product == ScoreGroup(
        id="product",
        description="Interest in the product",
        half_life_ms=30 * DAY,
        weight=2.0,
        max=50.0,
        bands=product.bands,
        thresholds=(),
        rule_ids=("pricing", "demo"),
    )
    assert [b.label for b in product.bands] == ["hot", "cold"]
    assert content.weight == 0.0 and content.half_life_ms == OVERALL_HL and content.max is None
    assert email.bands == MODEL.engagement_bands and email.weight == 1.0
    assert MODEL.group("email") is email and MODEL.group("nope") is None
    # group rules are engagement rules like the others (matching, caps), marked with their group
    assert [r.id for r in MODEL.rules] == ["page-view", "unsubscribed", "pricing", "demo", "download", "clicked"]
    assert MODEL.rule("pricing") is not None and MODEL.rule("pricing").group == "product"  # type: ignore[union-attr]
    assert MODEL.rule("page-view").group is None  # type: ignore[union-attr]
    # each group also owns its manual adjustments' built-in rule (scorestream.adjustments)
    adjustments = {"adjustment:product": 2.0, "adjustment:content": 0.0}
    assert MODEL.weights == {"pricing": 2.0, "demo": 2.0, "download": 0.0, **adjustments}
    assert MODEL.group_half_lives == {"pricing": 30 * DAY, "demo": 30 * DAY, "adjustment:product": 30 * DAY}


def test_a_model_without_groups_has_none() -> None:
    model = Model.from_dict({"name": "plain", "engagement": {"rules": [{"id": "r", "points": 1}]}})
    assert model.groups == () and model.weights == {} and model.group_half_lives == {}
    state = fold([make_event()], model)
    assert group_scores(state, model, T0) == ()
    assert view_of(state, model).groups == []
    assert groups_of_view(view_of(state, model), model, T0) == ()


def _group(**fields: Any) -> dict[str, Any]:
    return {"id": "g", "rules": [{"id": "g-rule", "match": {"type": "page"}, "points": 1}], **fields}


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ({"id": "g"}, r"engagement.groups: expected a list"),
        ([_group(), _group()], r"engagement.groups\[1\].id: group 'g' is declared twice"),
        ([_group(id="Bad Id")], r"engagement.groups\[0\].id: expected a lower-case id"),
        ([_group(id=None)], r"engagement.groups\[0\].id"),
        (["g"], r"engagement.groups\[0\]: a group is a mapping"),
        ([_group(half_life="soon")], r"engagement group 'g'.half_life: expected a duration"),
        ([_group(half_life="0d")], r"engagement group 'g'.half_life: duration must be positive"),
        ([_group(weight=-1)], r"engagement group 'g'.weight: must be >= 0"),
        ([_group(weight="2")], r"engagement group 'g'.weight: expected a number"),
        ([_group(weight=True)], r"engagement group 'g'.weight: expected a number"),
        ([_group(weight=math.inf)], r"engagement group 'g'.weight: expected a number"),
        ([_group(max=0)], r"engagement group 'g'.max: must be positive"),
        ([_group(max="lots")], r"engagement group 'g'.max: expected a number"),
        ([_group(bands=[])], r"engagement group 'g'.bands: expected a non-empty list"),
        ([_group(thresholds=[0])], r"engagement group 'g'.thresholds\[0\]: expected a non-zero number"),
        ([_group(thresholds=30)], r"engagement group 'g'.thresholds: expected a list"),
        ([_group(rules=[])], r"engagement group 'g'.rules: expected a non-empty list"),
        ([_group(colour="red")], r"engagement group 'g': unknown key\(s\) \['colour'\]"),
        ([_group(rules=[{"id": "x"}])], r"engagement rule 'x' of group 'g': 'points' must be a number"),
        ([_group(rules=[{"points": 1}])], r"engagement group 'g'.rules\[0\]: rule needs a non-empty string 'id'"),
        ([_group(rules=[{"id": "page-view", "points": 1}])], r"duplicate engagement rule id\(s\): \['page-view'\]"),
        (
            [_group(), _group(id="h", rules=[{"id": "g-rule", "points": 1}])],
            r"duplicate engagement rule id\(s\): \['g-rule'\]",
        ),
    ],
)
def test_a_bad_group_is_refused_naming_the_place(groups: object, message: str) -> None:
    raw = {
        "name": "bad",
        "engagement": {"rules": [{"id": "page-view", "match": {"type": "page"}, "points": 1}], "groups": groups},
    }
    with pytest.raises(ModelError, match=message):
        Model.from_dict(raw)


def _with_lifecycle(when: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    raw = groups_raw()
    raw["lifecycle"] = {
        "stages": ["visitor", "lead"],
        "transitions": [{"id": "to-lead", "from": "visitor", "to": "lead", "when": when}],
    }
    raw.update(extra)
    return raw


def test_a_guard_on_an_unknown_group_is_refused() -> None:
    with pytest.raises(ModelError, match=r"transition 'to-lead'.when: unknown score group 'hardware'"):
        Model.from_dict(_with_lifecycle([{"field": "engagement.hardware", "op": "gte", "value": 40}]))


def test_a_group_guard_compares_numbers() -> None:
    with pytest.raises(ModelError, match=r"transition 'to-lead': an engagement guard compares with gt"):
        Model.from_dict(_with_lifecycle([{"field": "engagement.product", "op": "eq", "value": 40}]))


def test_a_group_guard_is_a_score_guard() -> None:
    model = Model.from_dict(_with_lifecycle([{"field": "engagement.product", "op": "gte", "value": 40}]))
    assert model.lifecycle is not None
    (transition,) = model.lifecycle.transitions
    assert [g.field for g in transition.engagement_guards] == ["engagement.product"]
    assert transition.static_guards == ()


def test_a_persona_cannot_read_a_group() -> None:
    raw = _with_lifecycle([{"field": "engagement.product", "op": "gte", "value": 40}])
    raw["personas"] = [{"id": "buyer", "when": [{"field": "engagement.product", "op": "gte", "value": 10}]}]
    with pytest.raises(ModelError, match=r"persona 'buyer'.when: 'engagement.product' is a score group's score"):
        Model.from_dict(raw)


def test_group_thresholds_need_a_lifecycle() -> None:
    raw = groups_raw()
    raw["engagement"]["groups"][2]["thresholds"] = [10]
    with pytest.raises(ModelError, match=r"engagement group 'email'.thresholds: threshold triggers need a 'lifecycle'"):
        Model.from_dict(raw)


# --- scores --------------------------------------------------------------------------------------


def test_a_group_decays_at_its_half_life_and_counts_in_the_overall_times_its_weight() -> None:
    state = fold([pricing(T0), track("Ebook Downloaded", T0), track("Email Link Clicked", T0)])
    at = T0 + 30 * DAY
    groups = by_id(group_scores(state, MODEL, at))
    assert groups["product"].score == pytest.approx(10 * 0.5, abs=1e-6)
    assert groups["content"].score == pytest.approx(15 * 2 ** (-30 / 14), abs=1e-6)
    assert groups["email"].score == pytest.approx(6 * 2 ** (-30 / 14), abs=1e-6)
    # overall: pricing twice (weight 2), the download not at all (weight 0), the click and the
    # page view (of no group) once, at 14 days
    overall = engagement_at(state, MODEL, at)
    assert overall.score == pytest.approx((2 * 10 + 6 + 1) * 2 ** (-30 / 14), abs=1e-6)
    assert {c.rule_id: c.points for c in overall.top} == pytest.approx(
        {"pricing": 20 * 2 ** (-30 / 14), "clicked": 6 * 2 ** (-30 / 14), "page-view": 2 ** (-30 / 14)}, abs=1e-6
    )
    assert groups["product"].top[0].rule_id == "pricing" and groups["product"].top[0].description == ""


def test_a_group_score_is_clamped_to_its_max_and_banded_by_its_bands() -> None:
    events = [track("Demo Requested", T0), pricing(T0 + HOUR), pricing(T0 + 2 * HOUR)]
    state = fold(events)
    product = by_id(group_scores(state, MODEL, T0 + 2 * HOUR))["product"]
    assert product.score == 50.0  # 40 + 10 + 10, nearly undecayed, clamped to max 50
    assert product.band == "hot"
    # the contributions are as earned (not clamped)
    assert {c.rule_id: round(c.points) for c in product.top} == {"demo": 40, "pricing": 20}
    much_later = by_id(group_scores(state, MODEL, T0 + 60 * DAY))["product"]
    raw = 40 * 0.25 + sum(10 * 2 ** (-(60 * DAY - h * HOUR) / (30 * DAY)) for h in (1, 2))
    assert much_later.score == pytest.approx(raw, abs=1e-6) and much_later.band == "cold"


def test_caps_and_once_only_awards_are_the_same_for_the_group_and_the_overall() -> None:
    # pricing caps at 20 a day: the third view in a day earns nothing in either score; the demo once
    events = [pricing(T0 + i * HOUR) for i in range(3)] + [track("Demo Requested", T0 + i * HOUR) for i in range(2)]
    state = fold(events)
    at = T0 + 3 * HOUR
    product = by_id(group_scores(state, MODEL, at, top=5))["product"]
    overall = engagement_at(state, MODEL, at, top=5)
    expected_group = math.fsum(decay(p, t, at, 30 * DAY) for p, t in ((10, T0), (10, T0 + HOUR), (40, T0)))
    expected_overall = math.fsum(decay(2 * p, t, at, OVERALL_HL) for p, t in ((10, T0), (10, T0 + HOUR), (40, T0)))
    expected_overall += math.fsum(decay(1, T0 + i * HOUR, at, OVERALL_HL) for i in range(3))  # the page views
    assert product.score == pytest.approx(min(expected_group, 50), rel=1e-9, abs=1e-6)
    assert overall.score == pytest.approx(expected_overall, rel=1e-9, abs=1e-6)


def test_a_negative_rule_of_no_group_moves_only_the_overall() -> None:
    state = fold([track("Email Link Clicked", T0), track("Unsubscribed", T0)])
    assert by_id(group_scores(state, MODEL, T0))["email"].score == 6.0
    assert engagement_at(state, MODEL, T0).score == -19.0


def test_the_view_gives_the_groups_of_the_state() -> None:
    events = [
        pricing(T0),
        track("Demo Requested", T0 + DAY),
        track("Ebook Downloaded", T0 + 2 * DAY),
        track("Email Link Clicked", T0 + 3 * DAY),
        make_event(kind="page", event=None, channel="web", path="/", timestamp_ms=T0 + 3 * DAY),
    ]
    state = fold(events)
    view = view_of(state, MODEL)
    assert view.engagement_ms == T0 + 3 * DAY
    assert [p.rule_id for p in view.groups] == ["clicked", "demo", "download", "pricing"]
    for at in (T0 + 3 * DAY, T0 + 10 * DAY, T0 + 400 * DAY):
        assert groups_of_view(view, MODEL, at) == group_scores(state, MODEL, at)
        assert engagement_of_view(view, MODEL, at) == engagement_at(state, MODEL, at)


def test_folded_hits_keep_the_group_scores() -> None:
    """Hits folded into the base (and the second base at the product group's 30 days) give the
    group and overall scores of the same hits kept."""
    folding = Model.from_dict({**groups_raw(), "storage": {"max_hits_per_contact": 8, "fold_after": "2d"}})
    events = [pricing(T0 + i * 7 * HOUR) for i in range(20)]
    events += [track("Email Link Clicked", T0 + i * 5 * HOUR) for i in range(20)]
    events += [track("Ebook Downloaded", T0 + i * 11 * HOUR) for i in range(10)]
    folded, kept = fold(events, folding), fold(events)
    assert folded.base and set(folded.group_base) == {"pricing"}
    assert len(folded.hits) < len(kept.hits)
    for at in (T0 + 10 * DAY, T0 + 90 * DAY):
        mine, theirs = group_scores(folded, folding, at), group_scores(kept, MODEL, at)
        for a, b in zip(mine, theirs, strict=True):
            assert a.id == b.id and math.isclose(a.score, b.score, rel_tol=1e-9, abs_tol=1e-6)
        assert math.isclose(
            engagement_at(folded, folding, at).score, engagement_at(kept, MODEL, at).score, rel_tol=1e-9, abs_tol=1e-6
        )
        assert groups_of_view(view_of(folded, folding), folding, at) == mine
    # folding again (more events) decays the second base with its own half-life
    later = apply_events(copy.deepcopy(folded), "user-1", [pricing(T0 + 30 * DAY)], folding)
    both = fold([*events, pricing(T0 + 30 * DAY)])
    at = T0 + 40 * DAY
    assert math.isclose(
        by_id(group_scores(later, folding, at))["product"].score,
        by_id(group_scores(both, MODEL, at))["product"].score,
        rel_tol=1e-9,
    )


def test_the_default_model_ships_two_groups_that_keep_the_overall_score() -> None:
    model = DEFAULT_MODEL
    assert len(model.groups) == 2
    assert all(g.weight == 1.0 and g.half_life_ms == model.half_life_ms for g in model.groups)
    grouped = [r for g in model.groups for r in g.rule_ids]
    assert len(grouped) == len(set(grouped)) and all(model.rule(r) is not None for r in grouped)
    events = [
        make_event(kind="page", event=None, channel="web", path="/pricing", timestamp_ms=T0),
        track("Whitepaper Downloaded", T0 + HOUR),
        make_event(event="Email Link Clicked", channel="email", timestamp_ms=T0 + 2 * HOUR),
    ]
    state = fold(events, model)
    at = T0 + 5 * DAY
    scores = group_scores(state, model, at)
    # every grouped point counts once in the overall (weight 1, the same half-life); the page view
    # (of no group) in the overall only
    assert model.group_of.get("page-view") is None
    grouped_total = math.fsum(v.score for v in scores)
    page_view = decay(1, T0, at, model.half_life_ms)
    assert engagement_at(state, model, at).score == pytest.approx(grouped_total + page_view, rel=1e-9, abs=1e-6)
    assert [v.score > 0 for v in scores] == [True, True]
