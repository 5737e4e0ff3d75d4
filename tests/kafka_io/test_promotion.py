"""kafka_io.promotion: the checks before a promotion is written (live namespace, caught up, the
registry as the caller saw it, the cut moving forward), with the Kafka side injected.

The CLI that calls it (``scorestream promote``) against the real broker is in
``tests/e2e/test_shadow.py``; its messages and exit codes are checked here through
:func:`deploy.models.promote` with the same fakes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from deploy import models
from kafka_io import promotion as promotion_module
from kafka_io.promotion import DEFAULT_DELAY_MS, Progress, Promoted, PromotionRefused, promote_namespace
from schemas.registry import NamespaceRecord, Promotion, Registry, namespace_record
from schemas.settings import Settings

NOW = 1_790_000_000_000
SETTINGS = Settings()
APP = SETTINGS.app_id


def registry(*shadows: str, retired: tuple[str, ...] = (), promotions: tuple[Promotion, ...] = ()) -> Registry:
    found = Registry(APP)
    for name in (*shadows, *retired):
        record = namespace_record(name, None, NOW - 1000)
        if name in retired:
            record = NamespaceRecord(**{**{f: getattr(record, f) for f in record.__struct_fields__}, "retired_ms": NOW})
        found.namespaces[name] = record
    found.promotions = list(promotions)
    return found


class Kafka:
    """The progress a namespace reports and the promotions written."""

    def __init__(self, progress: Progress | Exception | None = None) -> None:
        self.progress = Progress(read=100, total=100, internal=0) if progress is None else progress
        self.written: list[Promotion] = []

    async def progress_of(self, settings: Settings, namespace: str, registry: Registry) -> Progress:
        if isinstance(self.progress, Exception):
            raise self.progress
        return self.progress

    async def write(self, settings: Settings, promotion: Promotion) -> Any:
        if self.written and promotion.from_ms <= self.written[-1].from_ms:
            raise ValueError("the cut must be later than the last one")
        self.written.append(promotion)
        return promotion


def promote(kafka: Kafka, reg: Registry, namespace: str, **kwargs: Any) -> Promoted:
    return asyncio.run(
        promote_namespace(
            SETTINGS,
            namespace,
            now_ms=NOW,
            registry=reg,
            progress_of=kafka.progress_of,
            write=kafka.write,
            **kwargs,
        )
    )


def test_a_caught_up_shadow_is_promoted_with_a_cut_ahead() -> None:
    kafka = Kafka()
    done = promote(kafka, registry("v2"), "v2")
    assert done.previous == APP
    assert kafka.written == [Promotion(namespace="v2", from_ms=NOW + DEFAULT_DELAY_MS, promoted_ms=NOW, previous=APP)]
    assert done.promotion == kafka.written[0]


def test_the_active_namespace_is_not_promoted_again() -> None:
    kafka = Kafka()
    done = promote(kafka, registry("v2"), APP)
    assert done.promotion is None and kafka.written == []


@pytest.mark.parametrize(
    ("namespace", "reg"),
    [("nope", registry("v2")), ("old", registry("v2", retired=("old",)))],
    ids=["unknown", "retired"],
)
def test_an_unknown_or_retired_namespace_is_refused(namespace: str, reg: Registry) -> None:
    kafka = Kafka()
    with pytest.raises(PromotionRefused, match=f"{namespace} is not a running namespace \\(known: {APP}, v2\\)"):
        promote(kafka, reg, namespace)
    assert kafka.written == []


@pytest.mark.parametrize(
    ("progress", "refused"),
    [
        (Progress(read=0, total=50, internal=0), True),  # nothing read yet
        (Progress(read=90, total=100, internal=0), False),  # 10 behind, limit 10
        (Progress(read=90, total=100, internal=1), True),  # 11 behind
        (Progress(read=100, total=100, internal=-1), False),  # internal lag unknown: counted as none
    ],
)
def test_a_shadow_behind_by_more_than_max_lag_is_refused(progress: Progress, refused: bool) -> None:
    kafka = Kafka(progress)
    if refused:
        with pytest.raises(PromotionRefused, match="records behind \\(limit --max-lag 10\\); let it catch up first"):
            promote(kafka, registry("v2"), "v2", max_lag=10)
        assert kafka.written == []
    else:
        promote(kafka, registry("v2"), "v2", max_lag=10)
        assert len(kafka.written) == 1


def test_a_namespace_whose_progress_cannot_be_read_is_refused() -> None:
    kafka = Kafka(RuntimeError("no coordinator"))
    with pytest.raises(PromotionRefused, match="cannot read v2's progress \\(no coordinator\\); is its worker running"):
        promote(kafka, registry("v2"), "v2")


def test_the_registry_changed_since_it_was_shown_is_refused() -> None:
    reg = registry("v2")
    version = reg.namespaces["v2"].model_version
    with pytest.raises(PromotionRefused, match=r"v2 now runs .*, not other@123: look again first"):
        promote(Kafka(), reg, "v2", expected_version="other@123")
    with pytest.raises(PromotionRefused, match=r"the active namespace is now .*, not v3: look again first"):
        promote(Kafka(), reg, "v2", expected_version=version, expected_active="v3")
    kafka = Kafka()
    promote(kafka, reg, "v2", expected_version=version, expected_active=APP)
    assert [p.namespace for p in kafka.written] == ["v2"]


def test_a_cut_not_later_than_the_last_one_is_refused() -> None:
    kafka = Kafka()
    promote(kafka, registry("v2"), "v2", cut_ms=NOW + 5000)
    back = registry("v2", promotions=tuple(kafka.written))
    with pytest.raises(PromotionRefused, match="the cut must be later than the last one"):
        promote(kafka, back, APP, cut_ms=NOW + 5000)


def test_the_cli_keeps_its_messages_and_exit_codes(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    kafka = Kafka(Progress(read=10, total=100, internal=0))
    reg = registry("v2")

    async def read(settings: Settings) -> Registry:
        return reg

    monkeypatch.setattr(promotion_module, "read_registry", read)
    # the Kafka side's defaults are bound at definition: the CLI calls through a wrapper passing the fakes
    real = promotion_module.promote_namespace

    async def with_fakes(*args: Any, **kwargs: Any) -> Promoted:
        return await real(*args, progress_of=kafka.progress_of, write=kafka.write, **kwargs)

    monkeypatch.setattr(models, "promote_namespace", with_fakes)
    assert models.promote(SETTINGS, "v2", None, 2.0, 10_000) == 0  # 90 behind, limit 10,000
    assert "v2 is active" in capsys.readouterr().out
    assert models.promote(SETTINGS, APP, None, 2.0, 10_000) == 0  # the registry read has APP active still
    assert f"{APP} is already active" in capsys.readouterr().out
    assert models.promote(SETTINGS, "v2", None, 2.0, 50) == 2
    assert "90 records behind (limit --max-lag 50)" in capsys.readouterr().out
    assert models.promote(SETTINGS, "ghost", None, 2.0, 50) == 2
    assert "ghost is not a running namespace" in capsys.readouterr().out
