"""Promote a model namespace: the checks before the registry's active record is written, in one
place for ``scorestream promote`` (:func:`deploy.models.promote`) and the console's Models page.

The rules (:func:`promote_namespace`):

- the namespace must be live: registered and not retired (the app id's namespace counts without a
  record: it was the first active one); promoting the active one does nothing;
- its worker group must have read its sources and be caught up within ``max_lag`` records (source
  records not yet read plus internal records still to read): a namespace promoted further behind
  would answer with older scores than the one it replaces;
- ``expected_version`` / ``expected_active`` (the console's confirmation): the namespace still runs
  the model version shown and the active namespace is still the one shown, else nothing is written
  (someone changed the registry since the page was rendered);
- the cut (event time from which the namespace announces changes) moves forward
  (:func:`schemas.registry.promoted`), written by :func:`kafka_io.registry.promote`.

A refusal is a :class:`PromotionRefused` carrying the sentence to show.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from kafka_io.clients import KafkaConnection
from kafka_io.errors import KafkaIoError
from kafka_io.registry import promote as write_promotion
from kafka_io.registry import read_registry
from kafka_io.topics import offsets
from schemas.registry import Promotion, Registry, settings_of
from schemas.settings import Settings

DEFAULT_MAX_LAG = 10_000  # records; ``scorestream promote --max-lag``'s default
DEFAULT_DELAY_MS = 10_000  # from now to the cut: every worker learns of the promotion before it


class PromotionRefused(KafkaIoError):
    """A promotion not written, and why (a sentence for a person)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Lag:
    """A consumer group's committed offsets against the end offsets of its topics."""

    total: int
    committed: int

    @property
    def remaining(self) -> int:
        return self.total - self.committed


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a namespace's workers have read: source records read of all, internal records left."""

    read: int
    total: int
    internal: int  # -1: unknown

    @property
    def behind(self) -> int:
        return (self.total - self.read) + max(self.internal, 0)

    def too_far(self, max_lag: int) -> bool:
        """Too far behind to promote: nothing read of its sources yet, or more than ``max_lag`` behind."""
        return (self.read == 0 and self.total > 0) or self.behind > max_lag


@dataclass(frozen=True, slots=True)
class Promoted:
    """What :func:`promote_namespace` did: ``promotion`` written (None: the namespace was active already)."""

    namespace: str
    previous: str
    promotion: Promotion | None


def lag_between(ends: Mapping[TopicPartition, int], committed: Mapping[TopicPartition, Any]) -> Lag:
    """The partitions' end offsets against a group's committed ones (a partition the group never
    committed counts whole)."""
    done = sum(
        min(committed[tp].offset, end) for tp, end in ends.items() if tp in committed and committed[tp].offset >= 0
    )
    return Lag(total=sum(ends.values()), committed=done)


async def group_lag(kafka: KafkaConnection | Settings, group: str, topics: list[str]) -> Lag:
    """End offsets vs the group's committed offsets over ``topics``."""
    return lag_between(*await offsets(kafka, topics, group))


async def namespace_progress(settings: Settings, namespace: str, registry: Registry) -> Progress:
    """How far ``namespace``'s worker group has read its sources (its backfill topics count as
    sources) and its internal topics (identity, contacts, accounts)."""
    ns = settings_of(settings, registry, namespace)
    sources = list(ns.source_topics)
    internal = [ns.identity_topic, ns.contacts_topic, ns.accounts_topic]
    src = await group_lag(ns, namespace, sources)
    inner = await group_lag(ns, namespace, internal)
    return Progress(read=src.committed, total=src.total, internal=inner.remaining)


ProgressOf = Callable[[Settings, str, Registry], Awaitable[Progress]]
Write = Callable[[Settings, Promotion], Awaitable[object]]


async def promote_namespace(
    settings: Settings,
    namespace: str,
    *,
    now_ms: int,
    cut_ms: int | None = None,
    max_lag: int = DEFAULT_MAX_LAG,
    expected_version: str | None = None,
    expected_active: str | None = None,
    registry: Registry | None = None,
    progress_of: ProgressOf = namespace_progress,
    write: Write = write_promotion,
) -> Promoted:
    """Make ``namespace`` the active one from ``cut_ms`` (default ``now_ms`` + :data:`DEFAULT_DELAY_MS`)
    after the checks of the module docstring (raises :class:`PromotionRefused`). ``registry``: as
    read now (default: read from its topic); ``progress_of`` and ``write``: the Kafka side (tests)."""
    if registry is None:
        registry = await read_registry(settings)
    previous = registry.active
    if expected_active is not None and previous != expected_active:
        raise PromotionRefused(f"the active namespace is now {previous}, not {expected_active}: look again first")
    if namespace == previous:
        return Promoted(namespace, previous, None)
    record = registry.namespaces.get(namespace)
    if namespace != settings.app_id and (record is None or record.retired_ms is not None):
        raise PromotionRefused(f"{namespace} is not a running namespace (known: {', '.join(registry.live())})")
    if expected_version is not None and record is not None and record.model_version != expected_version:
        raise PromotionRefused(f"{namespace} now runs {record.model_version}, not {expected_version}: look again first")
    try:
        progress = await progress_of(settings, namespace, registry)
    except Exception as exc:  # the group's coordinator is not there until a worker joins
        raise PromotionRefused(f"cannot read {namespace}'s progress ({exc}); is its worker running?") from exc
    if progress.too_far(max_lag):
        raise PromotionRefused(
            f"{namespace} is {progress.behind} records behind (limit --max-lag {max_lag}); let it catch up first"
        )
    cut = now_ms + DEFAULT_DELAY_MS if cut_ms is None else cut_ms
    promotion = Promotion(namespace=namespace, from_ms=cut, promoted_ms=now_ms, previous=previous)
    try:
        await write(settings, promotion)
    except ValueError as exc:  # the cut is not later than the last one
        raise PromotionRefused(str(exc)) from exc
    return Promoted(namespace, previous, promotion)
