"""Replay and shadows per score group: the views compared carry each group's score and band, and
the diff counts the contacts whose groups changed apart from the overall score."""

from __future__ import annotations

import copy
from typing import Any

from analytics.replay import diff, views
from schemas.model_file import read_model_source
from scorestream import Model
from tests.analytics.test_replay import AS_OF, MODEL, fold, records


def variant(name: str, **product: Any) -> Model:
    """The default model with its ``product`` group's settings changed."""
    source = copy.deepcopy(read_model_source())
    (group,) = [g for g in source["engagement"]["groups"] if g["id"] == "product"]
    group.update(product)
    source["name"] = name
    return Model.from_dict(source)


def test_the_views_carry_the_models_groups() -> None:
    live = views(fold(records()).contacts, MODEL, AS_OF)
    assert all([g for g, _, _ in v.groups] == ["product", "content"] for v in live.values())
    assert any(score > 0 for v in live.values() for g, score, _ in v.groups if g == "product")
    shown = next(iter(live.values())).to_json()["groups"]
    assert set(shown) == {"product", "content"} and set(shown["product"]) == {"score", "band"}


def test_a_group_set_apart_changes_the_overall_score_not_the_groups() -> None:
    recs = records()
    apart = variant("apart", weight=0)
    d = diff(views(fold(recs).contacts, MODEL, AS_OF), views(fold(recs, apart).contacts, apart, AS_OF))
    assert d.engagement_changed > 0 and d.groups_changed == 0
    assert d.engagement_replay["mean"] is not None and d.engagement_live["mean"] is not None
    assert d.engagement_replay["mean"] < d.engagement_live["mean"]


def test_a_group_with_a_longer_half_life_changes_the_group_not_the_overall_score() -> None:
    recs = records()
    slower = variant("slower", half_life="60d")
    d = diff(views(fold(recs).contacts, MODEL, AS_OF), views(fold(recs, slower).contacts, slower, AS_OF))
    assert d.groups_changed > 0 and d.engagement_changed == 0
    assert d.to_json()["groups_changed"] == d.groups_changed
