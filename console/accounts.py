"""The console's accounts (a ``group`` call's ``groupId``): a search by account id, the most engaged
accounts, and one account's page (score, stage and its history, members with their roles and
scores, buying-centre coverage).

Every figure is ``GET /v1/accounts/{id}``'s: :func:`schemas.api_accounts.account_out` over the
active namespace's accounts replica, at the request's time. Nothing in the API lists accounts, so
the list's order comes from the archive (:data:`HOTTEST`, one query over ``account_changes``: each
account's latest engagement decayed to now); the figures shown for each are the replica's.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from starlette.responses import Response

from analytics.client import Store
from analytics.reports import model_filter_sql
from api import archive
from api.namespaces import Readers
from console.contacts import account_of, active_readers, contact_path
from console.pages import attempt, now_ms, page
from console.session import PREFIX, ViewerDep
from schemas.api_accounts import AccountOut
from schemas.times import DAY_MS, ms_of

router = APIRouter(prefix=PREFIX)  # the whole path in each route: what audit lines and tests name
NAV = f"{PREFIX}/accounts"
MAX_QUERY = 512
SHOWN = 25  # accounts listed without a query, and matches of a partial id

# The accounts of the active model by their latest engagement decayed to now (the archive keeps a
# row per change of an account, scores as of its latest member report ``at``).
HOTTEST = f"""
SELECT account_id
FROM account_changes
WHERE {model_filter_sql("model_version")}
GROUP BY account_id
ORDER BY argMax(engagement, tuple(at, kafka_offset))
         * exp2(-greatest({{now:Int64}} - toUnixTimestamp64Milli(max(at)), 0) / {{half_life:Float64}}) DESC,
         account_id
LIMIT {{limit:UInt32}}
"""  # noqa: S608 (constant fragments; values are bound as parameters)


def account_path(account_id: str) -> str:
    return f"{NAV}/{quote(account_id, safe='')}"


async def _hottest(request: Request, readers: Readers, now: int) -> list[AccountOut]:
    """The most engaged accounts (the archive's order), as the replica shows them, most engaged first."""
    model = readers.model

    async def query(store: Store) -> list[str]:
        params = {"model": model.version, "now": now, "half_life": float(model.half_life_ms), "limit": SHOWN}
        return [str(r[0]) for r in await store.query(HOTTEST, params)]

    ids = await archive.answer(request.app.state.analytics, query)
    found = [a for a in (account_of(readers, i, now) for i in ids) if a is not None]
    return sorted(found, key=lambda a: (-a.engagement.score, a.account_id))


@router.get("/accounts")
async def accounts(request: Request, who: ViewerDep, q: str | None = None) -> Response:
    """Search by account id (exact: its page; part of one: the matches); without a query, the most
    engaged accounts."""
    text = (q or "").strip()
    readers = active_readers(request)
    now = now_ms(request)
    loading = not readers.accounts.caught_up.is_set()
    wrong = f"That is longer than any account id ({MAX_QUERY} characters at most)." if len(text) > MAX_QUERY else None
    matches: list[AccountOut] = []
    if text and not wrong and not loading:
        if text in readers.accounts.states:
            return RedirectResponse(account_path(text), status_code=303)
        needle = text.casefold()
        ids = sorted(i for i in readers.accounts.states if needle in i.casefold())[:SHOWN]
        matches = [a for a in (account_of(readers, i, now) for i in ids) if a is not None]
    hot, hot_problem = (None, None) if text else await attempt(_hottest(request, readers, now))
    rows = matches if text else (hot or [])
    status = 400 if wrong else 404 if text and not loading and not matches else 200
    return page(
        request,
        who,
        "accounts.html",
        nav=NAV,
        status=status,
        title="Accounts",
        q=text[:MAX_QUERY],
        wrong=wrong,
        loading=loading,
        rows=rows,
        hot_problem=hot_problem,
        account_path=account_path,
    )


@router.get("/accounts/{account_id:path}")
async def account(request: Request, who: ViewerDep, account_id: str) -> Response:
    """An account as ``GET /v1/accounts/{id}`` shows it."""
    readers = active_readers(request)
    if not account_id.strip():
        return RedirectResponse(NAV, status_code=303)
    if len(account_id) > MAX_QUERY:
        wrong = f"That is longer than any account id ({MAX_QUERY} characters at most)."
        return page(
            request, who, "missing.html", nav=NAV, kind="account", status=400, title="Accounts", wrong=wrong, q=""
        )
    if not readers.accounts.caught_up.is_set():
        return page(
            request,
            who,
            "missing.html",
            nav=NAV,
            kind="account",
            status=503,
            title="Accounts",
            loading=True,
            q=account_id,
        )
    now = now_ms(request)
    found = account_of(readers, account_id, now)
    if found is None:
        return page(
            request, who, "missing.html", nav=NAV, kind="account", status=404, title="No such account", q=account_id
        )
    members = sorted(found.members, key=lambda m: (-m.engagement, m.contact_id))
    names = {m.contact_id: _member_name(readers, m.contact_id) for m in members}
    stays = [
        {
            "stage": e.stage,
            "entered_at": e.entered_at,
            "rule": e.rule,
            "current": e.exited_at is None,
            "days": ((ms_of(e.exited_at) if e.exited_at else now) - ms_of(e.entered_at)) / DAY_MS,
        }
        for e in found.stage.history
    ][::-1]
    return page(
        request,
        who,
        "account.html",
        nav=NAV,
        title=found.account_id,
        a=found,
        members=members,
        names=names,
        stays=stays,
        contact_path=contact_path,
        as_of_ms=now,
    )


def _member_name(readers: Readers, contact_id: str) -> str:
    """A member as the contacts page names it: email, else user id, else 'Anonymous visitor'."""
    if not readers.replica.caught_up.is_set():
        return contact_id
    entry = readers.replica.find(contact_id)
    if entry is None:
        return contact_id
    view = entry.view
    return view.email or view.user_id or "Anonymous visitor"
