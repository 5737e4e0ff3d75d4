"""The model file's ``interests`` section: which events and page paths build a contact's interest
profile (decayed affinity per product category, brand and product), how fast it decays and how
much of it is kept.

::

    interests:
      half_life: 30d
      top: 10                    # affinities shown per dimension (and on the view)
      not_bought: 5              # products seen but not bought, shown
      events:                    # points per track event name (Segment e-commerce spec)
        Product Viewed: 1
        Product Added: 3
        Order Completed: 5       # per product in ``products``
      paths:                     # page paths -> a category (glob: * and ?; first match wins)
        - {path: "/shop/shoes*", category: shoes, points: 1}
      bought: [Order Completed]  # events whose products count as bought (revenue 0 too)
      cart: [Product Added, Checkout Started]   # events that put products in the cart

A model without the section keeps no interests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from scorestream.errors import ModelError
from scorestream.rules.common import parse_duration_ms, parse_number, str_set

DIMENSIONS = ("category", "brand", "product")
"""The profile's dimensions, in the order they are shown."""

DEFAULT_EVENTS: Mapping[str, float] = {"Product Viewed": 1.0, "Product Added": 3.0, "Order Completed": 5.0}
DEFAULT_BOUGHT = frozenset({"Order Completed"})
DEFAULT_CART = frozenset({"Product Added", "Checkout Started"})
MAX_TOP = 100
_KEYS = {"half_life", "top", "not_bought", "events", "paths", "bought", "cart", "keep", "max_entries"}
DEFAULT_MAX_ENTRIES = 64
MAX_MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class PathRule:
    """Page views whose path matches ``pattern`` (a glob) count ``points`` for ``category``."""

    pattern: str
    category: str
    points: float
    regex: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class InterestRules:
    """The parsed ``interests`` section.

    ``keep``: affinities kept per dimension in a contact's folded profile (a bound on state; the
    ``keep`` largest, at least four times ``top``), see :mod:`scorestream.interests`.
    ``max_entries``: interest events kept one by one before the oldest fold into the base (the
    profile is exact in any order and batching while a contact has no more).
    """

    half_life_ms: int
    top: int
    not_bought: int
    keep: int
    events: Mapping[str, float]
    paths: tuple[PathRule, ...]
    bought: frozenset[str]
    cart: frozenset[str]
    max_entries: int = DEFAULT_MAX_ENTRIES

    @classmethod
    def parse(cls, raw: object) -> InterestRules | None:
        """The section, or None when the model has none; a :class:`ModelError` names a bad field."""
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise ModelError("interests: expected a mapping")
        unknown = set(raw) - _KEYS
        if unknown:
            raise ModelError(f"interests: unknown key(s) {sorted(unknown)}; one of {', '.join(sorted(_KEYS))}")
        top = _count(raw.get("top", 10), "interests.top")
        not_bought = _count(raw.get("not_bought", 5), "interests.not_bought")
        keep = _count(raw.get("keep", max(4 * top, 40)), "interests.keep")
        if keep < top:
            raise ModelError(f"interests.keep: must be >= interests.top ({top}), got {keep}")
        return cls(
            half_life_ms=parse_duration_ms(raw.get("half_life", "30d"), "interests.half_life"),
            top=top,
            not_bought=not_bought,
            keep=keep,
            events=_events(raw.get("events")),
            paths=tuple(_path(p, i) for i, p in enumerate(_list(raw.get("paths"), "interests.paths"))),
            bought=str_set(raw.get("bought"), "interests.bought") or DEFAULT_BOUGHT,
            cart=str_set(raw.get("cart"), "interests.cart") or DEFAULT_CART,
            max_entries=_max_entries(raw.get("max_entries", DEFAULT_MAX_ENTRIES)),
        )

    def category_of_path(self, path: str | None) -> PathRule | None:
        """The first path rule matching ``path``."""
        if not path:
            return None
        for rule in self.paths:
            if rule.regex.search(path):
                return rule
        return None


def _count(raw: object, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_TOP * 10:
        raise ModelError(f"{where}: expected a whole number from 1 to {MAX_TOP * 10}, got {raw!r}")
    return raw


def _max_entries(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 8 <= raw <= MAX_MAX_ENTRIES:
        raise ModelError(f"interests.max_entries: expected a whole number from 8 to {MAX_MAX_ENTRIES}, got {raw!r}")
    return raw


def _list(raw: object, where: str) -> list[object]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ModelError(f"{where}: expected a list")
    return raw


def _events(raw: object) -> Mapping[str, float]:
    if raw is None:
        return dict(DEFAULT_EVENTS)
    if not isinstance(raw, Mapping) or not raw:
        raise ModelError("interests.events: expected a mapping of event name -> points")
    out: dict[str, float] = {}
    for name, points in raw.items():
        if not isinstance(name, str) or not name:
            raise ModelError(f"interests.events: an event name must be a non-empty string, got {name!r}")
        out[name] = parse_number(points, f"interests.events[{name!r}]", minimum=0)
    return out


def _path(raw: object, index: int) -> PathRule:
    where = f"interests.paths[{index}]"
    if not isinstance(raw, Mapping):
        raise ModelError(f"{where}: expected {{path: '/shop/shoes*', category: shoes}}")
    unknown = set(raw) - {"path", "category", "points"}
    if unknown:
        raise ModelError(f"{where}: unknown key(s) {sorted(unknown)}")
    pattern, category = raw.get("path"), raw.get("category")
    if not isinstance(pattern, str) or not pattern:
        raise ModelError(f"{where}.path: expected a glob such as '/shop/shoes*'")
    if not isinstance(category, str) or not category:
        raise ModelError(f"{where}.category: expected a non-empty string")
    points = parse_number(raw.get("points", 1), f"{where}.points", minimum=0)
    return PathRule(pattern, category, points, re.compile(glob_regex(pattern)))


def glob_regex(pattern: str) -> str:
    """A path glob as an anchored regular expression: ``*`` any characters, ``?`` one, the rest
    literal (the same in Python and in ClickHouse's RE2, which the rising report uses)."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return "^" + "".join(parts) + "$"
