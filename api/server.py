"""``scorestream api``: serve the API with uvicorn (one process; scale with more processes).

uvloop and httptools (pinned dependencies) are named explicitly rather than left to uvicorn's
"auto", which quietly falls back to the stock asyncio loop and the pure-Python h11 parser when
they are missing (those two were about half of the API's CPU per lookup). Access logs are off.
With embedded chDB (``analytics.client.sink_in_api``) the process also runs the analytics sink.
"""

from __future__ import annotations

import uvicorn

from analytics.client import sink_in_api
from api.app import create_api
from schemas.settings import Settings
from sink.service import Sink


def serve(settings: Settings) -> None:
    sink = Sink(settings) if sink_in_api(settings) else None
    uvicorn.run(
        create_api(settings, sink=sink),
        host=settings.api_host,
        port=settings.api_port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        access_log=False,
    )
