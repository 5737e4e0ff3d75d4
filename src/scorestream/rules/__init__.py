"""The rules floor: what the model file says, parsed and immutable.

``common`` (predicates, durations, numbers, bands) at the bottom; a module per section of the
model file (``engagement``, ``fit``, ``lifecycle``, ``value``, ``accounts``); ``model`` assembles
them into :class:`scorestream.rules.model.Model`. Nothing here imports the state, the walk, the
triggers or the fold: only the standard library, :mod:`scorestream.events` and
:mod:`scorestream.errors`.
"""
