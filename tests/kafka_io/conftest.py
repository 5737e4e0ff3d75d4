from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.service import free_port
from tests.kafka_broker import ensure_broker, stop_broker


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real single-node Kafka for the session, started by the project's own script."""
    data = tmp_path_factory.mktemp("kafka")
    port = free_port()
    bootstrap = ensure_broker(data, port)
    yield bootstrap
    stop_broker(data, port)
