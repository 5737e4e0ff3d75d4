"""The population topic (``<app>.population``, one partition, compacted): its keys and records.

``partition:<n>`` holds the latest :class:`~scorestream.population.PartitionSummary` of contacts
partition ``n`` (written by the worker that owns it), ``model`` the latest
:class:`~scorestream.population.PopulationModel` (written by the owner of contacts partition 0).
MessagePack via msgspec straight from the core's dataclasses; both carry a version ``v`` and a
newer one is refused.
"""

from __future__ import annotations

import logging

import msgspec

from schemas.state import UnsupportedVersion
from scorestream.population import POPULATION_VERSION, PartitionSummary, PopulationModel

log = logging.getLogger(__name__)

__all__ = [
    "MODEL_KEY",
    "POPULATION_VERSION",
    "PartitionSummary",
    "PopulationModel",
    "decode_record",
    "encode_record",
    "partition_key",
]

MODEL_KEY = b"model"
_PARTITION_PREFIX = b"partition:"

_encoder = msgspec.msgpack.Encoder()
_summary_decoder = msgspec.msgpack.Decoder(PartitionSummary)
_model_decoder = msgspec.msgpack.Decoder(PopulationModel)


def partition_key(partition: int) -> bytes:
    return _PARTITION_PREFIX + str(partition).encode()


def encode_record(record: PartitionSummary | PopulationModel) -> tuple[bytes, bytes]:
    """The (key, value) of a record on the population topic."""
    key = MODEL_KEY if isinstance(record, PopulationModel) else partition_key(record.partition)
    return key, _encoder.encode(record)


def read_record(key: bytes | None, value: bytes | None) -> PartitionSummary | PopulationModel | None:
    """:func:`decode_record` for a reader that must keep going: an unreadable record is logged
    and skipped (None)."""
    try:
        return decode_record(key, value)
    except (msgspec.DecodeError, ValueError) as exc:
        log.warning("population record %r unreadable: %s", key, exc)
        return None


def decode_record(key: bytes | None, value: bytes | None) -> PartitionSummary | PopulationModel | None:
    """A record read from the topic; None for a key this build does not know or a tombstone.

    ``ValueError`` (``UnsupportedVersion``) for a record written by a newer version.
    """
    if key is None or not value:
        return None
    record: PartitionSummary | PopulationModel
    if key == MODEL_KEY:
        record = _model_decoder.decode(value)
    elif key.startswith(_PARTITION_PREFIX):
        record = _summary_decoder.decode(value)
    else:
        return None
    if record.v > POPULATION_VERSION:
        raise UnsupportedVersion(
            f"population record version {record.v} is newer than this build ({POPULATION_VERSION})"
        )
    return record
