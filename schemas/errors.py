"""The wire contracts' exceptions: one root for every exception class ``schemas`` defines.

::

    ContractError
    ├── InvalidMessage (also a ValueError): a message that is not a valid event (schemas.events)
    └── UnsupportedVersion (also a ValueError): a stored state or link written by a newer version
        (schemas.state)

Each keeps the built-in base it always had: callers catch ``ValueError``. What a bad record gets
in each process is the table in :mod:`streams.deadletter`.
"""

from __future__ import annotations


class ContractError(Exception):
    """The root of every exception the wire contracts define."""
