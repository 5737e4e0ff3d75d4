"""The models registry: who is active, who announces which instant, and the worker's choice of
namespace and model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from schemas.model_file import load_model, read_model_source
from schemas.registry import (
    ACTIVE_KEY,
    NAMESPACE_PREFIX,
    Promotion,
    Registry,
    encode_record,
    namespace_record,
    namespace_refusal,
    promoted,
)
from schemas.settings import Settings
from streams.worker import WrongModel, resolve


def promotion(ns: str, from_ms: int, previous: str = "scorestream") -> Promotion:
    return Promotion(namespace=ns, from_ms=from_ms, promoted_ms=from_ms - 10, previous=previous)


def test_before_any_promotion_the_app_id_is_active_and_responsible_for_every_instant() -> None:
    registry = Registry("scorestream")
    registry.apply(f"{NAMESPACE_PREFIX}v2".encode(), encode_record(namespace_record("v2", None, 5)))
    assert registry.active == "scorestream"
    assert registry.responsible(0) == registry.responsible(10**13) == "scorestream"
    assert registry.live() == ["scorestream", "v2"]


def test_the_cut_splits_event_time_between_namespaces_in_order() -> None:
    registry = Registry("scorestream")
    first = promoted([], promotion("v2", 1_000))
    second = promoted(first.promotions, promotion("v3", 2_000, "v2"))
    registry.apply(ACTIVE_KEY.encode(), encode_record(second))
    assert registry.active == "v3"
    assert [registry.responsible(t) for t in (999, 1_000, 1_999, 2_000, 5_000)] == [
        "scorestream",
        "v2",
        "v2",
        "v3",
        "v3",
    ]


def test_a_cut_cannot_move_back() -> None:
    first = promoted([], promotion("v2", 1_000))
    with pytest.raises(ValueError, match="later than the last"):
        promoted(first.promotions, promotion("v3", 1_000, "v2"))


def test_retired_namespaces_are_not_live_and_the_app_id_stays_until_retired() -> None:
    registry = Registry("scorestream")
    registry.apply(ACTIVE_KEY, encode_record(promoted([], promotion("v2", 1_000))))
    registry.apply(f"{NAMESPACE_PREFIX}v2", encode_record(namespace_record("v2", None, 5)))
    assert registry.live() == ["v2", "scorestream"]
    old = namespace_record("scorestream", None, 0)
    retired = type(old)(**{**{f: getattr(old, f) for f in old.__struct_fields__}, "retired_ms": 7})
    registry.apply(f"{NAMESPACE_PREFIX}scorestream", encode_record(retired))
    assert registry.live() == ["v2"]
    registry.apply(f"{NAMESPACE_PREFIX}v2", None)  # a tombstone forgets the record
    assert "v2" not in registry.namespaces


def test_a_registered_model_round_trips_with_its_infinite_bounds() -> None:
    record = namespace_record("v2", None, 1)
    assert record.load_model() == load_model(None)  # the default model has -inf/inf grade bounds


@pytest.mark.parametrize("name", ["", "-x", "a b", "x/y", "x" * 101])
def test_namespace_names_must_be_topic_prefixes(name: str) -> None:
    assert namespace_refusal(name) is not None


def test_the_worker_runs_the_active_namespace_with_its_registered_model(tmp_path: Path) -> None:
    source = read_model_source()
    source["name"] = "other"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(source))
    registry = Registry("scorestream")
    registry.apply(f"{NAMESPACE_PREFIX}v2", encode_record(namespace_record("v2", other, 1)))
    registry.apply(ACTIVE_KEY, encode_record(promoted([], promotion("v2", 1_000))))

    settings, model = resolve(Settings(), registry)
    assert (settings.ns, model.name) == ("v2", "other")
    assert settings.changelog_topic("contacts") == "v2-contacts-changelog"
    assert settings.private_triggers_topic == "v2.triggers"

    settings, model = resolve(Settings(namespace="scorestream"), registry)  # no record: the configured model
    assert (settings.ns, model.version) == ("scorestream", load_model(None).version)

    with pytest.raises(WrongModel, match="runs model other@"):
        resolve(
            Settings(model=None, namespace="v2").model_copy(update={"model": Path("schemas/models/b2c.yaml")}), registry
        )
