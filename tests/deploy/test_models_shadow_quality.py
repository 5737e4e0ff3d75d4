"""What ``scorestream shadow`` prints of the score-quality report once the shadow caught up: the
shadow's conversion per stage against the active model's, then the AUC, read from a real chDB
archive (the hand-built one of ``tests/analytics/test_score_quality.py``); and a note instead of a
failure when the archive cannot be read from the command's process."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from analytics import score_quality as sq
from analytics.client import Store
from deploy import models
from schemas.api_quality import ScoreQualityOut
from schemas.settings import Settings
from tests.analytics import test_score_quality as qf
from tests.factories import DAY


def quality_settings(url: str) -> Settings:
    return Settings(clickhouse_url=url)  # type: ignore[arg-type]


def test_the_shadow_command_says_how_much_better_its_mqls_convert(
    chdb_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"chdb://{chdb_path}?database=shadow_quality_{uuid.uuid4().hex[:8]}"
    store = Store(url)
    try:
        asyncio.run(qf.fill(store, *qf.hand_built()))
    finally:
        store.close_sync()
    # the period ends a horizon before now; with now = T + 30 days + a day, the last instant is T + 1 day
    now = qf.T + 31 * DAY
    monkeypatch.setattr(models, "QUALITY_PERIOD_DAYS", 1)
    printed: list[str] = []
    monkeypatch.setattr(models.console, "print", lambda text, **_: printed.append(str(text)))
    shadow = replace(qf.MODEL, version=qf.SHADOW)  # the model file under the shadow's version (its ledger rows)
    report = models.print_quality(quality_settings(url), ("app", qf.MODEL), ("app-shadow", shadow), now, 1, 1)
    assert report is not None and [m.role for m in report.models] == ["active", "shadow"]
    assert printed[0].startswith("does the score predict? order within 30 days of 1 scoring instants")
    # at T + 1 day: the shadow's MQLs are c1 and the visitor (both ordered), the active model's c1, c2, c10
    assert "  the shadow's mqls convert 3.0x better (100.0% against 33.3%)" in printed
    assert printed[-1].startswith("  the shadow's scores rank buyers better: AUC 1.000 against")


def test_an_archive_it_cannot_read_is_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    printed: list[str] = []
    monkeypatch.setattr(models.console, "print", lambda text, **_: printed.append(str(text)))
    settings = quality_settings("http://127.0.0.1:1/nowhere")
    report = models.print_quality(settings, ("app", qf.MODEL), ("app-shadow", qf.MODEL), qf.NOW)
    assert report is None and "GET /v1/reports/score-quality?model=app-shadow" in printed[0]


def test_few_contacts_per_stage_are_said_so_with_the_auc(chdb_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"chdb://{chdb_path}?database=shadow_few_{uuid.uuid4().hex[:8]}"
    store = Store(url)
    try:
        asyncio.run(qf.fill(store, *qf.hand_built()))
    finally:
        store.close_sync()
    monkeypatch.setattr(models, "QUALITY_PERIOD_DAYS", 1)
    printed: list[str] = []
    monkeypatch.setattr(models.console, "print", lambda text, **_: printed.append(str(text)))
    shadow = replace(qf.MODEL, version=qf.SHADOW)
    models.print_quality(quality_settings(url), ("app", qf.MODEL), ("app-shadow", shadow), qf.T + 31 * DAY)
    assert printed[1] == "  by stage: too few scored contacts to compare (at least 30 per stage)"
    assert printed[2] == "  AUC: not enough data (8 and 4 pairs)"


def test_too_little_data_prints_why() -> None:
    lines = models.quality_lines(asyncio.run(_empty_report()))
    assert lines[0].startswith("does the score predict?") and "choose an earlier period" in lines[1]


async def _empty_report() -> ScoreQualityOut:
    # no snapshot: the period's horizon has not passed (no archive read)
    return await sq.score_quality(None, [], sq.Outcome(), qf.T, qf.T + 1, qf.H, qf.H, qf.T)  # type: ignore[arg-type]
