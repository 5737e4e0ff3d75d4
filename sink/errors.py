"""The analytics sink's exceptions: one root for every exception class ``sink`` defines.

::

    SinkError
    └── _ClickHouseDown: a ClickHouse call failed where the sink cannot go on (sink.service, private)

A record the sink cannot read is an :class:`analytics.rows.Unreadable` (an
:class:`analytics.errors.AnalyticsError`). What a bad record gets is the table in
:mod:`streams.deadletter`.
"""

from __future__ import annotations


class SinkError(Exception):
    """The root of every exception the sink defines."""
