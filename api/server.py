"""``scorestream api``: serve the API with uvicorn, in one process or several on one port.

uvloop and httptools (pinned dependencies) are named explicitly rather than left to uvicorn's
"auto", which quietly falls back to the stock asyncio loop and the pure-Python h11 parser when
they are missing (those two were about half of the API's CPU per lookup). Access logs are off.
With embedded chDB (``analytics.client.sink_in_api``) the process also runs the analytics sink.

Several processes (``SCORESTREAM_API_PROCESSES`` or ``--processes N``) are uvicorn workers on one
listening socket, each building its app from the environment (:func:`app_of_environment`);
uvicorn's supervisor starts a new one when one dies. They share the host's view store of each
model namespace (:mod:`api.view_store`): one follows the topics, the others read what it writes.
chDB allows one process per directory, so several processes need the sink elsewhere (a ClickHouse
server, or ``SCORESTREAM_SINK_IN_API=false`` with ``scorestream sink``).
"""

from __future__ import annotations

import os
from typing import Any

import uvicorn
from fastapi import FastAPI

from analytics.client import sink_in_api
from api.app import create_api
from schemas.settings import Settings
from sink.service import Sink


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.api_host,
        "port": settings.api_port,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": settings.log_level.lower(),
        "access_log": False,
    }


def app_of_environment() -> FastAPI:
    """The app of one of several API processes (a uvicorn worker builds its own from the
    ``SCORESTREAM_*`` environment; the analytics sink never runs in it)."""
    return create_api(Settings())


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
    uvicorn.run("api.server:app_of_environment", factory=True, workers=processes, **_uvicorn_options(settings))
