"""``scorestream worker``: run the Faust worker with the active model."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import TextIO

import faust
import orjson
from aiokafka.errors import KafkaError

from kafka_io.privacy import PrivacyFollower, read_privacy_list
from kafka_io.registry import follow_registry, read_registry
from schemas.model_file import load_model
from schemas.registry import Registry, settings_of
from schemas.settings import Settings
from scorestream import Model
from scorestream.privacy import PrivacyList
from streams import metrics as worker_metrics
from streams import restore
from streams.agents import register
from streams.app import Wiring, create_app
from telemetry import metrics

log = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


HEARTBEAT_S = 10.0  # a ready worker says so again this often
# how long a "ready" holds without the next one: three heartbeats, plus a minute of clock skew
# between the worker's host and the API's
LEASE_MS = int(3 * HEARTBEAT_S * 1000) + 60_000


class Worker(faust.Worker):
    """Faust's worker, announcing its state on the status topic (read by the API's ``/readyz``)."""

    wiring: Wiring
    model_version: str

    async def announce(self, state: str) -> None:
        at_ms = int(time.time() * 1000)
        body: dict[str, object] = {"worker": worker_id(), "state": state, "model": self.model_version, "at_ms": at_ms}
        if state == "ready":  # a SIGKILLed worker stops renewing it: readers stop counting it
            body["lease_until_ms"] = at_ms + LEASE_MS
        await self.wiring.status_topic.send(key=worker_id().encode(), value=orjson.dumps(body))

    stopping = False
    ready = False

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        if self.stopping:  # stopped while starting: "stopped" is already announced, not "ready" after it
            return
        await self.announce("ready")
        self.ready = True
        log.info("worker %s ready: tables recovered, model %s", worker_id(), self.model_version)

    async def heartbeat(self) -> None:
        if self.ready and not self.stopping:
            await self.announce("ready")

    async def on_stop(self) -> None:
        self.stopping = True
        try:
            await self.announce("stopped")
        except Exception:
            log.debug("could not announce stop", exc_info=True)
        await super().on_stop()


class WrongModel(SystemExit):
    pass


def resolve(settings: Settings, registry: Registry) -> tuple[Settings, Model]:
    """The namespace this worker runs (``SCORESTREAM_NAMESPACE``, else the registry's active one)
    and its model: the one registered for the namespace, else ``SCORESTREAM_MODEL`` (the default
    namespace before any shadow or promotion)."""
    settings = settings_of(settings, registry, settings.namespace or registry.active)
    record = registry.namespaces.get(settings.ns)
    if record is None:
        return settings, load_model(settings.model)
    model = record.load_model()
    if settings.model is not None and load_model(settings.model).version != model.version:
        raise WrongModel(
            f"namespace {settings.ns} runs model {model.version} (models registry), not "
            f"{settings.model}: run a new model as a shadow (`scorestream shadow`) and promote it"
        )
    return settings, model


async def read_privacy_list_at_start(settings: Settings) -> PrivacyList:
    """The privacy list at start, read again until the broker answers: a worker that has not
    read it does not start (it would score people who asked not to be)."""
    while True:
        try:
            privacy = await read_privacy_list(settings, settings.privacy_topic)
        except (KafkaError, OSError) as exc:
            log.warning("privacy list %s not read (%s); the worker waits for it", settings.privacy_topic, exc)
            await asyncio.sleep(1.0)
            continue
        log.info("privacy list %s read: %d restricted subject keys", settings.privacy_topic, len(privacy))
        return privacy


class SlotTaken(SystemExit):
    pass


def claim_slot(settings: Settings) -> tuple[Settings, TextIO]:
    """This worker's slot on its host: ``settings`` with ``worker_index`` set, and the open lock
    file that holds the slot until the process ends (a SIGKILLed worker's lock goes with it).

    Several workers on one host share ``SCORESTREAM_DATA_DIR``: each keeps its RocksDB tables in
    its own ``<workers_dir>/<index>`` (RocksDB allows one process per database). With
    ``SCORESTREAM_WORKER_INDEX`` set, that slot or a clear refusal; unset, the lowest free one.
    """
    slots: Iterable[int] = (settings.worker_index,) if settings.worker_index is not None else itertools.count()
    for index in slots:
        claimed = settings.model_copy(update={"worker_index": index})
        claimed.worker_dir.mkdir(parents=True, exist_ok=True)
        handle = (claimed.worker_dir / "worker.lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = (claimed.worker_dir / "worker.lock").read_text().strip()
            handle.close()
            if settings.worker_index is not None:
                raise SlotTaken(
                    f"worker slot {index} ({claimed.worker_dir}) is held by the running worker {holder or '?'}: "
                    "give each worker on this host its own SCORESTREAM_WORKER_INDEX (or leave it unset)"
                ) from None
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{worker_id()}\n")
        handle.flush()
        return claimed, handle
    raise AssertionError("unreachable: the slots never run out")


def run(settings: Settings | None = None, prepare: Callable[[Settings], None] | None = None) -> None:
    """Run the worker of ``settings``' namespace (resolved from the models registry);
    ``prepare(settings)`` runs once the namespace is known (``scorestream worker``: create its topics)."""
    settings = settings or Settings()
    registry = asyncio.run(read_registry(settings))
    settings, model = resolve(settings, registry)
    settings, slot_lock = claim_slot(settings)
    log.info("worker %s: slot %s, tables in %s", worker_id(), settings.worker_index, settings.worker_dir)
    if prepare is not None:
        prepare(settings)
    # the privacy list read to its end before any agent takes a record (a worker that starts
    # scores nothing already suppressed), then followed (kafka_io/privacy.py)
    privacy = PrivacyFollower(settings, settings.privacy_topic, asyncio.run(read_privacy_list_at_start(settings)))
    wiring = create_app(settings, registry)
    pipeline = register(wiring, settings, model, privacy=privacy.privacy)
    worker_metrics.watch(wiring, pipeline)
    metrics.serve(settings, "worker")

    @wiring.app.task
    async def privacy_list() -> None:
        await privacy.run()

    @wiring.app.task
    async def models_registry() -> None:
        active = registry.active

        def changed() -> None:
            nonlocal active
            if registry.active != active:
                active = registry.active
                cut = registry.promotions[-1].from_ms
                log.warning(
                    "model namespace %s promoted (changes from %d ms on); this worker runs %s", active, cut, settings.ns
                )

        await follow_registry(settings, registry, changed)

    if settings.restore_tables:
        tables = (wiring.identity, wiring.contacts, wiring.accounts)
        share = restore.install(wiring.app, tables, settings, keep_s=settings.released_keep_s)

        @wiring.app.timer(interval=restore.DROP_CHECK_S, name="drop_released_partitions")
        async def drop_released_partitions() -> None:
            share.drop_released()

    # mode's Worker would replace the root handler with its own (colorlog) and redirect stdout to a
    # logger: logging is telemetry.logs' (configured by the CLI), levels included (aiokafka, faust
    # and mode never below INFO: their DEBUG calls cost 6% of the worker's CPU, measured with py-spy)
    worker = Worker(wiring.app, loglevel=settings.log_level, quiet=True, override_logging=False)
    worker.spinner = None  # faust's terminal spinner: escape codes and backspaces amid the log lines
    worker.wiring = wiring
    worker.model_version = model.version
    metrics.scraped(metrics.WORKER_READY, lambda: [(int(worker.ready and not worker.stopping),)])

    @wiring.app.timer(interval=HEARTBEAT_S, name="heartbeat")
    async def heartbeat() -> None:
        await worker.heartbeat()

    tune_gc()
    try:
        worker.execute_from_commandline()
    finally:
        slot_lock.close()


def tune_gc() -> None:
    """Fewer garbage collections: every batch allocates (and frees) tens of thousands of objects.

    With CPython's default thresholds (700, 10, 10) a batch triggers dozens of collections, each
    traversing the young objects it just decoded: about a quarter of the pure fold's time
    (``bench.pure``: 32k -> 43k events/s). Objects alive after start-up (modules, the model, Faust's
    services) are frozen out of collection altogether. Reference cycles are still collected.
    """
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)
