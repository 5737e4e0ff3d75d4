"""Replay: recompute every contact's state under a model from the event history, and compare it
with the live state.

The fold is the worker's, in one process: the contract's ``decode`` with the record's timestamp,
identity resolution, the contacts fold (:func:`scorestream.fold.step`, the function the worker's
contacts agent calls), with a dict standing in for each table and the same codecs between stages
(:class:`Fold`; ``bench/pure.py`` measures the same class). It keeps the triggers the fold emits,
so a replay announces what live scoring announced (the RFM segment's only when given a cut). Because the fold's state depends on the set of events and not on their order or
number (docs/architecture.md, "Determinism"), reading the source topics from the beginning, or the
archive in ClickHouse, gives the state the worker holds, whatever batches either went through.

What is compared is what a reader sees at one instant, ``as_of`` (default: now), for both sides:
engagement decayed to it, fit, grade, and the lifecycle walked to it from the contact's anchor
(the live states are walked to different instants, their own ``walked_to_ms``; walking both to the
same instant is what makes them comparable). The live side is read under the active model, the
replay under the model given.

Sources: ``kafka`` reads the source topics from their beginning to the end offsets at the start
(no consumer group: nothing is committed, nothing joins the worker's group); ``archive`` reads the
accepted rows of ClickHouse's ``events`` table in Kafka order. Embedded chDB allows one process per
data directory: an archive replay needs the API stopped, or a ClickHouse server URL.

Privacy: a replay reads the privacy list (``kafka_io.privacy``) before it folds and leaves out
every event the list restricts (:class:`Fold` ``privacy``), as the worker's ingest does, so a
replay never rebuilds an erased person even if the sources or the archive still hold their
events; :func:`archive_records` given a list leaves their rows out too (the archive's copy to a
shadow's backfill topics stores nothing of them).
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from kafka_io import clients
from kafka_io.clients import KafkaConnection
from kafka_io.privacy import read_privacy_list
from schemas.events import InvalidMessage, decode
from schemas.privacy import archived_subjects
from schemas.settings import Settings
from schemas.state import (
    Batch,
    Envelope,
    Item,
    RawBatch,
    RawItem,
    decode_batch,
    decode_heads,
    decode_link,
    decode_state,
    encode,
    envelope_for,
    message_of,
    raw_item,
)
from scorestream import ContactState, Model, engagement_at, fit_of
from scorestream.fold import Message, SegmentOf, Tick, step
from scorestream.identity import resolve, routing_key
from scorestream.privacy import PrivacyList
from scorestream.scoring import group_scores
from scorestream.walk import walk

log = logging.getLogger(__name__)

BATCH = 5000
# (channel, raw value, Kafka record timestamp in ms)
Record = tuple[str, bytes | None, int]
# called with (records read so far, records to read in all)
Progress = Callable[[int, int], None]


class Fold:
    """The worker's pipeline in one process: decode -> identity -> contacts, batch by batch.

    The tables are dicts of encoded values (as RocksDB holds them), and messages between stages go
    through the same codecs as on the internal topics, so a contact absorbed into another is a
    copy, as it is when it travels through Kafka. ``from_ms``: events earlier than that (event
    time) are left out.

    ``triggers``: every trigger the fold emitted, in the order it emitted them (the same records,
    ids included, as the worker sends for the same events). ``segment_of``: the population's cut
    for the RFM segment; None (the default: replay has no live population) judges no segment, so
    no ``rfm.segment_changed`` and the states keep the segment they had (none, from nothing).
    ``privacy``: events it restricts are left out (counted in ``suppressed``), as ingest drops them.
    """

    def __init__(
        self,
        model: Model,
        from_ms: int | None = None,
        segment_of: SegmentOf | None = None,
        privacy: PrivacyList | None = None,
    ) -> None:
        self.model = model
        self.from_ms = from_ms
        self.segment_of = segment_of
        self.privacy = privacy if privacy is not None else PrivacyList()
        self.suppressed = 0  # events the privacy list left out
        self.links: dict[str, bytes] = {}
        self.contacts: dict[str, bytes] = {}
        self.triggers: list[dict[str, Any]] = []
        self.events = 0
        self.invalid = 0
        self.skipped = 0

    def run(self, records: Iterable[Record], batch: int = BATCH) -> None:
        chunk: list[Record] = []
        for record in records:
            chunk.append(record)
            if len(chunk) >= batch:
                self.feed(chunk)
                chunk = []
        if chunk:
            self.feed(chunk)
        self.settle()

    def settle(self) -> None:
        """Walk the contacts whose walk was put off (the worker's clock ticks them within a second
        of their last batch; the fold has no clock, so it ticks them when the records end)."""
        for key, raw_state in list(self.contacts.items()):
            state = decode_state(raw_state)
            journey = state.journey
            if journey is not None and journey.deferred_since is not None and journey.next_due_ms is not None:
                self._step(key, state, [Tick(journey.next_due_ms)])

    def _step(self, key: str, state: ContactState | None, messages: list[Message]) -> list[Item]:
        """One contact's fold: its state written, its triggers kept; what it sends on, as items."""
        folded = step(state, key, messages, self.model, self.segment_of)
        if folded.state is not None:
            self.contacts[key] = encode(folded.state)
        self.triggers.extend(folded.triggers)
        return [Item(key=o.key, env=envelope_for(o.item, 1)) for o in folded.outgoing]

    def feed(self, records: list[Record]) -> None:
        """Fold one batch of source records."""
        identity_items: list[RawItem] = []
        contact_items: list[RawItem] = []
        privacy = self.privacy
        for channel, raw, record_ms in records:
            try:
                if raw is None:
                    raise InvalidMessage("invalid_json", "empty record value")
                event = decode(raw, channel, record_ms)
            except InvalidMessage:
                self.invalid += 1  # the worker dead-letters it
                continue
            if privacy.entries and privacy.decide(event, record_ms) is not None:
                self.suppressed += 1  # the worker's ingest drops it
                continue
            if self.from_ms is not None and event.timestamp_ms < self.from_ms:
                self.skipped += 1
                continue
            self.events += 1
            where, key = routing_key(event)
            (identity_items if where == "identity" else contact_items).append(
                raw_item(key, Envelope(kind="event", event=event))
            )
        for key, env, head in decode_heads(encode(RawBatch(items=identity_items))):
            raw_link = self.links.get(key)
            link = decode_link(raw_link) if raw_link is not None else None
            assert head.event is not None
            new, routed = resolve(link, key, head.event)
            if new is not link:
                self.links[key] = encode(new)
            for r in routed:  # the event itself is forwarded as received, as the identity agent does
                contact_items.append(raw_item(r.key, env if r.merge is None else envelope_for(r.merge, 0)))
        pending: list[Item] = decode_batch(encode(RawBatch(items=contact_items))).items
        while pending:
            inbox: dict[str, list[Message]] = defaultdict(list)
            for item in pending:
                message = message_of(item.env)
                if message is not None:
                    inbox[item.key].append(message)
            pending = []
            for key, messages in inbox.items():
                raw_state = self.contacts.get(key)
                pending.extend(self._step(key, decode_state(raw_state) if raw_state else None, messages))
            if pending:  # through the codec: the receiver gets a copy, as from the contacts topic
                pending = decode_batch(encode(Batch(items=pending))).items


# --- what is compared -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContactView:
    """What a reader sees of one contact at ``as_of``: the values the diff compares."""

    engagement: float
    band: str
    fit: float
    fit_grade: str
    grade: str
    stage: str | None
    since_ms: int | None
    history: tuple[tuple[str, int, int | None, str, str | None], ...]
    flags: tuple[tuple[str, str], ...]
    persona: str | None
    # the model's score groups at ``as_of``: (id, score, band), in model order
    groups: tuple[tuple[str, float, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "engagement": self.engagement,
            "band": self.band,
            "fit": self.fit,
            "grade": self.grade,
            "stage": self.stage,
            "since_ms": self.since_ms,
            "history": [list(h) for h in self.history],
            "flags": dict(self.flags),
            "persona": self.persona,
            "groups": {g: {"score": score, "band": band} for g, score, band in self.groups},
        }


def view_of(state: ContactState, model: Model, as_of_ms: int) -> ContactView:
    """The contact at ``as_of_ms`` under ``model``: engagement decayed to it and the lifecycle walked
    to it from the anchor (not resumed from the walk's positions: the same answer, from the events
    only, whatever instant the stored journey was walked to)."""
    engagement = engagement_at(state, model, as_of_ms)
    fit = fit_of(state, model)
    journey = state.journey
    if model.lifecycle is not None and state.merged_into is None:
        journey = walk(state, model, model.lifecycle, max(as_of_ms, state.last_seen_ms or 0))
    return ContactView(
        engagement=engagement.score,
        band=engagement.band,
        fit=fit.score,
        fit_grade=fit.grade,
        grade=f"{fit.grade}{engagement.band}",
        stage=journey.stage if journey is not None else None,
        since_ms=journey.since_ms if journey is not None else None,
        history=tuple((e.stage, e.entered_ms, e.exited_ms, e.rule, e.cause) for e in journey.history)
        if journey is not None
        else (),
        flags=tuple(sorted(journey.flags.items())) if journey is not None else (),
        persona=journey.persona if journey is not None else None,
        groups=tuple((g.id, g.score, g.band) for g in group_scores(state, model, as_of_ms)),
    )


def views(states: dict[str, bytes], model: Model, as_of_ms: int) -> dict[str, ContactView]:
    """The view of every contact in ``states`` (encoded), merged-away records left out."""
    out: dict[str, ContactView] = {}
    for key, raw in states.items():
        state = decode_state(raw)
        if state.merged_into is None:
            out[key] = view_of(state, model, as_of_ms)
    return out


def quantiles(values: list[float]) -> dict[str, float | None]:
    """p10, p50, p90 (nearest rank on the sorted values) and the mean; None for no values."""
    if not values:
        return {"p10": None, "p50": None, "p90": None, "mean": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"p10": rank(0.1), "p50": rank(0.5), "p90": rank(0.9), "mean": round(statistics.fmean(ordered), 6)}


@dataclass
class Diff:
    """Live vs replay, contact by contact, at one instant."""

    live: int
    replay: int
    both: int
    only_live: list[str]
    only_replay: list[str]
    changed: int  # contacts in both whose view differs in anything
    engagement_changed: int
    fit_changed: int
    band_changed: int
    grade_changed: int
    stage_changed: int
    history_changed: int
    flags_changed: int
    stage_moves: dict[str, dict[str, int]]  # from -> to -> contacts (those that change stage)
    engagement_live: dict[str, float | None]
    engagement_replay: dict[str, float | None]
    fit_live: dict[str, float | None]
    fit_replay: dict[str, float | None]
    examples: list[dict[str, Any]] = field(default_factory=list)
    groups_changed: int = 0  # contacts whose score groups (a score or a band) differ

    def to_json(self) -> dict[str, Any]:
        return {
            "contacts": {"live": self.live, "replay": self.replay, "both": self.both},
            "only_live": self.only_live[:50],
            "only_replay": self.only_replay[:50],
            "changed": self.changed,
            "engagement_changed": self.engagement_changed,
            "fit_changed": self.fit_changed,
            "band_changed": self.band_changed,
            "grade_changed": self.grade_changed,
            "stage_changed": self.stage_changed,
            "history_changed": self.history_changed,
            "flags_changed": self.flags_changed,
            "groups_changed": self.groups_changed,
            "stage_moves": self.stage_moves,
            "engagement": {"live": self.engagement_live, "replay": self.engagement_replay},
            "fit": {"live": self.fit_live, "replay": self.fit_replay},
            "examples": self.examples,
        }


def diff(live: dict[str, ContactView], replay: dict[str, ContactView], examples: int = 10) -> Diff:
    """Compare the two sides. Score distributions are over each side's own contacts; the change
    counts over the contacts both hold (a stage move ``null -> x`` is a contact the live side has
    no lifecycle for)."""
    both = sorted(live.keys() & replay.keys())
    moves: dict[str, Counter[str]] = defaultdict(Counter)
    counts: Counter[str] = Counter()
    shown: list[dict[str, Any]] = []
    for key in both:
        a, b = live[key], replay[key]
        if a == b:
            continue
        counts["changed"] += 1
        counts["engagement"] += a.engagement != b.engagement
        counts["fit"] += a.fit != b.fit
        counts["band"] += a.band != b.band
        counts["grade"] += a.grade != b.grade
        counts["history"] += a.history != b.history
        counts["flags"] += a.flags != b.flags
        counts["groups"] += a.groups != b.groups
        if a.stage != b.stage:
            counts["stage"] += 1
            moves[str(a.stage)][str(b.stage)] += 1
        if len(shown) < examples:
            shown.append({"contact_id": key, "live": a.to_json(), "replay": b.to_json()})
    return Diff(
        live=len(live),
        replay=len(replay),
        both=len(both),
        only_live=sorted(live.keys() - replay.keys()),
        only_replay=sorted(replay.keys() - live.keys()),
        changed=counts["changed"],
        engagement_changed=counts["engagement"],
        fit_changed=counts["fit"],
        band_changed=counts["band"],
        grade_changed=counts["grade"],
        stage_changed=counts["stage"],
        history_changed=counts["history"],
        flags_changed=counts["flags"],
        groups_changed=counts["groups"],
        stage_moves={src: dict(sorted(dst.items())) for src, dst in sorted(moves.items())},
        engagement_live=quantiles([v.engagement for v in live.values()]),
        engagement_replay=quantiles([v.engagement for v in replay.values()]),
        fit_live=quantiles([v.fit for v in live.values()]),
        fit_replay=quantiles([v.fit for v in replay.values()]),
        examples=shown,
    )


# --- reading --------------------------------------------------------------------------------------


async def _read_to_end(
    kafka: KafkaConnection | Settings, topics: list[str], progress: Progress | None = None
) -> AsyncIterator[list[tuple[str, Any]]]:
    """Every record of ``topics`` up to their end offsets at the start, batch by batch, as
    ``(topic, record)``: a consumer with manual assignment and no group (nothing committed)."""
    # earliest: with the default (latest), the reset that assign() starts can land after the seek
    # to the beginning below and move the position to the end (a read of nothing, ~10% of runs)
    # not kafka_io.reader: replay hands on whole fetches, as fast as the broker serves them
    consumer = clients.consumer(kafka, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps: list[TopicPartition] = []
        for _ in range(6):  # a topic whose leader is moving is missing from one answer
            tps = await clients.partitions_of(consumer, topics)
            if {tp.topic for tp in tps} == set(topics):
                break
            await asyncio.sleep(0.5)
        if not tps:
            return
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        total = sum(ends[tp] - starts[tp] for tp in tps)
        remaining = {tp for tp in tps if ends[tp] > starts[tp]}
        done = 0
        if progress is not None:
            progress(0, total)
        while remaining:
            fetched = await consumer.getmany(*remaining, timeout_ms=500, max_records=BATCH)
            out: list[tuple[str, Any]] = []
            for tp, records in fetched.items():
                for record in records:
                    if record.offset < ends[tp]:
                        out.append((tp.topic, record))
                if records and records[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
            for tp in list(remaining):  # compacted or transactional gaps: trust the position
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            done += len(out)
            if progress is not None:
                progress(done, total)
            if out:
                yield out
    finally:
        await consumer.stop()


async def read_changelog(settings: Settings, progress: Progress | None = None) -> dict[str, bytes]:
    """The contacts table as its changelog holds it now: the latest value per key, tombstones
    dropped."""
    states: dict[str, bytes] = {}
    async for batch in _read_to_end(settings, [settings.changelog_topic("contacts")], progress):
        for _, record in batch:
            key = record.key.decode()
            if record.value is None:
                states.pop(key, None)
            else:
                states[key] = record.value
    return states


async def kafka_records(settings: Settings, progress: Progress | None = None) -> AsyncIterator[list[Record]]:
    """The source topics' records as the worker reads them: (channel, value, record time)."""
    channels = settings.source_topics
    async for batch in _read_to_end(settings, list(channels), progress):
        yield [(channels[topic], r.value, int(r.timestamp or 0)) for topic, r in batch]


ARCHIVE_SQL = """
SELECT channel, raw, toUnixTimestamp64Milli(received_at), toUnixTimestamp64Milli(event_time),
       type, user_id, anonymous_id, previous_id
FROM events FINAL
WHERE status = 'accepted'
ORDER BY kafka_topic, kafka_partition, kafka_offset
"""


def archive_records(
    settings: Settings, progress: Progress | None = None, privacy: PrivacyList | None = None
) -> Iterator[list[Record]]:
    """The accepted rows of the ClickHouse archive in Kafka order, with the record time the worker
    used (``received_at``). Embedded chDB: only while no other process (the API) holds it.
    ``privacy``: rows of events it restricts are left out (by the ids the row holds)."""
    from analytics.client import clickhouse_url, connect

    client = connect(clickhouse_url(settings))
    try:
        total = int(client.query("SELECT count() FROM events FINAL WHERE status = 'accepted'").result_rows[0][0])
        if progress is not None:
            progress(0, total)
        done = 0
        with client.query_row_block_stream(ARCHIVE_SQL) as stream:
            for block in stream:
                batch: list[Record] = [
                    (str(channel), raw.encode() if isinstance(raw, str) else bytes(raw), int(ms))
                    for channel, raw, ms, *ids in block
                    if not (privacy and _restricted_row(privacy, raw, ms, *ids))
                ]
                done += len(block)
                if progress is not None:
                    progress(done, total)
                yield batch
    finally:
        client.close()


def _restricted_row(privacy: PrivacyList, raw: Any, received_ms: Any, event_ms: Any, *ids: Any) -> bool:
    kind, user_id, anonymous_id, previous_id = (str(v or "") for v in ids)
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    subjects = archived_subjects(kind, user_id, anonymous_id, previous_id, data)
    return privacy.decide_subjects(subjects, int(event_ms), int(received_ms)) is not None


# --- the whole run --------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    model_version: str
    live_model_version: str
    source: str
    from_ms: int | None
    as_of_ms: int
    records: int
    events: int
    invalid: int
    skipped: int
    triggers: int  # the triggers the replay's fold emitted (``Fold.triggers``)
    suppressed: int  # events the privacy list left out (``Fold.suppressed``)
    seconds: float
    states: dict[str, bytes]  # the replayed contacts table (encoded, merged records included)
    live: dict[str, bytes]  # the live contacts table, from its changelog
    replay_views: dict[str, ContactView]
    live_views: dict[str, ContactView]
    diff: Diff

    @property
    def events_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "live_model_version": self.live_model_version,
            "source": self.source,
            "from_ms": self.from_ms,
            "partial": self.from_ms is not None,
            "as_of_ms": self.as_of_ms,
            "records": self.records,
            "events": self.events,
            "invalid": self.invalid,
            "skipped_before_from": self.skipped,
            "suppressed": self.suppressed,
            "triggers": self.triggers,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s),
            "diff": self.diff.to_json(),
        }


async def fold_source(
    settings: Settings,
    model: Model,
    source: str = "kafka",
    from_ms: int | None = None,
    progress: Progress | None = None,
    privacy: PrivacyList | None = None,
) -> tuple[Fold, int, float]:
    """Fold the whole source under ``model``; returns the fold, the records read and the seconds.
    ``privacy``: what to leave out (default: the privacy list as its topic holds it now)."""
    if privacy is None:
        privacy = await read_privacy_list(settings, settings.privacy_topic)
    fold = Fold(model, from_ms, privacy=privacy)
    records = 0
    started = time.perf_counter()
    if source == "kafka":
        async for batch in kafka_records(settings, progress):
            records += len(batch)
            fold.feed(batch)
    elif source == "archive":
        # the client is synchronous (chDB's only one): read and fold batch by batch in a thread,
        # so the archive is never held in memory whole
        def fold_archive() -> int:
            read = 0
            for batch in archive_records(settings, progress):
                read += len(batch)
                fold.feed(batch)
            return read

        records = await asyncio.to_thread(fold_archive)
    else:
        raise ValueError(f"unknown source {source!r} (kafka or archive)")
    fold.settle()
    return fold, records, time.perf_counter() - started


async def areplay(
    settings: Settings,
    model: Model,
    source: str = "kafka",
    from_ms: int | None = None,
    *,
    live_model: Model | None = None,
    as_of_ms: int | None = None,
    progress: Progress | None = None,
    changelog_progress: Progress | None = None,
) -> ReplayResult:
    """Replay ``source`` under ``model`` and compare with the live contacts table.

    ``live_model``: the model the live state is read under (default: the configured one);
    ``as_of_ms``: the instant both sides are read at (default: now, after the replay).
    ``from_ms``: only events at or after that event time; contacts then start from nothing, so
    the result is a partial state and its diff against the live (full) state is not a like-for-like
    comparison: use it to look at recent behaviour under a model, not to validate one.
    """
    from schemas.model_file import load_model

    live_model = live_model or load_model(settings.model)
    fold, records, seconds = await fold_source(settings, model, source, from_ms, progress)
    log.info(
        "replayed %d records (%d events, %d invalid) under %s in %.1f s",
        records,
        fold.events,
        fold.invalid,
        model.version,
        seconds,
    )
    live = await read_changelog(settings, changelog_progress)
    at = as_of_ms if as_of_ms is not None else int(time.time() * 1000)
    replay_views = views(fold.contacts, model, at)
    live_views = views(live, live_model, at)
    return ReplayResult(
        model_version=model.version,
        live_model_version=live_model.version,
        source=source,
        from_ms=from_ms,
        as_of_ms=at,
        records=records,
        events=fold.events,
        invalid=fold.invalid,
        skipped=fold.skipped,
        triggers=len(fold.triggers),
        suppressed=fold.suppressed,
        seconds=seconds,
        states=fold.contacts,
        live=live,
        replay_views=replay_views,
        live_views=live_views,
        diff=diff(live_views, replay_views),
    )


def replay(
    settings: Settings,
    model: Model,
    source: str = "kafka",
    from_ms: int | None = None,
    *,
    live_model: Model | None = None,
    as_of_ms: int | None = None,
    progress: Progress | None = None,
    changelog_progress: Progress | None = None,
) -> ReplayResult:
    """:func:`areplay` from synchronous code (not inside a running event loop)."""
    return asyncio.run(
        areplay(
            settings,
            model,
            source,
            from_ms,
            live_model=live_model,
            as_of_ms=as_of_ms,
            progress=progress,
            changelog_progress=changelog_progress,
        )
    )


async def compare_namespaces(
    settings: Settings, left: tuple[str, Model], right: tuple[str, Model], as_of_ms: int | None = None
) -> Diff:
    """Two running model namespaces' contacts tables, read from their changelogs, compared at one
    instant (``left``: the active one, as "live"; ``right``: a shadow, as "replay")."""
    left_states = await read_changelog(settings.in_namespace(left[0]))
    right_states = await read_changelog(settings.in_namespace(right[0]))
    at = as_of_ms if as_of_ms is not None else int(time.time() * 1000)
    return diff(views(left_states, left[1], at), views(right_states, right[1], at))


__all__ = [
    "ContactView",
    "Diff",
    "Fold",
    "ReplayResult",
    "areplay",
    "compare_namespaces",
    "diff",
    "print_diff",
    "read_changelog",
    "replay",
    "view_of",
    "views",
]


def print_diff(console: Any, d: Diff, left: str, right: str) -> None:
    """The diff as rich tables: contacts, score distributions, stage moves (``left -> right``)."""
    from rich.table import Table

    summary = Table(title="contacts")
    for name in (left, right, "both", "changed", "engagement", "band", "fit", "grade", "stage", "flags", "groups"):
        summary.add_column(name, justify="right")
    summary.add_row(
        *(
            str(v)
            for v in (
                d.live,
                d.replay,
                d.both,
                d.changed,
                d.engagement_changed,
                d.band_changed,
                d.fit_changed,
                d.grade_changed,
                d.stage_changed,
                d.flags_changed,
                d.groups_changed,
            )
        )
    )
    console.print(summary)
    scores = Table(title="score distributions")
    scores.add_column("score")
    for q in ("p10", "p50", "p90", "mean"):
        scores.add_column(q, justify="right")
    for label, dist in (
        (f"engagement {left}", d.engagement_live),
        (f"engagement {right}", d.engagement_replay),
        (f"fit {left}", d.fit_live),
        (f"fit {right}", d.fit_replay),
    ):
        scores.add_row(label, *("-" if dist[q] is None else f"{dist[q]:.2f}" for q in ("p10", "p50", "p90", "mean")))
    console.print(scores)
    if d.stage_moves:
        targets = sorted({t for row in d.stage_moves.values() for t in row})
        moves = Table(title=f"stage changes ({left} -> {right})")
        moves.add_column("from \\ to")
        for t in targets:
            moves.add_column(t, justify="right")
        for src, row in d.stage_moves.items():
            moves.add_row(src, *(str(row.get(t, "")) for t in targets))
        console.print(moves)


# --- the command ----------------------------------------------------------------------------------


def progress_bar(console: Any) -> Any:
    """The commands' progress bar (``replay``, ``shadow``): what, a bar, done of total, time left."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console)


def main(
    settings: Settings,
    model_path: str,
    source: str,
    json_out: str | None,
    from_ms: int | None,
    live_model: Model | None = None,
) -> int:
    """``scorestream replay``: replay with a progress bar, print the diff, optionally write JSON.
    ``settings``: those of the live namespace (its changelog is the live side), ``live_model`` its
    model (default: the configured one)."""
    import orjson
    from rich.console import Console

    from schemas.model_file import load_model

    model = load_model(model_path)
    console = Console()
    if from_ms is not None:
        console.print(
            "[yellow]--from: contacts start from nothing at that instant; the diff against the live "
            "(full-history) state is not like for like.[/]"
        )
    with progress_bar(console) as bar:
        events_task = bar.add_task(f"replaying {source} under {model.version}", total=None)
        live_task = bar.add_task("reading the live contacts", total=None)

        def on_events(done: int, total: int) -> None:
            bar.update(events_task, completed=done, total=total)

        def on_live(done: int, total: int) -> None:
            bar.update(live_task, completed=done, total=total)

        result = replay(
            settings, model, source, from_ms, live_model=live_model, progress=on_events, changelog_progress=on_live
        )
    d = result.diff
    console.print(
        f"{result.records} records ({result.events} events, {result.invalid} invalid, "
        f"{result.suppressed} left out by the privacy list, {result.triggers} triggers) "
        f"in {result.seconds:.1f} s, "
        f"{result.events_per_s:,.0f} records/s; compared at {result.as_of_ms} "
        f"(live {result.live_model_version} vs replay {result.model_version})"
    )
    print_diff(console, d, "live", "replay")
    if json_out:
        Path(json_out).write_bytes(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2))
        console.print(f"written: {json_out}")
    return 0
