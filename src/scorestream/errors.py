"""The core's exceptions: one root for every exception class the core defines.

::

    ScorestreamError
    └── ModelError (also a ValueError): the model file is not valid; the message names the field

The core defines no other exception class; elsewhere it raises built-in ones. ``ValueError``: an
argument it cannot take (an unknown trigger type, R or F scores outside 1..5, a purchase ledger
kept in another base currency or by a newer version, too few customers to fit CLV: the population
fit catches its own and keeps the previous fit). ``ArithmeticError``: a numerical method that
does not converge (``clv``). ``AssertionError``: a broken invariant.
"""

from __future__ import annotations


class ScorestreamError(Exception):
    """The root of every exception the core defines."""


class ModelError(ScorestreamError, ValueError):
    """The model file is not valid; the message names the offending field.

    A ``ValueError`` too: adapters that validate input catch that.
    """
