"""``scorestream api``: serve the API with uvicorn (one process; scale with more processes)."""

from __future__ import annotations

import uvicorn

from api.app import create_api
from schemas.settings import Settings


def serve(settings: Settings) -> None:
    uvicorn.run(
        create_api(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )
