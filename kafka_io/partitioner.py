"""The one partitioner of scorestream: CRC32 of the key, modulo the partition count.

State is partitioned by these numbers (the tables, the internal topics, the webhook commands):
changing the function moves every key to another partition. CRC32 is in C (aiokafka's default
murmur2 is pure Python: 3 µs a message), and stable across processes and runs (unlike Python's
per-process ``hash``).
"""

from __future__ import annotations

import random
import zlib


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions`` (numbered from 0)."""
    return zlib.crc32(key) % partitions


def crc32_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """:func:`partition_for` as an aiokafka producer ``partitioner``; a record without a key goes
    to a random partition (an available one if any)."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[partition_for(key, len(all_partitions))]
