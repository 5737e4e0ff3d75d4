"""Fixtures for the whole suite."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.e2e.service import free_port
from tests.kafka_broker import ensure_broker, stop_broker


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one chDB directory of the test process: chDB runs one engine per process (a second
    directory can be opened only once every client of the first is closed), so tests share this
    one, each in a database of its own (:func:`chdb_url`), and close their clients."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def chdb_url(chdb_path: Path) -> str:
    """A fresh database in the test process's chDB directory (created on first connection)."""
    return f"chdb://{chdb_path}?database=t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real single-node Kafka for the whole session (one for every test that asks), started by
    the project's own script."""
    data = tmp_path_factory.mktemp("kafka")
    port = free_port()
    bootstrap = ensure_broker(data, port)
    yield bootstrap
    stop_broker(data, port)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the process's logging back as it was (``telemetry.logs.configure`` replaces the root
    handler, its filters and the libraries' levels)."""
    root = logging.getLogger()
    handlers, level, filters = root.handlers[:], root.level, root.filters[:]
    levels = {name: logging.getLogger(name).level for name in ("aiokafka", "faust", "mode", "uvicorn.error")}
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        root.filters[:] = filters
        for name, old in levels.items():
            logging.getLogger(name).setLevel(old)
        structlog.reset_defaults()
