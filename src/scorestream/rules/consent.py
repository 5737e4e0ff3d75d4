"""Consent: the categories of Segment's consent object (``context.consent.categoryPreferences``)
each kind of processing needs (the model file's ``consent`` section).

::

    consent:
      engagement: [analytics, marketing]   # engagement scoring needs any of these granted
      default: granted                     # before any consent is known: granted | denied

A category counts as granted only when the consent object says ``true`` for it: a category the
object leaves out is not granted. Without a ``consent`` section every event is scored, as before.
How the decision is taken in event time (a contact's consent timeline) is
:func:`scorestream.state.consent_denied`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scorestream.errors import ModelError
from scorestream.rules.common import str_set

KEYS = ("engagement", "default")
DEFAULTS = ("granted", "denied")


@dataclass(frozen=True, slots=True)
class ConsentRules:
    """What the model file's ``consent`` section says: ``engagement`` (the categories of which one
    granted allows engagement scoring) and ``default_granted`` (the decision before any consent
    object is known for a contact)."""

    engagement: frozenset[str]
    default_granted: bool = True

    @classmethod
    def parse(cls, raw: object) -> ConsentRules | None:
        """The ``consent`` section, or None when the model has none (``consent:`` left empty too)."""
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise ModelError("'consent' must be a mapping such as {engagement: [analytics], default: granted}")
        unknown = set(raw) - set(KEYS)
        if unknown:
            raise ModelError(f"consent: unknown key(s) {sorted(unknown)} (known: {list(KEYS)})")
        engagement = str_set(raw.get("engagement"), "consent.engagement")
        if not engagement:
            raise ModelError("consent.engagement: name at least one consent category, e.g. [analytics]")
        default = raw.get("default", "granted")
        if default not in DEFAULTS:
            raise ModelError(f"consent.default: expected one of {list(DEFAULTS)}, got {default!r}")
        return cls(engagement=frozenset(engagement), default_granted=default == "granted")

    def allows(self, granted: Iterable[str]) -> bool:
        """Engagement scoring is allowed by a consent that grants ``granted`` categories."""
        return not self.engagement.isdisjoint(granted)


def granted_categories(preferences: Mapping[str, bool]) -> tuple[str, ...]:
    """The categories a consent object grants (``true``), sorted: what a contact's timeline keeps."""
    return tuple(sorted(k for k, v in preferences.items() if v is True))
