"""A realistic archive for the report tests: contacts with stage journeys through the default
model's lifecycle, their ``contacts`` rows (with older versions and re-reads), stage-change
triggers (re-read too) and score ledger rows; B2B accounts with journeys through the default
model's account graph (:func:`generate_accounts`); and plain-Python answers to the reports,
computed from the generated facts (not from ClickHouse) to check the SQL against."""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from analytics.client import Store
from analytics.rows import ACCOUNT_COLUMNS, CONTACT_COLUMNS, LEDGER_COLUMNS, TRIGGER_COLUMNS
from scorestream import Model
from scorestream.rfm import RfmBoundaries, boundaries, score
from scorestream.rules.value import segment_of
from scorestream.scoring import band_of, round_score
from tests.factories import DAY, DEFAULT_MODEL, HOUR

MODEL = DEFAULT_MODEL
NOW = 1_790_000_000_000
OLD_VERSION = "default@0ldversion"
# where a journey may go next in the default model's graph (a superset of what it allows is fine:
# the reports only count what is archived)
MOVES: dict[str, list[str]] = {
    "subscriber": ["lead", "lead", "sql", "customer", "disqualified"],
    "lead": ["mql", "mql", "sql", "opportunity", "customer", "disqualified"],
    "mql": ["sql", "opportunity", "recycled", "customer"],
    "sql": ["opportunity", "recycled", "customer"],
    "opportunity": ["customer", "customer", "recycled"],
    "recycled": ["mql", "sql", "opportunity"],
    "customer": ["evangelist"],
    "evangelist": [],
    "disqualified": ["lead"],
}
PERSONAS = ["executive", "practitioner", "shopper", ""]
FLAGS = [[], [], [], ["job_seeker"], ["student", "bot"]]


@dataclass
class Transition:
    contact: str
    at: int
    from_stage: str
    to_stage: str
    version: str
    id: str

    def row(self, offset: int) -> list[Any]:
        values: dict[str, Any] = {
            "id": self.id,
            "type": "stage.changed",
            "at": self.at,
            "subject": self.contact,
            "contact_id": self.contact,
            "account_id": "",
            "before": orjson.dumps(self.from_stage).decode(),
            "after": orjson.dumps(self.to_stage).decode(),
            "rule": f"to-{self.to_stage}",
            "cause": f"m-{self.id}",
            "model_version": self.version,
            "kafka_topic": "triggers",
            "kafka_partition": 0,
            "kafka_offset": offset,
            "written_at": self.at,
        }
        return [values[c] for c in TRIGGER_COLUMNS]


@dataclass
class Contact:
    id: str
    first_seen: int
    last_seen: int
    stage: str
    stage_since: int
    updated_at: int
    offset: int
    status: str = "active"
    merged_into: str = ""
    user_id: str = ""
    email: str = ""
    persona: str = ""
    flags: list[str] = field(default_factory=list)
    engagement: float = 0.0
    fit: float = 0.0
    segment: str = ""
    orders: int = 0
    revenue: float = 0.0
    first_order: int | None = None
    last_order: int | None = None
    account_id: str = ""
    groups: dict[str, float] = field(default_factory=dict)  # raw score group scores at last_seen

    def row(self) -> list[Any]:
        gone = self.status != "active"
        values: dict[str, Any] = {
            "contact_id": self.id,
            "updated_at": self.updated_at,
            "status": self.status,
            "merged_into": self.merged_into,
            "user_id": self.user_id,
            "email": self.email,
            "account_id": self.account_id,
            "first_seen": None if gone else self.first_seen,
            "last_seen": None if gone else self.last_seen,
            "stage": "" if gone else self.stage,
            "stage_since": None if gone else self.stage_since,
            "persona": "" if gone else self.persona,
            "flags": [] if gone else self.flags,
            "engagement": 0.0 if gone else self.engagement,
            "engagement_band": "" if gone else band_of(MODEL.engagement_bands, self.engagement),
            "fit": 0.0 if gone else self.fit,
            "fit_grade": "" if gone else band_of(MODEL.fit_grades, self.fit),
            "rfm_segment": "" if gone else self.segment,
            "orders": 0 if gone else self.orders,
            "revenue": 0.0 if gone else self.revenue,
            "first_order_at": None if gone else self.first_order,
            "last_order_at": None if gone else self.last_order,
            "model_version": MODEL.version,
            "kafka_partition": 0,
            "kafka_offset": self.offset,
            "groups": {} if gone else self.groups,
        }
        return [values[c] for c in CONTACT_COLUMNS]

    def decayed(self, now: int) -> float:
        if self.status != "active":
            return 0.0
        return self.engagement * math.pow(2.0, -max(now - self.last_seen, 0) / MODEL.half_life_ms)


@dataclass
class Archive:
    contacts: dict[str, Contact]
    transitions: list[Transition]
    ledger: list[list[Any]]

    def entries(self, model: str | None = None) -> list[tuple[str, int, str, str]]:
        """Every stage entry (contact, t, stage, from): transitions, and the initial stage at
        first_seen of the contacts that have one (active ones)."""
        out = [
            (t.contact, t.at, t.to_stage, t.from_stage)
            for t in self.transitions
            if model is None or t.version == model or t.version.startswith(model + "@")
        ]
        out += [(c.id, c.first_seen, "subscriber", "") for c in self.contacts.values() if c.status == "active"]
        return out

    def active(self) -> list[Contact]:
        return [c for c in self.contacts.values() if c.status == "active"]


def generate(n: int = 80, seed: int = 7) -> Archive:
    rng = random.Random(seed)
    contacts: dict[str, Contact] = {}
    transitions: list[Transition] = []
    ledger: list[list[Any]] = []
    for i in range(n):
        cid = f"c-{i:03d}"
        first = NOW - rng.randrange(2 * DAY, 130 * DAY)
        at, stage = first, "subscriber"
        for step in range(rng.randrange(0, 7)):
            nxt = MOVES[stage]
            if not nxt:
                break
            to = rng.choice(nxt)
            at += 0 if rng.random() < 0.25 else rng.randrange(HOUR, 20 * DAY)  # chains happen at one instant
            if at >= NOW:
                break
            version = OLD_VERSION if rng.random() < 0.15 else MODEL.version
            transitions.append(Transition(cid, at, stage, to, version, f"trg_{i:03d}{step:02d}"))
            stage = to
        customer = stage in ("customer", "evangelist")
        orders = rng.randrange(1, 7) if customer else 0
        last_order = at - rng.randrange(0, 3) * DAY if customer else None
        contacts[cid] = Contact(
            id=cid,
            first_seen=first,
            last_seen=max(at, first) + rng.randrange(0, 3 * DAY),
            stage=stage,
            stage_since=at,
            updated_at=NOW - rng.randrange(0, 100 * DAY),
            offset=100 + i,
            user_id=f"user-{i}" if i % 3 else "",
            email=f"person{i}@example.com" if i % 2 else "",
            persona=rng.choice(PERSONAS),
            flags=rng.choice(FLAGS),
            engagement=round(rng.uniform(-5, 120), 3),
            fit=float(rng.choice([0, 15, 20, 45, 70])),
            segment=rng.choice(["Champions", "Loyal", "At Risk", "Lost"]) if customer else "",
            orders=orders,
            revenue=round(orders * rng.uniform(20, 300), 2) if customer else 0.0,
            first_order=(last_order - rng.randrange(0, 60) * DAY) if last_order is not None else None,
            last_order=last_order,
        )
    # a few contacts merged into others, and one deleted: no longer in the lists
    for i in (5, 17, 44):
        c = contacts[f"c-{i:03d}"]
        contacts[c.id] = replace(c, status="merged", merged_into=f"c-{i + 1:03d}", offset=c.offset + 1000)
    contacts["c-060"] = replace(contacts["c-060"], status="deleted", offset=contacts["c-060"].offset + 1000)
    # ledger rows of one contact (with a re-read below)
    for k, (eng, fit, stage) in enumerate([(10.0, 20.0, "subscriber"), (45.0, 20.0, "lead"), (80.0, 45.0, "mql")]):
        ledger.append(ledger_row("c-001", NOW - (30 - 10 * k) * DAY, eng, fit, stage, 10 + k, [f"r{k}"], [f"m{k}"]))
    return Archive(contacts, transitions, ledger)


def ledger_row(
    contact: str, at: int, engagement: float, fit: float, stage: str, offset: int, rules: list[str], mids: list[str]
) -> list[Any]:
    values: dict[str, Any] = {
        "contact_id": contact,
        "at": at,
        "kind": "score",
        "cause": "events",
        "engagement": engagement,
        "engagement_band": band_of(MODEL.engagement_bands, engagement),
        "fit": fit,
        "fit_grade": band_of(MODEL.fit_grades, fit),
        "stage": stage,
        "rules": rules,
        "message_ids": mids,
        "merged_into": "",
        "model_version": MODEL.version,
        "kafka_topic": "cl",
        "kafka_partition": 0,
        "kafka_offset": offset,
        "written_at": at,
        "groups": {},
    }
    return [values[c] for c in LEDGER_COLUMNS]


async def load(store: Store, archive: Archive, seed: int = 7) -> None:
    """Insert the archive as the sink would, re-reads included: stale versions of some contacts
    (an older changelog offset, inserted after the newer one), a second copy of others, and
    about a fifth of the triggers and the ledger inserted twice."""
    rng = random.Random(seed)
    await store.insert("contacts", CONTACT_COLUMNS, [c.row() for c in archive.contacts.values()])
    stale = [
        replace(c, status="active", stage="mql", persona="executive", flags=["competitor"], offset=c.offset - 50)
        for c in archive.contacts.values()
        if rng.random() < 0.3
    ]
    await store.insert("contacts", CONTACT_COLUMNS, [c.row() for c in stale])
    again = [c.row() for c in archive.contacts.values() if rng.random() < 0.2]
    await store.insert("contacts", CONTACT_COLUMNS, again)
    rows = [t.row(i) for i, t in enumerate(archive.transitions)]
    await store.insert("triggers", TRIGGER_COLUMNS, rows)
    await store.insert("triggers", TRIGGER_COLUMNS, [r for r in rows if rng.random() < 0.2])
    await store.insert("score_ledger", LEDGER_COLUMNS, archive.ledger)
    await store.insert("score_ledger", LEDGER_COLUMNS, archive.ledger[1:])


async def two_namespaces(store: Store, other: str) -> None:
    """Contact x archived from two namespaces: A (model ``other``) until B (the active ``MODEL``) was
    promoted, and B, whose changelog the sink read from its beginning. Their first rows have the same
    contact, instant, partition and offset; each model changed x's stage once."""

    def row(at: int, engagement: float, stage: str, offset: int, version: str, topic: str) -> list[Any]:
        values = dict(zip(LEDGER_COLUMNS, ledger_row("x", at, engagement, 30.0, stage, offset, [], []), strict=True))
        values.update(model_version=version, kafka_topic=topic)
        return list(values.values())

    a, b = "a-contacts-changelog", "b-contacts-changelog"
    await store.insert("score_ledger", LEDGER_COLUMNS, [row(NOW, 10.0, "lead", 1, other, a)])
    await store.insert("score_ledger", LEDGER_COLUMNS, [row(NOW, 20.0, "lead", 1, MODEL.version, b)])
    await store.insert("score_ledger", LEDGER_COLUMNS, [row(NOW + DAY, 60.0, "sql", 2, other, a)])
    await store.insert("score_ledger", LEDGER_COLUMNS, [row(NOW + 2 * DAY, 70.0, "mql", 3, MODEL.version, b)])
    moves = [
        Transition("x", NOW + DAY, "lead", "sql", other, "trg_a1"),
        Transition("x", NOW + 2 * DAY, "lead", "mql", MODEL.version, "trg_b1"),
    ]
    await store.insert("triggers", TRIGGER_COLUMNS, [t.row(i) for i, t in enumerate(moves)])
    x = Contact("x", NOW, NOW + 2 * DAY, "mql", NOW + 2 * DAY, NOW + 2 * DAY, 3, engagement=70.0, fit=30.0)
    await store.insert("contacts", CONTACT_COLUMNS, [x.row()])


# --- accounts ----------------------------------------------------------------------------------

# where an account may go next in the default model's account graph
ACCOUNT_MOVES: dict[str, list[str]] = {
    "target": ["engaged", "engaged", "buying", "customer"],
    "engaged": ["buying", "buying", "target", "customer"],
    "buying": ["customer", "customer", "engaged"],
    "customer": ["target"],
}


@dataclass
class AccountRow:
    """A row of ``account_changes`` (an accounts changelog record)."""

    account: str
    at: int
    stage: str
    members: int
    offset: int
    version: str = MODEL.version
    topic: str = "scorestream-accounts-changelog"
    customers: int = 0

    def row(self) -> list[Any]:
        values: dict[str, Any] = {
            "account_id": self.account,
            "at": self.at,
            "stage": self.stage,
            "engagement": 40.0,
            "engagement_band": "3",
            "fit": 30.0,
            "fit_grade": "C",
            "members": self.members,
            "engaged_members": min(self.members, 1),
            "customers": self.customers,
            "roles_engaged": [],
            "model_version": self.version,
            "kafka_topic": self.topic,
            "kafka_partition": 0,
            "kafka_offset": self.offset,
            "written_at": self.at,
        }
        return [values[c] for c in ACCOUNT_COLUMNS]


def account_trigger(t: Transition, offset: int) -> list[Any]:
    """An ``account.stage_changed`` trigger (``t.contact`` is the account)."""
    values = dict(zip(TRIGGER_COLUMNS, t.row(offset), strict=True))
    values.update(type="account.stage_changed", contact_id="", account_id=t.contact, rule=f"account-{t.to_stage}")
    return [values[c] for c in TRIGGER_COLUMNS]


@dataclass
class Accounts:
    """Accounts as archived: their rows (the latest of each account's active-model rows gives its
    stage; other rows are older, re-read, or another model's), their stage changes, and their
    members (contacts with an ``account_id``; those with orders give the accounts' value)."""

    rows: list[AccountRow]
    transitions: list[Transition]
    members: list[Contact]


async def load_accounts(store: Store, accounts: Accounts, seed: int = 7) -> None:
    """Insert as the sink would, with about a fifth of the rows and triggers inserted twice."""
    rng = random.Random(seed)
    rows = [r.row() for r in accounts.rows]
    await store.insert("account_changes", ACCOUNT_COLUMNS, rows)
    await store.insert("account_changes", ACCOUNT_COLUMNS, [r for r in rows if rng.random() < 0.2])
    triggers = [account_trigger(t, 10_000 + i) for i, t in enumerate(accounts.transitions)]
    await store.insert("triggers", TRIGGER_COLUMNS, triggers)
    await store.insert("triggers", TRIGGER_COLUMNS, [r for r in triggers if rng.random() < 0.2])
    await store.insert("contacts", CONTACT_COLUMNS, [c.row() for c in accounts.members])


def generate_accounts(n: int = 60, seed: int = 5) -> Accounts:
    """Accounts created over the last 200 days, each walking the account graph; a row for its
    creation and each change (several changes at one instant: a chain); about 15% of the changes
    announced by an older model; another namespace's later rows for some (to be ignored), stale
    rows inserted after newer ones, accounts left with no member; members that ordered (customer
    accounts) and some that did not, a merged one."""
    rng = random.Random(seed)
    rows: list[AccountRow] = []
    transitions: list[Transition] = []
    members: list[Contact] = []
    offset = 0
    for i in range(n):
        aid = f"a-{i:03d}"
        at = NOW - rng.randrange(2 * DAY, 200 * DAY)
        stage = "target"
        size = rng.choice([0, 1, 2, 3, 5])
        offset += 10
        rows.append(AccountRow(aid, at, stage, max(size, 1), offset))
        won_at: int | None = None
        for step in range(rng.randrange(0, 6)):
            to = rng.choice(ACCOUNT_MOVES[stage])
            at += 0 if rng.random() < 0.25 else rng.randrange(HOUR, 25 * DAY)
            if at >= NOW:
                break
            version = OLD_VERSION if rng.random() < 0.15 else MODEL.version
            transitions.append(Transition(aid, at, stage, to, version, f"acc_{i:03d}{step:02d}"))
            stage = to
            won_at = at if to == "customer" and won_at is None else won_at
            offset += 10
            rows.append(AccountRow(aid, at, stage, max(size, 1), offset, customers=int(stage == "customer")))
        if size == 0:  # every member left since
            offset += 10
            rows.append(AccountRow(aid, min(at + HOUR, NOW - 1), stage, 0, offset))
        if rng.random() < 0.2:  # an older record at the same instant, re-read after the newer ones
            rows.append(replace(rows[-1], stage="buying", members=3, offset=rows[-1].offset - 5))
        if rng.random() < 0.2:  # another namespace's row, later
            rows.append(AccountRow(aid, at + HOUR, "engaged", 2, 1, OLD_VERSION, "old-accounts-changelog"))
        for k in range(size):
            ordered = won_at is not None and k < 2
            first_order = won_at - rng.randrange(0, 3) * DAY if won_at is not None and ordered else None
            revenue = round(rng.uniform(50, 900), 2) if ordered else 0.0
            members.append(
                Contact(
                    id=f"m-{i:03d}-{k}",
                    first_seen=NOW - 210 * DAY,
                    last_seen=NOW - DAY,
                    stage="customer" if ordered else "lead",
                    stage_since=NOW - 200 * DAY,
                    updated_at=NOW - DAY,
                    offset=5000 + 10 * i + k,
                    status="merged" if k == 4 else "active",
                    merged_into=f"m-{i:03d}-0" if k == 4 else "",
                    orders=rng.randrange(1, 4) if ordered else 0,
                    revenue=revenue,
                    first_order=first_order,
                    last_order=first_order,
                    account_id=aid,
                )
            )
    # a contact with orders and no account does not count for any account
    members.append(replace(members[0], id="m-lone", account_id="", orders=2, revenue=5000.0, first_order=NOW - DAY))
    return Accounts(rows, transitions, members)


@dataclass
class AccountsExpect:
    stages: dict[str, tuple[int, int, int]]  # stage -> (open accounts, entered, converted)
    value: float
    customers: int
    basis: str


def _conversions(
    entries: Sequence[tuple[str, int, str]], open_stages: Sequence[str], won: Collection[str], now: int, lookback: int
) -> dict[str, tuple[int, int]]:
    """stage -> (who entered it in the lookback, how many of them entered a ``won`` stage at or
    after their first entry), from ``(who, instant, stage)`` entries: the forecasts' conversion."""
    first: dict[tuple[str, str], int] = {}
    for who, t, stage in entries:
        if now - lookback <= t < now and stage in open_stages:
            first[(who, stage)] = min(t, first.get((who, stage), t))
    won_at: dict[str, int] = {}
    for who, t, stage in entries:
        if stage in won:
            won_at[who] = max(t, won_at.get(who, t))
    out = {}
    for stage in open_stages:
        keys = [(w, t) for (w, s), t in first.items() if s == stage]
        out[stage] = (len(keys), sum(1 for w, t in keys if won_at.get(w, -1) >= t))
    return out


def forecast_accounts_expect(
    accounts: Accounts, model: Model, now: int, lookback: int, model_version: str | None = None
) -> AccountsExpect:
    """The accounts pipeline computed from the facts: current stage from the latest row of the
    chosen model (default: ``model``'s version) with members left; entries: the transitions of
    ``model_version`` (all by default) and the initial stage at each account's first row."""

    def of(version: str, name: str | None) -> bool:
        return name is None or version == name or version.startswith(name + "@")

    config = model.accounts
    won = set(config.customer_stages)
    open_stages = [s for s in config.stages if s not in won]
    latest: dict[str, AccountRow] = {}
    for r in accounts.rows:
        if of(r.version, model_version or model.version):
            best = latest.get(r.account)
            if best is None or (r.at, r.offset) > (best.at, best.offset):
                latest[r.account] = r
    first_row: dict[str, int] = {}
    for r in accounts.rows:
        if of(r.version, model_version):
            first_row[r.account] = min(r.at, first_row.get(r.account, r.at))
    entries = [(t.contact, t.at, t.to_stage) for t in accounts.transitions if of(t.version, model_version)]
    entries += [(a, t, config.initial_stage) for a, t in first_row.items()]
    conversions = _conversions(entries, open_stages, won, now, lookback)
    out = {}
    for stage in open_stages:
        open_now = sum(1 for r in latest.values() if r.stage == stage and r.members > 0)
        out[stage] = (open_now, *conversions[stage])
    revenue: dict[str, float] = defaultdict(float)
    first_order: dict[str, int | None] = {}
    for c in accounts.members:
        if c.status == "active" and c.orders > 0 and c.account_id:
            revenue[c.account_id] += c.revenue
            if c.first_order is not None:
                prior = first_order.get(c.account_id)
                first_order[c.account_id] = c.first_order if prior is None else min(prior, c.first_order)
            else:
                first_order.setdefault(c.account_id, None)
    new = [a for a, t in first_order.items() if t is not None and t >= now - lookback]
    if new:
        return AccountsExpect(out, statistics.fmean(revenue[a] for a in new), len(new), "new_customers")
    if revenue:
        return AccountsExpect(out, statistics.fmean(revenue.values()), len(revenue), "all_customers")
    return AccountsExpect(out, 0.0, 0, "none")


# --- reference answers -------------------------------------------------------------------------


def funnel_levels(
    entries: Sequence[tuple[str, int, str, str]], stages: Sequence[str], t0: int, t1: int, sequential: bool
) -> dict[str, list[int]]:
    """Contact -> the times it reached step 1, 2, ...: its entries in the window in time order
    (one instant: funnel order), the next step taken by entering it (sequential) or it or any
    later step (cumulative; the first step must be entered itself)."""
    per: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for contact, t, stage, _ in entries:
        if t0 <= t < t1 and stage in stages:
            per[contact].append((t, stages.index(stage) + 1))
    out: dict[str, list[int]] = {}
    for contact, steps in per.items():
        times: list[int] = []
        for t, step in sorted(steps):
            level = len(times)
            if (step == 1) if level == 0 else (step == level + 1 if sequential else step > level):
                times.extend([t] * (step - level))
        out[contact] = times
    return out


@dataclass
class StageExpect:
    entered: int
    reached: int
    completed: int
    open: int
    median_stay_ms: float | None
    median_from_start_ms: float | None


def funnel_expect(
    archive: Archive, stages: Sequence[str], t0: int, t1: int, sequential: bool, model: str | None = None
) -> list[StageExpect]:
    entries = archive.entries(model)
    levels = funnel_levels(entries, stages, t0, t1, sequential)
    out = []
    for k, stage in enumerate(stages, start=1):
        in_window = [(c, t) for c, t, s, _ in entries if s == stage and t0 <= t < t1]
        stays = []
        open_ = 0
        for contact, t in in_window:
            exits = [x for c, x, _, f in entries if c == contact and f == stage and x >= t]
            if exits:
                stays.append(min(exits) - t)
            else:
                open_ += 1
        reached = [times for times in levels.values() if len(times) >= k]
        out.append(
            StageExpect(
                entered=len({c for c, _ in in_window}),
                reached=len(reached),
                completed=len(stays),
                open=open_,
                median_stay_ms=statistics.median(stays) if stays else None,
                median_from_start_ms=statistics.median(t[k - 1] - t[0] for t in reached) if reached else None,
            )
        )
    return out


def rfm_bounds(archive: Archive) -> RfmBoundaries:
    customers = [c for c in archive.active() if c.orders > 0 and c.last_order is not None]
    return RfmBoundaries(
        last_order_ms=boundaries(float(c.last_order) for c in customers if c.last_order is not None),
        frequency=boundaries(float(c.orders) for c in customers),
        monetary=boundaries(c.revenue for c in customers),
        customers=len(customers),
    )


def rfm_expect(archive: Archive, bounds: RfmBoundaries) -> dict[tuple[int, int], tuple[int, float]]:
    cells: dict[tuple[int, int], tuple[int, float]] = {}
    for c in archive.active():
        if c.orders > 0 and c.last_order is not None:
            key = (score(float(c.last_order), bounds.last_order_ms), score(float(c.orders), bounds.frequency))
            n, v = cells.get(key, (0, 0.0))
            cells[key] = (n + 1, v + c.revenue)
    return cells


def segments_expect(cells: dict[tuple[int, int], tuple[int, float]]) -> dict[str, tuple[int, float]]:
    out: dict[str, tuple[int, float]] = {}
    for (r, f), (n, v) in cells.items():
        name = segment_of(r, f, MODEL.value.segments)
        total_n, total_v = out.get(name, (0, 0.0))
        out[name] = (total_n + n, total_v + v)
    return out


def personas_expect(archive: Archive, now: int) -> dict[tuple[str, str], tuple[int, float, float]]:
    groups: dict[tuple[str, str], list[Contact]] = defaultdict(list)
    for c in archive.active():
        groups[(c.persona, c.stage)].append(c)
    return {
        key: (len(cs), statistics.fmean(c.decayed(now) for c in cs), statistics.fmean(c.fit for c in cs))
        for key, cs in groups.items()
    }


def forecast_expect(
    archive: Archive, model: Model, now: int, lookback: int
) -> tuple[dict[str, tuple[int, int, int]], float, int]:
    """stage -> (open contacts, entered in the lookback, converted since), the value per new
    customer and how many it was averaged over."""
    lc = model.lifecycle
    assert lc is not None
    won = lc.customer_stages
    open_stages = [s for s in lc.stages if s not in won and s != lc.disqualified]
    entries = archive.entries()
    conversions = _conversions([(c, t, stage) for c, t, stage, _ in entries], open_stages, won, now, lookback)
    out = {}
    for stage in open_stages:
        open_now = sum(1 for c in archive.active() if c.stage == stage)
        out[stage] = (open_now, *conversions[stage])
    new = [
        c for c in archive.active() if c.orders > 0 and c.first_order is not None and c.first_order >= now - lookback
    ]
    return out, statistics.fmean(c.revenue for c in new), len(new)


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def rounded(x: float) -> float:
    return round_score(x)
