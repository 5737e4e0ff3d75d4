"""Prometheus metrics of every scorestream process: the families, and how each process serves them.

Every family is named ``scorestream_*`` with its unit in the name (``_seconds``, ``_records``,
``_total`` for counters) and has low-cardinality labels only: a topic, a partition, a stage, a
reason code, an outcome, a trigger type, a table. Never a contact id, a key or a raw path.

Cost: the worker folds thousands of events a second, so nothing here is called per event. A stage
adds its batch once (:meth:`Stage.batch`: two histogram observations and two counter increments,
a couple of microseconds; ``tests/telemetry`` measures it), and what is cheaper to read than to
count (consumer lag, table sizes, queue lengths, views sent) is read when Prometheus scrapes,
through a *source*: a function the process registers (:func:`scraped`) that yields the current
values. A source that fails is logged and skipped; the scrape goes on.

Where they are served (``SCORESTREAM_METRICS_ENABLED`` turns every endpoint off):

- the API: ``GET /metrics`` on its own port (``api/routers/metrics.py``), with the collector's
  and the embedded sink's families. Several API processes (``--processes N``) write their values
  to files under ``<data_dir>/metrics/api`` (prometheus_client's multiprocess mode,
  :func:`multiprocess_dir`), so one scrape sees the sum of all of them;
- the worker, the dispatcher and the sink: ``/metrics`` on a port of their own (:func:`serve`):
  ``SCORESTREAM_METRICS_PORT`` or the role's default (:data:`DEFAULT_PORTS`), plus the worker's
  slot for a worker, so several workers on one host (``scorestream run``) never collide.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from schemas.settings import Settings

log = logging.getLogger(__name__)

Role = Literal["api", "worker", "dispatcher", "sink"]
DEFAULT_PORTS: dict[str, int] = {"worker": 9300, "dispatcher": 9290, "sink": 9291}
"""The side port of each process (a worker adds its slot: 9300, 9301, ...). The API serves
``/metrics`` on its own port."""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes; every Prometheus version reads it


def version() -> str:
    try:
        return importlib.metadata.version("scorestream")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


# Bucket boundaries: a batch takes from a fraction of a millisecond (a few events) to seconds (a
# backlog of 10k); a webhook answers within its timeout (10 s by default, 60 s at most).
BATCH_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_RECORDS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
REQUEST_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# --- every process ----------------------------------------------------------------------------

BUILD_INFO = Gauge(
    "scorestream_build_info",
    "Always 1: the scorestream version, the role of the process (api, worker, dispatcher, sink) and its model "
    "namespace (a worker's; the app id for the others).",
    ["version", "role", "namespace"],
    multiprocess_mode="max",
)
DEAD_LETTERS = Counter(
    "scorestream_dead_letters_total",
    "Records sent to the dead-letter topic by the worker or the dispatcher, by the topic they came from and "
    "the reason code (streams/deadletter.py).",
    ["topic", "reason"],
)

# --- the worker ---------------------------------------------------------------------------------

EVENTS_IN = Counter("scorestream_events_in_total", "Source records read by the ingest stage, by topic.", ["topic"])
EVENTS_ACCEPTED = Counter(
    "scorestream_events_accepted_total",
    "Source records that passed validation and were routed on (in = accepted + dead-lettered + suppressed), by topic.",
    ["topic"],
)
EVENTS_SUPPRESSED = Counter(
    "scorestream_events_suppressed_total",
    "Events dropped because the privacy list restricts their person (not stored, not dead-lettered), by the "
    "door or stage that dropped them (worker, identity, contacts, collector, sink, dispatcher), the topic they came "
    "from and "
    "the decision (suppressed, erased).",
    ["door", "topic", "decision"],
)
ERASURES = Counter(
    "scorestream_erasures_total",
    "Regulations' erase orders the worker carried out, by stage (contacts: a contact and its state, identity: "
    "an anonymous id's link) and whether it held anything (found false: nothing to erase, e.g. a redelivered order).",
    ["stage", "found"],
)
BATCH_SIZE = Histogram(
    "scorestream_worker_batch_records",
    "Records in one fetched batch handled by a worker stage (ingest, identity, contacts, accounts).",
    ["stage"],
    buckets=BATCH_RECORDS,
)
BATCH_DURATION = Histogram(
    "scorestream_worker_batch_duration_seconds",
    "Time to apply one fetched batch in a worker stage (ingest, identity, contacts, accounts).",
    ["stage"],
    buckets=BATCH_SECONDS,
)
RECORDS = Counter(
    "scorestream_worker_records_total",
    "Kafka records handled by a worker stage (the sum of its batch sizes; a record of an internal topic carries "
    "a batch of messages).",
    ["stage"],
)
STATE_FLUSH = Histogram(
    "scorestream_worker_state_flush_duration_seconds",
    "Time to write the contacts stage's dirty states (encode, RocksDB write batch, changelog records queued).",
    buckets=BATCH_SECONDS,
)
STATES_WRITTEN = Counter(
    "scorestream_worker_states_written_total", "Contact states written to the table and its changelog."
)
COMMIT = Histogram(
    "scorestream_worker_commit_duration_seconds",
    "Time of one offset commit, the producer flush it waits for included.",
    buckets=BATCH_SECONDS,
)
TRIGGERS = Counter(
    "scorestream_triggers_total", "Triggers emitted by the worker (public and private topics), by type.", ["type"]
)
WORKER_LAG = "scorestream_worker_consumer_lag_records"
TABLE_KEYS = "scorestream_worker_table_keys"
VIEWS_SENT = "scorestream_worker_views_sent_total"
TIMERS_DUE = "scorestream_worker_timers_pending"
WORKER_READY = "scorestream_worker_ready"

# --- the webhook dispatcher ------------------------------------------------------------------

DELIVERIES = Counter(
    "scorestream_webhook_deliveries_total",
    "Webhook deliveries settled or rescheduled, by outcome: delivered, retried (an attempt failed, another "
    "is due), failed (for good), disabled (not attempted: the subscription is disabled or deleted).",
    ["outcome"],
)
ATTEMPTS = Counter(
    "scorestream_webhook_attempts_total",
    "Webhook requests, by the receiver's outcome (success, http_error, timeout, connection_error, gone, refused, ...).",
    ["outcome"],
)
ATTEMPT_DURATION = Histogram(
    "scorestream_webhook_attempt_duration_seconds",
    "Time of one webhook request, from sending to the receiver's answer (or its failure).",
    buckets=REQUEST_SECONDS,
)
SUBSCRIPTIONS_DISABLED = Counter(
    "scorestream_webhook_subscriptions_disabled_total",
    "Subscriptions the dispatcher disabled (410 Gone, or failing for too long).",
)
REGULATIONS = Counter(
    "scorestream_regulations_total",
    "Privacy regulations, by type (SUPPRESS, SUPPRESS_WITH_DELETE, DELETE_ONLY, UNSUPPRESS) and status: accepted "
    "(by the API process that answered), then done or failed (each time the process carrying it out finishes it).",
    ["type", "status"],
)
REGULATION_SECONDS = Histogram(
    "scorestream_regulation_duration_seconds",
    "Time from a regulation's acceptance to done, by type.",
    ["type"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600),
)
WEBHOOK_LAG = Gauge(
    "scorestream_webhook_consumer_lag_records",
    "Triggers of a partition the dispatcher has not read yet (the highwater minus the next offset it reads), as "
    "of its last fetch from the partition.",
    ["topic", "partition"],
    multiprocess_mode="max",
)
WEBHOOK_QUEUE = "scorestream_webhook_queue_deliveries"
WEBHOOK_IN_FLIGHT = "scorestream_webhook_in_flight_deliveries"

# --- the analytics sink ----------------------------------------------------------------------

SINK_ROWS = Counter("scorestream_sink_rows_inserted_total", "Rows inserted into ClickHouse, by table.", ["table"])
SINK_ERRORS = Counter(
    "scorestream_sink_insert_errors_total",
    "Failed insert attempts (each batch is retried), by stream (events, triggers, deliveries, contacts, accounts).",
    ["stream"],
)
SINK_DURATION = Histogram(
    "scorestream_sink_insert_duration_seconds",
    "Time of one successful insert into ClickHouse, by table.",
    ["table"],
    buckets=BATCH_SECONDS,
)
SINK_LAG = Gauge(
    "scorestream_sink_consumer_lag_records",
    "Records of a partition the sink has not read yet (the highwater minus the next offset it reads), as of its "
    "last fetch from the partition.",
    ["topic", "partition"],
    multiprocess_mode="max",
)
SINK_REJECTS = "scorestream_sink_rejected_rows_total"

# --- the HTTP collector (in the API process) -------------------------------------------------

COLLECTOR_ACCEPTED = Counter(
    "scorestream_collector_messages_accepted_total",
    "Messages the collector published to a source topic (acknowledged by Kafka).",
)
COLLECTOR_REJECTED = Counter(
    "scorestream_collector_messages_rejected_total",
    "Messages of a batch the collector refused (and dead-lettered), by reason code.",
    ["reason"],
)
COLLECTOR_REFUSED = Counter(
    "scorestream_collector_requests_refused_total",
    "Collector requests answered with an error (4xx, 5xx), by reason code (unauthorized, busy, unavailable, ...).",
    ["reason"],
)
COLLECTOR_IN_FLIGHT = Gauge(
    "scorestream_collector_in_flight_messages",
    "Messages sent to Kafka and not acknowledged yet (sampled at each request's start and end).",
    multiprocess_mode="livesum",
)


_suppressed_counters: dict[tuple[str, str, str], Counter] = {}


def suppressed(door: str, topic: str, decision: str, count: int = 1) -> None:
    """``count`` events of ``topic`` dropped at ``door`` by the privacy list (children cached)."""
    labels = (door, topic, decision)
    child = _suppressed_counters.get(labels)
    if child is None:
        child = _suppressed_counters[labels] = EVENTS_SUPPRESSED.labels(*labels)
    child.inc(count)


_trigger_counters: dict[str, Counter] = {}


def trigger(kind: str) -> None:
    """One trigger of type ``kind`` emitted (its counter looked up in a plain dict)."""
    counter = _trigger_counters.get(kind)
    if counter is None:
        counter = _trigger_counters[kind] = TRIGGERS.labels(kind)
    counter.inc()


def state_flush(states: int, seconds: float) -> None:
    """The contacts stage wrote ``states`` dirty states in ``seconds``."""
    STATE_FLUSH.observe(seconds)
    STATES_WRITTEN.inc(states)


class Stage:
    """One worker stage's batch metrics, with its label values bound once (a ``labels()`` lookup
    per batch would cost more than the increments)."""

    __slots__ = ("_records", "_seconds", "_size")

    def __init__(self, stage: str) -> None:
        self._size = BATCH_SIZE.labels(stage)
        self._seconds = BATCH_DURATION.labels(stage)
        self._records = RECORDS.labels(stage)

    def batch(self, records: int, seconds: float) -> None:
        """One batch of ``records`` handled in ``seconds``."""
        self._size.observe(records)
        self._seconds.observe(seconds)
        self._records.inc(records)


class Source(Collector):
    """A family read when Prometheus scrapes: ``read()`` yields ``(label values..., value)``."""

    def __init__(
        self, name: str, documentation: str, kind: Literal["gauge", "counter"], labels: Sequence[str], read: Reader
    ) -> None:
        self.name, self.documentation, self.kind, self.labels, self.read = name, documentation, kind, labels, read

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def _family(self) -> GaugeMetricFamily | CounterMetricFamily:
        family = GaugeMetricFamily if self.kind == "gauge" else CounterMetricFamily
        return family(self.name.removesuffix("_total"), self.documentation, labels=list(self.labels))

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        try:
            for *values, value in self.read():
                family.add_metric([str(v) for v in values], float(value))
        except Exception:  # a scrape must not fail for one source (a consumer stopping, a table closing)
            log.debug("metrics: source %s failed", self.name, exc_info=True)
        yield family


Reader = Callable[[], Iterable[Sequence[str | int | float]]]

SCRAPED: dict[str, tuple[str, Literal["gauge", "counter"], tuple[str, ...]]] = {
    WORKER_LAG: (
        "Records of an assigned partition not committed yet by the worker (the highwater minus the committed "
        "offset), read at scrape time.",
        "gauge",
        ("topic", "partition"),
    ),
    TABLE_KEYS: (
        "Keys of a worker table partition (RocksDB's estimate), read at scrape time.",
        "gauge",
        ("table", "partition"),
    ),
    VIEWS_SENT: ("Contact views sent to the views topic (what the API reads).", "counter", ()),
    TIMERS_DUE: ("Contacts with a lifecycle instant due (the clock's index).", "gauge", ()),
    WORKER_READY: (
        "1 once the worker has recovered its tables and announced itself ready (what the API's /readyz counts), "
        "0 while it starts or stops.",
        "gauge",
        (),
    ),
    WEBHOOK_QUEUE: ("Webhook deliveries queued in the dispatcher's memory.", "gauge", ()),
    WEBHOOK_IN_FLIGHT: ("Webhook requests waiting for their receiver's answer.", "gauge", ()),
    SINK_REJECTS: (
        "Records and rows the sink stored in sink_rejects instead (unreadable, or refused by ClickHouse).",
        "counter",
        (),
    ),
}
"""The families read at scrape time: name -> (documentation, type, labels)."""

_sources: dict[tuple[int, str], Source] = {}  # (id of the registry, name) -> its source now
_sources_lock = threading.Lock()


def scraped(name: str, read: Reader, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve family ``name`` (one of :data:`SCRAPED`) from ``read`` from now on (replacing the
    reader registered before, as a new worker or sink object in the same process takes over)."""
    documentation, kind, labels = SCRAPED[name]
    source = Source(name, documentation, kind, labels, read)
    with _sources_lock:
        old = _sources.pop((id(registry), name), None)
        if old is not None:
            registry.unregister(old)
        registry.register(source)
        _sources[(id(registry), name)] = source


def families(registry: CollectorRegistry = REGISTRY) -> set[str]:
    """The names of the ``scorestream_*`` families ``registry`` can serve (as written in the
    exposition: a counter ``x`` is served as ``x_total``; a histogram as ``x_bucket``, ``x_sum``,
    ``x_count``), with those read at scrape time."""
    names: set[str] = set()
    for metric in registry.collect():
        if not metric.name.startswith("scorestream_"):
            continue
        if metric.type == "counter":
            names.add(f"{metric.name}_total")
        elif metric.type == "histogram":
            names.update(f"{metric.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(metric.name)
    return names | set(SCRAPED)


def announce(role: Role, namespace: str) -> None:
    """``scorestream_build_info{version, role, namespace} 1`` for this process. Workers of a shadow
    model report the same families as the active namespace's: tell them apart by this label."""
    BUILD_INFO.labels(version(), role, namespace).set(1)


def port_of(settings: Settings, role: Role) -> int:
    """The side port of ``role`` (0: none): ``SCORESTREAM_METRICS_PORT`` or the role's default,
    plus the worker's slot for a worker."""
    base = settings.metrics_port if settings.metrics_port is not None else DEFAULT_PORTS.get(role, 0)
    if base == 0 or not settings.metrics_enabled:
        return 0
    return base + ((settings.worker_index or 0) if role == "worker" else 0)


def serve(settings: Settings, role: Role) -> int:
    """Serve ``/metrics`` of a worker, dispatcher or sink on its side port (a daemon thread);
    return the port (0: off). A port already taken is logged, not fatal: the pipeline matters more
    than its metrics (and the scrape's ``up == 0`` alerts the operator)."""
    announce(role, settings.ns if role == "worker" else settings.app_id)
    port = port_of(settings, role)
    if port == 0:
        return 0
    try:
        start_http_server(port, addr=settings.metrics_host)
    except OSError as exc:
        log.error(
            "metrics: cannot serve /metrics on %s:%d (%s); set SCORESTREAM_METRICS_PORT (0: off)",
            settings.metrics_host,
            port,
            exc,
        )
        return 0
    log.info("metrics: /metrics of the %s on http://%s:%d", role, settings.metrics_host, port)
    return port


def multiprocess_dir(settings: Settings) -> Path:
    """Prepare prometheus_client's multiprocess mode for several API processes: an empty
    ``<data_dir>/metrics/api`` (the files of a previous run removed), named in the environment the
    processes inherit. Call it before they start."""
    path = settings.data_dir / "metrics" / "api"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def process_stopped() -> None:
    """This API process is stopping: in multiprocess mode, its live gauges leave the sum (a
    process killed outright keeps them until the next start empties the directory)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def exposition() -> bytes:
    """This process's metrics in Prometheus' text format; with several API processes, the sum of
    theirs (read from the multiprocess directory)."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def fetched(gauge: Gauge, topic: str, partition: int, highwater: int | None, next_offset: int) -> None:
    """A consumer fetched ``topic[partition]`` up to ``next_offset``: its lag now (unknown
    highwater: unchanged)."""
    if highwater is not None:
        gauge.labels(topic, str(partition)).set(max(0, highwater - next_offset))


def forget(gauge: Gauge, topic: str, partition: int) -> None:
    """The partition was revoked: its lag is another consumer's to report."""
    with contextlib.suppress(KeyError):  # never fetched from
        gauge.remove(topic, str(partition))


def lag_of(
    assigned: Iterable[tuple[str, int]], end: Callable[[str, int], int | None], done: Callable[[str, int], int | None]
) -> Iterator[tuple[str, int, int]]:
    """``(topic, partition, lag)`` of each assigned partition whose end (``highwater``) and
    committed offset are known; the lag is never negative."""
    for topic, partition in assigned:
        high, committed = end(topic, partition), done(topic, partition)
        if high is not None and committed is not None:
            yield topic, partition, max(0, high - committed)
