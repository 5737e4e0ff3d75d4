"""Ctrl-C and SIGTERM for the commands that supervise processes (``run``, ``shadow``)."""

from __future__ import annotations

import signal


class StopOnSignal:
    """SIGINT and SIGTERM set :attr:`stopping`; the supervising loop polls it and stops its
    processes itself (instead of being interrupted halfway)."""

    def __init__(self) -> None:
        self.stopping = False
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGTERM, self.stop)

    def stop(self, *_: object) -> None:
        self.stopping = True
