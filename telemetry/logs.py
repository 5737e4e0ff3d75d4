"""Every process's log lines, in one format: ``configure(settings, role)`` once at start.

``SCORESTREAM_LOG_FORMAT``: ``json`` writes one JSON object per line (``time`` ISO-8601 UTC,
``level``, ``logger``, ``message``, then ``request_id`` while an API request is served, the Kafka
coordinates ``topic``/``partition``/``offset`` where a consumer logs about a record, any other
field the call passed, ``role`` and ``pid``; ``exc_info`` is the traceback as a string);
``text`` writes readable console lines. Default: json with ``SCORESTREAM_ENV=production``, else
text.

The standard library's logging stays the API every module uses (``logging.getLogger(__name__)``,
lazy ``%s`` arguments; structured fields through ``extra=``, see :func:`kafka_fields`): one
handler on the root logger renders every record, ours and faust's, mode's, aiokafka's and
uvicorn's, through structlog's :class:`~structlog.stdlib.ProcessorFormatter`. structlog's own
loggers (``structlog.get_logger()``) go through the same handler. Nothing else may install a
handler: the worker starts mode's ``Worker`` with ``override_logging=False`` and uvicorn runs with
``log_config=None``. aiokafka, faust and mode never log below INFO (their DEBUG calls cost the
worker CPU per record).

Context: fields bound with ``structlog.contextvars.bind_contextvars`` are on every line of their
context; the request id is read from :data:`telemetry.context.request_id` when a line is written
rather than bound per request (the API's wrapper sets one ContextVar a request, the cheapest).
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import nullcontext
from typing import Any, Literal, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from schemas.settings import Settings
from telemetry import context

Format = Literal["text", "json"]
NOISY = ("aiokafka", "faust", "mode")  # never below INFO: their DEBUG lines cost CPU per record
# uvicorn's loggers: their own handlers (if any) go, their records reach the root handler
UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
FIRST = ("time", "level", "logger", "message")  # a JSON line's first keys, in this order
DROPPED = frozenset({"color_message"})  # uvicorn's colored copy of the message


def log_format(settings: Settings) -> Format:
    """``SCORESTREAM_LOG_FORMAT``, else json in production and text in development."""
    if settings.log_format is not None:
        return settings.log_format
    return "json" if settings.env == "production" else "text"


def kafka_fields(topic: str, partition: int, offset: int) -> dict[str, Any]:
    """``extra=`` of a log call about one Kafka record: its coordinates become fields of the line."""
    return {"topic": topic, "partition": partition, "offset": offset}


def add_request_id(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The request being served (:data:`telemetry.context.request_id`), when there is one."""
    rid = context.request_id.get()
    if rid is not None and "request_id" not in event_dict:
        event_dict["request_id"] = rid
    return event_dict


def _drop_noise(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in DROPPED & event_dict.keys():
        del event_dict[key]
    return event_dict


class _Process:
    """Adds ``role`` and ``pid`` (read per line: uvicorn's workers are forked after configure)."""

    def __init__(self, role: str) -> None:
        self.role = role

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict["role"] = self.role
        event_dict["pid"] = os.getpid()
        return event_dict


def _json_line(_: WrappedLogger, __: str, event_dict: EventDict) -> str:
    """One JSON object: ``time``, ``level``, ``logger``, ``message`` first, then the other fields
    (values JSON cannot hold are written as their ``str``)."""
    event_dict["message"] = event_dict.pop("event", "")
    if "exception" in event_dict:
        event_dict["exc_info"] = event_dict.pop("exception")
    if "stack" in event_dict:
        event_dict["stack_info"] = event_dict.pop("stack")
    ordered = {key: event_dict.pop(key) for key in FIRST if key in event_dict}
    ordered.update(event_dict)
    return orjson.dumps(ordered, default=str).decode()


_RECORD_KEYS = frozenset(logging.LogRecord("n", 0, "p", 0, "m", (), None).__dict__) | {"message", "asctime"}


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """structlog's formatter; with ``direct`` processors (JSON), a standard library record is turned
    into its event dict straight from its attributes (what ``foreign_pre_chain``'s logger name,
    level and ``ExtraAdder`` steps give) and run through them, without the copy of the record
    ProcessorFormatter makes (half the cost of a line)."""

    def __init__(self, direct: list[Processor] | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.direct = direct

    def format(self, record: logging.LogRecord) -> str:
        if self.direct is None or hasattr(record, "_logger"):  # text, or a structlog logger's record
            return super().format(record)
        name = record.levelname.lower()
        event: EventDict = {"event": record.getMessage(), "logger": record.name, "level": name}
        for key, value in record.__dict__.items():
            if key not in _RECORD_KEYS:
                event[key] = value
        if record.exc_info:
            event["exc_info"] = record.exc_info
        if record.stack_info:
            event["stack"] = record.stack_info
        return self.render(self.direct, event)

    @staticmethod
    def render(direct: list[Processor], event: EventDict) -> str:
        """The line of ``event`` (``event``, ``logger``, ``level`` and the call's fields)."""
        name = event["level"]
        for processor in direct:
            event = processor(None, name, event)  # type: ignore[assignment]
        return event  # type: ignore[return-value]  # the last processor renders the line


_direct: tuple[logging.StreamHandler[TextIO], list[Processor]] | None = None  # JSON: configure's handler


def write_direct(logger: logging.Logger, level: int, message: str, fields: dict[str, Any]) -> bool:
    """Write a line of ``logger`` at ``level`` (the caller checked ``isEnabledFor``) straight to the
    JSON handler, without a LogRecord: the same line logging would write, in less than half the
    time (the access log writes one a request). Only when nothing but that handler would see the
    record (no other handler or filter on the way, as under ``configure``); False when not
    written: log it the usual way."""
    target = _direct
    if target is None:
        return False
    handler, direct = target
    root = logging.root
    if root.handlers != [handler] or root.filters or handler.filters or level < handler.level:
        return False
    node: logging.Logger | None = logger
    while node is not None and node is not root:
        if node.handlers or node.filters or not node.propagate:
            return False
        node = node.parent
    event: EventDict = {"event": message, "logger": logger.name, "level": logging.getLevelName(level).lower()}
    event.update(fields)
    try:
        line = _Formatter.render(direct, event)
        with handler.lock or nullcontext():
            handler.stream.write(line + handler.terminator)
            handler.flush()
    except Exception:  # as logging would: a failing log line never fails the request
        handler.handleError(logging.makeLogRecord({"msg": message, "name": logger.name}))
    return True


def _renderer(fmt: Format, stream: TextIO) -> list[Processor]:
    if fmt == "json":
        return [structlog.processors.format_exc_info, _json_line]
    colors = bool(getattr(stream, "isatty", lambda: False)())
    return [structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=structlog.dev.plain_traceback)]


def configure(settings: Settings, role: str, stream: TextIO | None = None) -> Format:
    """Route every log record of this process through one handler on ``stream`` (default: stderr)
    in the format of ``settings`` (:func:`log_format`), at ``SCORESTREAM_LOG_LEVEL``; ``role``
    (``worker``, ``api``, ``dispatcher``, ...) is a field of every JSON line. Calling it again
    replaces the handler. Returns the format."""
    fmt = log_format(settings)
    stream = stream or sys.stderr
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        raise SystemExit(f"SCORESTREAM_LOG_LEVEL={settings.log_level!r}: not a log level (DEBUG, INFO, WARNING, ...)")
    context_fields: list[Processor] = [structlog.contextvars.merge_contextvars, add_request_id]
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True, key="time" if fmt == "json" else "timestamp")
    shared: list[Processor] = [
        *context_fields,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        stamp,
    ]
    last: list[Processor] = [_Process(role), *_renderer(fmt, stream)]
    direct: list[Processor] | None = [*context_fields, stamp, _drop_noise, *last] if fmt == "json" else None
    formatter = _Formatter(
        direct,
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _drop_noise],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    global _direct
    _direct = (handler, direct) if direct is not None else None
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in NOISY:
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    for name in UVICORN:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return fmt


def redact_query(query: bytes, sensitive: tuple[str, ...]) -> str:
    """A query string with the values of parameters whose name contains one of ``sensitive``
    (lower case) replaced by ``REDACTED``; the others as sent."""
    if not query:
        return ""
    parts = []
    for part in query.decode("latin-1").split("&"):
        name, sep, _ = part.partition("=")
        lowered = name.lower()
        if sep and any(word in lowered for word in sensitive):
            part = f"{name}=REDACTED"
        parts.append(part)
    return "&".join(parts)
