"""Kafka records to ClickHouse rows: pure functions, one per table (no I/O, no clock).

Columns are listed per table (``*_COLUMNS``) in the order the functions fill them; times are
integers (milliseconds since the epoch, UTC), which ``DateTime64(3, 'UTC')`` takes as they are.
A record that cannot be read raises :class:`Unreadable` (the sink stores it in ``sink_rejects``
with the reason); a record with nothing to store returns None.

The score ledger needs each contact's previous row to tell whether a changelog record changed
anything: :class:`Ledger` keeps that per contact (bounded, least recently used dropped) and says
which contacts it does not know, for the sink to look up in ClickHouse before it builds rows.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import orjson

from analytics.errors import AnalyticsError
from schemas.accounts import decode_account
from schemas.events import InvalidMessage, decode
from schemas.state import decode_state
from schemas.webhooks import DELIVERY_DECODER
from scorestream import Hit, Model, fit_of
from scorestream.accounts import account_view
from scorestream.rfm import CustomerValue, RfmFacts, summary
from scorestream.scoring import band_of, engagement_now, group_totals_at
from scorestream.state import ContactState, decay
from scorestream.triggers import TRIGGER_VERSION

Row = list[Any]
MAX_LEDGER_HITS = 16  # scored events listed per ledger row (the newest)
MAX_FIELD = 256  # characters kept of an id read out of a rejected message


class Record(Protocol):
    """What the row builders read of a Kafka record (aiokafka's ``ConsumerRecord`` has it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class Unreadable(AnalyticsError, ValueError):
    """A record the sink cannot read; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", "replace")


# --- events ------------------------------------------------------------------------------------

EVENT_COLUMNS = (
    "event_time",
    "received_at",
    "status",
    "channel",
    "type",
    "event",
    "name",
    "path",
    "message_id",
    "user_id",
    "anonymous_id",
    "group_id",
    "previous_id",
    "reason",
    "detail",
    "source_topic",
    "source_partition",
    "source_offset",
    "source_http",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "raw",
)


def event_row(record: Record, channel: str) -> Row | None:
    """An accepted source record as an ``events`` row; None when the contract refuses it (the
    worker dead-letters it with the reason, and :func:`deadletter_row` stores it from there).

    The decision is the worker's own: the same :func:`schemas.events.decode` over the same bytes
    and record time.
    """
    raw = record.value
    if raw is None:
        return None
    try:
        event = decode(raw, channel, record.timestamp)
    except InvalidMessage:
        return None
    return [
        event.timestamp_ms,
        record.timestamp,
        "accepted",
        channel,
        event.kind,
        event.event or "",
        event.name or "",
        event.path or "",
        event.message_id,
        event.user_id or "",
        event.anonymous_id or "",
        event.group_id or "",
        event.previous_id or "",
        "",
        "",
        "",
        -1,
        -1,
        "",
        record.topic,
        record.partition,
        record.offset,
        raw,
    ]


def _int(text: str, default: int = -1) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def _field(message: Mapping[str, Any], name: str) -> str:
    value = message.get(name)
    return value[:MAX_FIELD] if isinstance(value, str) else ""


def deadletter_row(record: Record, channels: Mapping[str, str]) -> Row:
    """A dead-letter record as an ``events`` row (status rejected): the reason, detail and source
    from its headers (``schemas.events.deadletter_headers``), and whatever ids the message shows
    if it is a JSON object. Never raises: any bytes are a rejected record."""
    headers = {k: v for k, v in record.headers or ()}
    source_topic = _text(headers.get("scorestream.source.topic"))
    raw = record.value or b""
    message: Mapping[str, Any] = {}
    if raw[:1] == b"{":
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            message = parsed
    return [
        record.timestamp,
        record.timestamp,
        "rejected",
        channels.get(source_topic, ""),
        _field(message, "type"),
        _field(message, "event"),
        _field(message, "name"),
        "",
        _field(message, "messageId"),
        _field(message, "userId"),
        _field(message, "anonymousId"),
        _field(message, "groupId"),
        _field(message, "previousId"),
        _text(headers.get("scorestream.reason")) or "unknown",
        _text(headers.get("scorestream.error")),
        source_topic,
        _int(_text(headers.get("scorestream.source.partition"))),
        _int(_text(headers.get("scorestream.source.offset"))),
        _text(headers.get("scorestream.source.http")),
        record.topic,
        record.partition,
        record.offset,
        raw,
    ]


# --- rejects -----------------------------------------------------------------------------------

REJECT_COLUMNS = (
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "written_at",
    "key",
    "value",
    "reason",
    "detail",
)


def reject_row(record: Record, error: Unreadable) -> Row:
    return [
        record.topic,
        record.partition,
        record.offset,
        record.timestamp,
        record.key or b"",
        record.value or b"",
        error.reason,
        error.detail[:1000],
    ]


# --- triggers ----------------------------------------------------------------------------------

TRIGGER_COLUMNS = (
    "id",
    "type",
    "at",
    "subject",
    "contact_id",
    "account_id",
    "before",
    "after",
    "rule",
    "cause",
    "model_version",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "written_at",
)


class _Trigger(msgspec.Struct):
    """The trigger contract (``schemas.triggers.Trigger``) as read here: ``before``/``after`` kept
    as the JSON they were written in."""

    id: str
    type: str
    at_ms: int
    contact_id: str | None = None
    account_id: str | None = None
    before: msgspec.Raw = msgspec.Raw(b"null")
    after: msgspec.Raw = msgspec.Raw(b"null")
    rule: str | None = None
    cause: str | None = None
    model_version: str = ""
    v: int = 1


_trigger_decoder = msgspec.json.Decoder(_Trigger)


def _raw_json(raw: msgspec.Raw) -> str:
    return bytes(raw).decode()


def trigger_row(record: Record) -> Row:
    if record.value is None:
        raise Unreadable("empty", "a trigger record without a value")
    try:
        t = _trigger_decoder.decode(record.value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Unreadable("invalid_trigger", str(exc)) from None
    if t.v > TRIGGER_VERSION:
        raise Unreadable("unsupported_version", f"trigger version {t.v} is newer than this build ({TRIGGER_VERSION})")
    subject = t.contact_id if t.contact_id is not None else t.account_id
    if not t.id or subject is None:
        raise Unreadable("invalid_trigger", "a trigger needs an id and a contact_id or account_id")
    return [
        t.id,
        t.type,
        t.at_ms,
        subject,
        t.contact_id or "",
        t.account_id or "",
        _raw_json(t.before),
        _raw_json(t.after),
        t.rule or "",
        t.cause or "",
        t.model_version,
        record.topic,
        record.partition,
        record.offset,
        record.timestamp,
    ]


# --- webhook deliveries ------------------------------------------------------------------------

DELIVERY_COLUMNS = (
    "id",
    "subscription_id",
    "type",
    "key",
    "trigger_id",
    "status",
    "created_at",
    "updated_at",
    "attempt_count",
    "scheduled_attempts",
    "next_attempt_at",
    "reason",
    "attempts",
    "body",
    "source_partition",
    "seq",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
)


def delivery_row(record: Record) -> Row | None:
    """A delivery's state; None for a tombstone (the topic's retention drops old deliveries; the
    archive keeps them)."""
    if record.value is None:
        return None
    try:
        d = DELIVERY_DECODER.decode(record.value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Unreadable("invalid_delivery", str(exc)) from None
    return [
        d.id,
        d.subscription_id,
        d.type,
        d.key,
        d.trigger_id or "",
        d.status,
        d.created_ms,
        d.updated_ms,
        d.attempt_count,
        d.scheduled_attempts,
        d.next_attempt_ms,
        d.reason or "",
        msgspec.json.encode(d.attempts).decode(),
        d.body,
        d.partition,
        d.seq,
        record.topic,
        record.partition,
        record.offset,
    ]


# --- accounts ----------------------------------------------------------------------------------

ACCOUNT_COLUMNS = (
    "account_id",
    "at",
    "stage",
    "engagement",
    "engagement_band",
    "fit",
    "fit_grade",
    "members",
    "engaged_members",
    "customers",
    "roles_engaged",
    "model_version",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "written_at",
)


def account_row(record: Record, model: Model) -> Row | None:
    """An accounts changelog record: the account's scores at its latest member report, computed
    by the core as the API does (``account_view``). None for a tombstone."""
    if record.value is None:
        return None
    try:
        state = decode_account(record.value)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise Unreadable("invalid_account_state", str(exc)) from None
    at = state.updated_ms or record.timestamp
    view = account_view(state, model, at)
    return [
        state.account_id,
        at,
        view.stage or "",
        view.engagement,
        view.band,
        view.fit,
        view.fit_grade,
        len(view.members),
        sum(1 for m in view.members if m.engaged),
        view.customers,
        list(view.roles_engaged),
        state.model_version,
        record.topic,
        record.partition,
        record.offset,
        record.timestamp,
    ]


# --- contacts: the snapshot and the score ledger -----------------------------------------------

CONTACT_COLUMNS = (
    "contact_id",
    "updated_at",
    "status",
    "merged_into",
    "user_id",
    "email",
    "account_id",
    "first_seen",
    "last_seen",
    "stage",
    "stage_since",
    "persona",
    "flags",
    "engagement",
    "engagement_band",
    "fit",
    "fit_grade",
    "rfm_segment",
    "orders",
    "revenue",
    "first_order_at",
    "last_order_at",
    "model_version",
    "kafka_partition",
    "kafka_offset",
    "groups",
)

LEDGER_COLUMNS = (
    "contact_id",
    "at",
    "kind",
    "cause",
    "engagement",
    "engagement_band",
    "fit",
    "fit_grade",
    "stage",
    "rules",
    "message_ids",
    "merged_into",
    "model_version",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "written_at",
    "groups",
)


@dataclass(frozen=True, slots=True)
class Scores:
    """What the ledger compares: a contact's kind of row and scores as of ``at_ms``."""

    kind: str  # score, merged or deleted
    at_ms: int
    engagement: float = 0.0
    fit: float = 0.0
    stage: str = ""
    groups: tuple[tuple[str, float], ...] = ()  # the score groups' raw scores (raw_group_scores), by id


@dataclass(frozen=True, slots=True)
class ContactChange:
    """One contacts changelog record, read: its scores, the newest hits, and the snapshot row."""

    contact_id: str
    scores: Scores
    band: str
    grade: str
    merged_into: str
    model_version: str
    recent: tuple[Hit, ...]  # the newest hits (at most MAX_LEDGER_HITS)
    record: tuple[str, int, int, int]  # topic, partition, offset, timestamp
    snapshot: Row


def _contact_id(record: Record) -> str:
    if record.key is None:
        raise Unreadable("no_key", "a contacts changelog record without a key")
    return record.key.decode("utf-8", "replace")


class PurchaseFacts:
    """A contact's RFM facts (:func:`scorestream.rfm.summary`), computed again only when its
    purchase ledger changed: at the contact's newest event every order is in the past, so the
    facts depend on the ledger alone (the walk through hundreds of orders is most of a busy
    customer's cost otherwise). Remembers ``capacity`` contacts, least recently used dropped."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._known: OrderedDict[str, tuple[int, RfmFacts]] = OrderedDict()

    def of(self, contact_id: str, value: CustomerValue | None, as_of_ms: int) -> RfmFacts:
        if value is None or not value.orders:
            return summary(value, as_of_ms)
        fingerprint = hash((value.base_currency, value.orders, value.refunds, value.folded))
        known = self._known.get(contact_id)
        if known is not None and known[0] == fingerprint:
            self._known.move_to_end(contact_id)
            return known[1]
        facts = summary(value, as_of_ms)
        self._known[contact_id] = (fingerprint, facts)
        self._known.move_to_end(contact_id)
        while len(self._known) > self.capacity:
            self._known.popitem(last=False)
        return facts


def read_contact(record: Record, model: Model, purchases: PurchaseFacts | None = None) -> ContactChange:
    """A contacts changelog record: the contact's scores as of its newest event (``last_seen``),
    computed by the core as the API computes them (``engagement_at``, ``fit_of``), and its
    ``contacts`` row. A tombstone reads as ``deleted``, a forwarding record as ``merged``."""
    contact_id = _contact_id(record)
    coordinates = (record.topic, record.partition, record.offset, record.timestamp)
    if record.value is None:
        scores = Scores("deleted", record.timestamp)
        snapshot = _snapshot_gone(contact_id, "deleted", "", "", record)
        return ContactChange(contact_id, scores, "", "", "", "", (), coordinates, snapshot)
    try:
        state = decode_state(record.value)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise Unreadable("invalid_contact_state", str(exc)) from None
    at = state.last_seen_ms if state.last_seen_ms is not None else record.timestamp
    if state.merged_into is not None:
        scores = Scores("merged", at)
        snapshot = _snapshot_gone(contact_id, "merged", state.merged_into, state.model_version, record)
        return ContactChange(
            contact_id, scores, "", "", state.merged_into, state.model_version, (), coordinates, snapshot
        )
    engagement = engagement_now(state, model, at)
    band = band_of(model.engagement_bands, engagement)
    fit = fit_of(state, model, top=0)
    journey = state.journey
    stage = journey.stage if journey is not None else ""
    groups = raw_group_scores(state, model, at)
    scores = Scores("score", at, engagement, fit.score, stage, tuple(sorted(groups.items())))
    facts = (purchases or PurchaseFacts(0)).of(contact_id, state.value, at)
    snapshot = [
        contact_id,
        record.timestamp,
        "active",
        "",
        state.user_id or "",
        state.email or "",
        state.account_id or "",
        state.first_seen_ms,
        state.last_seen_ms,
        stage,
        journey.since_ms if journey is not None else None,
        (journey.persona or "") if journey is not None else "",
        sorted(journey.flags) if journey is not None else [],
        engagement,
        band,
        fit.score,
        fit.grade,
        state.rfm_segment or "",
        facts.frequency,
        facts.monetary,
        facts.first_order_ms,
        facts.last_order_ms,
        state.model_version,
        record.partition,
        record.offset,
        groups,
    ]
    recent = tuple(state.hits[-MAX_LEDGER_HITS:])
    return ContactChange(
        contact_id,
        scores,
        band,
        fit.grade,
        "",
        state.model_version,
        recent,
        coordinates,
        snapshot,
    )


def raw_group_scores(state: ContactState, model: Model, at_ms: int) -> dict[str, float]:
    """Group id -> the group's raw score at ``at_ms``: its rules' earned points decayed at its
    half-life, before its ``max`` clamps it (a clamped score cannot be decayed further; readers
    decay the raw one, then clamp it, as :func:`scorestream.scoring.group_scores` does). Groups
    without points are left out (a map reads 0 for them)."""
    if not model.groups:
        return {}
    totals = group_totals_at(state, model, at_ms)
    out: dict[str, float] = {}
    for group in model.groups:
        rules = totals.get(group.id, {})
        raw = math.fsum(rules[k] for k in sorted(rules))
        if raw:
            out[group.id] = raw
    return out


def _snapshot_gone(contact_id: str, status: str, merged_into: str, model_version: str, record: Record) -> Row:
    row: Row = [contact_id, record.timestamp, status, merged_into]
    row += ["", "", "", None, None, "", None, "", [], 0.0, "", 0.0, "", "", 0, 0.0, None, None]
    return [*row, model_version, record.partition, record.offset, {}]


def engagement_changed(before: Scores, after: Scores, half_life_ms: int) -> bool:
    """Whether the points changed between two rows, not just time: engagement decays between
    ``before.at_ms`` and ``after.at_ms``, so the previous score is decayed to the new instant first
    (scores are rounded to 6 decimals, hence the tolerance)."""
    expected = decay(before.engagement, before.at_ms, max(after.at_ms, before.at_ms), half_life_ms)
    return not math.isclose(after.engagement, expected, rel_tol=1e-9, abs_tol=2e-6)


def groups_changed(before: Scores, after: Scores, model: Model) -> bool:
    """Whether a score group's points changed between two rows, not just time: as
    :func:`engagement_changed`, each group's raw score decayed at its own half-life (a group the
    model no longer declares, at the overall one). A group of weight 0 changes apart from the
    overall score, so this is asked beside it."""
    if before.groups == after.groups:
        return False
    old, new = dict(before.groups), dict(after.groups)
    at = max(after.at_ms, before.at_ms)
    for group_id in old.keys() | new.keys():
        group = model.group(group_id)
        half_life = group.half_life_ms if group is not None else model.half_life_ms
        expected = decay(old.get(group_id, 0.0), before.at_ms, at, half_life)
        if not math.isclose(new.get(group_id, 0.0), expected, rel_tol=1e-9, abs_tol=2e-6):
            return True
    return False


class Ledger:
    """Turns contacts changelog records into ``score_ledger`` rows: one per record that changed
    the contact's engagement (beyond decay), fit or stage, or merged or deleted it.

    The rule: a record's row depends only on the contact's last ledger row before the record's
    changelog offset, in the same changelog (each model namespace has its own). So any re-read (a
    restart, a rebalance, a second sink from the beginning, a compacted changelog) writes rows
    with the keys already there, or none. The ledger remembers each contact's last row as it goes
    (``capacity`` contacts, least recently used dropped); for a contact it does not remember, the
    sink asks ClickHouse for the last row before the offset (:meth:`unknown`,
    :data:`LAST_LEDGER_ROWS`, :meth:`prime`). A contact with no row yet gets ``cause = 'first'``.
    """

    def __init__(self, model: Model, capacity: int = 200_000) -> None:
        self.model = model
        self.capacity = capacity
        self._last: OrderedDict[str, Scores | None] = OrderedDict()

    def clear(self) -> None:
        """Forget everything (after partitions were revoked: rows not inserted yet are dropped)."""
        self._last.clear()

    def unknown(self, changes: Iterable[ContactChange]) -> dict[str, int]:
        """Contacts of ``changes`` whose last row is not known here -> their first changelog
        offset in ``changes`` (the lookup wants the last row before it)."""
        out: dict[str, int] = {}
        for c in changes:
            if c.contact_id not in self._last:
                offset = c.record[2]
                out[c.contact_id] = min(offset, out.get(c.contact_id, offset))
        return out

    def prime(self, contact_ids: Iterable[str], found: Mapping[str, Scores]) -> None:
        """Record what ClickHouse holds for ``contact_ids`` (``found``: the last row of those that
        have one)."""
        for contact_id in contact_ids:
            self._remember(contact_id, found.get(contact_id))

    def _remember(self, contact_id: str, scores: Scores | None) -> None:
        self._last[contact_id] = scores
        self._last.move_to_end(contact_id)
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)

    def rows(self, changes: Iterable[ContactChange]) -> list[Row]:
        """The ledger rows of ``changes`` (in changelog order), remembering each contact's last."""
        out: list[Row] = []
        for change in changes:
            before = self._last.get(change.contact_id)
            row = self._row(before, change)
            if row is not None:
                out.append(row)
                self._remember(change.contact_id, change.scores)
        return out

    def _row(self, before: Scores | None, change: ContactChange) -> Row | None:
        after = change.scores
        rules: list[str] = []
        mids: list[str] = []
        if after.kind != "score":
            if before is not None and before.kind == after.kind:
                return None
            cause = after.kind
        elif before is None or before.kind != "score":
            cause = "first"
            fresh = list(change.recent)
            rules, mids = _listed(fresh)
        elif engagement_changed(before, after, self.model.half_life_ms) or groups_changed(before, after, self.model):
            fresh = [h for h in change.recent if h.ts > before.at_ms]
            cause = "events" if fresh else "other"
            rules, mids = _listed(fresh)
        elif after.fit != before.fit:
            cause = "fit"
        elif after.stage != before.stage:
            cause = "stage"
        else:
            return None
        topic, partition, offset, written = change.record
        return [
            change.contact_id,
            after.at_ms,
            after.kind,
            cause,
            after.engagement,
            change.band,
            after.fit,
            change.grade,
            after.stage,
            rules,
            mids,
            change.merged_into,
            change.model_version,
            topic,
            partition,
            offset,
            written,
            dict(after.groups),
        ]


def _listed(hits: list[Hit]) -> tuple[list[str], list[str]]:
    """The distinct rules (first seen first) and the message ids of ``hits``."""
    rules: dict[str, None] = {}
    for hit in hits:
        for rule in hit.rules:
            rules.setdefault(rule, None)
    return list(rules), [h.mid for h in hits]


# The last ledger row of each contact before an offset of a changelog topic (a contact's records
# are all on one partition, so its offsets are comparable; another model namespace's changelog has
# offsets of its own); parameters ``ids`` and ``before``, in step, and ``topic``.
LAST_LEDGER_ROWS = """
SELECT contact_id,
       argMax(tuple(toString(kind), toUnixTimestamp64Milli(at), engagement, fit, stage, groups), kafka_offset)
FROM score_ledger
WHERE contact_id IN {ids:Array(String)}
  AND kafka_topic = {topic:String}
  AND kafka_offset < transform(contact_id, {ids:Array(String)}, {before:Array(UInt64)}, toUInt64(0))
GROUP BY contact_id
"""


def last_rows_parameters(unknown: Mapping[str, int], topic: str) -> dict[str, Any]:
    """The parameters of :data:`LAST_LEDGER_ROWS` for :meth:`Ledger.unknown`'s answer about the
    records of changelog ``topic``."""
    ids = sorted(unknown)
    return {"ids": ids, "before": [unknown[i] for i in ids], "topic": topic}


def scores_of(rows: Iterable[tuple[Any, ...]]) -> dict[str, Scores]:
    """The result of :data:`LAST_LEDGER_ROWS` as contact id -> :class:`Scores`."""
    out: dict[str, Scores] = {}
    for contact_id, last in rows:
        kind, at, engagement, fit, stage, groups = last
        raw = tuple(sorted((str(k), float(v)) for k, v in dict(groups).items()))
        out[str(contact_id)] = Scores(str(kind), int(at), float(engagement), float(fit), str(stage), raw)
    return out
