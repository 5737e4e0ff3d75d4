"""How a console page is rendered: Jinja templates (``console/templates``) with the formatting
filters (:mod:`console.format`), the navigation, the signed-in viewer and its CSRF token; and how a
refusal (:class:`~console.session.ConsoleRefusal`) or an API error met while building a page is
shown: as an HTML page, not a problem document.

A page module declares its routes on its own ``APIRouter`` (``console/routes.py`` includes them)
and answers with :func:`page`. Data it reads through the API's own functions (reports, renderers,
the webhook backend) may raise :class:`~api.errors.ApiError` (the archive not ready, a contact not
found): :func:`attempt` turns that into a message the template shows in place of the section."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from api.errors import ApiError
from console import format as fmt
from console.session import CSRF_FIELD, PREFIX, ConsoleRefusal, Viewer

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(fmt.FILTERS)
templates.env.globals.update(PREFIX=PREFIX, CSRF_FIELD=CSRF_FIELD)


@dataclass(frozen=True)
class NavItem:
    path: str
    label: str
    admin: bool = False


# the navigation, in order; a page's ``nav`` names its entry (its path)
NAV = (
    NavItem(f"{PREFIX}", "Overview"),
    NavItem(f"{PREFIX}/contacts", "Contacts"),
    NavItem(f"{PREFIX}/funnel", "Funnel"),
    NavItem(f"{PREFIX}/value", "Customer value"),
    NavItem(f"{PREFIX}/pipeline", "Personas & forecast"),
    NavItem(f"{PREFIX}/journey", "Journeys"),
    NavItem(f"{PREFIX}/score-quality", "Score quality"),
    NavItem(f"{PREFIX}/interests", "Interests"),
    NavItem(f"{PREFIX}/accounts", "Accounts"),
    NavItem(f"{PREFIX}/webhooks", "Webhooks", admin=True),
    NavItem(f"{PREFIX}/models", "Models", admin=True),
)

# pages hold customer data: never kept by a cache; scripts from this site only (no inline script, no
# CDN); styles inline are pygal's SVGs'; nothing may frame the console (clickjacking)
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def now_ms(request: Request) -> int:
    """The API's clock (tests fix it)."""
    clock = request.app.state.clock
    value: int = clock()
    return value


def page(
    request: Request, viewer: Viewer | None, template: str, nav: str | None = None, status: int = 200, **context: Any
) -> HTMLResponse:
    """``template`` rendered for ``viewer`` with ``context``; ``nav``: the navigation entry to mark."""
    items = [item for item in NAV if viewer is not None and (viewer.admin or not item.admin)]
    body: dict[str, Any] = {
        "viewer": viewer,
        "nav": items,
        "current": nav,
        "now_ms": now_ms(request),
        **context,
    }
    response = templates.TemplateResponse(request, template, body, status_code=status, headers=HEADERS)
    return response


def fragment(request: Request, viewer: Viewer, template: str, **context: Any) -> HTMLResponse:
    """A part of a page (no layout), loaded into it by ``console.js`` (``data-load``)."""
    body = {"viewer": viewer, "now_ms": now_ms(request), **context}
    return templates.TemplateResponse(request, template, body, headers=HEADERS)


async def attempt(work: Awaitable[T]) -> tuple[T | None, str | None]:
    """``work``'s result and None, or None and what stopped it (an API error's message: the archive
    not ready yet, a contact not found), for the template to show in the section's place."""
    try:
        return await work, None
    except ApiError as exc:
        return None, exc.message


def refusal_response(request: Request, exc: ConsoleRefusal) -> Response:
    """A refusal as the browser should see it: a redirect to sign in, or an HTML page saying why."""
    if exc.status == 303 and exc.location:
        return RedirectResponse(exc.location, status_code=303)
    title = {403: "Not allowed", 404: "Not found"}.get(exc.status, "Cannot do that")
    return page(request, None, "message.html", status=exc.status, title=title, message=exc.message)
