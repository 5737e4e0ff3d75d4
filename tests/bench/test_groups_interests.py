"""bench.groups_interests: the models it compares differ only by the score groups and interests
(and, for the third, machine traffic), and a tiny run reports every figure."""

from __future__ import annotations

from bench.groups_interests import measure, variants


def test_the_models_differ_only_by_groups_and_interests() -> None:
    models = variants()
    full, without, bare = models["full"], models["without"], models["without_machine"]
    assert len(full.groups) == 2 and full.interests is not None and full.machine is not None
    assert without.groups == () and without.interests is None and without.machine is not None
    assert bare.machine is None
    assert sorted(r.id for r in full.rules) == sorted(r.id for r in without.rules) == sorted(r.id for r in bare.rules)
    assert {r.id: r.points for r in full.rules} == {r.id: r.points for r in without.rules}


def test_a_tiny_run_reports_each_model_and_the_ratios() -> None:
    out = measure(events=400, contacts=40, rounds=2)
    for name in ("full", "without", "without_machine"):
        assert out[name]["events_per_s"] > 0
        assert len(out[name]["passes"].split(",")) == 2
    assert out["ratio_full_over_without"] == round(out["full"]["events_per_s"] / out["without"]["events_per_s"], 3)
