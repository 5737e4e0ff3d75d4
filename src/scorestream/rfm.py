"""Customer value: a per-contact purchase ledger, RFM facts, population quintile scores and RFM segments.

The ledger rule: **the state depends on the set of messages, not on their order or how often they
arrive.** Every recognised message becomes one record; records are joined by a deterministic
minimum, and everything else (net revenue, refunds, facts) is derived from the records at read
time. So, within the bounds below, ``apply_purchase_events`` is commutative, associative and
idempotent.

Purchases
    ``track`` events named in ``ValueConfig.order_events`` (``Order Completed``) from any channel.
    Order identity: ``properties.order_id``, else ``checkout_id``, else the message id. Copies of
    one order (a web order re-sent by the store system, a retried producer) count once: the copy
    with the smallest ``(timestamp, message id)`` wins (then the rest of the record, so even
    conflicting copies with one message id resolve the same way). Amount: ``total``, else
    ``revenue``, else the sum of ``products[].price * quantity`` (quantity defaults to 1), else 0;
    a negative amount counts as 0. ``currency`` defaults to ``ValueConfig.base_currency``.
Refunds
    ``track`` events named in ``ValueConfig.refund_events`` (``Order Refunded``) with an
    ``order_id`` (or ``checkout_id``; a refund naming no order is ignored). No amount (no
    ``total``, ``revenue`` or ``products``): a full refund. Otherwise a partial refund of that
    amount (its absolute value: some systems send refunds negative). A refund without
    ``currency`` is in the order's currency. Refunds add up, and an order's net value never goes
    below 0. A refund's identity is ``properties.refund_id`` when present, else its message id. A
    refund for an order not (yet) seen is kept and applies as soon as the order arrives.
Currencies
    ``ValueConfig.rates`` maps a currency code to the multiplier into the base currency (a fixed
    table: amounts are converted with the configured rate, not the rate on the day). An order in
    a currency without a rate is kept: it counts for frequency and recency but adds nothing to
    ``monetary`` (it cannot be valued), and it is counted in ``CustomerValue.unconverted``, as is a
    refund in an unknown currency other than its order's (such a refund is not applied).
    The raw amount and the rate used are stored, so the ledger can be revalued later.

Facts are read at an explicit ``as_of_ms`` (no clock): orders and refunds stamped after it are
ignored, as in :func:`scorestream.clv.summarise`. ``frequency`` counts the orders not refunded: a
free order (amount 0) is a purchase that adds 0; a full refund, or partial refunds that leave
nothing, remove an order, for recency too.
Bounds
    A ledger itemises at most ``ValueConfig.max_orders`` orders; the oldest fold, in steps, into
    an exact summary (:class:`FoldedOrders`), so facts, CLV inputs and the walk's purchase
    timeline still count every order. Records stamped at or before the fold that arrive after it
    are taken for copies and ignored; the latest ``max_recent_folded`` folded orders are kept so
    that their copies are recognised and their later refunds still apply. Refunds are bounded
    per order, in all, and while their order is unknown. docs/architecture.md ("Bounds") has the
    answer at each bound.

Population scores
    R, F and M are quintile scores 1-5 (5 = best) against the whole population of customers
    (contacts with ``frequency > 0``). :func:`boundaries` computes the four exact quintile
    boundaries from all current facts; the worker recomputes them periodically (every ``P``) and
    scores contacts against the latest ones. Error bound: exact at each refresh; in between, every
    rank is off by at most ``k / N`` of the population, where ``k`` is the number of contacts whose
    facts changed since the refresh (each changed contact moves any other contact's rank by at most
    one). Refresh delay: at most ``P``. Recency is scored on ``last_order_ms`` (later = better),
    which gives exactly the scores of reversed ``recency_days`` at the same instant but does not
    drift as the clock moves: only purchases and refunds change it, so stale boundaries stay
    meaningful (``boundaries`` over ``recency_days`` would be stale by the time elapsed).
Segments
    A name per (R, F) cell (:func:`rfm_score` names it): the rules and their parsing are the model
    file's ``value`` section, :mod:`scorestream.rules.value`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, NamedTuple, TypeVar

from scorestream.clv import RfmSummary, summarise
from scorestream.events import Event
from scorestream.rules.value import DEFAULT_SEGMENTS, SegmentRule, ValueConfig, currency_code, segment_of

__all__ = [
    "DAY_MS",
    "VALUE_VERSION",
    "CustomerValue",
    "FoldedOrders",
    "NetOrder",
    "Order",
    "Refund",
    "RfmBoundaries",
    "RfmFacts",
    "RfmScore",
    "apply_purchase_events",
    "bound_ledger",
    "boundaries",
    "clv_summary",
    "facts_timeline",
    "fold_cut",
    "fold_ledger",
    "merge_values",
    "net_orders",
    "population_boundaries",
    "rfm_score",
    "score",
    "summary",
]

VALUE_VERSION = 2
DAY_MS = 86_400_000


# --- the ledger --------------------------------------------------------------------------------


class Order(NamedTuple):
    """One purchase: ``amount`` in ``currency``; ``rate`` converts it to base (None: unknown currency)."""

    order_id: str
    ts: int
    mid: str
    channel: str
    currency: str
    amount: float
    rate: float | None

    @property
    def base_amount(self) -> float | None:
        """Gross amount in the base currency, before refunds (None when it cannot be converted)."""
        return None if self.rate is None else self.amount * self.rate


class Refund(NamedTuple):
    """A refund of ``order_id``: ``amount`` None refunds the whole order.

    ``currency`` None means the order's currency; ``rate`` is the configured rate of an explicit
    currency (None when absent or unknown). ``key`` is the refund's identity within the order.
    """

    order_id: str
    key: str
    ts: int
    mid: str
    amount: float | None
    currency: str | None
    rate: float | None


class FoldedOrder(NamedTuple):
    """One of the latest folded orders as it was folded: enough to apply a refund that arrives
    after the fold. ``parts``: the partial refunds it had then (in its currency), ``full``: it
    had a full refund, ``refunds``: their keys (a re-sent copy of one is not applied again)."""

    order_id: str
    ts: int
    mid: str
    currency: str
    amount: float
    rate: float | None
    parts: tuple[float, ...] = ()
    full: bool = False
    refunds: tuple[str, ...] = ()


class FoldedOrders(NamedTuple):
    """The orders folded out of a ledger: exactly what the facts need of them.

    Every order stamped at or before ``until`` = (timestamp, message id) is folded, with the
    refunds it had when it was folded. ``orders`` counts them all (the fold's position),
    ``live`` those still counted (not refunded), ``unvalued`` the live ones without a rate.
    ``monetary`` is the exact sum of the live valued orders' net base values, as a fraction
    ``"numerator/denominator"`` (a float sum would depend on the order of additions).
    ``first_ms``/``last_ms``: the earliest/latest live order. For CLV (valued live orders, one
    transaction per timestamp as :func:`scorestream.clv.summarise` counts them): ``times``
    distinct timestamps, the first one and its exact value, the last one. ``recent``: the latest
    ``ValueConfig.max_recent_folded`` folded orders (:class:`FoldedOrder`), by (timestamp,
    message id): a refund of one of them arriving after the fold still applies, and a re-sent
    copy of one is recognised.
    """

    until: tuple[int, str]
    orders: int = 0
    live: int = 0
    unvalued: int = 0
    monetary: str = "0"
    first_ms: int | None = None
    last_ms: int | None = None
    times: int = 0
    first_time_ms: int | None = None
    first_time_value: str = "0"
    last_time_ms: int | None = None
    recent: tuple[FoldedOrder, ...] = ()


@dataclass(frozen=True, slots=True)
class CustomerValue:
    """A contact's purchase ledger (a table value; versioned by ``v``).

    ``orders`` hold one record per order id, sorted by it; ``refunds`` one per (order id, refund
    key), sorted. ``unconverted`` counts the records whose currency has no configured rate.
    ``folded``: the orders beyond the newest ``ValueConfig.max_orders``, summarised (see
    :class:`FoldedOrders`; version 2, None in version 1 ledgers).
    """

    base_currency: str
    v: int = VALUE_VERSION
    orders: tuple[Order, ...] = ()
    refunds: tuple[Refund, ...] = ()
    unconverted: int = 0
    folded: FoldedOrders | None = None

    @property
    def empty(self) -> bool:
        """No order, itemised or folded."""
        return not self.orders and (self.folded is None or self.folded.orders == 0)


MAX_AMOUNT = 1e15
"""A price, quantity or amount of larger magnitude is not read (as if absent): a product of two
and the sums of them stay finite (``math.fsum`` raises on ``inf - inf`` and on overflow)."""


def _money(raw: object) -> float | None:
    """A finite number of magnitude at most ``MAX_AMOUNT`` from a number or numeric string; None
    otherwise."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            return None
    else:
        return None
    return value if math.isfinite(value) and abs(value) <= MAX_AMOUNT else None


def _products_total(raw: object) -> float | None:
    if not isinstance(raw, list) or not raw:
        return None
    parts = []
    for product in raw:
        if not isinstance(product, Mapping):
            continue
        price = _money(product.get("price"))
        quantity = _money(product.get("quantity"))
        if price is not None:
            parts.append(price * (1.0 if quantity is None else quantity))
    return math.fsum(parts)


def _amount(props: Mapping[str, Any]) -> float | None:
    """``total``, else ``revenue``, else the products' sum; None when none is given."""
    for key in ("total", "revenue"):
        value = _money(props.get(key))
        if value is not None:
            return value
    return _products_total(props.get("products"))


MAX_ORDER_ID = 128
"""Longer order ids are kept as a digest (``"#"`` + 32 hex digits of BLAKE2b): same id, same digest."""


def _bounded_id(raw: str) -> str:
    if len(raw) <= MAX_ORDER_ID:
        return raw
    return "#" + hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _order_id(props: Mapping[str, Any]) -> str | None:
    for key in ("order_id", "checkout_id"):
        raw = props.get(key)
        if isinstance(raw, str) and raw.strip():
            return _bounded_id(raw.strip())
        if isinstance(raw, int) and not isinstance(raw, bool):
            return _bounded_id(str(raw))
    return None


def _order_of(event: Event, config: ValueConfig) -> Order:
    props = event.properties
    currency = currency_code(props.get("currency")) or config.base_currency
    amount = max(_amount(props) or 0.0, 0.0)
    order_id = _order_id(props) or event.message_id
    return Order(order_id, event.timestamp_ms, event.message_id, event.channel, currency, amount, config.rate(currency))


def _refund_of(event: Event, config: ValueConfig) -> Refund | None:
    props = event.properties
    order_id = _order_id(props)
    if order_id is None:
        return None
    amount = _amount(props)
    currency = currency_code(props.get("currency"))
    raw_key = props.get("refund_id")
    key = str(raw_key).strip() if isinstance(raw_key, str | int) and not isinstance(raw_key, bool) else ""
    return Refund(
        order_id,
        _bounded_id(key or event.message_id),
        event.timestamp_ms,
        event.message_id,
        None if amount is None else abs(amount),
        currency,
        None if currency is None else config.rate(currency),
    )


def _rank(record: Order | Refund) -> tuple[Any, ...]:
    """A total order on records (None sorts first), so the winner among copies never depends on arrival."""
    return tuple((0, 0.0) if x is None else (1, x) for x in record)


def _unconverted(orders: Iterable[Order], refunds: Iterable[Refund]) -> int:
    return sum(o.rate is None for o in orders) + sum(r.currency is not None and r.rate is None for r in refunds)


def _key(record: Order | Refund) -> tuple[int, str]:
    return (record.ts, record.mid)


_K = TypeVar("_K")
_R = TypeVar("_R", Order, Refund)


def _ledger_for(value: CustomerValue | None, config: ValueConfig) -> CustomerValue:
    """The contact's ledger (an empty one for a new customer), refused (``ValueError``) when kept in
    another base currency or written by a newer version."""
    if value is None:
        value = CustomerValue(base_currency=config.base_currency)
    if value.v > VALUE_VERSION:
        raise ValueError(f"customer value version {value.v} is newer than this build understands ({VALUE_VERSION})")
    if value.base_currency != config.base_currency:
        raise ValueError(f"ledger is kept in {value.base_currency}, the configuration's base is {config.base_currency}")
    return value


def _keep_first(records: dict[_K, _R], key: _K, record: _R) -> None:
    """Copies of one record resolve to the one with the smallest :func:`_rank`, whatever the order."""
    held = records.get(key)
    if held is None or _rank(record) < _rank(held):
        records[key] = record


def apply_purchase_events(
    value: CustomerValue | None, events: Iterable[Event], config: ValueConfig, fold: bool = True
) -> CustomerValue:
    """Fold purchase and refund events into the contact's ledger and return the new ledger.

    The same events in any order, in any batches, any number of times give an equal ledger, as
    long as each arrives before the ledger folded past it (see "Bounds"); events that are neither
    orders nor refunds are ignored. A ledger kept in another base currency or written by a newer
    version is refused (``ValueError``). ``fold=False`` leaves the folding of the oldest orders to
    the caller (:func:`fold_cut`, :func:`fold_ledger`: the contact settles its journey first).
    """
    value = _ledger_for(value, config)
    until = value.folded.until if value.folded is not None else None
    recent = {fo.order_id for fo in value.folded.recent} if value.folded is not None else set()
    orders: dict[str, Order] | None = None
    refunds: dict[tuple[str, str], Refund] | None = None
    for event in events:
        if event.kind != "track" or event.event is None:
            continue
        if event.event in config.order_events:
            if until is not None and (event.timestamp_ms, event.message_id) <= until:
                continue  # older than the fold: cannot be told from a copy of a folded order
            if orders is None:
                orders = {o.order_id: o for o in value.orders}
            order = _order_of(event, config)
            if order.order_id in recent:
                continue  # a copy of an order folded a moment ago
            _keep_first(orders, order.order_id, order)
        elif event.event in config.refund_events:
            refund = _refund_of(event, config)
            if refund is None:
                continue
            if refunds is None:
                refunds = {(r.order_id, r.key): r for r in value.refunds}
            _keep_first(refunds, (refund.order_id, refund.key), refund)
    if orders is None and refunds is None:
        return value
    new_orders = value.orders if orders is None else tuple(orders[k] for k in sorted(orders))
    new_refunds = value.refunds if refunds is None else tuple(refunds[k] for k in sorted(refunds))
    ledger = replace(value, v=VALUE_VERSION, orders=new_orders, refunds=new_refunds)
    if not fold:  # the caller folds, then bounds the total (fold_ledger or bound_ledger)
        refunds_now = _bounded_refunds(new_orders, new_refunds, value.folded, config, total=False)
        return replace(ledger, refunds=refunds_now, unconverted=_unconverted(new_orders, refunds_now))
    cut = fold_cut(ledger, config)
    return bound_ledger(ledger, config) if cut is None else fold_ledger(ledger, cut, config)


def bound_ledger(value: CustomerValue, config: ValueConfig) -> CustomerValue:
    """The ledger with its refunds within the bounds (:func:`_bounded_refunds`), after any fold:
    bounding after folding makes the result the same however the orders were batched."""
    refunds = _bounded_refunds(value.orders, value.refunds, value.folded, config)
    return replace(value, refunds=refunds, unconverted=_unconverted(value.orders, refunds))


def _bounded_refunds(
    orders: Sequence[Order],
    refunds: Sequence[Refund],
    folded: FoldedOrders | None,
    config: ValueConfig,
    total: bool = True,
) -> tuple[Refund, ...]:
    """At most ``max_refunds_per_order`` refunds per order and ``max_refunds`` in all (the earliest
    by (timestamp, message id, key)) and ``max_pending_refunds`` refunds of orders not in the
    ledger (the latest);
    a refund of no itemised or recently folded order stamped at or before the fold is dropped
    (its order was folded, or is older than anything the ledger still takes), as is one a
    recently folded order had when it was folded. Other refunds of a recently folded order are
    kept like those of an itemised order. A function of the set. ``total`` False leaves the
    bound in all to after a fold (it depends on which orders stay itemised)."""
    itemised = {o.order_id for o in orders}
    until = folded.until if folded is not None else None
    recent = {fo.order_id: fo for fo in folded.recent} if folded is not None else {}
    by_order: dict[str, list[Refund]] = {}
    late: dict[str, list[Refund]] = {}
    pending: list[Refund] = []
    for refund in refunds:
        if refund.order_id in itemised:
            by_order.setdefault(refund.order_id, []).append(refund)
        elif refund.order_id in recent:
            if refund.key not in recent[refund.order_id].refunds:
                late.setdefault(refund.order_id, []).append(refund)
        elif until is None or _key(refund) > until:
            pending.append(refund)
    kept: list[Refund] = []
    for group in by_order.values():
        kept += _earliest_refunds(group, config)
    for order_id, group in late.items():  # within the room its refunds at the fold left
        room = max(config.max_refunds_per_order - len(recent[order_id].refunds), 0)
        kept += sorted(group, key=lambda r: (r.ts, r.mid, r.key))[:room]
    if total and len(kept) > config.max_refunds:
        kept = sorted(kept, key=lambda r: (r.ts, r.mid, r.order_id, r.key))[: config.max_refunds]
    if len(pending) > config.max_pending_refunds:
        pending.sort(key=lambda r: (r.ts, r.mid, r.order_id, r.key))
        pending = pending[len(pending) - config.max_pending_refunds :] if config.max_pending_refunds else []
    kept += pending
    if len(kept) == len(refunds):
        return tuple(refunds)
    return tuple(sorted(kept, key=lambda r: (r.order_id, r.key)))


def _earliest_refunds(group: list[Refund], config: ValueConfig) -> list[Refund]:
    """One order's refunds within ``max_refunds_per_order``: the earliest."""
    if len(group) <= config.max_refunds_per_order:
        return group
    return sorted(group, key=lambda r: (r.ts, r.mid, r.key))[: config.max_refunds_per_order]


def fold_cut(value: CustomerValue, config: ValueConfig) -> tuple[int, str] | None:
    """Where the ledger should fold: the key (timestamp, message id) up to which orders go into
    the summary, or None while it holds at most ``max_orders``.

    The count folded is a function of the number of orders ever taken (folded and itemised): a
    multiple of ``max_orders // 8``, so that at most ``max_orders`` stay itemised and the ledger
    folds once every ``max_orders // 8`` orders, whatever the batching. The oldest go first.
    """
    if len(value.orders) <= config.max_orders:
        return None
    step = max(config.max_orders // 8, 1)
    folded = value.folded.orders if value.folded is not None else 0
    total = folded + len(value.orders)
    due = -(-(total - config.max_orders) // step) * step - folded
    # at least the excess (len - max_orders >= 1), even after copies sharing one (timestamp,
    # message id) folded more than their share: ceil rounds the total up
    ordered = sorted(value.orders, key=lambda o: (o.ts, o.mid, o.order_id))
    last = ordered[min(due, len(ordered)) - 1]
    return (last.ts, last.mid)


def _fraction(text: str) -> Fraction:
    return Fraction(text)


def _text(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value.numerator)


def _floats(value: Fraction) -> list[float]:
    """Floats whose exact sum is ``value`` (a sum of floats, so a dyadic fraction): with them,
    ``math.fsum`` rounds the exact total once, as over the original numbers."""
    out: list[float] = []
    while value:
        part = float(value)
        out.append(part)
        value -= Fraction(part)
    return out


def _net(order: Order, refunds: Sequence[Refund]) -> tuple[float, bool]:
    """An order's net value after ``refunds`` and whether it still counts: an order is removed by
    a full refund, or by partial refunds that leave nothing (a free order counts until then)."""
    if any(r.amount is None for r in refunds):
        return 0.0, False
    parts = [p for p in (_refund_in_order_currency(r, order) for r in refunds) if p is not None]
    net = max(order.amount - math.fsum(parts), 0.0)
    return net, not (parts and net <= 0.0)


def _folded_net(fo: FoldedOrder, late: Sequence[Refund]) -> tuple[float, bool]:
    """:func:`_net` of a folded order with the refunds it had when folded and ``late`` ones."""
    if fo.full or any(r.amount is None for r in late):
        return 0.0, False
    as_order = Order(fo.order_id, fo.ts, fo.mid, "", fo.currency, fo.amount, fo.rate)
    late_parts = (_refund_in_order_currency(r, as_order) for r in late)
    parts = [*fo.parts, *(p for p in late_parts if p is not None)]
    net = max(fo.amount - math.fsum(parts), 0.0)
    return net, not (parts and net <= 0.0)


def _base(net: float, counted: bool, rate: float | None) -> Fraction:
    return Fraction(net * rate) if counted and rate is not None else Fraction(0)


class _Late(NamedTuple):
    """What refunds arriving after their order folded change in the summary."""

    live: int = 0
    unvalued: int = 0
    monetary: Fraction = Fraction(0)
    first_value: Fraction = Fraction(0)


def _late(folded: FoldedOrders | None, refunds: Iterable[Refund], as_of_ms: int | None = None) -> _Late:
    if folded is None or not folded.recent:
        return _Late()
    recent = {fo.order_id: fo for fo in folded.recent}
    by_order: dict[str, list[Refund]] = {}
    for refund in refunds:
        if refund.order_id in recent and (as_of_ms is None or refund.ts <= as_of_ms):
            by_order.setdefault(refund.order_id, []).append(refund)
    live = unvalued = 0
    monetary = first_value = Fraction(0)
    for order_id, late in by_order.items():
        fo = recent[order_id]
        (n0, l0), (n1, l1) = _folded_net(fo, []), _folded_net(fo, late)
        live += l1 - l0
        if fo.rate is None:
            unvalued += l1 - l0
        change = _base(n1, l1, fo.rate) - _base(n0, l0, fo.rate)
        monetary += change
        if fo.ts == folded.first_time_ms:
            first_value += change
    return _Late(live, unvalued, monetary, first_value)


def fold_ledger(value: CustomerValue, cut: tuple[int, str], config: ValueConfig) -> CustomerValue:
    """Move every order stamped at or before ``cut`` (with its refunds) into ``value.folded``.

    Folding in key order keeps the summary a function of the folded orders: counts, sums (exact)
    and extremes add up, and a timestamp split across two folds is one CLV transaction. The
    latest ``max_recent_folded`` folded orders are remembered (``FoldedOrders.recent``); the
    refunds that arrived after one of them folded are applied to the summary when it is
    forgotten.
    """
    old = value.folded if value.folded is not None else FoldedOrders(until=cut)
    going = sorted((o for o in value.orders if _key(o) <= cut), key=lambda o: (o.ts, o.mid, o.order_id))
    if not going and (value.folded is None or cut <= value.folded.until):
        return value
    ids = {o.order_id for o in going}
    refunds_of: dict[str, list[Refund]] = {}
    for refund in value.refunds:
        if refund.order_id in ids:
            refunds_of.setdefault(refund.order_id, []).append(refund)
    live, unvalued = old.live, old.unvalued
    monetary = _fraction(old.monetary)
    first_ms, last_ms = old.first_ms, old.last_ms
    times, first_time, last_time = old.times, old.first_time_ms, old.last_time_ms
    first_value = _fraction(old.first_time_value)
    remembered: list[FoldedOrder] = []
    for order in going:
        present = refunds_of.get(order.order_id, [])
        applied = _earliest_refunds(present, config)
        net, counted = _net(order, applied)
        parts = [_refund_in_order_currency(r, order) for r in applied if r.amount is not None]
        remembered.append(
            FoldedOrder(
                order.order_id,
                order.ts,
                order.mid,
                order.currency,
                order.amount,
                order.rate,
                tuple(p for p in parts if p is not None),
                any(r.amount is None for r in applied),
                tuple(sorted(r.key for r in applied)),
            )
        )
        if not counted:
            continue
        live += 1
        first_ms = order.ts if first_ms is None else min(first_ms, order.ts)
        last_ms = order.ts if last_ms is None else max(last_ms, order.ts)
        if order.rate is None:
            unvalued += 1
            continue
        base = Fraction(net * order.rate)
        monetary += base
        if last_time != order.ts:
            times += 1
            last_time = order.ts
            if first_time is None:
                first_time = order.ts
        if order.ts == first_time:
            first_value += base
    recent = sorted([*old.recent, *remembered], key=lambda fo: (fo.ts, fo.mid, fo.order_id))
    forgotten = recent[: max(len(recent) - config.max_recent_folded, 0)]
    recent = recent[len(forgotten) :]
    folded = FoldedOrders(
        until=max(cut, old.until),
        orders=old.orders + len(going),
        live=live,
        unvalued=unvalued,
        monetary=_text(monetary),
        first_ms=first_ms,
        last_ms=last_ms,
        times=times,
        first_time_ms=first_time,
        first_time_value=_text(first_value),
        last_time_ms=last_time,
        recent=tuple(forgotten),
    )
    gone = {fo.order_id for fo in forgotten}
    candidates = [r for r in value.refunds if r.order_id in gone and r.order_id not in ids]
    late = _late(folded, _bounded_refunds((), candidates, folded, config, total=False))
    folded = folded._replace(
        live=folded.live + late.live,
        unvalued=folded.unvalued + late.unvalued,
        monetary=_text(_fraction(folded.monetary) + late.monetary),
        first_time_value=_text(_fraction(folded.first_time_value) + late.first_value),
        recent=tuple(recent),
    )
    orders = tuple(o for o in value.orders if o.order_id not in ids)
    kept = [r for r in value.refunds if r.order_id not in ids and r.order_id not in gone]
    refunds = _bounded_refunds(orders, kept, folded, config)
    return replace(
        value, v=VALUE_VERSION, orders=orders, refunds=refunds, folded=folded, unconverted=_unconverted(orders, refunds)
    )


def _combine(a: FoldedOrders | None, b: FoldedOrders | None) -> FoldedOrders | None:
    """Two summaries of different orders (two contacts merged) as one. Exact, except that a
    timestamp both hold counts as two CLV transactions."""
    if a is None or b is None:
        return a if b is None else b
    if (b.first_time_ms, b.until) < (a.first_time_ms, a.until) and b.first_time_ms is not None:
        a, b = b, a
    firsts = [x for x in (a.first_ms, b.first_ms) if x is not None]
    lasts = [x for x in (a.last_ms, b.last_ms) if x is not None]
    first_time, first_value = a.first_time_ms, _fraction(a.first_time_value)
    if first_time is None:
        first_time, first_value = b.first_time_ms, _fraction(b.first_time_value)
    elif b.first_time_ms == first_time:
        first_value += _fraction(b.first_time_value)
    last_times = [x for x in (a.last_time_ms, b.last_time_ms) if x is not None]
    return FoldedOrders(
        until=max(a.until, b.until),
        orders=a.orders + b.orders,
        live=a.live + b.live,
        unvalued=a.unvalued + b.unvalued,
        monetary=_text(_fraction(a.monetary) + _fraction(b.monetary)),
        first_ms=min(firsts) if firsts else None,
        last_ms=max(lasts) if lasts else None,
        times=a.times + b.times - (a.last_time_ms is not None and a.last_time_ms == b.first_time_ms),
        first_time_ms=first_time,
        first_time_value=_text(first_value),
        last_time_ms=max(last_times) if last_times else None,
        recent=tuple(
            sorted(
                {**{fo.order_id: fo for fo in b.recent}, **{fo.order_id: fo for fo in a.recent}}.values(),
                key=lambda fo: (fo.ts, fo.mid, fo.order_id),
            )
        ),
    )


def merge_values(a: CustomerValue | None, b: CustomerValue, config: ValueConfig, fold: bool = True) -> CustomerValue:
    """The union of two ledgers (a contact merged into another), by the same rule as
    :func:`apply_purchase_events`: per order id and per refund the smallest record wins. Their
    folded summaries add up; itemised orders at or before the later fold are folded too."""
    if a is None:
        return b
    for ledger in (a, b):
        if ledger.base_currency != config.base_currency:
            raise ValueError(f"ledger is kept in {ledger.base_currency}, the base is {config.base_currency}")
    orders = {o.order_id: o for o in a.orders}
    for o in b.orders:
        if o.order_id not in orders or _rank(o) < _rank(orders[o.order_id]):
            orders[o.order_id] = o
    refunds = {(r.order_id, r.key): r for r in a.refunds}
    for r in b.refunds:
        k = (r.order_id, r.key)
        if k not in refunds or _rank(r) < _rank(refunds[k]):
            refunds[k] = r
    new_orders = tuple(orders[k] for k in sorted(orders))
    new_refunds = tuple(refunds[k] for k in sorted(refunds))
    folded = _combine(a.folded, b.folded)
    merged = CustomerValue(base_currency=a.base_currency, orders=new_orders, refunds=new_refunds)
    if folded is not None:
        carried = folded._replace(until=min(x.until for x in (a.folded, b.folded) if x is not None))
        merged = fold_ledger(replace(merged, folded=carried), folded.until, config)
    merged = replace(
        merged,
        refunds=_bounded_refunds(merged.orders, merged.refunds, merged.folded, config),
    )
    merged = replace(merged, unconverted=_unconverted(merged.orders, merged.refunds))
    cut = fold_cut(merged, config) if fold else None
    return merged if cut is None else fold_ledger(merged, cut, config)


# --- facts -------------------------------------------------------------------------------------


class NetOrder(NamedTuple):
    """An order after the refunds known at ``as_of``: ``net`` in its own currency, ``base``
    converted; ``live``: it still counts as a purchase (not refunded; a free order is live)."""

    order: Order
    net: float
    base: float | None
    live: bool = True


def _refund_in_order_currency(refund: Refund, order: Order) -> float | None:
    assert refund.amount is not None
    if refund.currency is None or refund.currency == order.currency:
        return refund.amount
    if refund.rate is None or order.rate is None:
        return None  # cannot convert: not applied (and counted in ``unconverted``)
    return refund.amount * refund.rate / order.rate


def net_orders(value: CustomerValue, as_of_ms: int) -> list[NetOrder]:
    """Every order stamped at or before ``as_of_ms`` with the refunds stamped at or before it applied.

    A full refund zeroes the order; partial refunds add up; the net never goes below 0. Sorted by
    ``(timestamp, message id)``. Itemised orders only: folded ones are in ``value.folded``.
    """
    by_order: dict[str, list[Refund]] = {}
    for refund in value.refunds:
        if refund.ts <= as_of_ms:
            by_order.setdefault(refund.order_id, []).append(refund)
    out = []
    for order in sorted((o for o in value.orders if o.ts <= as_of_ms), key=lambda o: (o.ts, o.mid, o.order_id)):
        net, live = _net(order, by_order.get(order.order_id, []))
        out.append(NetOrder(order, net, None if order.rate is None else net * order.rate, live))
    return out


@dataclass(frozen=True, slots=True)
class RfmFacts:
    """A contact's purchase facts at ``as_of_ms``, money in the base currency.

    ``frequency`` counts the orders not refunded (a free order counts; a full refund, or partial
    refunds leaving nothing, remove one) and ``recency_days``, ``first_order_ms``
    and ``last_order_ms`` refer to those (None without any). ``unvalued`` of them are in a currency
    without a rate: they count in ``frequency`` but not in ``monetary``; ``aov`` is ``monetary``
    over the valued ones (0 without any).
    """

    as_of_ms: int
    recency_days: float | None
    frequency: int
    monetary: float
    aov: float
    first_order_ms: int | None
    last_order_ms: int | None
    unvalued: int = 0


def summary(value: CustomerValue | None, as_of_ms: int) -> RfmFacts:
    """The contact's RFM facts as seen at ``as_of_ms`` (orders and refunds after it are ignored;
    folded orders count whatever ``as_of_ms``: facts before the fold are not kept)."""
    if value is None:
        return summary_of([], as_of_ms)
    late = _late(value.folded, value.refunds, as_of_ms)
    return summary_of(net_orders(value, as_of_ms), as_of_ms, value.folded, late)


def summary_of(
    nets: Sequence[NetOrder], as_of_ms: int, folded: FoldedOrders | None = None, late: _Late | None = None
) -> RfmFacts:
    """:func:`summary` from the ledger's :func:`net_orders` at ``as_of_ms``, its folded orders and
    what refunds of recently folded orders changed in them (``late``)."""
    live = [n for n in nets if n.live]
    if folded is not None and late is not None and late != _Late():
        folded = folded._replace(
            live=folded.live + late.live,
            unvalued=folded.unvalued + late.unvalued,
            monetary=_text(_fraction(folded.monetary) + late.monetary),
        )
    old = folded if folded is not None and folded.live > 0 else None
    if not live and old is None:
        return RfmFacts(as_of_ms, None, 0, 0.0, 0.0, None, None, 0)
    valued = [n.base for n in live if n.base is not None]
    frequency = len(live)
    unvalued = len(live) - len(valued)
    firsts = [live[0].order.ts] if live else []
    lasts = [live[-1].order.ts] if live else []
    if old is not None:
        valued += _floats(_fraction(old.monetary))
        frequency += old.live
        unvalued += old.unvalued
        firsts += [old.first_ms] if old.first_ms is not None else []
        lasts += [old.last_ms] if old.last_ms is not None else []
    monetary = math.fsum(valued)
    priced = frequency - unvalued
    last = max(lasts)
    return RfmFacts(
        as_of_ms=as_of_ms,
        recency_days=(as_of_ms - last) / DAY_MS,
        frequency=frequency,
        monetary=monetary,
        aov=monetary / priced if priced else 0.0,
        first_order_ms=min(firsts),
        last_order_ms=last,
        unvalued=unvalued,
    )


class FactsStep(NamedTuple):
    """``frequency`` and ``monetary`` (as :func:`summary` counts them) once every order and refund
    up to ``key`` = (timestamp, message id) is known."""

    key: tuple[int, str]
    frequency: int
    monetary: float


class _Tally:
    """The running facts of :func:`facts_timeline`: counted orders, their exact base-value sum."""

    __slots__ = ("exact", "frequency", "live", "total")

    def __init__(self) -> None:
        self.frequency = 0
        self.total = 0.0
        self.exact: list[float] = []  # the exact sum of the counted base values (see _add_exact)
        self.live: dict[str, tuple[bool, float | None]] = {}  # order id -> (counted, base value)

    def count(self, order_id: str, counted: bool, value: float | None, exact: bool) -> None:
        """The order now counts (or not) with base value ``value``; ``exact``: update the sum too."""
        before = self.live.get(order_id)
        self.frequency += counted - (before is not None and before[0])
        self.live[order_id] = (counted, value)
        if exact:
            if before is not None and before[0] and before[1] is not None:
                _add_exact(self.exact, -before[1])
            if counted and value is not None:
                _add_exact(self.exact, value)


def _from_fold(
    tally: _Tally,
    folded: FoldedOrders,
    records: list[tuple[tuple[int, str], int, Order | Refund]],
    late: dict[str, list[Refund]],
    monetary: bool,
) -> list[tuple[tuple[int, str], int, Order | Refund]]:
    """Start the tally at the fold: its summary, its recent orders, and the refunds of those stamped
    before the fold (they count from the fold on; gathered in ``late``). The records left to go through."""
    recent = {fo.order_id: fo for fo in folded.recent}
    tally.frequency = folded.live
    if monetary:
        for part in _floats(_fraction(folded.monetary)):
            _add_exact(tally.exact, part)
        tally.total = math.fsum(tally.exact)
    for entry in folded.recent:  # counted in the summary as they were folded
        net, counted = _folded_net(entry, [])
        tally.live[entry.order_id] = (counted, None if entry.rate is None else net * entry.rate)
    early = [r for _, _, r in records if isinstance(r, Refund) and r.order_id in recent and _key(r) <= folded.until]
    if early:
        records = [rec for rec in records if not (isinstance(rec[2], Refund) and rec[2] in early)]
        for r in early:
            late.setdefault(r.order_id, []).append(r)
        for order_id, group in late.items():
            entry = recent[order_id]
            net, counted = _folded_net(entry, group)
            tally.count(order_id, counted, None if entry.rate is None else net * entry.rate, exact=True)
        tally.total = math.fsum(tally.exact) if monetary else 0.0
    return records


def facts_timeline(value: CustomerValue | None, monetary: bool = True) -> list[FactsStep]:
    """The ledger's facts as steps, one per order or refund in ``(timestamp, message id)`` order:
    what :func:`summary` gives at each instant, computed in one pass (a walk through a contact's
    history reads it at every checkpoint). ``monetary=False`` leaves it 0. A ledger with folded orders
    starts with a step at the fold: its orders count from there on."""
    if value is None:
        return []
    records: list[tuple[tuple[int, str], int, Order | Refund]] = [((o.ts, o.mid), 0, o) for o in value.orders]
    records += [((r.ts, r.mid), 1, r) for r in value.refunds]
    records.sort(key=lambda rec: (rec[0], rec[1], rec[2].order_id))
    orders: dict[str, Order] = {}
    refunds: dict[str, list[Refund]] = {}
    tally = _Tally()
    out: list[FactsStep] = []
    folded = value.folded
    recent = {fo.order_id: fo for fo in folded.recent} if folded is not None else {}
    late: dict[str, list[Refund]] = {}
    if folded is not None:
        records = _from_fold(tally, folded, records, late, monetary)
        out.append(FactsStep(folded.until, tally.frequency, tally.total))
    for key, _kind, record in records:
        order_id = record.order_id
        fo: FoldedOrder | None = None
        if isinstance(record, Refund):
            refunds.setdefault(order_id, []).append(record)
            fo = recent.get(order_id) if order_id not in orders else None
            if fo is not None:  # a refund of an order folded before it came
                late.setdefault(order_id, []).append(record)
        else:
            orders[order_id] = record
        order = orders.get(order_id)
        if fo is not None or order is not None:
            if fo is not None:
                net, counted = _folded_net(fo, late[order_id])
                rate = fo.rate
            else:
                assert order is not None
                net, counted = _net(order, refunds.get(order_id, []))
                rate = order.rate
            tally.count(order_id, counted, None if rate is None else net * rate, exact=monetary)
            if monetary:
                tally.total = math.fsum(tally.exact)
        out.append(FactsStep(key, tally.frequency, tally.total))
    return out


def _add_exact(partials: list[float], x: float) -> None:
    """Add ``x`` to the exact sum held in ``partials`` (non-overlapping floats: Shewchuk's
    algorithm, the one ``math.fsum`` runs inside). ``math.fsum(partials)`` is then the correctly
    rounded exact sum of everything added, so it equals ``math.fsum`` over the numbers still
    counted, bit for bit, with a value taken away by adding its negation: the timeline keeps
    its total in O(1) per step instead of summing every live order again (O(orders²) per walk,
    which a contact with a thousand orders paid on every walk)."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


def clv_summary(value: CustomerValue | None, as_of_ms: int, unit_ms: int = DAY_MS) -> RfmSummary | None:
    """The ledger as :func:`scorestream.clv.summarise` input: net base values of the valued live orders.

    None when the contact had no such purchase by ``as_of_ms``. Feed these to ``fit_bgnbd`` /
    ``fit_gamma_gamma``. Folded orders enter through their summary, with the same result as
    :func:`~scorestream.clv.summarise` over every order (its monetary value is the correctly
    rounded exact mean).
    """
    if value is None:
        return None
    purchases = [(n.order.ts, n.base) for n in net_orders(value, as_of_ms) if n.live and n.base is not None]
    folded = value.folded
    if folded is None or folded.first_time_ms is None or folded.last_time_ms is None:
        return summarise(purchases, as_of_ms, unit_ms) if purchases else None
    if unit_ms <= 0:
        raise ValueError(f"unit_ms must be positive, got {unit_ms}")
    first, last = folded.first_time_ms, folded.last_time_ms
    times = folded.times
    late = _late(folded, value.refunds, as_of_ms)
    repeat = _floats(_fraction(folded.monetary) + late.monetary - _fraction(folded.first_time_value) - late.first_value)
    seen: set[int] = set()
    for ts, base in purchases:
        if ts == first:
            continue  # still the first transaction: not a repeat
        repeat.append(base)
        if ts != folded.last_time_ms and ts not in seen:
            seen.add(ts)
            times += 1
        last = max(last, ts)
    if as_of_ms < last:
        as_of_ms = last  # folded orders count whatever ``as_of_ms`` (see summary)
    return RfmSummary(
        frequency=times - 1,
        recency=(last - first) / unit_ms,
        T=(as_of_ms - first) / unit_ms,
        monetary=math.fsum(repeat) / (times - 1) if times > 1 else 0.0,
    )


# --- population scores -------------------------------------------------------------------------

Boundaries = tuple[float, float, float, float]


def boundaries(values: Iterable[float], reverse: bool = False) -> Boundaries:
    """The quintile boundaries of ``values``: the empirical 20/40/60/80% quantiles.

    Quantile definition: the inverted empirical CDF (Hyndman & Fan type 1), q(p) = the smallest
    value x with at least p of the population <= x, i.e. ``sorted[ceil(p * n) - 1]``. With
    ``reverse`` (smaller is better, e.g. ``recency_days``) the quantiles are taken of the negated
    values, so both directions split distinct values into quintiles of sizes differing by at
    most one. Independent of the order of ``values``.
    """
    xs = sorted(-v if reverse else v for v in values)
    if not xs:
        raise ValueError("cannot compute boundaries of an empty population")
    if any(math.isnan(x) for x in xs):
        raise ValueError("boundaries of NaN are undefined")
    n = len(xs)
    q = [xs[(k * n + 4) // 5 - 1] for k in range(1, 5)]
    if reverse:
        q = [-x for x in q]
    return (q[0], q[1], q[2], q[3])


def score(value: float, bounds: Boundaries, reverse: bool = False) -> int:
    """1..5: one plus the number of boundaries ``value`` beats (is above; below with ``reverse``).

    ``bounds`` must come from :func:`boundaries` with the same ``reverse``. A value equal to a
    boundary does not beat it, so equal values always get equal scores and ties sit in the lower
    (worse) quintile: when 60% of customers have one order, they all score F = 1, the next value
    up scores 4, and scores 2 and 3 stay empty. Values outside the population's range score 1 or 5.
    """
    if reverse:
        return 1 + sum(value < b for b in bounds)
    return 1 + sum(value > b for b in bounds)


@dataclass(frozen=True, slots=True)
class RfmBoundaries:
    """Quintile boundaries of the customer population (contacts with ``frequency > 0``).

    Recency is bounded on ``last_order_ms`` (later is better), which does not drift with time.
    """

    last_order_ms: Boundaries
    frequency: Boundaries
    monetary: Boundaries
    customers: int


def population_boundaries(facts: Iterable[RfmFacts]) -> RfmBoundaries:
    """Exact quintile boundaries over every customer's facts (non-customers are left out)."""
    customers = [f for f in facts if f.frequency > 0 and f.last_order_ms is not None]
    if not customers:
        raise ValueError("no customers: cannot compute RFM boundaries")
    return RfmBoundaries(
        last_order_ms=boundaries(float(f.last_order_ms) for f in customers if f.last_order_ms is not None),
        frequency=boundaries(float(f.frequency) for f in customers),
        monetary=boundaries(f.monetary for f in customers),
        customers=len(customers),
    )


class RfmScore(NamedTuple):
    r: int
    f: int
    m: int
    segment: str


def rfm_score(
    facts: RfmFacts, bounds: RfmBoundaries, segments: Sequence[SegmentRule] = DEFAULT_SEGMENTS
) -> RfmScore | None:
    """R, F, M scores (5 = best) and the R-F segment of a contact; None for a non-customer."""
    if facts.frequency <= 0 or facts.last_order_ms is None:
        return None
    r = score(float(facts.last_order_ms), bounds.last_order_ms)
    f = score(float(facts.frequency), bounds.frequency)
    m = score(facts.monetary, bounds.monetary)
    return RfmScore(r, f, m, segment_of(r, f, segments))
