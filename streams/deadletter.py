"""The worker's per-record failure policy: a record it cannot process goes to the dead-letter topic.

Every consumer of the worker (ingest, identity, contacts, accounts) handles its records one at a
time (its keys one at a time, for what is folded per key) inside a ``try``: whatever fails, for
whatever reason, is dead-lettered *alone*, with

- the original bytes (of the record, or of the one internal item that failed, as a batch of one
  that can be published back to the topic it came from),
- ``scorestream.reason`` (a stable code), ``scorestream.error`` (the detail),
- ``scorestream.exception`` (the exception's class) and the source topic/partition/offset,

and every other record of its batch is processed. An agent never lets an exception escape: Faust
would restart it and acknowledge the whole fetched batch (``batch_error`` below is the last
resort that dead-letters a batch whose handling failed outside the per-record steps).

The per-message policy of every layer, stated once (docs/architecture.md, "Errors and bad
input", says the same): what a record, message or request that cannot be processed gets, and
where it is counted. Each layer's exceptions derive from its root (tests/test_layers.py); none
stops its process for one bad input.

=================  ===============================  ======================================  ==========================================
layer              root exception                   a bad record / message / request gets   counted in
=================  ===============================  ======================================  ==========================================
core               scorestream.errors               (the core raises; its callers decide)   --
                   .ScorestreamError                an invalid model file: ModelError, the
                                                    process does not start
wire contracts     schemas.errors.ContractError     InvalidMessage / UnsupportedVersion     (by the layer that decodes)
                                                    raised with a stable reason code
worker consumers   streams.errors.WorkerError       the dead-letter topic, alone, with      streams.deadletter.dead_lettered (reason)
(streams)                                           reason, exception class, coordinates
followers          kafka_io.errors.KafkaIoError     logged and skipped                      kafka_io.reader.unreadable (reader label)
(kafka_io)                                          (kafka_io.reader.apply_or_skip)
dispatcher         dispatcher.errors                a trigger or command: the dead-letter   Dispatcher.stats: dead_lettered,
                   .DispatcherError                 topic (Unhandled, its reason); a        unreadable_triggers, unreadable_commands,
                                                    subscription or delivery record:        unreadable_subscriptions,
                                                    logged and skipped; a failing attempt:  unreadable_deliveries, attempt_errors
                                                    the delivery settles failed
collector          collector.errors                 one message: HTTP 400 (403 for a        the dead-letter topic and the collector's
                   .CollectorError                  channel not allowed) with the reason;   WARNING logs
                                                    in a batch: dead-lettered and listed
                                                    in ``rejected`` (200); an unreadable
                                                    batch body: 400, and dead-lettered
                                                    whole when its key came in the header
sink               sink.errors.SinkError            a row in ClickHouse's sink_rejects      SinkStats.unreadable, refused_rows
                                                    (Unreadable: its reason)                (and the sink_rejects table)
analytics          analytics.errors.AnalyticsError  InvalidParameter: the API answers 422;  SinkStats.failures (MigrationError)
                                                    MigrationError: the sink logs it and
                                                    migrates again later
api                api.errors.ApiError              the JSON error body with its status     (the server's access log; 500s logged)
                                                    (422 for an invalid request)
=================  ===============================  ======================================  ==========================================
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from schemas.events import deadletter_headers
from streams.app import Wiring
from streams.errors import WorkerError
from streams.transport import MAX_RECORD_BYTES, exception_name, record_ms, records_of
from telemetry import metrics
from telemetry.logs import kafka_fields

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 16 * 1024

dead_lettered: Counter[str] = Counter()
"""Records dead-lettered by this process, by reason (logs and tests read it)."""


class Unprocessable(WorkerError, ValueError):
    """A record that decodes but that its stage cannot apply; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def dead_letter(
    w: Wiring,
    record: Any,
    value: bytes | None,
    reason: str,
    detail: str,
    exc: BaseException | None = None,
    key: bytes | None = None,
) -> None:
    """Dead-letter ``value`` (default: the record's bytes) of ``record`` (an aiokafka record or a
    Faust message: the same attribute names) with the reason and the record's coordinates.

    A value too large for a Kafka record is cut (the detail says so): it could not be written
    otherwise, and the producer would stop the worker. Never raises."""
    raw = record.value if value is None else value
    raw = raw if isinstance(raw, bytes) else b""
    key = record.key if key is None else key
    if key is not None and len(key) > MAX_KEY_BYTES:
        key = key[:MAX_KEY_BYTES]
    room = MAX_RECORD_BYTES - len(key or b"")
    if len(raw) > room:
        detail = f"{detail[:600]} [value cut from {len(raw)} to {room} bytes]"
        raw = raw[:room]
    dead_lettered[reason] += 1
    metrics.DEAD_LETTERS.labels(record.topic, reason).inc()
    where = f"{record.topic}[{record.partition}] {record.offset}"
    kind = exception_name(exc) if exc is not None else ""
    coordinates = kafka_fields(record.topic, record.partition, record.offset)
    log.warning("dead-letter %s: %s: %s %s", where, reason, kind, detail[:300], extra=coordinates)
    try:
        headers = deadletter_headers(reason, detail, record.topic, record.partition, record.offset, exc)
        w.send_dead(key, raw, headers, record_ms(record))
    except Exception:
        log.exception("could not dead-letter %s (%s)", where, reason, extra=coordinates)


def batch_error(w: Wiring, stage: str, batch_event: Any, exc: BaseException) -> None:
    """The last resort: a batch whose handling failed outside the per-record steps (a bug) has
    all its records dead-lettered as they arrived (replaying them is idempotent: message ids),
    and the agent goes on with the next batch instead of being restarted by Faust."""
    log.exception("%s: a batch failed outside the per-record steps; its records go to the dead-letter topic", stage)
    try:
        records = records_of(batch_event)
    except Exception:
        log.exception("%s: the failed batch's records are unreadable", stage)
        return
    for record in records:
        dead_letter(w, record, None, "batch_error", f"{stage}: {exc!r}", exc)
