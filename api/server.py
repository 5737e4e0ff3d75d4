"""``scorestream api``: serve the API with uvicorn, in one process or several on one port.

uvloop and httptools (pinned dependencies) are named explicitly rather than left to uvicorn's
"auto", which quietly falls back to the stock asyncio loop and the pure-Python h11 parser when
they are missing (those two were about half of the API's CPU per lookup). uvicorn's logging setup
and access log are off: the process's log lines and access log are :mod:`telemetry`'s.
With embedded chDB (``analytics.client.sink_in_api``) the process also runs the analytics sink.

Several processes (``SCORESTREAM_API_PROCESSES`` or ``--processes N``) are uvicorn workers on one
listening socket, each building its app from the environment (:func:`app_of_environment`);
uvicorn's supervisor starts a new one when one dies. They share the host's view store of each
model namespace (:mod:`api.view_store`): one follows the topics, the others read what it writes.
chDB allows one process per directory, so several processes need the sink elsewhere (a ClickHouse
server, or ``SCORESTREAM_SINK_IN_API=false`` with ``scorestream sink``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from analytics.client import sink_in_api
from api.app import create_api
from schemas.settings import Settings
from sink.service import Sink
from telemetry import metrics
from telemetry.logs import configure as configure_logs

log = logging.getLogger(__name__)
READY_WAIT_S = 120.0  # the longest a process of several waits for its readers before it accepts requests


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.api_host,
        "port": settings.api_port,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": settings.log_level.lower(),
        "log_config": None,  # uvicorn's lines go through our handler (telemetry.logs), not its own
        "access_log": False,  # ours: telemetry.access (SCORESTREAM_ACCESS_LOG), with the request id
    }


def app_of_environment() -> FastAPI:
    """The app of one of several API processes (a uvicorn worker builds its own from the
    ``SCORESTREAM_*`` environment; the analytics sink never runs in it).

    Its startup ends once its readers have caught up (at most :data:`READY_WAIT_S`): the
    processes share one socket, and one that has not started accepts no connection, so a process
    started late (or again, after one died) takes no request it would answer 503 to while the
    others can answer it."""
    settings = Settings()
    configure_logs(settings, role="api")  # a new process: the parent's logging setup is not inherited
    app = create_api(settings)
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with started(app) as state:
            await _caught_up(app, READY_WAIT_S)
            try:
                yield state
            finally:  # its live gauges (in flight) leave the sum; its counters stay counted
                metrics.process_stopped()

    app.router.lifespan_context = lifespan
    return app


async def _caught_up(app: FastAPI, timeout_s: float) -> None:
    """Wait until the registry, the active namespace's readers and the webhook subscriptions have
    caught up with their topics, or ``timeout_s`` (then ``/readyz`` says what is missing)."""
    deadline = time.monotonic() + timeout_s
    state = app.state
    while time.monotonic() < deadline:
        if (
            state.namespaces.caught_up.is_set()
            and state.namespaces.active().caught_up
            and state.webhooks.store.caught_up.is_set()
        ):
            return
        await asyncio.sleep(0.05)
    log.warning("API process %s: its readers have not caught up in %.0f s; serving anyway", os.getpid(), timeout_s)


def serve(settings: Settings, processes: int | None = None) -> None:
    """Serve the API with ``processes`` processes (default ``settings.api_processes``)."""
    processes = processes or settings.api_processes
    if processes == 1:
        sink = Sink(settings) if sink_in_api(settings) else None
        uvicorn.run(create_api(settings, sink=sink), **_uvicorn_options(settings))
        return
    if sink_in_api(settings):
        raise SystemExit(
            f"{processes} API processes: the analytics sink cannot run inside them (embedded chDB allows one "
            "process per directory); point SCORESTREAM_CLICKHOUSE_URL at a ClickHouse server, or set "
            "SCORESTREAM_SINK_IN_API=false and run `scorestream sink` (the analytics routes then answer 503)"
        )
    os.environ["SCORESTREAM_API_PROCESSES"] = str(processes)  # the workers read their settings from it
    if settings.metrics_enabled:  # their metrics in files, so that one scrape of the port sees them all
        metrics.multiprocess_dir(settings)
    uvicorn.run("api.server:app_of_environment", factory=True, workers=processes, **_uvicorn_options(settings))
