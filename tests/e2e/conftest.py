from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.service import Service, free_port
from tests.kafka_broker import ensure_broker, stop_broker


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real single-node Kafka for the whole session, started by the project's own script."""
    data = tmp_path_factory.mktemp("kafka")
    port = free_port()
    bootstrap = ensure_broker(data, port)
    yield bootstrap
    stop_broker(data, port)


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(bootstrap=kafka_bootstrap, data_dir=Path(tmp_path_factory.mktemp("svc")))
    svc.start()
    yield svc
    svc.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.kafka)
