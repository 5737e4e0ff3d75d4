"""Parsing the scoring model: durations, predicates, validation errors, version ids, rule matching."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest

from schemas.model_file import load_model
from scorestream import Model, ModelError
from scorestream.rules.common import Band, Predicate, as_number, parse_bands, parse_duration_ms, parse_number
from tests.factories import DAY, DEFAULT_MODEL, HOUR, make_event, model_from

# --- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected_ms"),
    [
        ("14d", 14 * DAY),
        ("12h", 12 * HOUR),
        ("30m", 30 * 60_000),
        ("45s", 45_000),
        ("250ms", 250),
        ("2w", 14 * DAY),
        ("1.5h", 90 * 60_000),
        (" 3d ", 3 * DAY),
        ("90", 90_000),
        (90, 90_000),
        (1.5, 1_500),
    ],
)
def test_parse_duration(raw: object, expected_ms: int) -> None:
    assert parse_duration_ms(raw, "x") == expected_ms


@pytest.mark.parametrize("raw", ["14x", "", "d", "-5d", "14 days", "1e3s", "0d", 0, -3, True, None, [1], {"d": 1}])
def test_parse_duration_rejects(raw: object) -> None:
    with pytest.raises(ModelError, match=r"^engagement\.half_life: "):
        parse_duration_ms(raw, "engagement.half_life")


def test_half_life_parsed_from_model() -> None:
    assert model_from([], half_life="12h").half_life_ms == 12 * HOUR
    assert model_from([], half_life=3600).half_life_ms == HOUR
    assert Model.from_dict({"name": "x"}).half_life_ms == 14 * DAY


def test_bad_half_life_names_the_field() -> None:
    with pytest.raises(ModelError, match=r"engagement\.half_life.*'fortnight'"):
        model_from([], half_life="fortnight")


def test_bad_cap_window_names_the_rule() -> None:
    rule = {"id": "r", "match": {"type": "page"}, "points": 1, "cap": {"points": 5, "window": "soon"}}
    with pytest.raises(ModelError, match=r"engagement rule 'r'\.cap\.window"):
        model_from([rule])


# --- predicates ----------------------------------------------------------------------------------


def pred(op: str, value: Any = None, field: str = "f") -> Predicate:
    raw: dict[str, Any] = {"field": field, "op": op}
    if value is not None:
        raw["value"] = value
    return Predicate.parse(raw, "test")


@pytest.mark.parametrize(
    ("op", "value", "actual", "expected"),
    [
        ("eq", "VP", "vp", True),
        ("eq", "vp", "VP Sales", False),
        ("eq", 5, 5, True),
        ("eq", 5, 6, False),
        ("ne", "VP", "vp", False),
        ("ne", "VP", "cto", True),
        ("in", ["US", "GB"], "us", True),
        ("in", ["US", "GB"], "DE", False),
        ("not_in", ["US", "GB"], "gb", False),
        ("not_in", ["US", "GB"], "DE", True),
        ("in", ["software"], ["software"], False),  # a list trait is not one of the values
        ("in", ["software"], {"a": 1}, False),
        ("not_in", ["software"], ["software"], True),
        ("gt", 10, "11", True),
        ("gt", 10, "10", False),
        ("gt", "10", 10.5, True),
        ("gte", 10, "10", True),
        ("gte", 10, 9.99, False),
        ("lt", 10, "9", True),
        ("lt", 10, 10, False),
        ("lte", 10, "10.0", True),
        ("lte", 10, 11, False),
        ("gt", 10, "lots", False),
        ("gt", 0, True, False),
        ("contains", "PRICE", "the price list", True),
        ("contains", "x", "abc", False),
        ("contains", "Blue", ["red", "blue"], True),
        ("contains", "green", ["red", "blue"], False),
        ("contains", "1", 123, False),
        ("matches", r"^/blog/\d+$", "/blog/42", True),
        ("matches", r"^/blog/\d+$", "/blog/x", False),
        ("matches", r"(?i)\bvp\b", "Senior VP, Sales", True),
        ("matches", r"\d", 5, False),
        ("glob", "/pricing*", "/pricing/teams", True),
        ("glob", "/pricing*", "/PRICING", False),
        ("glob", "*.pdf", "file.pdf", True),
        ("glob", "*", 1, False),
    ],
)
def test_predicate_ops(op: str, value: Any, actual: Any, expected: bool) -> None:
    assert pred(op, value).test({"f": actual}) is expected


def test_predicate_default_op_is_eq() -> None:
    p = Predicate.parse({"field": "f", "value": "X"}, "test")
    assert p.op == "eq"
    assert p.test({"f": "x"}) is True


@pytest.mark.parametrize("alias", ["field", "property", "trait"])
def test_predicate_field_aliases(alias: str) -> None:
    p = Predicate.parse({alias: "a.b", "op": "eq", "value": 1}, "test")
    assert p.field == "a.b"
    assert p.test({"a": {"b": 1}}) is True
    assert p.test({"a": {"b": 2}}) is False
    assert p.test({"a": "not a mapping"}) is False


def test_exists_true_and_false() -> None:
    exists = pred("exists")
    assert exists.value is True
    assert exists.test({"f": ""}) is True
    assert exists.test({"f": 0}) is True
    assert exists.test({"f": None}) is False
    assert exists.test({}) is False
    absent = Predicate.parse({"field": "f", "op": "exists", "value": False}, "test")
    assert absent.test({}) is True
    assert absent.test({"f": None}) is True
    assert absent.test({"f": "x"}) is False


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("eq", "x", False),
        ("ne", "x", True),
        ("in", ["x"], False),
        ("not_in", ["x"], True),
        ("gt", 0, False),
        ("gte", 0, False),
        ("lt", 0, False),
        ("lte", 0, False),
        ("contains", "x", False),
        ("matches", ".*", False),
        ("glob", "*", False),
    ],
)
def test_missing_field(op: str, value: Any, expected: bool) -> None:
    p = pred(op, value, field="nested.missing")
    assert p.test({}) is expected
    assert p.test({"nested": {}}) is expected
    assert p.test({"nested": {"missing": None}}) is expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"field": "f", "op": "like", "value": 1}, r"test: unknown op 'like'"),
        ({"field": "f", "op": "matches", "value": "("}, r"test: bad regular expression '\('"),
        ({"field": "f", "op": "matches", "value": 3}, r"test: 'matches' needs a regular expression"),
        ({"field": "f", "op": "in", "value": "US"}, r"test: 'in' needs a list"),
        ({"field": "f", "op": "not_in", "value": None}, r"test: 'not_in' needs a list"),
        ({"field": "f", "op": "gt", "value": "many"}, r"test: 'gt' needs a number"),
        ({"op": "eq", "value": 1}, r"test: predicate needs 'field'"),
        ({"field": "", "op": "eq"}, r"test: predicate needs 'field'"),
        (["f", "eq", 1], r"test: a predicate is a mapping"),
    ],
)
def test_predicate_errors(raw: object, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        Predicate.parse(raw, "test")


# --- model validation errors name the bad field --------------------------------------------------


def _rule(rule_id: str = "r", **over: Any) -> dict[str, Any]:
    return {"id": rule_id, "match": {"type": "track", "event": "Email Opened"}, "points": 1, **over}


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([_rule("dup"), _rule("ok"), _rule("dup")], r"duplicate engagement rule id\(s\): \['dup'\]"),
        (
            [_rule("w", match={"type": "track", "where": [{"field": "x", "op": "approx", "value": 1}]})],
            r"engagement rule 'w'\.match\.where\[0\]: unknown op 'approx'",
        ),
        (
            [_rule("re", match={"where": [{"field": "x", "op": "matches", "value": "[unclosed"}]})],
            r"engagement rule 're'\.match\.where\[0\]: bad regular expression",
        ),
        ([_rule("k", match={"type": "track", "evnt": "X"})], r"engagement rule 'k': unknown match key\(s\) \['evnt'\]"),
        ([_rule("c", match={"channel": "sms"})], r"engagement rule 'c'\.match\.channel: unknown value\(s\) \['sms'\]"),
        ([_rule("t", match={"type": "click"})], r"engagement rule 't'\.match\.type: unknown value\(s\) \['click'\]"),
        ([_rule("e", match={"event": 5})], r"engagement rule 'e'\.match\.event: expected a string or a list"),
        ([_rule("p", points="ten")], r"engagement rule 'p': 'points' must be a number"),
        ([_rule("p", points=None)], r"engagement rule 'p': 'points' must be a number"),
        ([_rule("m", match=["track"])], r"engagement rule 'm': 'match' must be a mapping"),
        ([_rule("wl", match={"where": {"field": "x"}})], r"engagement rule 'wl'\.match\.where: expected a list"),
        ([_rule("cap", cap={"points": 5})], r"engagement rule 'cap'\.cap: expected"),
        ([{"match": {}, "points": 1}], r"engagement\.rules\[0\]: rule needs a non-empty string 'id'"),
        ([_rule(), "not a rule"], r"engagement\.rules\[1\]: a rule is a mapping"),
    ],
)
def test_engagement_rule_errors(rules: list[Any], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        model_from(rules)


@pytest.mark.parametrize(
    ("fit_rules", "message"),
    [
        (
            [{"id": "a", "points": 1, "when": [{"field": "x", "op": "exists"}]}] * 2,
            r"duplicate fit rule id\(s\): \['a'\]",
        ),
        ([{"id": "a", "points": 1, "when": []}], r"fit rule 'a': 'when' must be a non-empty list"),
        (
            [{"id": "a", "points": 1, "when": [{"field": "x", "op": "between"}]}],
            r"fit rule 'a'\.when\[0\]: unknown op 'between'",
        ),
        ([{"id": "a", "points": "x", "when": [{"field": "x"}]}], r"fit rule 'a': 'points' must be a number"),
    ],
)
def test_fit_rule_errors(fit_rules: list[Any], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        model_from([], fit_rules=fit_rules)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], r"mapping at the top level"),
        ({}, r"non-empty 'name'"),
        ({"name": ""}, r"non-empty 'name'"),
        ({"name": "x", "engagement": ["rules"]}, r"'engagement' and 'fit' must be mappings"),
        ({"name": "x", "engagement": {"rules": {"id": "r"}}}, r"engagement\.rules must be a list"),
        ({"name": "x", "fit": {"rules": "none"}}, r"fit\.rules must be a list"),
        ({"name": "x", "storage": {"max_hits_per_contact": 4}}, r"storage\.max_hits_per_contact must be >= 8"),
        ({"name": "x", "storage": {"dedupe_memory": -1}}, r"dedupe_memory >= 0"),
        ({"name": "x", "engagement": {"bands": []}}, r"engagement\.bands: expected a non-empty list"),
        ({"name": "x", "fit": {"grades": [{"label": "A"}]}}, r"fit\.grades\[0\]: expected"),
    ],
)
def test_model_errors(raw: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        Model.from_dict(raw)


# --- version id ----------------------------------------------------------------------------------


def _raw_model() -> dict[str, Any]:
    return {
        "name": "v",
        "engagement": {"half_life": "7d", "rules": [_rule("a", points=3), _rule("b", points=4)]},
        "fit": {"rules": [{"id": "f", "points": 10, "when": [{"field": "title", "op": "exists"}]}]},
    }


def test_version_stable_for_same_content() -> None:
    first = Model.from_dict(_raw_model())
    second = Model.from_dict(_raw_model())
    assert first.version == second.version
    assert first.version.startswith("v@")
    assert len(first.version) == len("v@") + 12
    reordered = dict(reversed(list(_raw_model().items())))
    reordered["engagement"] = dict(reversed(list(reordered["engagement"].items())))
    assert Model.from_dict(reordered).version == first.version


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("engagement", "half_life"), "8d"),
        (("engagement", "rules", 0, "points"), 99),
        (("engagement", "rules", 1, "match", "event"), "Email Link Clicked"),
        (("fit", "rules", 0, "points"), 11),
        (("name",), "w"),
    ],
)
def test_version_changes_with_content(path: tuple[str | int, ...], value: object) -> None:
    raw = _raw_model()
    changed = copy.deepcopy(raw)
    holder: Any = changed
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = value
    assert Model.from_dict(changed).version != Model.from_dict(raw).version


def test_reordering_rules_changes_version() -> None:
    raw = _raw_model()
    swapped = copy.deepcopy(raw)
    swapped["engagement"]["rules"].reverse()
    assert Model.from_dict(swapped).version != Model.from_dict(raw).version


# --- matching rules ------------------------------------------------------------------------------

MATCHING = model_from(
    [
        {"id": "any-page", "match": {"type": "page"}, "points": 1},
        {"id": "pricing", "match": {"type": "page", "path": ["/pricing*", "*/pricing"]}, "points": 10},
        {"id": "opened-email", "match": {"type": "track", "event": "Email Opened", "channel": "email"}, "points": 2},
        {"id": "opened-any", "match": {"type": "track", "event": ["Email Opened", "Push Opened"]}, "points": 1},
        {
            "id": "big-order",
            "match": {
                "type": "track",
                "event": "Order Completed",
                "where": [{"field": "total", "op": "gte", "value": 500}],
            },
            "points": 20,
        },
        {"id": "store", "match": {"event": "Order Completed", "channel": ["store"]}, "points": 5},
        {"id": "any-track", "match": {"type": "track"}, "points": 0.5},
        {
            "id": "vp",
            "match": {"type": "identify", "where": [{"field": "title", "op": "matches", "value": "(?i)vp"}]},
            "points": 3,
        },
        {"id": "screen", "match": {"type": "screen", "event": "Settings"}, "points": 1},
        {"id": "everything", "match": {}, "points": 0.1},
    ]
)


def _ids(**event: Any) -> list[str]:
    return [r.id for r in MATCHING.matching_rules(make_event(**event))]


def test_matching_by_type_event_and_channel() -> None:
    assert _ids(event="Email Opened", channel="email") == ["opened-email", "opened-any", "any-track", "everything"]
    assert _ids(event="Email Opened", channel="web") == ["opened-any", "any-track", "everything"]
    assert _ids(event="Push Opened", channel="web") == ["opened-any", "any-track", "everything"]
    assert _ids(event="email opened", channel="email") == ["any-track", "everything"]
    assert _ids(event="Something Else", channel="web") == ["any-track", "everything"]


def test_matching_by_path_globs() -> None:
    assert _ids(kind="page", event=None, path="/") == ["any-page", "everything"]
    assert _ids(kind="page", event=None, path="/pricing") == ["any-page", "pricing", "everything"]
    assert _ids(kind="page", event=None, path="/pricing/teams") == ["any-page", "pricing", "everything"]
    assert _ids(kind="page", event=None, path="/de/pricing") == ["any-page", "pricing", "everything"]
    assert _ids(kind="page", event=None, path="/de/pricing/x") == ["any-page", "everything"]
    assert _ids(kind="page", event=None, path=None) == ["any-page", "everything"]


def test_matching_where_predicates() -> None:
    assert "big-order" in _ids(event="Order Completed", channel="web", properties={"total": 750})
    assert "big-order" in _ids(event="Order Completed", channel="web", properties={"total": "500"})
    assert "big-order" not in _ids(event="Order Completed", channel="web", properties={"total": 499.99})
    assert "big-order" not in _ids(event="Order Completed", channel="web", properties={})
    # identify rules look at traits, not properties
    assert _ids(kind="identify", event=None, traits={"title": "VP Sales"}) == ["vp", "everything"]
    assert _ids(kind="identify", event=None, traits={}, properties={"title": "VP"}) == ["everything"]


def test_matching_rule_without_type_and_name_from_screen() -> None:
    assert _ids(event="Order Completed", channel="store", properties={"total": 10}) == [
        "store",
        "any-track",
        "everything",
    ]
    assert _ids(kind="screen", event=None, name="Settings") == ["screen", "everything"]
    assert _ids(kind="screen", event=None, name="Home") == ["everything"]
    assert _ids(kind="alias", event=None, previous_id="a") == ["everything"]


def test_matching_order_follows_model_order() -> None:
    ids = _ids(event="Order Completed", channel="store", properties={"total": 900})
    assert ids == ["big-order", "store", "any-track", "everything"]


def test_rule_lookup() -> None:
    rule = MATCHING.rule("pricing")
    assert rule is not None
    assert rule.points == 10
    assert rule.paths == ("*/pricing", "/pricing*")
    assert MATCHING.rule("nope") is None


def test_cap_and_once_parsed() -> None:
    model = model_from(
        [
            {"id": "c", "match": {"type": "page"}, "points": -10, "cap": {"points": -20, "window": "7d"}},
            {"id": "o", "match": {"type": "track"}, "points": 40, "once": True},
        ]
    )
    cap, once = model.rules
    assert (cap.cap_points, cap.cap_window_ms, cap.once) == (20, 7 * DAY, False)
    assert (once.cap_points, once.cap_window_ms, once.once) == (None, None, True)


# --- the default model ---------------------------------------------------------------------------


def test_default_model_loads() -> None:
    model = DEFAULT_MODEL
    assert model.name == "default"
    assert model.version.startswith("default@")
    assert model.half_life_ms == 14 * DAY
    assert model.max_hits == 500
    assert model.fold_after_ms == 30 * DAY
    assert model.dedupe_memory == 512
    ids = [r.id for r in model.rules]
    assert len(ids) == len(set(ids)) >= 10
    assert {"page-view", "pricing-page", "demo-requested", "email-opened", "unsubscribed"} <= set(ids)
    assert [b.label for b in model.fit_grades] == ["A", "B", "C", "D"]
    assert [b.label for b in model.engagement_bands] == ["1", "2", "3", "4"]


def test_default_model_matches_typical_events() -> None:
    pricing = make_event(kind="page", event=None, channel="web", path="/pricing")
    assert [r.id for r in DEFAULT_MODEL.matching_rules(pricing)] == ["page-view", "pricing-page"]
    order = make_event(event="Order Completed", channel="store", properties={"total": 800})
    assert [r.id for r in DEFAULT_MODEL.matching_rules(order)] == ["order-completed", "big-order", "store-visit"]
    opened_web = make_event(event="Email Opened", channel="web")
    assert DEFAULT_MODEL.matching_rules(opened_web) == []


def test_load_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read model file"):
        load_model(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ModelError, match="not valid YAML"):
        load_model(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: x\nengagement:\n  rules:\n    - {id: a, points: 1}\n    - {id: a, points: 2}\n")
    with pytest.raises(ModelError, match=r"duplicate engagement rule id\(s\): \['a'\]"):
        load_model(dup)


def test_bands_of_contacts_and_accounts_are_read_by_one_rule() -> None:
    default = (Band("low", -math.inf), Band("high", 50.0))
    assert parse_bands(None, "x", default) == (Band("high", 50.0), Band("low", -math.inf))
    assert parse_bands([{"label": "B", "min": 1}, {"label": "A", "min": 2.5}], "x", default) == (
        Band("A", 2.5),
        Band("B", 1.0),
    )
    for bad in ("ten", True, None):
        with pytest.raises(ModelError, match=r"fit\.grades\[0\]: 'min' must be a number"):
            Model.from_dict({"name": "x", "fit": {"grades": [{"label": "A", "min": bad}]}})
        with pytest.raises(ModelError, match=r"accounts\.fit\.grades\[0\]: 'min' must be a number"):
            Model.from_dict({"name": "x", "accounts": {"fit": {"grades": [{"label": "A", "min": bad}]}}})
    model = Model.from_dict({"name": "x"})
    assert [(b.label, b.min) for b in model.fit_grades] == [("A", 60.0), ("B", 35.0), ("C", 15.0), ("D", -math.inf)]
    assert [(b.label, b.min) for b in model.engagement_bands] == [("1", 60), ("2", 30), ("3", 10), ("4", -math.inf)]
    assert [b.min for b in model.accounts.engagement_bands] == [100, 50, 15, -math.inf]


def test_numbers_in_the_model_file() -> None:
    assert parse_number(3, "x") == 3.0
    assert parse_number(0.5, "x", minimum=0.0) == 0.5
    for bad in ("3", True, math.inf, math.nan, None):
        with pytest.raises(ModelError, match="x: expected a number"):
            parse_number(bad, "x")
    with pytest.raises(ModelError, match=r"x: must be >= 0\.0, got -1"):
        parse_number(-1, "x", minimum=0.0)
    # a predicate reads what it compares leniently: numeric strings count, booleans do not
    assert as_number("2.5") == 2.5 and as_number(7) == 7.0
    assert as_number(True) is None and as_number("abc") is None and as_number([1]) is None
