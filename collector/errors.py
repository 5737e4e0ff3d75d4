"""The HTTP collector's exceptions: one root for every exception class ``collector`` defines.

::

    CollectorError
    ├── Refusal: the whole request is refused with a status and Segment's error body
    └── ClientGone: the client disconnected before its body was read

Both live in :mod:`collector.service`. What a bad request gets is the table in :mod:`streams.deadletter`.
"""

from __future__ import annotations


class CollectorError(Exception):
    """The root of every exception the collector defines."""
