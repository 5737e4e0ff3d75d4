"""The webhook dispatcher's exceptions: one root for every exception class ``dispatcher`` defines.

::

    DispatcherError
    ├── Unhandled (also a ValueError): a trigger or command record it cannot read (dispatcher.service)
    ├── Refused: a destination that may not be connected to (dispatcher.sender)
    └── _Closed: a reused connection failed before any byte of an answer (dispatcher.sender, private)

What a bad record gets is the table in :mod:`streams.deadletter`.
"""

from __future__ import annotations


class DispatcherError(Exception):
    """The root of every exception the dispatcher defines."""
