"""A contact's interest profile: decayed affinity per product category, brand and product, and the
products seen but not bought (the model file's ``interests`` section, :mod:`scorestream.rules.interests`).

Affinity is engagement's arithmetic on other keys: an event worth ``p`` points for a key at
``t_i`` adds ``p 2^(-(t - t_i)/H)`` at ``t``, so the affinity of a key at ``t`` is
``sum_i p_i 2^(-(t - t_i)/H)`` (exact decay, on event time). The rule this module keeps, as
:mod:`scorestream.contact` does for hits: **the profile depends on the set of events, not on their
order, batching or duplicates.** The newest events are kept one by one (:class:`Entry`, sorted by
``(timestamp, messageId)``, at most the section's ``max_entries``, 64 by default); older ones fold into a per-key base decayed to
one instant, and their message ids are remembered (the newest ``MAX_FOLDED_IDS``, at most the
model's ``dedupe_memory``) so that a
duplicate counts once even when the event matched no engagement rule. Sums are taken in one fixed
order (the base, then the entries), so any order of the same events gives the same numbers; where
the fold happened (which depends on batching) changes only the last bits of a float, and which
entries are still kept one by one (so a state's bytes). Maps are kept in key order.

Bounds: the folded base keeps the ``keep`` largest affinities per dimension (ranked at the base's
instant, ties by key; every base value shares that instant, so the ranking is the one at any later
instant too). A key that falls out loses its folded past (less than every kept key's); one that
never exceeded the bound is exact. ``bought`` keeps the ``MAX_BOUGHT`` products with the latest
orders and ``carted`` the ``keep`` latest carts: each is a "latest stamp per product" map cut to
its newest entries, a function of the set of events whatever their order.

Pure: no clock, no I/O; the fold (:mod:`scorestream.contact`) calls :func:`fold_interests` and
:func:`absorb_interests`, the view (:mod:`scorestream.view`) :func:`interests_view`, the API
:func:`profile_at`, the trigger of an abandoned cart :func:`cart_payload`.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from scorestream.events import Event
from scorestream.rules.consent import ConsentRules
from scorestream.rules.interests import DEFAULT_MAX_ENTRIES, DIMENSIONS, InterestRules

MAX_ENTRIES = DEFAULT_MAX_ENTRIES
"""Interest events kept one by one by default (``interests.max_entries``); past the bound the
oldest fold down to ``bound - bound // 8``."""
MAX_FOLDED_IDS = 128
"""Message ids of folded interest events remembered (at most the model's ``dedupe_memory``)."""
MAX_BOUGHT = 256
"""Products remembered as bought (those with the latest orders)."""
MAX_PRODUCTS = 64
"""Products read from one event's ``products`` list."""
MAX_KEY = 128
"""Longest category, brand, product id or name kept, in characters (longer ones are cut)."""
CART_PAYLOAD_TOP = 3
CART_PAYLOAD_PRODUCTS = 10

PREFIX = {"category": "c", "brand": "b", "product": "p"}
"""A key of the profile is ``<prefix>:<value>``: one flat mapping for the three dimensions."""
_DIMENSION_OF = {v: k for k, v in PREFIX.items()}


Gate = Callable[[int], bool] | None
"""Whether the contact's consent at an instant allows its interest events to count (None: always)."""


def interest_gate(log: list[tuple[int, tuple[str, ...]]], consent: ConsentRules | None) -> Gate:
    """The contact's consent timeline (``ContactState.consent_log``) as a gate: an interest event
    counts when the consent in effect at its instant (the latest entry at or before it, else the
    model's ``default``) allows engagement scoring, as for hits (``scorestream.state.consent_denied``):
    a late withdrawal takes the events after it out of the profile, a late grant puts them back.
    None (no check) for a model without a ``consent`` section."""
    if consent is None:
        return None
    default = consent.default_granted
    if not log:
        return None if default else _never
    times = [entry[0] for entry in log]
    verdicts = [consent.allows(entry[1]) for entry in log]
    if all(verdicts) and default:
        return None

    def allowed(ts: int) -> bool:
        i = bisect_right(times, ts)
        return verdicts[i - 1] if i else default

    return allowed


def _never(ts: int) -> bool:
    return False


class Entry(NamedTuple):
    """One interest event: its time, message id and the points it gives each key."""

    ts: int
    mid: str
    points: tuple[tuple[str, float], ...]


@dataclass(slots=True)
class Interests:
    """A contact's interest profile (part of :class:`scorestream.state.ContactState`)."""

    entries: list[Entry] = field(default_factory=list)
    # key -> affinity of the folded entries at ``base_ms``
    base: dict[str, float] = field(default_factory=dict)
    base_ms: int = 0
    folded_ids: list[str] = field(default_factory=list)
    # product id -> (timestamp, name) of the latest event naming it
    names: dict[str, tuple[int, str]] = field(default_factory=dict)
    # product id -> the latest order containing it (any revenue, 0 included)
    bought: dict[str, int] = field(default_factory=dict)
    # product id -> the latest event putting it in the cart
    carted: dict[str, int] = field(default_factory=dict)

    @property
    def ref_ms(self) -> int:
        """The newest instant of the profile: its latest entry, or the base's instant."""
        return max(self.base_ms, self.entries[-1].ts if self.entries else 0)


# --- reading events --------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        value = str(int(value)) if float(value).is_integer() else str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value[:MAX_KEY] if value else None


def product_id(item: Mapping[str, Any]) -> str | None:
    """A product's id: ``product_id``, else ``sku``, else ``id`` (Segment's e-commerce spec)."""
    for name in ("product_id", "sku", "id"):
        found = _text(item.get(name))
        if found is not None:
            return found
    return None


def products_of(event: Event) -> list[Mapping[str, Any]]:
    """The products an event is about: its ``products`` list (an order, a checkout), else itself."""
    items = event.properties.get("products")
    if isinstance(items, list):
        return [i for i in items[:MAX_PRODUCTS] if isinstance(i, Mapping)]
    return [event.properties]


def _event_points(event: Event, rules: InterestRules) -> dict[str, float]:
    """Points per key an event gives (several products of one event add up)."""
    out: dict[str, float] = {}
    if event.kind == "track" and event.event is not None:
        points = rules.events.get(event.event)
        if not points:
            return out
        for item in products_of(event):
            for dimension, value in (
                ("category", _text(item.get("category"))),
                ("brand", _text(item.get("brand"))),
                ("product", product_id(item)),
            ):
                if value is not None:
                    key = f"{PREFIX[dimension]}:{value}"
                    out[key] = out.get(key, 0.0) + points
    elif event.kind == "page":
        rule = rules.category_of_path(event.path)
        if rule is not None and rule.points:
            out[f"c:{rule.category}"] = rule.points
    return out


def _latest(stamps: dict[str, int], key: str, ts: int) -> None:
    if stamps.get(key, ts - 1) < ts:
        stamps[key] = ts


def _see_products(interests: Interests, event: Event, rules: InterestRules) -> None:
    """Names, orders (whatever the revenue: a free order is bought too) and carts."""
    if event.kind != "track":
        return
    name = event.event
    bought, carted = name in rules.bought, name in rules.cart
    if not (bought or carted or (name is not None and name in rules.events)):
        return
    ts = event.timestamp_ms
    for item in products_of(event):
        pid = product_id(item)
        if pid is None:
            continue
        title = _text(item.get("name"))
        if title is not None:
            current = interests.names.get(pid)
            if current is None or (current[0], current[1]) < (ts, title):
                interests.names[pid] = (ts, title)
        if bought:
            _latest(interests.bought, pid, ts)
        if carted:
            _latest(interests.carted, pid, ts)


# --- folding ----------------------------------------------------------------------------------------


def fold_interests(
    interests: Interests | None,
    events: Iterable[Event],
    rules: InterestRules,
    dedupe_memory: int,
    gate: Gate = None,
) -> Interests | None:
    """``events`` folded into the profile (the input may be reused); None while nothing is known.

    An event counts once by message id (a duplicate of a kept or folded event adds nothing)."""
    seen: set[str] | None = None
    added: list[Entry] = []
    for event in events:
        points = _event_points(event, rules)
        if not points and not (event.kind == "track" and event.event is not None):
            continue
        if interests is None:
            interests = Interests()
        _see_products(interests, event, rules)
        if not points:
            continue
        if seen is None:
            seen = {e.mid for e in interests.entries}
            seen.update(interests.folded_ids)
        if event.message_id in seen:
            continue
        seen.add(event.message_id)
        added.append(Entry(event.timestamp_ms, event.message_id, tuple(sorted(points.items()))))
    if interests is None:
        return None
    if added:
        interests.entries.extend(added)
        interests.entries.sort()
    _normalise(interests, rules, dedupe_memory, gate)
    return interests if _known(interests) else None


def _known(interests: Interests) -> bool:
    return bool(interests.entries or interests.base or interests.bought or interests.carted or interests.names)


def absorb_interests(
    target: Interests | None,
    source: Interests | None,
    rules: InterestRules,
    dedupe_memory: int,
    again: bool,
    gate: Gate = None,
) -> Interests | None:
    """``source``'s profile merged into ``target``'s: its entries re-enter (an event both hold counts
    once), its folded base is added unless ``again`` (that contact was absorbed before), its orders,
    carts and names count by their latest stamps."""
    if source is None:
        return target
    if target is None:
        target = Interests()
    seen = {e.mid for e in target.entries}
    seen.update(target.folded_ids)
    fresh = [e for e in source.entries if e.mid not in seen]
    target.entries.extend(fresh)
    target.entries.sort()
    if source.base and not again:
        ref = max(target.base_ms, source.base_ms)
        half_life = rules.half_life_ms
        merged = {k: _decay(v, target.base_ms, ref, half_life) for k, v in target.base.items()}
        for k, v in source.base.items():
            merged[k] = merged.get(k, 0.0) + _decay(v, source.base_ms, ref, half_life)
        target.base, target.base_ms = merged, ref
    for mid in source.folded_ids:
        if mid not in seen:
            target.folded_ids.append(mid)
    for pid, (ts, title) in source.names.items():
        current = target.names.get(pid)
        if current is None or (current[0], current[1]) < (ts, title):
            target.names[pid] = (ts, title)
    for pid, ts in source.bought.items():
        _latest(target.bought, pid, ts)
    for pid, ts in source.carted.items():
        _latest(target.carted, pid, ts)
    _normalise(target, rules, dedupe_memory, gate)
    return target


def _decay(points: float, from_ms: int, to_ms: int, half_life_ms: int) -> float:
    return points * math.pow(2.0, -(to_ms - from_ms) / half_life_ms)


def _normalise(interests: Interests, rules: InterestRules, dedupe_memory: int, gate: Gate = None) -> None:
    """Fold the oldest entries past ``rules.max_entries`` and keep every map within its bound (an entry
    the consent ``gate`` refuses then is settled: it folds as nothing)."""
    entries = interests.entries
    folded = False
    bound = rules.max_entries
    if len(entries) > bound:
        overflow = len(entries) - bound + bound // 8
        ref = max(interests.base_ms, entries[overflow - 1].ts)
        half_life = rules.half_life_ms
        terms: dict[str, list[float]] = {
            k: [_decay(v, interests.base_ms, ref, half_life)] for k, v in interests.base.items()
        }
        for entry in entries[:overflow]:
            interests.folded_ids.append(entry.mid)
            if gate is not None and not gate(entry.ts):
                continue
            for key, points in entry.points:
                terms.setdefault(key, []).append(_decay(points, entry.ts, ref, half_life))
        interests.base = {k: math.fsum(v) for k, v in terms.items()}
        interests.base_ms = ref
        del entries[:overflow]
        memory = min(dedupe_memory, MAX_FOLDED_IDS)
        if len(interests.folded_ids) > memory:
            del interests.folded_ids[: len(interests.folded_ids) - memory]
        _bound_base(interests, rules.keep)
        folded = True
    _cut_latest(interests.bought, MAX_BOUGHT)
    _cut_latest(interests.carted, rules.keep)
    if folded or len(interests.names) > 2 * bound + 3 * rules.keep:
        # names are for display: kept for the products the profile can still show
        wanted = {k[2:] for k in interests.base if k.startswith("p:")}
        wanted.update(k[2:] for e in entries for k, _ in e.points if k.startswith("p:"))
        wanted.update(interests.carted)
        interests.names = {k: v for k, v in interests.names.items() if k in wanted}
    _sort_keys(interests)


def _sort_keys(interests: Interests) -> None:
    """The maps in key order: their insertion order follows arrival, and the state is written
    byte for byte alike whatever the order and batching of the same events (a recovered worker's
    changelog record equals the live one's)."""
    if len(interests.base) > 1:
        interests.base = dict(sorted(interests.base.items()))
    if len(interests.names) > 1:
        interests.names = dict(sorted(interests.names.items()))
    if len(interests.bought) > 1:
        interests.bought = dict(sorted(interests.bought.items()))
    if len(interests.carted) > 1:
        interests.carted = dict(sorted(interests.carted.items()))


def _bound_base(interests: Interests, keep: int) -> None:
    """The ``keep`` largest base affinities per dimension (ties by key)."""
    by_dimension: dict[str, list[str]] = {}
    for key in interests.base:
        by_dimension.setdefault(key[:1], []).append(key)
    for keys in by_dimension.values():
        if len(keys) > keep:
            keys.sort(key=lambda k: (-interests.base[k], k))
            for gone in keys[keep:]:
                del interests.base[gone]


def _cut_latest(stamps: dict[str, int], limit: int) -> None:
    if len(stamps) > limit:
        ranked = sorted(stamps, key=lambda k: (-stamps[k], k))
        for gone in ranked[limit:]:
            del stamps[gone]


# --- reading the profile ---------------------------------------------------------------------------


def affinities(
    interests: Interests, rules: InterestRules, at_ms: int, until_ms: int | None = None, gate: Gate = None
) -> tuple[int, dict[str, float]]:
    """``(instant, affinities)``: every key's affinity at ``at_ms``, or at the profile's newest
    instant when later (a profile ahead of the reader's clock is read as at that instant).
    ``until_ms``: only the entries up to that instant count (the base always does); ``gate``: only
    the entries the contact's consent allows."""
    half_life = rules.half_life_ms
    entries = interests.entries if until_ms is None else [e for e in interests.entries if e.ts <= until_ms]
    ref = max(at_ms, interests.base_ms, entries[-1].ts if entries else 0)
    # summed in one fixed order (the base, then the entries in (timestamp, messageId) order), so
    # the same profile gives the same floats whatever order its events came in
    totals = {k: _decay(v, interests.base_ms, ref, half_life) for k, v in interests.base.items()}
    get = totals.get
    for entry in entries:
        if gate is not None and not gate(entry.ts):
            continue
        factor = math.pow(2.0, -(ref - entry.ts) / half_life)  # _decay's arithmetic, once an entry
        for key, points in entry.points:
            totals[key] = get(key, 0.0) + points * factor
    return ref, {k: v for k, v in totals.items() if v > 0}


class Affinity(NamedTuple):
    """A key of the profile and its affinity (``name``: a product's display name, when known)."""

    key: str
    affinity: float
    name: str | None = None


@dataclass(slots=True)
class InterestsView:
    """What a reader needs of the profile: the top affinities per dimension and the top products
    seen but not bought, decayed to ``at_ms`` (the profile's newest instant)."""

    at_ms: int
    categories: list[Affinity] = field(default_factory=list)
    brands: list[Affinity] = field(default_factory=list)
    products: list[Affinity] = field(default_factory=list)
    not_bought: list[Affinity] = field(default_factory=list)


def _ranked(found: list[tuple[str, float]], limit: int, names: Mapping[str, tuple[int, str]] | None) -> list[Affinity]:
    """The ``limit`` largest ``(key, affinity)``, ties by key (``names``: products' display names)."""
    top = heapq.nsmallest(limit, found, key=lambda kv: (-kv[1], kv[0]))
    if names is None:
        return [Affinity(key, value) for key, value in top]
    return [Affinity(key, value, named[1] if (named := names.get(key)) is not None else None) for key, value in top]


def _view_at(
    interests: Interests, rules: InterestRules, at_ms: int, until_ms: int | None = None, gate: Gate = None
) -> InterestsView:
    ref, values = affinities(interests, rules, at_ms, until_ms, gate)
    split: dict[str, list[tuple[str, float]]] = {"c": [], "b": [], "p": []}
    for key, value in values.items():
        split[key[0]].append((key[2:], value))
    bought = interests.bought
    names = interests.names
    return InterestsView(
        at_ms=ref,
        categories=_ranked(split["c"], rules.top, None),
        brands=_ranked(split["b"], rules.top, None),
        products=_ranked(split["p"], rules.top, names),
        not_bought=_ranked([kv for kv in split["p"] if kv[0] not in bought], rules.not_bought, names),
    )


def interests_view(interests: Interests | None, rules: InterestRules | None, gate: Gate = None) -> InterestsView | None:
    """The profile's view at its newest instant (the worker writes it on the contact's view)."""
    if interests is None or rules is None:
        return None
    return _view_at(interests, rules, interests.ref_ms, gate=gate)


def profile_at(view: InterestsView, rules: InterestRules, now_ms: int) -> InterestsView:
    """The view decayed to ``now_ms`` (no earlier than its instant). Every affinity of a view shares
    its instant, so decay scales them alike and the ranking stays."""
    at = max(now_ms, view.at_ms)
    factor = math.pow(2.0, -(at - view.at_ms) / rules.half_life_ms)

    def scaled(items: list[Affinity]) -> list[Affinity]:
        return [Affinity(a.key, a.affinity * factor, a.name) for a in items]

    return InterestsView(
        at, scaled(view.categories), scaled(view.brands), scaled(view.products), scaled(view.not_bought)
    )


def cart_payload(interests: Interests | None, rules: InterestRules, at_ms: int, gate: Gate = None) -> dict[str, Any]:
    """What a ``cart.abandoned`` trigger carries: the top interests at ``at_ms`` (the events up to
    then), and the cart's products not bought (put in the cart up to ``at_ms`` and not ordered
    since; the latest first)."""
    if interests is None:
        return {"categories": [], "brands": [], "products": [], "cart_not_bought": []}
    view = _view_at(interests, rules, at_ms, until_ms=at_ms, gate=gate)
    top = CART_PAYLOAD_TOP

    def keyed(items: list[Affinity]) -> list[dict[str, Any]]:
        return [{"key": a.key, "affinity": round(a.affinity, 6)} for a in items[:top]]

    cart = [(ts, pid) for pid, ts in interests.carted.items() if ts <= at_ms and interests.bought.get(pid, ts - 1) < ts]
    cart.sort(key=lambda e: (-e[0], e[1]))
    return {
        "categories": keyed(view.categories),
        "brands": keyed(view.brands),
        "products": [{"id": a.key, "name": a.name, "affinity": round(a.affinity, 6)} for a in view.products[:top]],
        "cart_not_bought": [
            {"id": pid, "name": n[1] if (n := interests.names.get(pid)) is not None else None}
            for _, pid in cart[:CART_PAYLOAD_PRODUCTS]
        ],
    }


def dimension_of(key: str) -> str:
    """``category``, ``brand`` or ``product`` for a flat key."""
    return _DIMENSION_OF[key[:1]]


__all__ = [
    "DIMENSIONS",
    "Affinity",
    "Entry",
    "Interests",
    "InterestsView",
    "absorb_interests",
    "affinities",
    "cart_payload",
    "fold_interests",
    "interest_gate",
    "interests_view",
    "profile_at",
]
