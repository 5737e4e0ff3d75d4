"""One log format per process: JSON lines (or text), every library's records through one handler.

In process: :func:`telemetry.logs.configure` into a buffer. End to end: a worker and an API started
with ``SCORESTREAM_LOG_FORMAT=json`` write nothing but JSON lines (faust's, aiokafka's and
uvicorn's included), and the API's access line carries the request id it answered with.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import structlog

from schemas.settings import Settings
from telemetry import context
from telemetry.logs import configure, kafka_fields, log_format, redact_query, write_direct
from tests.e2e.service import API_KEY, Service

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def setup(fmt: str | None, level: str = "INFO", env: str = "development") -> io.StringIO:
    buffer = io.StringIO()
    configure(Settings(log_format=fmt, log_level=level, env=env), role="worker", stream=buffer)  # type: ignore[arg-type]
    return buffer


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line]


def test_the_format_defaults_to_json_in_production_only() -> None:
    assert log_format(Settings(env="production", api_keys="k" * 24)) == "json"  # type: ignore[arg-type]
    assert log_format(Settings()) == "text"
    assert log_format(Settings(log_format="json")) == "json"
    assert log_format(Settings(env="production", log_format="text", api_keys="k" * 24)) == "text"  # type: ignore[arg-type]


@pytest.mark.usefixtures("restore_logging")
def test_a_json_line_has_its_fields_in_order() -> None:
    buffer = setup("json")
    logging.getLogger("streams.agents").warning(
        "dead-letter %s[%d]@%d: %s", "events.web", 3, 42, "invalid", extra=kafka_fields("events.web", 3, 42)
    )
    (line,) = json_lines(buffer)
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    assert ISO_UTC.match(line["time"])
    assert line["level"] == "warning" and line["logger"] == "streams.agents"
    assert line["message"] == "dead-letter events.web[3]@42: invalid"
    assert (line["topic"], line["partition"], line["offset"]) == ("events.web", 3, 42)
    assert line["role"] == "worker" and line["pid"] == os.getpid()
    assert "request_id" not in line


@pytest.mark.usefixtures("restore_logging")
def test_a_dead_letter_line_carries_the_record_coordinates() -> None:
    from streams.deadletter import dead_letter

    buffer = setup("json")
    sent: list[bytes] = []
    wiring = SimpleNamespace(send_dead=lambda key, value, headers, ms: sent.append(value))
    record = SimpleNamespace(
        topic="events.web", partition=2, offset=1234, key=b"k", value=b"{", timestamp=1_700_000_000_000
    )
    dead_letter(wiring, record, None, "invalid_json", "not JSON")  # type: ignore[arg-type]
    (line,) = json_lines(buffer)
    assert sent == [b"{"] and line["level"] == "warning" and line["logger"] == "streams.deadletter"
    assert (line["topic"], line["partition"], line["offset"]) == ("events.web", 2, 1234)
    assert "invalid_json" in line["message"]


@pytest.mark.usefixtures("restore_logging")
def test_lines_written_while_serving_a_request_carry_its_id() -> None:
    buffer = setup("json")
    token = context.request_id.set("req-1")
    try:
        logging.getLogger("api.test").info("inside")
        structlog.get_logger("api.test").info("structured", contact="u-1")
    finally:
        context.request_id.reset(token)
    logging.getLogger("api.test").info("outside")
    inside, structured, outside = json_lines(buffer)
    assert inside["request_id"] == "req-1" and inside["message"] == "inside"
    assert structured["request_id"] == "req-1" and structured["contact"] == "u-1"
    assert structured["message"] == "structured" and structured["logger"] == "api.test"
    assert "request_id" not in outside


@pytest.mark.usefixtures("restore_logging")
def test_an_exception_is_one_string_field() -> None:
    buffer = setup("json")
    try:
        raise ValueError("bad record")
    except ValueError:
        logging.getLogger("sink.service").exception("sink: reading %s failed", "t[0] 5")
    (line,) = json_lines(buffer)
    assert line["level"] == "error" and line["message"] == "sink: reading t[0] 5 failed"
    assert isinstance(line["exc_info"], str)
    assert "Traceback" in line["exc_info"] and "ValueError: bad record" in line["exc_info"]


@pytest.mark.usefixtures("restore_logging")
def test_values_json_cannot_hold_are_strings() -> None:
    buffer = setup("json")
    logging.getLogger("x").info("odd", extra={"where": Path("/tmp/x"), "ids": {1, 2}})
    (line,) = json_lines(buffer)
    assert line["where"] == "/tmp/x" and line["message"] == "odd"


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_are_readable_and_not_json() -> None:
    buffer = setup(None)
    logging.getLogger("streams.worker").info("worker %s ready", "w-1", extra=kafka_fields("t", 0, 7))
    text = buffer.getvalue()
    assert text.count("\n") == 1 and not text.startswith("{")
    assert "worker w-1 ready" in text and "streams.worker" in text and "offset=7" in text and "info" in text


@pytest.mark.usefixtures("restore_logging")
def test_one_handler_for_every_library_and_the_levels() -> None:
    # uvicorn's default config gives its loggers handlers of their own and stops propagation
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(logging.StreamHandler(io.StringIO()))
    uvicorn_error.propagate = False
    logging.getLogger().addHandler(logging.StreamHandler(io.StringIO()))  # a basicConfig before
    buffer = setup("json", level="DEBUG")
    assert len(logging.getLogger().handlers) == 1
    assert not uvicorn_error.handlers and uvicorn_error.propagate
    uvicorn_error.info("Started server process [%d]", 1, extra={"color_message": "\x1b[1m..."})
    logging.getLogger("aiokafka.consumer").debug("fetching")  # never below INFO: CPU per record
    logging.getLogger("faust.transport").info("assigned")
    logging.getLogger("scorestream").debug("ours at DEBUG")
    got = json_lines(buffer)
    assert [line["logger"] for line in got] == ["uvicorn.error", "faust.transport", "scorestream"]
    assert "color_message" not in got[0]


@pytest.mark.usefixtures("restore_logging")
def test_uvicorn_keeps_our_handler() -> None:
    """The API's uvicorn options leave logging alone: after uvicorn's own setup, the root handler is
    still ours, uvicorn's loggers have none of their own and its access log stays off."""
    import uvicorn

    from api.server import _uvicorn_options

    buffer = setup("json")
    ours = logging.getLogger().handlers[:]
    options = _uvicorn_options(Settings())
    assert options["log_config"] is None and options["access_log"] is False
    uvicorn.Config("api.server:app_of_environment", **options).configure_logging()
    assert logging.getLogger().handlers == ours
    assert not logging.getLogger("uvicorn.error").handlers and not logging.getLogger("uvicorn").handlers
    logging.getLogger("uvicorn.error").warning("from uvicorn")
    (line,) = json_lines(buffer)
    assert line["logger"] == "uvicorn.error" and line["message"] == "from uvicorn"


@pytest.mark.usefixtures("restore_logging")
def test_a_direct_line_is_the_line_logging_writes() -> None:
    """``write_direct`` (the access log's, without a LogRecord) writes what logging would, and
    leaves the record to logging whenever someone else could see it."""
    buffer = setup("json")
    access = logging.getLogger("scorestream.access")
    fields = {"method": "GET", "path": "/x?key=REDACTED", "status": 200, "duration_ms": 1.25}
    token = context.request_id.set("rid-1")
    try:
        assert write_direct(access, logging.INFO, "GET /x 200 1.2 ms", fields)
        access.info("%s %s %d %.1f ms", "GET", "/x", 200, 1.25, extra=fields)
        extra = logging.StreamHandler(io.StringIO())
        logging.getLogger("scorestream").addHandler(extra)  # another handler would see the record
        try:
            assert not write_direct(access, logging.INFO, "GET /x 200 1.2 ms", fields)
        finally:
            logging.getLogger("scorestream").removeHandler(extra)
        logging.getLogger().addFilter(lambda record: True)
        assert not write_direct(access, logging.INFO, "GET /x 200 1.2 ms", fields)
    finally:
        context.request_id.reset(token)
    direct, logged = json_lines(buffer)
    assert ISO_UTC.match(direct.pop("time")) and ISO_UTC.match(logged.pop("time"))
    assert direct == logged
    assert list(direct)[:3] == ["level", "logger", "message"] and direct["request_id"] == "rid-1"
    setup("text")
    assert not write_direct(access, logging.INFO, "GET /x 200 1.2 ms", fields)  # text: through logging


@pytest.mark.usefixtures("restore_logging")
def test_a_bad_level_is_refused() -> None:
    with pytest.raises(SystemExit, match="SCORESTREAM_LOG_LEVEL"):
        setup("json", level="LOUD")


def test_redact_query() -> None:
    sensitive = ("key", "token", "sig")
    assert redact_query(b"", sensitive) == ""
    assert redact_query(b"model=v2&fields=all", sensitive) == "model=v2&fields=all"
    assert redact_query(b"api_key=abc&x=1&Token=t&sig", sensitive) == "api_key=REDACTED&x=1&Token=REDACTED&sig"
    assert redact_query(b"writeKey=wk-1&a=b=c", sensitive) == "writeKey=REDACTED&a=b=c"


@pytest.mark.parametrize("api_processes", [1, 2])
def test_worker_and_api_write_json_lines_only(kafka_bootstrap: str, tmp_path: Path, api_processes: int) -> None:
    """The real processes: every line of their logs is a JSON object (faust's, mode's, aiokafka's
    and uvicorn's lines included; with several API processes, uvicorn's supervisor's and each
    worker process's), and the API's access line carries the request id."""
    svc = Service(
        bootstrap=kafka_bootstrap,
        data_dir=tmp_path,
        extra_env={
            "SCORESTREAM_LOG_FORMAT": "json",
            "SCORESTREAM_LOG_LEVEL": "INFO",
            "SCORESTREAM_API_PROCESSES": str(api_processes),
        },
    )
    svc.start()
    try:
        r = httpx.get(
            f"{svc.url}/v1/contacts/nobody",
            headers={"Authorization": f"Bearer {API_KEY}", "X-Request-ID": "e2e-req-1"},
            timeout=10,
        )
        assert r.status_code == 404 and r.headers["x-request-id"] == "e2e-req-1"
        time.sleep(0.5)
    finally:
        svc.stop()
    for name, role in (("worker", "worker"), ("api", "api")):
        text = (tmp_path / f"{name}.log").read_text()
        lines = [line for line in text.splitlines() if line.strip()]
        assert lines, name
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                pytest.fail(f"{name}.log: not a JSON line: {line[:300]}")
        assert all(p["role"] == role and ISO_UTC.match(p["time"]) for p in parsed), name
        if name == "api":
            assert len({p["pid"] for p in parsed}) >= api_processes  # the supervisor and its processes
        loggers = {p["logger"] for p in parsed}
        if name == "worker":
            assert any(lg.startswith(("faust", "mode", "aiokafka")) for lg in loggers), loggers
            assert any("ready" in p["message"] for p in parsed if p["logger"] == "streams.worker")
        else:
            assert any(lg.startswith("uvicorn") for lg in loggers), loggers
            access = [p for p in parsed if p["logger"] == "scorestream.access"]
            mine = [p for p in access if p.get("request_id") == "e2e-req-1"]
            assert len(mine) == 1 and mine[0]["status"] == 404 and mine[0]["route"] == "/v1/contacts/{contact_id}"
            assert API_KEY not in text
