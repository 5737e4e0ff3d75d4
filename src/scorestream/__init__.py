"""scorestream domain core.

Pure Python: no I/O, no clock, no framework import. Time always comes from the events or from an
explicit ``now_ms`` argument, so the same fold serves live scoring, replay and tests.
"""

from scorestream.contact import absorb, apply_events
from scorestream.errors import ModelError, ScorestreamError
from scorestream.events import CHANNELS, KINDS, Event
from scorestream.identity import IdentityLink, resolve
from scorestream.rules.model import Model
from scorestream.scoring import EngagementView, FitView, engagement_at, fit_of, grade_of
from scorestream.state import ContactState, Hit, new_contact

__all__ = [
    "CHANNELS",
    "KINDS",
    "ContactState",
    "EngagementView",
    "Event",
    "FitView",
    "Hit",
    "IdentityLink",
    "Model",
    "ModelError",
    "ScorestreamError",
    "absorb",
    "apply_events",
    "engagement_at",
    "fit_of",
    "grade_of",
    "new_contact",
    "resolve",
]
