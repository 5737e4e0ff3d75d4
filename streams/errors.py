"""The worker's exceptions: one root for every exception class ``streams`` defines.

::

    WorkerError
    ├── Unprocessable (also a ValueError): a record that decodes but its stage cannot apply
    │   (streams.deadletter)
    └── TooLarge (also a ValueError): a value that cannot be written as one Kafka record
        (streams.transport)

Not errors, and so not under the root: ``streams.worker.WrongModel`` and ``SlotTaken`` are
``SystemExit`` subclasses that end the worker at start-up with their message (a root deriving from
``Exception`` would put them within reach of ``except Exception``).

What a bad record gets is the table in :mod:`streams.deadletter`.
"""

from __future__ import annotations


class WorkerError(Exception):
    """The root of every exception the worker defines."""
