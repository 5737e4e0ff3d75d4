"""The analytics package's exceptions: one root for every exception class ``analytics`` defines.

::

    AnalyticsError
    ├── Unreadable (also a ValueError): a record the sink cannot read (analytics.rows)
    ├── InvalidParameter (also a ValueError): a report parameter it cannot use (analytics.reports)
    └── MigrationError (also a RuntimeError): the schema cannot be brought up to date
        (analytics.migrations)
"""

from __future__ import annotations


class AnalyticsError(Exception):
    """The root of every exception the analytics package defines."""
