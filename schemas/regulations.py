"""Regulations: the wire records of privacy requests (erase, suppress, unsuppress).

Shaped as Segment's Public API takes them (``regulationType``, ``subjectType``, ``subjectIds``), so
privacy tooling written for Segment can point at scorestream. Three compacted topics, shared by
every namespace of the app (:class:`~schemas.settings.Settings`):

- ``<app>.regulations``: :class:`Regulation` by regulation id (JSON). The plaintext subject ids
  are kept only until the regulation is finished; then the record is written again without them
  (only their :func:`scorestream.privacy.subject_key` hashes stay).
- ``<app>.privacy``: :class:`PrivacyEntry` by subject key (JSON; the privacy list,
  :class:`scorestream.privacy.PrivacyList`). Written by the API's regulation service only.
- ``<app>.regulation-progress``: :class:`ErasureReport` by :func:`progress_key` (JSON), written by
  the worker stages that carried an erasure out; tombstoned once the regulation is finished.

The orders themselves travel on the namespace's internal topics as envelopes of kind ``erase``
(contacts topic, keyed by contact id) and ``erase_link`` (identity topic, keyed by anonymous id):
:func:`erase_record`.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.state import Batch, Envelope, Item, encode
from scorestream.privacy import Erase, Restriction

REGULATION_VERSION = 1

RegulationType = Literal["SUPPRESS", "SUPPRESS_WITH_DELETE", "DELETE_ONLY", "UNSUPPRESS"]
SubjectType = Literal["USER_ID", "ANONYMOUS_ID", "EMAIL"]
Status = Literal["pending", "running", "done", "failed"]

MAX_SUBJECTS = 1_000
"""Subject ids one regulation may name: send several regulations for more. A regulation's record
keeps the key of every identifier it restricted (a person's user id, email and up to 64 anonymous
ids), so its size is bounded by this (about 4.3 MB at worst: :data:`REGULATION_RECORD_BYTES`)."""

REGULATION_RECORD_BYTES = 8 * 1024 * 1024
"""The largest record of the regulations topic (its ``max.message.bytes``, and the request size of
the API's producer writing it)."""

# The stores a regulation reports on, in the order they are worked on. Which apply depends on
# the type: every type writes the privacy list; the deleting ones all the others.
STORES: tuple[str, ...] = (
    "privacy_list",  # the suppression / erasure entries every door and stage consults
    "worker",  # contacts, identity and accounts tables and their changelogs (tombstones), the
    # population index, the views topic (tombstones), per namespace
    "api",  # the API's views and indexes (id, anonymous ids, email)
    "archive",  # ClickHouse: events, score ledger, contacts, stage transitions, triggers,
    # webhook deliveries, account changes, sink rejects
    "deliveries",  # the webhook deliveries topic (tombstones, compacted)
    "deadletter",  # events.deadletter: cannot be rewritten; bounded by its retention
)
DELETING: frozenset[str] = frozenset({"SUPPRESS_WITH_DELETE", "DELETE_ONLY"})
SUPPRESSING: frozenset[str] = frozenset({"SUPPRESS", "SUPPRESS_WITH_DELETE"})


class StoreStatus(msgspec.Struct, omit_defaults=True):
    """One store's part of a regulation."""

    status: Status = "pending"
    detail: str | None = None  # a failure's reason, or what "done" means for this store
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    count: int = 0  # what was removed (contacts, rows, records), where it is counted


class Regulation(msgspec.Struct, omit_defaults=True):
    """A regulation's record on ``<app>.regulations`` (the latest one per id wins)."""

    id: str
    regulation_type: RegulationType
    subject_type: SubjectType
    created_at_ms: int
    status: Status = "pending"
    subject_ids: list[str] = msgspec.field(default_factory=list)  # emptied once finished
    subject_keys: list[str] = msgspec.field(default_factory=list)  # subject_key of each requested id
    restricted_keys: list[str] = msgspec.field(default_factory=list)  # every key written to the privacy list
    stores: dict[str, StoreStatus] = msgspec.field(default_factory=dict)
    finished_at_ms: int | None = None
    requested_by: str | None = None  # the API key's name (never the key)
    v: int = REGULATION_VERSION


class PrivacyEntry(msgspec.Struct, omit_defaults=True):
    """A subject key's restriction on ``<app>.privacy`` (a tombstone lifts it)."""

    regulation_id: str
    suppressed_from_ms: int | None = None
    erased_before_ms: int | None = None
    v: int = REGULATION_VERSION

    def restriction(self) -> Restriction:
        return Restriction(self.regulation_id, self.suppressed_from_ms, self.erased_before_ms)


class ErasureReport(msgspec.Struct, omit_defaults=True):
    """What a worker stage did with one erase order.

    ``target`` ``contact``: the contacts stage erased contact ``key`` (``found`` False: it held
    nothing), and tells what it held that leads further: its user id, anonymous ids, merged ids
    (forwarding records of contacts merged into it), email and account. ``target`` ``link``: the
    identity stage deleted the link of anonymous id ``key``, which led to ``linked_contact``."""

    regulation_id: str
    namespace: str
    target: Literal["contact", "link"]
    key: str
    found: bool
    at_ms: int
    user_id: str | None = None
    anonymous_ids: list[str] = msgspec.field(default_factory=list)
    merged_ids: list[str] = msgspec.field(default_factory=list)
    merged_into: str | None = None
    email: str | None = None
    account_id: str | None = None
    linked_contact: str | None = None
    v: int = REGULATION_VERSION


def progress_key(report: ErasureReport) -> str:
    return f"{report.regulation_id}/{report.namespace}/{report.target}/{report.key}"


_json_encoder = msgspec.json.Encoder()
_regulation_decoder = msgspec.json.Decoder(Regulation)
_entry_decoder = msgspec.json.Decoder(PrivacyEntry)
_report_decoder = msgspec.json.Decoder(ErasureReport)


def encode_json(value: Regulation | PrivacyEntry | ErasureReport) -> bytes:
    return _json_encoder.encode(value)


def decode_regulation(raw: bytes) -> Regulation:
    return _regulation_decoder.decode(raw)


def decode_entry(raw: bytes) -> PrivacyEntry:
    return _entry_decoder.decode(raw)


def decode_report(raw: bytes) -> ErasureReport:
    return _report_decoder.decode(raw)


def erase_record(key: str, regulation_id: str, link: bool = False) -> bytes:
    """One internal-topic record holding one erase order: ``erase`` for contact ``key`` (contacts
    topic) or, with ``link``, ``erase_link`` for anonymous id ``key`` (identity topic). Send it
    keyed by ``key`` to ``kafka_io.partitioner.partition_for(key.encode(), partitions)``."""
    env = Envelope(kind="erase_link" if link else "erase", erase=Erase(regulation_id))
    return encode(Batch(items=[Item(key=key, env=env)]))
