"""Every live model namespace in the API: one set of readers each, chosen per request.

The models registry (``schemas/registry.py``, topic ``<app>.models``) says which namespaces run
and which one is active. :class:`Namespaces` follows that topic from the beginning, for ever, and
keeps a :class:`Readers` bundle (contacts replica, accounts replica, population reader, model,
renderer) for each namespace of ``registry.live()``: started once the registry has been read and
the namespace is live, stopped when it is retired (the active one never is). Requests without
``?model=`` are answered from :meth:`Namespaces.active`; a promotion switches it the moment its
record is read, to readers that have been following the namespace since it was registered.

A namespace's model is the one registered for it (``NamespaceRecord.load_model``); the default
namespace (the app id) without a record runs the API's configured model, as the worker does.

While the registry topic does not exist (nothing was ever registered), the registry is empty: the
default namespace is the only one, and active.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from api.account_replica import AccountReplica
from api.errors import ApiError
from api.follow import task_failure
from api.population_reader import PopulationReader
from api.render import ContactRenderer
from api.replica import Replica
from api.view_store import StoreOptions
from kafka_io.clients import KafkaConnection
from kafka_io.reader import follow
from schemas.api import ModelsOut, NamespaceOut
from schemas.registry import Registry
from schemas.settings import Settings
from schemas.times import at_of, dt_of
from scorestream import Model

log = logging.getLogger(__name__)
# The registry changes when someone runs ``scorestream shadow``/``promote``/``retire``: an idle
# follower polls twice a second (a promotion is seen within half a second).
FETCH_MAX_WAIT_MS = 500


class UnknownModel(ApiError, LookupError):
    """No live namespace has this name or model version: 404 ``unknown_model``."""

    def __init__(self, name: str, known: list[str]) -> None:
        message = f"no live model namespace or model version {name!r}; the namespaces are: {', '.join(known)}"
        super().__init__(404, "unknown_model", message)
        self.name, self.known = name, known


@dataclass(eq=False)
class Readers:
    """What the API reads for one namespace."""

    namespace: str
    model: Model
    replica: Replica
    accounts: AccountReplica
    population: PopulationReader
    renderer: ContactRenderer = field(init=False)
    state: Literal["new", "running", "stopped"] = "new"

    def __post_init__(self) -> None:
        self.renderer = ContactRenderer(self.model, self.population.value_body)

    @classmethod
    def build(
        cls,
        settings: Settings,
        model: Model,
        replica: Replica | None = None,
        accounts: AccountReplica | None = None,
        population: PopulationReader | None = None,
    ) -> Readers:
        """The readers of ``settings.ns`` (the given ones, for tests, or new ones on its topics)."""
        kafka = KafkaConnection.of(settings)
        if replica is None:
            replica = Replica(
                kafka=kafka,
                views_topic=settings.views_topic,
                status_topic=settings.status_topic,
                store_dir=settings.api_store_dir,
                store_options=StoreOptions(cache_mb=settings.api_cache_mb),
                catch_up_s=settings.api_catch_up_ms / 1000,
            )
        if accounts is None:
            accounts = AccountReplica(kafka=kafka, changelog_topic=settings.changelog_topic("accounts"))
        if population is None:
            population = PopulationReader(
                kafka=kafka, topic=settings.population_topic, segments=model.value.segments, clv=model.value.clv
            )
        return cls(settings.ns, model, replica, accounts, population)

    def use_model(self, model: Model) -> None:
        """Answer with ``model`` from now on (the namespace's record changed)."""
        self.model = model
        self.population.segments = model.value.segments
        self.population.clv = model.value.clv
        self.renderer = ContactRenderer(model, self.population.value_body)

    @property
    def caught_up(self) -> bool:
        return (
            self.replica.caught_up.is_set() and self.accounts.caught_up.is_set() and self.population.caught_up.is_set()
        )

    @property
    def error(self) -> str | None:
        return self.replica.error or self.accounts.error or self.population.error

    @property
    def failures(self) -> list[str]:
        """Readers whose task died (see :attr:`api.follow.Following.failure`)."""
        return [f for f in (self.replica.failure, self.accounts.failure, self.population.failure) if f]

    async def start(self) -> None:
        self.state = "running"
        await self.replica.start()
        await self.accounts.start()
        await self.population.start()

    async def stop(self) -> None:
        self.state = "stopped"
        await self.population.stop()
        await self.accounts.stop()
        await self.replica.stop()


class Namespaces:
    """The models registry as the API follows it, and the readers of every live namespace.

    ``default`` is the default namespace's (``settings.app_id``) readers, built by the caller (tests
    inject theirs); its model serves that namespace as long as the registry has no record of it.
    ``on_active(readers)`` is called with the active namespace's readers whenever they change
    (and once now).
    """

    def __init__(
        self, settings: Settings, default: Readers, on_active: Callable[[Readers], None] | None = None
    ) -> None:
        self.settings = settings
        self.registry = Registry(settings.app_id)
        self.caught_up = asyncio.Event()  # the registry has been read (or its topic does not exist)
        self.error: str | None = None
        self.on_active = on_active
        self._configured = default.model
        self._models: dict[str, Model] = {}  # model version -> parsed registered model
        self._live: dict[str, Readers] = {default.namespace: default}  # registry.live() order
        self._all: dict[str, Readers] = {default.namespace: default}  # live, and retired not yet stopped
        self._active = default
        self._announced: tuple[Readers, Model] | None = None
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._announce()

    # -- serving ---------------------------------------------------------------------------------
    def active(self) -> Readers:
        """The active namespace's readers (requests without ``?model=``)."""
        return self._active

    def pick(self, name: str | None) -> Readers:
        """The readers of the live namespace named ``name``, else of the live namespace running the
        model version ``name`` (the active one first); the active one for ``None`` or ``""``.
        Raises :class:`UnknownModel`."""
        if not name:
            return self._active
        found = self._live.get(name)
        if found is not None:
            return found
        for readers in self.live():
            if readers.model.version == name:
                return readers
        raise UnknownModel(name, list(self._live))

    def live(self) -> list[Readers]:
        """The readers of every live namespace: the active one first, then the shadows by name."""
        return list(self._live.values())

    def models_out(self) -> ModelsOut:
        """The ``GET /v1/models`` body."""
        promotions = self.registry.promotions
        out = []
        for readers in self.live():
            record = self.registry.namespaces.get(readers.namespace)
            active = readers is self._active
            out.append(
                NamespaceOut(
                    namespace=readers.namespace,
                    model_version=readers.model.version,
                    role="active" if active else "shadow",
                    registered_at=None if record is None else dt_of(record.registered_ms),
                    active_from=at_of(promotions[-1].from_ms) if active and promotions else None,
                    contacts=len(readers.replica.store),
                    workers_ready=readers.replica.ready_workers,
                    caught_up=readers.caught_up,
                )
            )
        return ModelsOut(models=out)

    # -- the registry ----------------------------------------------------------------------------
    def apply(self, key: bytes | str | None, value: bytes | None) -> None:
        """Fold one registry record in; the namespaces served change at once (readers start and
        stop shortly after, once the registry has been read)."""
        self.registry.apply(key, value)
        self._reconcile()

    def apply_record(self, record: Any) -> None:
        try:
            self.apply(record.key, record.value)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            log.error("models registry: record at offset %s skipped (%s)", record.offset, exc)

    def _model_of(self, namespace: str) -> Model:
        record = self.registry.namespaces.get(namespace)
        if record is None:
            return self._configured
        model = self._models.get(record.model_version)
        if model is None:
            model = self._models[record.model_version] = record.load_model()
        return model

    def _reconcile(self) -> None:
        live: dict[str, Readers] = {}
        for namespace in self.registry.live():
            try:
                model = self._model_of(namespace)
            except Exception as exc:  # a record the registry's writer validated; never stop following
                log.error("model namespace %s: its registered model does not load (%s); not served", namespace, exc)
                continue
            readers = self._all.get(namespace)
            if readers is None or readers.state == "stopped":
                readers = Readers.build(self.settings.in_namespace(namespace), model)
                self._all[namespace] = readers
            elif readers.model.version != model.version:
                readers.use_model(model)
            live[namespace] = readers
        self._live = live
        active = live.get(self.registry.active)
        if active is not None and active is not self._active:
            log.info("model namespace %s is active", active.namespace)
            self._active = active
        self._announce()
        self._changed.set()

    def _announce(self) -> None:
        """Tell ``on_active`` about the active readers if they (or their model) changed."""
        active, last = self._active, self._announced
        if self.on_active is not None and (last is None or last[0] is not active or last[1] is not active.model):
            self._announced = (active, active.model)
            self.on_active(active)

    async def _sync(self) -> None:
        """Start the readers of live namespaces, stop those of retired ones (never the active's)."""
        keep = {id(r) for r in self._live.values()} | {id(self._active)}
        for namespace, readers in list(self._all.items()):
            if id(readers) not in keep:
                del self._all[namespace]
                if readers.state == "running":
                    log.info("model namespace %s retired: its readers stop", namespace)
                    await readers.stop()
        for readers in [self._active, *self._live.values()]:
            if readers.state == "new":
                log.info("model namespace %s: following its tables", readers.namespace)
                await readers.start()

    async def _manage(self) -> None:
        await self.caught_up.wait()
        while True:
            self._changed.clear()
            await self._sync()
            await self._changed.wait()

    async def follow(self) -> None:
        await follow(
            self,
            self.settings,
            [self.settings.models_topic],
            self.apply_record,
            "models registry",
            FETCH_MAX_WAIT_MS,
            absent_is_empty=True,
        )

    async def start(self) -> None:
        """Follow the registry; once it has been read, the live namespaces' readers start."""
        self._tasks = [
            asyncio.create_task(self.follow(), name="models registry"),
            asyncio.create_task(self._manage(), name="model namespaces"),
        ]

    def failures(self) -> list[str]:
        """The registry follower's and manager's tasks, and the running readers', that died."""
        out = [f for task in self._tasks if (f := task_failure(task))]
        for readers in self._all.values():
            if readers.state != "stopped":
                out += readers.failures
        return out

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for readers in list(self._all.values()):
            if readers.state == "running":
                await readers.stop()
