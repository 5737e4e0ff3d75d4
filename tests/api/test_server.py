"""``scorestream api`` (``api.server``): several processes are refused while the analytics sink
would run inside them (embedded chDB is one process's); they run on one port otherwise
(``tests/e2e/test_api_processes.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import uvicorn

from api.server import serve
from schemas.settings import Settings
from telemetry import metrics


def test_several_processes_need_the_sink_outside_the_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    started: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append({"app": app, **options}))
    with pytest.raises(SystemExit, match="SCORESTREAM_SINK_IN_API=false"):
        serve(Settings(api_processes=2))  # embedded chDB: the sink would run in the API
    assert started == []
    monkeypatch.setenv("SCORESTREAM_API_PROCESSES", "1")  # restored after the test (serve sets it)
    # serve names the processes' metrics directory in the environment: restored (unset) after the test,
    # else every later process of the suite would inherit prometheus_client's multiprocess mode
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "")
    serve(Settings(sink_in_api=False, data_dir=tmp_path), processes=3)
    (options,) = started
    assert options["app"] == "api.server:app_of_environment" and options["factory"] is True
    assert options["workers"] == 3
    assert os.environ["SCORESTREAM_API_PROCESSES"] == "3"  # what each worker's settings read
    assert os.environ[metrics.MULTIPROC_ENV] == str(tmp_path / "metrics" / "api")  # their metrics summed there
