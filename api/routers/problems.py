"""The problem types: ``GET /problems/{code}``, what an error's ``type`` URI points at (a short
page saying what the code means and what to do), and ``GET /problems``, every code. No API key:
they document the API, like ``/docs`` (and, like it, are not in the OpenAPI document). The text
is :data:`api.errors.PROBLEM_TYPES`'."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from api.bodies import LimitedRoute
from api.errors import PROBLEM_TYPES, ApiError, ProblemType
from schemas.api import Problem

router = APIRouter(prefix="/problems", include_in_schema=False, route_class=LimitedRoute)  # pages, not API
STYLE = "body{font-family:system-ui,sans-serif;max-width:44em;margin:2em auto;padding:0 1em}code{font-size:1.05em}"


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _entry(code: str, kind: ProblemType) -> str:
    name = f'<a href="/problems/{escape(code)}"><code>{kind.status} {escape(code)}</code></a>'
    return f"<dt>{name}: {escape(kind.title)}</dt><dd>{escape(kind.about)}</dd>"


@router.get("", response_class=HTMLResponse)
async def list_problems() -> HTMLResponse:
    """Every problem type the API answers with (`code`, status, what it means)."""
    ordered = sorted(PROBLEM_TYPES.items(), key=lambda item: (item[1].status, item[0]))
    entries = "".join(_entry(code, kind) for code, kind in ordered)
    return _page(
        "scorestream API problem types",
        "<h1>Problem types</h1><p>Every error of the scorestream API is an RFC 9457 problem "
        "(<code>application/problem+json</code>) whose <code>type</code> is one of these pages and whose "
        f"<code>code</code> is the name below.</p><dl>{entries}</dl>",
    )


@router.get("/{code}", response_class=HTMLResponse, responses={404: {"model": Problem}})
async def get_problem(code: str) -> HTMLResponse:
    """What the problem type `code` means and what to do about it."""
    kind = PROBLEM_TYPES.get(code)
    if kind is None:
        raise ApiError(404, "not_found", f"no problem type {code!r} (GET /problems lists them)")
    return _page(
        f"{kind.title} ({code})",
        f"<h1>{escape(kind.title)}</h1><p><code>{escape(code)}</code>, usually HTTP {kind.status}.</p>"
        f'<p>{escape(kind.about)}</p><p><a href="/problems">Every problem type</a></p>',
    )
