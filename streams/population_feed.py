"""The customer population in the worker: per-partition indexes, summaries, the merged model.

::

    contacts agent ── add(partition, state) ──► index: contact id -> (hash, CustomerFacts), per partition
                                                 (rebuilt from the local contacts table after each rebalance)
    every SCORESTREAM_POPULATION_INTERVAL_S:
      each worker:  index ──► PartitionSummary ──► <app>.population  key partition:<n>
      owner of contacts partition 0: latest summaries of all partitions ──► merge, quintiles,
                    BG/NBD + Gamma-Gamma fit (in a thread) ──► <app>.population  key model
    every worker (and the API) reads <app>.population ──► current() / segment_of()

The pure parts (summaries, merging, the fit, a contact's value) are in
:mod:`scorestream.population`; the topic's records in :mod:`schemas.population`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiokafka.errors import KafkaError
from faust.types import TP

from kafka_io.reader import read_topic
from schemas.population import encode_record, read_record
from schemas.settings import Settings
from scorestream import ContactState, Model
from scorestream.population import (
    ChurnJudgement,
    CustomerFacts,
    PartitionSummary,
    PopulationModel,
    build_partition_summary,
    build_population_model,
    churn_for,
    contact_hash,
    customer_facts,
    segment_for,
)
from scorestream.rfm import CustomerValue
from streams.app import Wiring

log = logging.getLogger(__name__)
REBUILD_YIELD_EVERY = 2000  # table records decoded between yields to the event loop


class _ValueView(msgspec.Struct):
    """The fields of a stored contact state the population index needs (the rest is skipped)."""

    merged_into: str | None = None
    value: CustomerValue | None = None


_value_decoder = msgspec.msgpack.Decoder(_ValueView)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class PartitionIndex:
    """The customers of one contacts partition. ``ready`` once rebuilt from the table since the
    last rebalance; while a rebuild runs, ``touched`` holds the keys ``add`` wrote (newer than
    what the rebuild reads)."""

    customers: dict[str, tuple[int, CustomerFacts]] = field(default_factory=dict)
    ready: bool = False
    touched: set[str] | None = None
    # the ledger each customer's facts were computed from: an unchanged ledger is not read again
    ledgers: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict)

    def put(self, contact_id: str, value: CustomerValue | None) -> None:
        ledger = None if value is None else (value.orders, value.refunds, value.folded)
        if ledger is not None and self.ledgers.get(contact_id) == ledger and contact_id in self.customers:
            return  # most changed contacts bought nothing new: their facts stand
        if ledger is None:
            self.ledgers.pop(contact_id, None)
        else:
            self.ledgers[contact_id] = ledger
        facts = customer_facts(value)
        if facts is None:
            self.customers.pop(contact_id, None)
        else:
            held = self.customers.get(contact_id)
            self.customers[contact_id] = (held[0] if held is not None else contact_hash(contact_id), facts)


class PopulationFeed:
    """The worker's side of the population model (see the module docstring)."""

    def __init__(self, w: Wiring, settings: Settings, model: Model) -> None:
        self.w = w
        self.settings = settings
        self.segments = model.value.segments
        self.clv_settings = model.value.clv
        self.indexes: dict[int, PartitionIndex] = {}
        self.summaries: dict[int, PartitionSummary] = {}  # the latest of each partition on the topic
        self.model: PopulationModel | None = None
        self.rebalances = 0  # rebalances completed (table recovery done)
        self.rebuilt = 0  # the value of ``rebalances`` the indexes were last rebuilt for
        self._contacts_topic = settings.contacts_topic
        self._reader: asyncio.Task[None] | None = None
        self.unreadable = 0  # population records skipped

    # --- called by the contacts agent and the lifecycle --------------------------------------

    def add(self, partition: int, state: ContactState) -> None:
        """Record a changed contact of ``partition`` (call after it was written to the table)."""
        index = self.indexes.get(partition)
        if index is None:
            index = self.indexes[partition] = PartitionIndex()
        contact_id = state.contact_id
        if state.value is None and contact_id not in index.customers and index.touched is None:
            return  # not a customer, never was: the common case, nothing to do
        index.put(contact_id, state.value if state.merged_into is None else None)
        if index.touched is not None:
            index.touched.add(contact_id)

    def remove(self, partition: int, contact_id: str) -> None:
        """Forget an erased contact of ``partition`` (the next summary and CLV fit exclude it)."""
        index = self.indexes.get(partition)
        if index is None:
            return
        index.customers.pop(contact_id, None)
        index.ledgers.pop(contact_id, None)
        if index.touched is not None:  # a rebuild running must not read it back from the table
            index.touched.add(contact_id)

    def current(self) -> PopulationModel | None:
        """The latest population model read from the topic (None before the first)."""
        return self.model

    def segment_of(self, state: ContactState, as_of_ms: int) -> str | None:
        """The contact's RFM segment against the current model; None for a non-customer or before one."""
        if state.merged_into is not None:
            return None
        return segment_for(state.value, as_of_ms, self.model, self.segments)

    def churn_of(self, state: ContactState, as_of_ms: int) -> ChurnJudgement | None:
        """The contact's churn-risk band against the current CLV fit (``scorestream.population.churn_for``)."""
        if state.merged_into is not None:
            return None
        return churn_for(state.value, as_of_ms, self.model, self.clv_settings)

    # --- rebuilding the indexes -------------------------------------------------------------

    async def on_rebalance_complete(self, *args: Any, **kwargs: Any) -> None:
        """Tables are recovered for the new assignment: every index waits for its rebuild."""
        self.rebalances += 1
        for index in self.indexes.values():
            index.ready = False

    def assigned(self) -> set[int]:
        return {tp.partition for tp in self.w.app.assignor.assigned_actives() if tp.topic == self._contacts_topic}

    def owns_partition_zero(self) -> bool:
        return TP(self._contacts_topic, 0) in self.w.app.assignor.assigned_actives()

    async def rebuild(self) -> None:
        """Rebuild every assigned partition's index from the local contacts table.

        Runs on the event loop in slices (the agent keeps going); a key ``add`` writes meanwhile
        is newer than the table value the rebuild would read and is left alone.
        """
        generation = self.rebalances
        assigned = self.assigned()
        for index in self.indexes.values():
            index.ready = False  # until rebuilt below (a rebuild cut short leaves them unpublished)
        for partition in list(self.indexes):
            if partition not in assigned:
                del self.indexes[partition]
        store = self.w.contacts.data
        for partition in sorted(assigned):
            started = time.monotonic()
            index = self.indexes[partition] = PartitionIndex(touched=set())
            touched = index.touched
            assert touched is not None
            db = store._db_for_partition(partition)
            for n, (key, raw) in enumerate(store._visible_items(db), 1):
                contact_id = key.decode()
                if contact_id not in touched:
                    try:
                        view = _value_decoder.decode(raw)
                    except (msgspec.DecodeError, ValueError) as exc:
                        log.warning("population: contacts[%s] %s: unreadable value: %s", partition, contact_id, exc)
                    else:
                        index.put(contact_id, view.value if view.merged_into is None else None)
                if n % REBUILD_YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                    if self.rebalances != generation:
                        return  # assignment changed: start over
            index.touched = None
            index.ready = True
            log.info(
                "population: contacts[%s] indexed: %d customers in %.2f s",
                partition,
                len(index.customers),
                time.monotonic() - started,
            )
        self.rebuilt = generation

    # --- publishing ------------------------------------------------------------------------

    async def publish(self) -> None:
        """Publish a summary of every ready partition; the owner of partition 0 also the model."""
        if self.w.app.rebalancing:
            return  # the assignment is changing: publish once the indexes are rebuilt
        assigned = self.assigned()
        built_at = now_ms()
        mine: dict[int, PartitionSummary] = {}
        for partition, index in sorted(self.indexes.items()):
            if not index.ready or partition not in assigned:
                continue
            snapshot = list(index.customers.values())  # the agent mutates the dict; the thread reads this
            summary = await asyncio.to_thread(
                build_partition_summary, partition, snapshot, built_at, self.settings.population_sample_size
            )
            key, value = encode_record(summary)
            await self.w.population_topic.send(key=key, value=value)
            mine[partition] = summary
        if not self.owns_partition_zero():
            return
        latest = {p: s for p, s in self.summaries.items() if p < self.settings.partitions}
        latest.update(mine)
        previous = self.model
        model = await asyncio.to_thread(
            build_population_model,
            [latest[p] for p in sorted(latest)],
            now_ms(),
            previous,
            self.settings.population_sample_size,
            self.settings.population_min_fit_customers,
        )
        key, value = encode_record(model)
        await self.w.population_topic.send(key=key, value=value)
        self.model = model  # the topic echoes it back; use it now
        if model.fit_error:
            log.info("population: %d customers; CLV fit kept (%s)", model.customers, model.fit_error)
        elif model.fit is not None:
            log.info(
                "population: %d customers; CLV fitted on %d (BG/NBD LL %.1f)",
                model.customers,
                model.fit.sample_size,
                model.fit.bgnbd.log_likelihood,
            )

    async def run(self) -> None:
        """The worker task: read the topic, rebuild after rebalances, publish every interval."""
        self._reader = asyncio.create_task(self._read(), name="population-reader")
        interval = self.settings.population_interval_s
        tick = min(1.0, interval)
        next_publish = time.monotonic() + interval
        try:
            while True:
                try:
                    if self.rebuilt != self.rebalances and not self.w.app.rebalancing:
                        await self.rebuild()
                    if time.monotonic() >= next_publish:
                        next_publish = time.monotonic() + interval
                        await self.publish()
                except asyncio.CancelledError:
                    raise
                except Exception:  # the population must never stop the worker
                    log.exception("population: refresh failed; retrying at the next tick")
                await asyncio.sleep(tick)
        finally:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    # --- reading the topic -------------------------------------------------------------------

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the population topic; one that cannot be read is logged, counted and
        skipped (the next summary of its partition replaces it)."""
        try:
            record = read_record(key, value)
        except Exception as exc:
            self.unreadable += 1
            log.error(
                "population: unreadable record %r on %s (%s: %s); skipped",
                key,
                self.settings.population_topic,
                type(exc).__name__,
                exc,
            )
            return
        if isinstance(record, PopulationModel):
            self.model = record
        elif isinstance(record, PartitionSummary):
            self.summaries[record.partition] = record

    async def _read(self) -> None:
        while True:
            try:
                await read_topic(self.settings, self.settings.population_topic, self.apply)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as exc:
                log.warning("population: reader failed (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)
            except Exception:  # a bug: read again rather than stop following the model
                log.exception("population: reader failed; reading again in 5 s")
                await asyncio.sleep(5.0)


def register_population(w: Wiring, settings: Settings, model: Model) -> PopulationFeed:
    """Create the worker's population feed and start it with the app."""
    feed = PopulationFeed(w, settings, model)
    w.app.on_rebalance_complete.connect(feed.on_rebalance_complete)

    @w.app.task
    async def population() -> None:
        await feed.run()

    return feed
