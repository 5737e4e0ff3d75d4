"""The models registry, v1: which models run, in which namespace, and which one is live.

A *namespace* is one model's whole world: its worker group and Kafka topics
(``<ns>.identity``, ``<ns>.contacts``, ``<ns>-contacts-changelog``, ``<ns>.population``,
``<ns>.workers``, ...), its tables and its private triggers topic ``<ns>.triggers``. The default
namespace is the app id (``scorestream``). Several namespaces read the same source topics at once:
the *active* one is what the API answers with by default and what the public ``triggers`` topic
(and so the webhooks) carries; the others are *shadows*, visible in the API with ``?model=`` and
writing their triggers to their own topic only.

Topic ``<app>.models`` (1 partition, compacted), JSON records:

``ns:<namespace>``
    :class:`NamespaceRecord`: the model (its source, ``extends`` resolved, and version), when it was
    registered, and when it was retired (a tombstone-free "stopped"; its topics are left in place).
``active``
    :class:`ActiveRecord`: every promotion so far, oldest first. The namespace *responsible* for an
    instant of event time ``t`` is the last one promoted ``from_ms <= t`` (before any promotion: the
    app id). A worker publishes a trigger (or dead-letters a record) publicly only when its
    namespace is responsible for the trigger's ``at_ms`` (the record's time): so at a promotion
    every change dated before the cut is announced by the old model and every change dated at or
    after it by the new one, once, whatever moment each worker learns of the promotion, provided it
    learns before events dated after the cut reach it (``scorestream promote`` puts the cut a few
    seconds in the future for that).
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import yaml

from schemas.model_file import read_model_source
from schemas.settings import Settings
from scorestream import Model

REGISTRY_VERSION = 1
ACTIVE_KEY = "active"
NAMESPACE_PREFIX = "ns:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class NamespaceRecord(msgspec.Struct, frozen=True):
    namespace: str
    model_version: str
    model_yaml: str  # the model file, ``extends`` resolved, as YAML (JSON has no infinity)
    registered_ms: int
    retired_ms: int | None = None
    backfill: bool = False  # filled from the ClickHouse archive too: its workers read <ns>.backfill.*
    v: int = REGISTRY_VERSION

    def load_model(self) -> Model:
        return Model.from_dict(yaml.safe_load(self.model_yaml))


def namespace_record(
    namespace: str, model_path: Path | str | None, registered_ms: int, backfill: bool = False
) -> NamespaceRecord:
    """The record of ``namespace`` running the model file at ``model_path`` (None: the default)."""
    source = read_model_source(model_path)
    model = Model.from_dict(read_model_source(model_path))
    return NamespaceRecord(
        namespace=namespace,
        model_version=model.version,
        model_yaml=yaml.safe_dump(source),
        registered_ms=registered_ms,
        backfill=backfill,
    )


def settings_of(settings: Settings, registry: Registry, namespace: str) -> Settings:
    """``settings`` for ``namespace``'s worker topics, its backfill topics included if it has them."""
    record = registry.namespaces.get(namespace)
    ns = settings.in_namespace(namespace)
    return ns.model_copy(update={"backfill": True}) if record is not None and record.backfill else ns


class Promotion(msgspec.Struct, frozen=True):
    namespace: str
    from_ms: int  # the cut, in event time: changes dated at or after it are this namespace's
    promoted_ms: int  # when ``promote`` was run
    previous: str


class ActiveRecord(msgspec.Struct, frozen=True):
    promotions: list[Promotion] = []
    v: int = REGISTRY_VERSION


def namespace_refusal(name: str) -> str | None:
    """Why ``name`` cannot be a namespace (it prefixes Kafka topic names), or None."""
    if not _NAME.match(name):
        return f"namespace {name!r}: use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
    return None


class Registry:
    """The registry as read from its topic: namespaces and promotions (a plain in-memory view)."""

    def __init__(self, default: str) -> None:
        self.default = default
        self.namespaces: dict[str, NamespaceRecord] = {}
        self.promotions: list[Promotion] = []

    def apply(self, key: bytes | str | None, value: bytes | None) -> None:
        """Fold one record of the registry topic in (a tombstone removes its key)."""
        if key is None:
            return
        name = key.decode() if isinstance(key, bytes) else key
        if name == ACTIVE_KEY:
            self.promotions = [] if value is None else list(msgspec.json.decode(value, type=ActiveRecord).promotions)
        elif name.startswith(NAMESPACE_PREFIX):
            ns = name[len(NAMESPACE_PREFIX) :]
            if value is None:
                self.namespaces.pop(ns, None)
            else:
                self.namespaces[ns] = msgspec.json.decode(value, type=NamespaceRecord)

    @property
    def active(self) -> str:
        """The namespace promoted last (whatever its cut): the API's default."""
        return self.promotions[-1].namespace if self.promotions else self.default

    def responsible(self, at_ms: int) -> str:
        """The namespace that announces changes dated ``at_ms``."""
        owner = self.default
        for promotion in self.promotions:
            if promotion.from_ms <= at_ms:
                owner = promotion.namespace
            else:
                break
        return owner

    def model_of(self, namespace: str, configured: Model) -> Model:
        """The model ``namespace`` runs: the one registered for it, else ``configured`` (the app
        id's namespace before any registration)."""
        record = self.namespaces.get(namespace)
        return record.load_model() if record is not None else configured

    def live(self) -> list[str]:
        """Every namespace not retired: the active one first, then the shadows by name (the app
        id's namespace counts until retired, registered or not: it was the first active one)."""
        names = {ns for ns, rec in self.namespaces.items() if rec.retired_ms is None} | {self.active}
        if self.default not in self.namespaces:
            names.add(self.default)
        return [self.active, *sorted(names - {self.active})]


def encode_record(record: NamespaceRecord | ActiveRecord) -> bytes:
    return msgspec.json.encode(record)


def promoted(current: list[Promotion], promotion: Promotion) -> ActiveRecord:
    """The active record after ``promotion`` (cuts must move forward: an earlier cut than the last
    one would hand already-announced instants to another namespace)."""
    if current and promotion.from_ms <= current[-1].from_ms:
        raise ValueError(
            f"the cut must be later than the last one ({current[-1].from_ms} ms, to {current[-1].namespace})"
        )
    return ActiveRecord(promotions=[*current, promotion])
