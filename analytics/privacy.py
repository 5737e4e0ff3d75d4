"""A person in the ClickHouse archive: erased from every table (:func:`erase`), or handed over
(:func:`export`); and the archive's retention (:func:`apply_retention`, ClickHouse TTLs).

Who the person is: their user ids, anonymous ids, emails and contact ids (a contact id
``anonymous:<a>`` stands for the anonymous id ``a``; a merged contact's id is one of the person's
ids too). Which rows are theirs, table by table (:data:`PREDICATES`):

- ``events``, accepted rows: ``user_id``, ``anonymous_id`` or ``previous_id`` is one of their ids
  (``previous_id`` may be either kind), or a JSON string of ``raw`` that looks like an email (so
  ``traits.email``, ``context.traits.email``, ``properties.email`` or any other field: someone
  else's event naming them too) is one of their emails, compared lower-cased;
- ``events``, rejected rows (the dead-letter topic's records: they may not parse, so their columns
  are not to be trusted): the raw bytes name one of their ids or emails, as a JSON string or as a
  run of id characters (``[A-Za-z0-9._@+:-]``: what MessagePack strings and broken JSON leave
  readable). An id that is a common word or number (``42``) takes every dead letter holding it as
  a value: an erasure deletes a dead letter too many rather than keep one about the person (the
  dead letters are kept 30 days for diagnosis only);
- ``contacts`` and ``score_ledger``: ``contact_id`` or ``merged_into`` is one of their contacts
  (``contacts`` also by its ``user_id`` and ``email`` columns);
- ``triggers``: ``contact_id`` or ``subject`` is one of their contacts, or an account trigger's
  ``before``/``after`` holds one of their ids or emails as a JSON string;
  ``stage_transitions``: a contact subject that is one of their contacts;
- ``webhook_deliveries``: ``key`` is one of their contacts, the payload holds one of their emails,
  or an account delivery's payload names one of their ids;
- ``sink_rejects``: the key is one of their ids, or the value's bytes name one (as for dead letters);
- ``account_changes`` holds an account's scores and member *counts*, never a member's id or email:
  nothing in it is about the person, and the account keeps its history (its counts are not
  rewritten: they were true then).

Only emails are searched for inside accepted events (an id elsewhere than the id columns, say in a
property, is not: ids are short and common, emails distinctive), and every string of a document
is compared only where few rows need it (account triggers and deliveries, rejected records): the
search through a million raw events stays a fraction of a second (``bench/privacy_archive.py``).

How :func:`erase` deletes: the ids go into a staging table of their own (Memory engine, dropped at
the end), and each ``DELETE`` reads them from it, so the statements ClickHouse records (its
mutations list, the query log of a server) name the staging table, never an id or an email. Every
value is bound, never formatted into SQL. Per table: a count of the matching rows (``events``:
their keys collected, so that the delete finds them through the primary index), a lightweight
``DELETE FROM`` (ReplacingMergeTree supports it: the rows are hidden at once, in chDB and on a
server alike), a second count that must be 0 (else :class:`ErasureIncomplete`), then
``ALTER TABLE ... APPLY DELETED MASK`` in the background, which rewrites the parts without the
rows, so the bytes leave the disk too. One call takes any number of people: the cost is a few
scans of each table whatever their number (``bench/privacy_archive.py``).

The same SQL serves embedded chDB and a ClickHouse server (one node: a Memory table is local to
the server that holds it).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from analytics.client import Store
from analytics.errors import AnalyticsError
from schemas.settings import Settings
from scorestream.identity import ANONYMOUS_PREFIX
from scorestream.privacy import normal_email

log = logging.getLogger(__name__)

# every JSON string of a document (its first group: the string without its quotes, escapes kept)
JSON_STRINGS = r'"((?:[^"\\]|\\.)*)"'
# the JSON strings that look like one email (spaces around it allowed, none inside, no escapes)
EMAILISH = r'"\s*([^"\\@\s]+@[^"\\\s]+)\s*"'
# what separates ids in bytes that may not parse: anything but the characters of common ids
SEPARATORS = r"[^A-Za-z0-9._@+:-]+"
REGEXES = {"json_strings": JSON_STRINGS, "emailish": EMAILISH, "separators": SEPARATORS}
# the archive tables erase() deletes from, in this order (stage_transitions is fed from triggers
# by a materialized view: a delete in triggers does not reach it, so both are deleted)
TABLES = (
    "events",
    "score_ledger",
    "contacts",
    "triggers",
    "stage_transitions",
    "webhook_deliveries",
    "sink_rejects",
)


class ErasureIncomplete(AnalyticsError, RuntimeError):
    """Rows about the person are still there after their ``DELETE``: the erasure must be retried."""


@dataclass(frozen=True)
class Subjects:
    """A person's (or several people's) identifiers, as the archive holds them."""

    user_ids: frozenset[str]
    anonymous_ids: frozenset[str]
    emails: frozenset[str]  # normalised (stripped, case-folded)
    contact_ids: frozenset[str]

    @classmethod
    def of(
        cls,
        user_ids: Iterable[str] = (),
        anonymous_ids: Iterable[str] = (),
        emails: Iterable[str] = (),
        contact_ids: Iterable[str] = (),
    ) -> Subjects:
        users = {u for u in user_ids if u}
        anonymous = {a for a in anonymous_ids if a}
        contacts = {c for c in contact_ids if c}
        for contact in contacts:  # a contact id stands for a user id or an anonymous id
            if contact.startswith(ANONYMOUS_PREFIX):
                anonymous.add(contact[len(ANONYMOUS_PREFIX) :])
            else:
                users.add(contact)
        contacts |= users | {ANONYMOUS_PREFIX + a for a in anonymous}
        mails = {normal_email(e) for e in emails if e and e.strip()}
        return cls(frozenset(users), frozenset(anonymous), frozenset(mails), frozenset(contacts))

    def __bool__(self) -> bool:
        return bool(self.user_ids or self.anonymous_ids or self.emails or self.contact_ids)

    @property
    def ids(self) -> frozenset[str]:
        """Every id of theirs, of any kind (user ids, anonymous ids, contact ids)."""
        return self.user_ids | self.anonymous_ids | self.contact_ids

    def tokens(self) -> frozenset[str]:
        """The ids as they appear inside a JSON string (escaped, with or without ``\\uXXXX``)."""
        out: set[str] = set()
        for value in self.ids:
            out.add(value)
            out.add(json.dumps(value)[1:-1])
            out.add(json.dumps(value, ensure_ascii=False)[1:-1])
        return frozenset(out)

    def staged(self) -> list[list[str]]:
        """The staging table's rows: ``[kind, value]``."""
        kinds = {
            "user": self.user_ids,
            "anonymous": self.anonymous_ids,
            "contact": self.contact_ids,
            "email": self.emails,
            "token": self.tokens(),
        }
        return [[kind, value] for kind, values in kinds.items() for value in sorted(values)]

    def parameters(self) -> dict[str, Any]:
        """The same sets as bound parameters (:func:`export`: a handful of ids, no staging table)."""
        return {
            "user": sorted(self.user_ids),
            "anonymous": sorted(self.anonymous_ids),
            "contact": sorted(self.contact_ids),
            "email": sorted(self.emails),
            "token": sorted(self.tokens()),
        }


def _set(kind: str, staging: str | None) -> str:
    """A set of the person's values of ``kind``: a subquery of the staging table, or a bound array."""
    if staging is None:
        return f"{{{kind}:Array(String)}}"
    return f"(SELECT value FROM {staging} WHERE kind = '{kind}')"  # noqa: S608 (our constants)


def _mentions(column: str, staging: str | None) -> str:
    """Whether a JSON document in ``column`` holds one of the ids or emails as a string (every
    string of the document extracted: a few seconds per million documents, so only for the few
    rows that need it)."""
    return (
        f"arrayExists(s -> s IN {_set('token', staging)} OR lowerUTF8(trimBoth(s)) IN {_set('email', staging)}, "
        f"extractAll({column}, {{json_strings:String}}))"
    )


def _names_email(column: str, staging: str | None) -> str:
    """Whether a JSON document in ``column`` holds one of the emails as a string (only the strings
    that look like an email are extracted, and only from documents with an ``@``)."""
    return (
        f"(position({column}, '@') > 0 AND arrayExists(s -> lowerUTF8(s) IN {_set('email', staging)}, "
        f"extractAll({column}, {{emailish:String}})))"
    )


def _holds_bytes(column: str, staging: str | None) -> str:
    """Whether bytes that may not parse (a dead letter, an undecodable record) name one of the ids
    or emails: as a JSON string, or as a run of id characters (MessagePack strings, broken JSON)."""
    tokens, emails = _set("token", staging), _set("email", staging)
    return (
        f"(arrayExists(s -> s IN {tokens} OR lowerUTF8(s) IN {emails}, splitByRegexp({{separators:String}}, {column})) "
        f"OR {_mentions(column, staging)})"
    )


def predicates(staging: str | None) -> dict[str, str]:
    """Table -> the condition of the rows about the person (see the module docstring)."""
    users, anonymous, contacts = _set("user", staging), _set("anonymous", staging), _set("contact", staging)
    emails = _set("email", staging)
    return {
        "events": (
            f"(status = 'accepted' AND (user_id IN {users} OR anonymous_id IN {anonymous} "
            f"OR previous_id IN {users} OR previous_id IN {anonymous} OR {_names_email('raw', staging)})) "
            f"OR (status = 'rejected' AND {_holds_bytes('raw', staging)})"
        ),
        "score_ledger": f"contact_id IN {contacts} OR merged_into IN {contacts}",
        "contacts": (
            f"contact_id IN {contacts} OR merged_into IN {contacts} OR user_id IN {users} "
            f"OR (email != '' AND email IN {emails})"
        ),
        "triggers": (
            f"contact_id IN {contacts} OR subject IN {contacts} "
            f"OR (account_id != '' AND ({_mentions('before', staging)} OR {_mentions('after', staging)}))"
        ),
        "stage_transitions": f"subject_kind = 'contact' AND subject_id IN {contacts}",
        "webhook_deliveries": (
            f"key IN {contacts} OR {_names_email('body', staging)} "
            f"OR (startsWith(type, 'account.') AND {_mentions('body', staging)})"
        ),
        "sink_rejects": f"key IN {contacts} OR key IN {anonymous} OR {_holds_bytes('value', staging)}",
    }


def _count_sql(table: str, predicate: str) -> str:
    return f"SELECT count() FROM {table} WHERE {predicate}"  # noqa: S608 (constants; values bound)


async def _count(store: Store, table: str, predicate: str, parameters: Mapping[str, Any]) -> int:
    rows = await store.query(_count_sql(table, predicate), dict(parameters))
    return int(rows[0][0]) if rows else 0


async def _command(store: Store, sql: str, parameters: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    def go(client: Any) -> None:
        client.command(sql, parameters=dict(parameters), settings=dict(settings))

    await store.run(go)


async def erase(
    store: Store,
    *,
    user_ids: Iterable[str] = (),
    anonymous_ids: Iterable[str] = (),
    emails: Iterable[str] = (),
    contact_ids: Iterable[str] = (),
    purge: bool = True,
) -> dict[str, int]:
    """Delete every row about the people named from every archive table (:data:`TABLES`); returns
    the rows deleted per table (every copy of a row counts: a re-read's duplicate not merged yet
    is a row too). Idempotent: run again, it deletes nothing and answers zeros. Raises
    :class:`ErasureIncomplete` when a table still holds a matching row afterwards. ``purge``:
    also rewrite the parts without the deleted rows in the background (``APPLY DELETED MASK``)."""
    subjects = Subjects.of(user_ids, anonymous_ids, emails, contact_ids)
    if not subjects:
        return dict.fromkeys(TABLES, 0)
    staging = f"privacy_erase_{uuid.uuid4().hex}"
    await store.command(f"CREATE TABLE {staging} (kind LowCardinality(String), value String) ENGINE = Memory")
    try:
        await store.insert(staging, ("kind", "value"), subjects.staged())
        return await _erase_staged(store, staging, purge)
    finally:
        for table in (staging, *(f"{staging}_{t}" for t in KEYED)):
            await store.command(f"DROP TABLE IF EXISTS {table}")


# The big tables: the rows found are collected by their sorting key (one Kafka record each), and
# deleted by it, so the DELETE finds them through the primary index instead of evaluating the
# condition over the table again (the count before and after still do).
KEYED: dict[str, tuple[tuple[str, str], ...]] = {
    "events": (
        ("event_time", "DateTime64(3, 'UTC')"),
        ("kafka_topic", "String"),
        ("kafka_partition", "UInt32"),
        ("kafka_offset", "UInt64"),
    )
}


async def _erase_staged(store: Store, staging: str, purge: bool) -> dict[str, int]:
    parameters = dict(REGEXES)
    sync = {"lightweight_deletes_sync": 2, "mutations_sync": 2}
    deleted: dict[str, int] = {}
    for table, predicate in predicates(staging).items():
        found, delete = await _found(store, staging, table, predicate, parameters)
        deleted[table] = found
        if found == 0:
            continue
        await _command(store, f"DELETE FROM {table} WHERE {delete}", parameters, sync)  # noqa: S608
        left = await _count(store, table, predicate, parameters)
        if left:
            raise ErasureIncomplete(f"{table}: {left} of {found} rows about the person are still there after DELETE")
    # after every DELETE: a mask applied meanwhile would hold the next DELETE up behind its rewrite
    for table in (t for t, n in deleted.items() if n and purge):
        await _command(store, f"ALTER TABLE {table} APPLY DELETED MASK", {}, {"mutations_sync": 0})
    log.info("archive erasure: rows deleted %s", {t: n for t, n in deleted.items() if n})
    return deleted


async def _found(
    store: Store, staging: str, table: str, predicate: str, parameters: Mapping[str, Any]
) -> tuple[int, str]:
    """How many rows of ``table`` are about the person, and the condition that deletes them: for
    a :data:`KEYED` table, their keys collected in ``<staging>_<table>`` (dropped with the staging
    table's drop in :func:`erase`), else ``predicate`` itself."""
    columns = KEYED.get(table)
    if columns is None:
        return await _count(store, table, predicate, parameters), predicate
    rows = f"{staging}_{table}"
    names = ", ".join(name for name, _ in columns)
    typed = ", ".join(f"{name} {kind}" for name, kind in columns)
    await store.command(f"CREATE TABLE {rows} ({typed}) ENGINE = Memory")
    collect = f"INSERT INTO {rows} SELECT {names} FROM {table} WHERE {predicate}"  # noqa: S608 (constants)
    await _command(store, collect, parameters, {})
    found = await store.query(f"SELECT count() FROM {rows}")  # noqa: S608
    where = f"({names}) IN (SELECT {names} FROM {rows})"  # noqa: S608
    return int(found[0][0]), where


# --- export ------------------------------------------------------------------------------------

EXPORT_EVENTS = """
SELECT toUnixTimestamp64Milli(event_time) AS event_time_ms,
       toUnixTimestamp64Milli(received_at) AS received_at_ms, status, channel, type, event,
       name, path, message_id, user_id, anonymous_id, group_id, previous_id, reason, detail, properties,
       traits, context, if(status = 'rejected', raw, '') AS rejected_raw
FROM events
WHERE {predicate}
ORDER BY event_time, kafka_topic, kafka_partition, kafka_offset
LIMIT 1 BY kafka_topic, kafka_partition, kafka_offset
LIMIT {{limit:UInt32}}
"""
EXPORT_LEDGER = """
SELECT contact_id, toUnixTimestamp64Milli(at) AS at_ms, kind, cause,
       engagement, engagement_band, fit, fit_grade, stage, rules, message_ids, merged_into, model_version
FROM score_ledger FINAL
WHERE {predicate}
ORDER BY at, kafka_topic, kafka_partition, kafka_offset
LIMIT {{limit:UInt32}}
"""
EXPORT_TRANSITIONS = """
SELECT subject_id AS contact_id, toUnixTimestamp64Milli(at) AS at_ms, from_stage, to_stage, rule, cause,
       model_version, trigger_id
FROM stage_transitions FINAL
WHERE {predicate}
ORDER BY at, trigger_id
LIMIT {{limit:UInt32}}
"""
EXPORT_TRIGGERS = """
SELECT id, type, toUnixTimestamp64Milli(at) AS at_ms, subject, contact_id, account_id, before, after, rule,
       cause, model_version
FROM triggers FINAL
WHERE {predicate}
ORDER BY at, id
LIMIT {{limit:UInt32}}
"""
EXPORT_DELIVERIES = """
SELECT id, subscription_id, type, key, trigger_id, status, toUnixTimestamp64Milli(created_at) AS created_at_ms,
       toUnixTimestamp64Milli(updated_at) AS updated_at_ms, attempt_count, reason, attempts, body
FROM webhook_deliveries FINAL
WHERE {predicate}
ORDER BY created_at, id
LIMIT {{limit:UInt32}}
"""
EXPORT_CONTACTS = """
SELECT contact_id, toUnixTimestamp64Milli(updated_at) AS updated_at_ms, status,
       merged_into, user_id, email, account_id, toUnixTimestamp64Milli(first_seen) AS first_seen_ms,
       toUnixTimestamp64Milli(last_seen) AS last_seen_ms, stage,
       toUnixTimestamp64Milli(stage_since) AS stage_since_ms, persona, flags, engagement, engagement_band, fit,
       fit_grade, rfm_segment, orders, revenue, toUnixTimestamp64Milli(first_order_at) AS first_order_ms,
       toUnixTimestamp64Milli(last_order_at) AS last_order_ms, model_version
FROM contacts FINAL
WHERE {predicate}
ORDER BY contact_id
LIMIT {{limit:UInt32}}
"""


def _json(text: Any) -> Any:
    """A JSON column as a value (None when empty; the text itself when it is not JSON)."""
    if text is None or text == "":
        return None
    raw = text.encode() if isinstance(text, str) else bytes(text)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _event(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("properties", "traits", "context"):
        row[key] = _json(row[key])
    row["raw"] = _text(row.pop("rejected_raw")) if row["status"] == "rejected" else None
    return row


def _ledger(row: dict[str, Any]) -> dict[str, Any]:
    row["rules"], row["message_ids"] = list(row["rules"]), list(row["message_ids"])
    return row


def _trigger(row: dict[str, Any]) -> dict[str, Any]:
    row["before"], row["after"] = _json(row["before"]), _json(row["after"])
    return row


def _delivery(row: dict[str, Any]) -> dict[str, Any]:
    """A delivery as archived (the subscription's URL and secret are not in the archive; the
    payload is what the person's data looked like to the receiver)."""
    row["attempts"], row["body"] = _json(row["attempts"]), _json(row["body"])
    return row


def _contact(row: dict[str, Any]) -> dict[str, Any]:
    row["flags"] = list(row["flags"])
    return row


EXPORTS: dict[str, tuple[str, Any]] = {
    "contacts": (EXPORT_CONTACTS, _contact),
    "events": (EXPORT_EVENTS, _event),
    "score_ledger": (EXPORT_LEDGER, _ledger),
    "stage_transitions": (EXPORT_TRANSITIONS, dict),
    "triggers": (EXPORT_TRIGGERS, _trigger),
    "webhook_deliveries": (EXPORT_DELIVERIES, _delivery),
}


async def export(
    store: Store,
    *,
    user_ids: Iterable[str] = (),
    anonymous_ids: Iterable[str] = (),
    emails: Iterable[str] = (),
    contact_ids: Iterable[str] = (),
    limit: int = 10_000,
) -> dict[str, Any]:
    """What the archive holds about the person (the rows :func:`erase` would delete, read):
    ``{table: [row as a dict, oldest first], ..., "truncated": [tables with more than limit rows]}``
    for ``contacts``, ``events`` (JSON columns parsed; a rejected record's raw text), ``score_ledger``,
    ``stage_transitions``, ``triggers`` and ``webhook_deliveries``. Times are epoch milliseconds."""
    subjects = Subjects.of(user_ids, anonymous_ids, emails, contact_ids)
    out: dict[str, Any] = {table: [] for table in EXPORTS}
    out["truncated"] = []
    if not subjects:
        return out
    where = predicates(None)
    parameters = {**subjects.parameters(), **REGEXES, "limit": limit + 1}
    for table, (sql, shape) in EXPORTS.items():
        rows = await store.query_named(sql.format(predicate=f"({where[table]})"), parameters)
        out[table] = [shape(r) for r in rows[:limit]]
        if len(rows) > limit:
            out["truncated"].append(table)
    return out


# --- retention: ClickHouse TTLs ----------------------------------------------------------------


@dataclass(frozen=True)
class Ttl:
    """A table's TTL: rows older than ``days`` (by ``column``) are deleted at merges; ``rejected``:
    besides, the rows with ``status = 'rejected'`` older than that many days (``events``)."""

    table: str
    column: str
    days: int
    rejected: int = 0

    def clause(self) -> str | None:
        """The TTL expression as ClickHouse shows it in ``SHOW CREATE TABLE`` (None: no TTL)."""
        rules = []
        if self.days > 0:
            rules.append(f"toDateTime({self.column}) + toIntervalDay({self.days})")
        if self.rejected > 0:
            rules.append(f"toDateTime({self.column}) + toIntervalDay({self.rejected}) WHERE status = 'rejected'")
        return ", ".join(rules) if rules else None


def ttls(settings: Settings) -> list[Ttl]:
    """The archive's TTLs under ``settings`` (``SCORESTREAM_RETENTION_ARCHIVE_*_DAYS``; 0: for ever)."""
    ledger, triggers = settings.retention_archive_ledger_days, settings.retention_archive_triggers_days
    return [
        Ttl("events", "event_time", settings.retention_archive_events_days, settings.retention_archive_rejected_days),
        Ttl("score_ledger", "at", ledger),
        Ttl("account_changes", "at", ledger),
        Ttl("triggers", "at", triggers),
        Ttl("stage_transitions", "at", triggers),
        Ttl("webhook_deliveries", "updated_at", settings.retention_archive_deliveries_days),
        Ttl("sink_rejects", "written_at", settings.retention_archive_rejected_days),
    ]


async def current_ttl(store: Store, table: str) -> str | None:
    """The TTL clause of ``table`` as ClickHouse shows it (None: none)."""
    rows = await store.query(
        "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        {"t": table},
    )
    if not rows:
        raise AnalyticsError(f"no table {table} (migrations not applied?)")
    create = str(rows[0][0])
    start = create.find(" TTL ")
    if start < 0:
        return None
    end = create.find(" SETTINGS ", start)
    return create[start + 5 : end if end >= 0 else None].strip()


async def apply_retention(store: Store, settings: Settings) -> list[str]:
    """Give every archive table the TTL ``settings`` configure (``ALTER TABLE ... MODIFY TTL``, or
    ``REMOVE TTL`` for 0), where it differs from the table's current one; returns the tables
    changed. Idempotent: run at every start of the sink, after the migrations. A changed TTL is
    applied to the rows already there in the background (ClickHouse's ``MATERIALIZE TTL``); chDB
    and a server drop expired rows at merges (``OPTIMIZE TABLE ... FINAL`` forces one)."""
    changed: list[str] = []
    for ttl in ttls(settings):
        wanted = ttl.clause()
        if await current_ttl(store, ttl.table) == wanted:
            continue
        if wanted is None:
            await store.command(f"ALTER TABLE {ttl.table} REMOVE TTL")
        else:  # the days are validated integers of the settings, not request input
            await _command(store, f"ALTER TABLE {ttl.table} MODIFY TTL {wanted}", {}, {"mutations_sync": 0})
        changed.append(ttl.table)
        log.info("archive retention: %s TTL now %s", ttl.table, wanted or "none")
    return changed
