"""The API's in-memory replicas of Kafka topics: their life cycle and how they report a failure.

The contacts replica, the accounts replica, the population reader and the webhook stores each
follow their topics from the beginning, for ever, with :func:`kafka_io.reader.follow` (which
states the per-record policy: a record ``apply`` fails on is logged with its coordinates, counted
and skipped; the API has no producer to dead-letter it). A reader whose task dies anyway reports it
in :attr:`Following.failure`, and ``/readyz`` answers 503 with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


def task_failure(task: asyncio.Task[Any] | None) -> str | None:
    """Why a follower's task (which runs until cancelled) is no longer running: its name and
    exception, or None while it runs (or after it was cancelled by ``stop``)."""
    if task is None or not task.done() or task.cancelled():
        return None
    exc = task.exception()
    if exc is None:
        return f"{task.get_name()}: stopped"
    return f"{task.get_name()}: {type(exc).__name__}: {exc}"


class Following:
    """``start``/``stop`` for a reader whose :meth:`follow` runs until cancelled (a mixin:
    subclasses are dataclasses with a ``_task`` field)."""

    _task: asyncio.Task[None] | None

    @property
    def failure(self) -> str | None:
        """Set if the reader's task died (``/readyz`` then answers 503 with it)."""
        return task_failure(self._task)

    async def follow(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self._task = asyncio.create_task(self.follow(), name=type(self).__name__)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
