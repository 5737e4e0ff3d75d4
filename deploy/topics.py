"""``scorestream topics``: create every topic scorestream uses (``kafka_io.topics``)."""

from __future__ import annotations

import asyncio
import logging

from kafka_io.topics import ensure_topics
from schemas.settings import Settings

log = logging.getLogger(__name__)


def main(settings: Settings) -> None:
    created = asyncio.run(ensure_topics(settings))
    log.info("topics ready (%d created)", len(created))
