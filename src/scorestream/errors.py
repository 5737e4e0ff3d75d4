"""The core's exceptions: one root, so a caller can catch everything the core raises on purpose.

::

    ScorestreamError
    └── ModelError (also a ValueError): the model file is not valid; the message names the field

The core raises nothing else on purpose: an invalid argument from a caller is a ``ValueError``
(``make_trigger``, ``segment_of``), a broken invariant an ``AssertionError``.
"""

from __future__ import annotations


class ScorestreamError(Exception):
    """The root of every exception the core defines."""


class ModelError(ScorestreamError, ValueError):
    """The model file is not valid; the message names the offending field.

    A ``ValueError`` too: adapters that validate input catch that.
    """
