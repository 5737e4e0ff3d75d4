"""The one partitioner (``kafka_io.partitioner``): state is partitioned by its numbers, so they are
pinned here (computed with the code of every partitioner before they became one)."""

from __future__ import annotations

import random

import pytest

from kafka_io.partitioner import crc32_partitioner, partition_for

PINNED = [
    (b"user-1", 4, 0),
    (b"user-1", 8, 4),
    (b"user-1", 12, 8),
    (b"user-2", 4, 2),
    (b"user-2", 8, 6),
    (b"user-2", 12, 10),
    (b"anon-42", 4, 1),
    (b"anon-42", 12, 9),
    (b"anon-7", 8, 7),
    (b"contact-99", 12, 1),
    (b"wh_9f3a", 4, 1),
    (b"\xff\xfe", 4, 2),
    (b"\xff\xfe", 8, 6),
    (b"", 8, 0),
]


@pytest.mark.parametrize(("key", "partitions", "expected"), PINNED)
def test_a_key_keeps_its_partition(key: bytes, partitions: int, expected: int) -> None:
    assert partition_for(key, partitions) == expected


@pytest.mark.parametrize(("key", "partitions", "expected"), PINNED)
def test_the_producer_partitioner_agrees(key: bytes, partitions: int, expected: int) -> None:
    every = list(range(partitions))
    assert crc32_partitioner(key, every, every) == expected
    assert crc32_partitioner(key, every, []) == expected  # a key's partition does not depend on availability


def test_a_record_without_key_goes_to_an_available_partition() -> None:
    random.seed(7)
    chosen = {crc32_partitioner(None, [0, 1, 2, 3], [1, 3]) for _ in range(200)}
    assert chosen == {1, 3}
    assert {crc32_partitioner(None, [0, 1, 2, 3], []) for _ in range(200)} == {0, 1, 2, 3}


def test_the_adapters_use_it() -> None:
    import api.webhook_backend
    import collector.service
    import streams.account_feed
    import streams.agents

    assert vars(streams.agents)["partition_for"] is partition_for
    assert vars(streams.account_feed)["partition_for"] is partition_for
    assert vars(collector.service)["crc32_partitioner"] is crc32_partitioner
    assert api.webhook_backend.command_partition("wh_9f3a", 4) == 1
