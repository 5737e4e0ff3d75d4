"""(being built) What the console shows live: the pipeline's pulse (events/s, dead letters,
consumer lag) and the feed of triggers, for the overview's server-sent events."""

from __future__ import annotations

from schemas.settings import Settings


class Live:
    """Started with the API process (lazily: nothing runs until a console asks)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def stop(self) -> None:
        """Stop what runs (the API's lifespan calls it)."""
