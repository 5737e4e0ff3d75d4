"""The console's contacts: a search (user id, anonymous id or email), the hottest contacts of the
week, and one contact's page (score card, why it scores so, engagement over time, stages, value,
flags, persona, consent, account).

Every figure is the API's: the score card, the contributions, the stages, the value and the flags
are the body of ``GET /v1/contacts/{id}`` (``readers.renderer.body``); the chart and the changes
behind the contributions are ``GET /v1/contacts/{id}/history`` (:func:`analytics.reports.history`);
the list is ``GET /v1/contacts`` (:func:`analytics.reports.contact_list`); the buying-centre role
is ``GET /v1/accounts/{id}`` (:func:`schemas.api_accounts.account_out`). The one thing read here
and nowhere else is what the scored events were (type, name, path) by their message ids, from the
archive's ``events`` table: the ledger names them by id only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from starlette.responses import Response

from analytics import reports
from analytics.client import Store
from api import archive, deps
from api.namespaces import Readers
from api.routers import contacts as contact_routes
from api.routers.adjustments import adjustments_out
from console import charts
from console.pages import attempt, now_ms, page
from console.session import PREFIX, ViewerDep
from schemas.accounts import decode_account
from schemas.api_accounts import AccountOut, account_out
from schemas.api_analytics import ContactListOut, ContactRowOut, HistoryOut, LedgerRowOut
from schemas.api_interests import interests_out
from schemas.times import DAY_MS, at_of, ms_of

router = APIRouter(prefix=PREFIX)  # the whole path in each route: what audit lines and tests name
NAV = f"{PREFIX}/contacts"
MAX_QUERY = 512  # longer than any id or email the API keeps
HOT_DAYS = 7  # the list without a query: contacts changed in the last week...
HOT_SCAN = 1000  # ...the sync list's largest page of them...
HOT_SHOWN = 25  # ...the most engaged first
HISTORY_DAYS = 90  # the chart's window
HISTORY_LIMIT = 1000  # the history route's default
BEHIND_CHANGES = 3  # the latest changes shown under each contribution
LATEST_CHANGES = 8  # the latest changes listed
EVENTS_LIMIT = (LATEST_CHANGES + 5 * BEHIND_CHANGES) * 16  # the rows shown, 16 message ids each at most

# What the scored events were: the ledger keeps their message ids (the newest 16 of each change).
EVENTS_BY_ID = """
SELECT message_id, toString(type), event, name, path, toUnixTimestamp64Milli(event_time)
FROM events
WHERE status = 'accepted' AND has({ids:Array(String)}, message_id)
LIMIT 1 BY message_id
LIMIT {limit:UInt32}
"""


def active_readers(request: Request) -> Readers:
    """The active namespace's readers (as ``GET /v1/contacts/{id}`` and ``GET /v1/accounts/{id}`` read)."""
    found: Readers = request.app.state.namespaces.active()
    return found


def contact_path(contact_id: str) -> str:
    """The console page of a contact (its id quoted whole: ids may hold ``/`` or ``:``)."""
    return f"{NAV}/{quote(contact_id, safe='')}"


def _query(raw: str | None) -> tuple[str, str | None]:
    """The search text, and what is wrong with it (None when it can be looked up)."""
    text = (raw or "").strip()
    if len(text) > MAX_QUERY:
        return text[:MAX_QUERY], f"That is longer than any id or email ({MAX_QUERY} characters at most)."
    return text, None


@router.get("/contacts")
async def contacts(request: Request, who: ViewerDep, q: str | None = None) -> Response:
    """Search by user id, anonymous id or email (one match: its page); without a query, the hottest
    contacts of the week."""
    text, wrong = _query(q)
    readers = active_readers(request)
    loading = not readers.replica.caught_up.is_set()
    if text and not wrong and not loading:
        entry = readers.replica.find(text)
        if entry is not None:
            return RedirectResponse(contact_path(entry.view.contact_id), status_code=303)
    since = now_ms(request) - HOT_DAYS * DAY_MS
    hot, hot_problem = await attempt(_hottest(request, readers, since))
    rows = sorted(hot.data, key=lambda r: (-r.engagement, r.contact_id))[:HOT_SHOWN] if hot else []
    missing = bool(text) and not wrong and not loading
    return page(
        request,
        who,
        "contacts.html",
        nav=NAV,
        status=404 if missing else 400 if wrong else 200,
        title="Contacts",
        q=text,
        wrong=wrong,
        loading=loading,
        missing=missing,
        rows=rows,
        scanned=len(hot.data) if hot else 0,
        more=bool(hot and hot.has_more),
        since_ms=since,
        since_iso=at_of(since).isoformat().replace("+00:00", "Z"),
        scan_limit=HOT_SCAN,
        hot_as_of=ms_of(hot.as_of) if hot else None,
        hot_days=HOT_DAYS,
        hot_problem=hot_problem,
        contact_path=contact_path,
        row_name=row_name,
    )


async def _hottest(request: Request, readers: Readers, since_ms: int) -> ContactListOut:
    """``GET /v1/contacts?updated_since=<a week ago>&limit=1000`` (the route's own function): the sync
    list's contacts changed in the last week (the list cannot be sorted by score; its page is sorted here)."""
    return await contact_routes.list_contacts(
        await deps.analytics(request),
        readers.model,
        await deps.clock(request),
        await deps.active_population(request),
        updated_since=at_of(since_ms),
        limit=HOT_SCAN,
    )


# --- one contact ---------------------------------------------------------------------------------


@dataclass
class Scored:
    """A change of the contact's scores the ledger holds, with the events behind it found."""

    row: LedgerRowOut
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class History:
    """``GET /v1/contacts/{id}/history`` over the chart's window, and the events its rows name."""

    body: HistoryOut
    events: dict[str, dict[str, Any]]

    def changes(self) -> list[Scored]:
        """The score changes, newest first, each with the events it names that the archive holds."""
        return self._changes

    @cached_property
    def _changes(self) -> list[Scored]:  # made once: the page asks for them once per top contribution and twice more
        out = []
        for row in reversed(self.body.ledger):
            if row.kind == "score":
                found = [self.events[m] for m in row.message_ids if m in self.events]
                out.append(Scored(row, sorted(found, key=lambda e: -e["at"])))
        return out

    def behind(self, rule: str) -> list[Scored]:
        """The latest changes in which ``rule`` matched."""
        return [c for c in self.changes() if rule in c.row.rules][:BEHIND_CHANGES]

    def points(self, half_life_ms: int) -> list[tuple[int, float]]:
        """Engagement at each score change (as the history gives it), oldest first, each change
        preceded by the previous one's engagement decayed to its instant (as the history's
        ``as_of`` decays it, :func:`analytics.reports.decayed`): the line falls between changes
        and rises at each, as the score did."""
        out: list[tuple[int, float]] = []
        for row in self.body.ledger:
            if row.kind != "score":
                continue
            at = ms_of(row.at)
            if out and at > out[-1][0]:
                out.append((at, reports.decayed(out[-1][1], out[-1][0], at, half_life_ms)))
            out.append((at, row.engagement))
        return out


def _shown_rows(ledger: list[LedgerRowOut], rules: list[str]) -> list[LedgerRowOut]:
    """The ledger rows whose events the page shows: the latest :data:`LATEST_CHANGES` score
    changes, and the latest :data:`BEHIND_CHANGES` of each of ``rules`` (the top contributions)."""
    newest = [r for r in reversed(ledger) if r.kind == "score"]
    shown = {id(r): r for r in newest[:LATEST_CHANGES]}
    for rule in rules:
        shown.update((id(r), r) for r in [r for r in newest if rule in r.rules][:BEHIND_CHANGES])
    return list(shown.values())


async def _history(request: Request, readers: Readers, contact_id: str, rules: list[str]) -> History:
    """The history route's answer for the last :data:`HISTORY_DAYS` (the active model's), and the
    events its ledger rows name."""
    now = now_ms(request)
    model = readers.model

    async def query(store: Store) -> History:
        body = await reports.history(
            store, model, contact_id, now - HISTORY_DAYS * DAY_MS, now, now, HISTORY_LIMIT, model.version
        )
        ids = sorted({m for r in _shown_rows(body.ledger, rules) for m in r.message_ids})
        rows = await store.query(EVENTS_BY_ID, {"ids": ids, "limit": EVENTS_LIMIT}) if ids else []
        events = {
            str(mid): {"type": str(kind), "event": str(event), "name": str(name), "path": str(path), "at": int(at)}
            for mid, kind, event, name, path, at in rows
        }
        return History(body, events)

    return await archive.answer(request.app.state.analytics, query)


def account_of(readers: Readers, account_id: str, now: int) -> AccountOut | None:
    """``GET /v1/accounts/{id}``'s body (None: no such account)."""
    raw = readers.accounts.states.get(account_id)
    return None if raw is None else account_out(decode_account(raw), readers.model, now)


def _account(readers: Readers, account_id: str | None, now: int) -> AccountOut | None:
    """The contact's account (None: none, or not known yet)."""
    if not account_id or not readers.accounts.caught_up.is_set():
        return None
    return account_of(readers, account_id, now)


def _stays(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stage history, newest first, each stay with its length in milliseconds (the current
    one: so far)."""
    stage = body.get("stage")
    if not stage:
        return []
    out = []
    for entry in stage["history"]:
        current = entry["exited_at"] is None
        days = stage["days_in_stage"] if current else entry["days"]
        out.append({**entry, "current": current, "days_value": days, "ms": days * DAY_MS})
    return out[::-1]


@router.get("/contacts/{contact_id:path}")
async def contact(request: Request, who: ViewerDep, contact_id: str) -> Response:
    """A contact by user id, anonymous id or email, as ``GET /v1/contacts/{id}`` finds it."""
    text, wrong = _query(contact_id)
    readers = active_readers(request)
    if not text:
        return RedirectResponse(NAV, status_code=303)
    if wrong:
        return page(
            request, who, "missing.html", nav=NAV, kind="contact", status=400, title="Contacts", q=text, wrong=wrong
        )
    if not readers.replica.caught_up.is_set():
        return page(
            request, who, "missing.html", nav=NAV, kind="contact", status=503, title="Contacts", q=text, loading=True
        )
    entry = readers.replica.find(text)
    if entry is None:
        return page(request, who, "missing.html", nav=NAV, kind="contact", status=404, title="No such contact", q=text)
    now = now_ms(request)
    body = readers.renderer.body(entry, now)
    top = [c["rule"] for c in body["engagement"]["top"]]
    history, history_problem = await attempt(_history(request, readers, body["contact_id"], top))
    points = history.points(readers.model.half_life_ms) if history else []
    if points and now > points[-1][0]:
        points.append((now, body["engagement"]["score"]))  # decayed to now, as the score card
    account = _account(readers, body["account_id"], now)
    member = next((m for m in account.members if m.contact_id == body["contact_id"]), None) if account else None
    return page(
        request,
        who,
        "contact.html",
        nav=NAV,
        title=_name(body),
        c=body,
        name=_name(body),
        history=history,
        history_problem=history_problem,
        history_days=HISTORY_DAYS,
        latest_changes=LATEST_CHANGES,
        chart=charts.line_over_time(points, value_label="engagement"),
        stays=_stays(body),
        account=account,
        member=member,
        currency=readers.model.value.base_currency,
        as_of_ms=now,
        half_life_ms=readers.model.half_life_ms,
        contact_path=contact_path,
        interests=interests_out(entry.view, rules, now) if (rules := readers.model.interests) else None,
        adjustments=adjustments_out(entry.view, now, readers.model.half_life_ms).adjustments,
    )


def _name(body: dict[str, Any]) -> str:
    """How a person is named on the page: their name trait, else email, else user id, else 'Anonymous visitor'."""
    traits = body.get("traits") or {}
    full = traits.get("name") or " ".join(str(traits[k]) for k in ("firstName", "lastName") if traits.get(k))
    identity = body["identity"]
    return str(full or identity.get("email") or identity.get("user_id") or "Anonymous visitor")


def row_name(row: ContactRowOut) -> str:
    """How a row of the list names its contact."""
    return row.email or row.user_id or "Anonymous visitor"
