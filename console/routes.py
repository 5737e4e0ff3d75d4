"""The console's door: sign-in and sign-out, its static files, every page module's routes, and how
a refusal is answered (:func:`install`, called by :func:`api.app.create_api`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from api.audit import audit
from api.errors import ApiError
from console import accounts, admin, analytics, contacts, interests, overview, quality
from console.live import Live
from console.pages import HERE, page, refusal_response
from console.session import COOKIE, PREFIX, ConsoleRefusal, Sessions, ViewerDep, checked_form, same_origin, sessions

router = APIRouter(prefix=PREFIX, include_in_schema=False)
Handler = Callable[[Request, Any], Response | Awaitable[Response]]
AsyncHandler = Callable[[Request, Any], Awaitable[Response]]
PAGE_ROUTERS = (
    overview.router,
    contacts.router,
    analytics.router,
    interests.router,
    quality.router,
    accounts.router,
    admin.router,
)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if target and target.startswith(PREFIX) and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_form(request: Request, next: str | None = None) -> Response:
    """The sign-in page (a signed-in browser goes straight on)."""
    if sessions(request).viewer(request.cookies.get(COOKIE)) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return page(request, None, "sign_in.html", next=safe_next(next))


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(
    request: Request, key: Annotated[str, Form(max_length=512)], next: Annotated[str, Form()] = PREFIX
) -> Response:
    """Trade an API key for a session cookie; a key the API does not know is refused (401),
    counted against the caller's address as the API's own 401s are."""
    if not same_origin(request):
        raise ConsoleRefusal(403, "this form was sent from another site")
    response = RedirectResponse(safe_next(next), status_code=303)
    entry = sessions(request).sign_in(key, response)
    if entry is None:
        request.app.state.rate_limits.charge_address(request.client.host if request.client else "unknown")
        return page(
            request, None, "sign_in.html", status=401, next=safe_next(next), error="That key is not one this API knows."
        )
    audit(entry, "console_sign_in")
    return response


@router.post("/sign-out")
async def sign_out(request: Request, who: ViewerDep) -> Response:
    await checked_form(request, who)
    response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
    sessions(request).sign_out(response)
    return response


def install(app: FastAPI) -> None:
    """Serve the console from ``app``: its sessions, live feeds, static files, pages and refusals."""
    state = app.state
    state.console_sessions = Sessions(state.settings, state.api_keys)
    state.console_live = Live(state.settings)
    state.console_model_samples = admin.Samples()
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router)
    for pages in PAGE_ROUTERS:
        app.include_router(pages, include_in_schema=False)

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConsoleRefusal)
        return refusal_response(request, exc)

    app.add_exception_handler(ConsoleRefusal, refused)
    for kind in (ApiError, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(kind, in_html(app.exception_handlers[kind]))


def in_html(api_handler: Handler) -> AsyncHandler:
    """The API's handler of an error, but an HTML page for the console's paths (a page given a bad
    parameter, an unknown contact, an archive not ready, a rate limit: said in words, same status)."""

    async def handle(request: Request, exc: Exception) -> Response:
        if not request.url.path.startswith(PREFIX + "/") and request.url.path != PREFIX:
            answer = api_handler(request, exc)
            return answer if isinstance(answer, Response) else await answer
        headers: dict[str, str] = {}
        if isinstance(exc, ApiError):
            status, message = exc.status, exc.message
            headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "retry-after"}
        elif isinstance(exc, RequestValidationError):
            status = 422
            message = "; ".join(
                f"{'.'.join(str(p) for p in error.get('loc', ())[1:]) or 'parameter'}: {error.get('msg', 'not valid')}"
                for error in exc.errors()
            )
        else:
            assert isinstance(exc, StarletteHTTPException)
            status = exc.status_code
            message = "There is no such page." if status == 404 else str(exc.detail)
        response = refusal_response(request, ConsoleRefusal(status, message))
        response.headers.update(headers)
        return response

    return handle
