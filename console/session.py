"""Who is looking at the console: an API key, presented once on the sign-in page, turned into a
signed session cookie.

The cookie (``scorestream_console``; HttpOnly, SameSite=Strict, Secure outside development) holds
the SHA-256 of the key, never the key, plus a random nonce and when it was issued, signed with the
console secret (:func:`console_secret`) by itsdangerous. Every request looks the digest up again in
the process's :class:`~api.keys.KeyRing`, so a key removed from ``SCORESTREAM_API_KEYS`` signs its
sessions out at the next restart, and a session can do exactly what its key's scopes allow
(``read`` pages; ``admin`` pages and actions). A session lasts ``SCORESTREAM_CONSOLE_SESSION_HOURS``.

Every state-changing form carries a CSRF token (:attr:`Viewer.csrf`: an HMAC of the session's nonce
under the secret) which :func:`checked_form` compares in constant time; a POST whose ``Origin``
names another site is refused before that. The cookie's SameSite=Strict is a second wall, not the
only one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.datastructures import FormData
from starlette.responses import Response

from api.audit import audit
from api.deps import API_KEY
from api.keys import KeyRing
from schemas.api_keys import KeyEntry, digest
from schemas.settings import Settings

log = logging.getLogger(__name__)

COOKIE = "scorestream_console"
PREFIX = "/console"
CSRF_FIELD = "csrf"


class ConsoleRefusal(Exception):
    """A console request that cannot be served as asked: ``status`` 303 sends the browser to
    ``location`` (sign in first), 403 / 400 answer with an HTML page saying ``message``."""

    def __init__(self, status: int, message: str, location: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.location = status, message, location


def console_secret(settings: Settings) -> bytes:
    """``SCORESTREAM_CONSOLE_SECRET``, else ``<data_dir>/console-secret`` (made on first use, owner
    only; created exclusively, so API processes starting together agree on one)."""
    if settings.console_secret is not None:
        return settings.console_secret.get_secret_value().encode()
    path = Path(settings.data_dir) / "console-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # written whole under a name of its own, then linked into place: a process never reads half a
        # secret, and of two processes starting together the first link wins and both read it
        draft = path.with_name(f".console-secret-{os.getpid()}-{secrets.token_hex(4)}")
        draft.write_text(secrets.token_hex(32))
        draft.chmod(0o600)
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip().encode()


@dataclass(frozen=True, slots=True)
class Viewer:
    """A signed-in console session: its key (scopes, name), its nonce and CSRF token."""

    key: KeyEntry
    nonce: str
    csrf: str

    @property
    def name(self) -> str:
        return self.key.name

    def can(self, scope: str) -> bool:
        return scope in self.key.scopes

    @property
    def admin(self) -> bool:
        return self.can("admin")


class Sessions:
    """Signs and reads the console's session cookies and CSRF tokens for one API process."""

    def __init__(self, settings: Settings, keys: KeyRing) -> None:
        self.secret = console_secret(settings)
        self.keys = keys
        self.max_age_s = int(settings.console_session_hours * 3600)
        self.secure = (
            settings.env != "development" if settings.console_secure_cookie is None else settings.console_secure_cookie
        )
        self.serializer = URLSafeTimedSerializer(self.secret, salt="scorestream-console-session")

    def csrf_of(self, nonce: str) -> str:
        return hmac.new(self.secret, b"csrf:" + nonce.encode(), hashlib.sha256).hexdigest()

    def sign_in(self, key_text: str, response: Response) -> KeyEntry | None:
        """Set the session cookie on ``response`` for the key ``key_text`` if the process knows it
        (and return its entry); None when it does not (the caller says so, without detail)."""
        key = self.keys.by_digest.get(digest(key_text.strip()))
        if key is None:
            return None
        token = self.serializer.dumps({"k": key.digest.hex(), "n": secrets.token_urlsafe(16)})
        response.set_cookie(
            COOKIE, token, max_age=self.max_age_s, path=PREFIX, httponly=True, samesite="strict", secure=self.secure
        )
        return key

    def sign_out(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict", secure=self.secure)

    def viewer(self, cookie: str | None) -> Viewer | None:
        """The session ``cookie`` stands for: None when missing, forged, expired, or its key is gone."""
        if not cookie:
            return None
        try:
            data: Any = self.serializer.loads(cookie, max_age=self.max_age_s)
            key = self.keys.by_digest.get(bytes.fromhex(data["k"]))
            nonce = str(data["n"])
        except (BadSignature, KeyError, TypeError, ValueError):
            return None
        if key is None:
            return None
        return Viewer(key=key, nonce=nonce, csrf=self.csrf_of(nonce))


def sessions(request: Request) -> Sessions:
    found: Sessions = request.app.state.console_sessions
    return found


def sign_in_location(request: Request) -> str:
    """The sign-in page, with the page asked for to come back to."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"{PREFIX}/sign-in?next={quote(target, safe='')}"


async def viewer(request: Request) -> Viewer:
    """A signed-in session with the ``read`` scope, else the browser goes to the sign-in page (303)."""
    found = sessions(request).viewer(request.cookies.get(COOKIE))
    if found is None:
        raise ConsoleRefusal(303, "sign in first", location=sign_in_location(request))
    request.app.state.rate_limits.charge(found.key, "read")  # every key holds read (scopes nest)
    request.scope[API_KEY] = found.key  # as the API's key check leaves it: audit lines name the key
    return found


async def admin_viewer(request: Request) -> Viewer:
    """A signed-in session whose key holds the ``admin`` scope (else 403); audited as the API's admin routes are."""
    found = await viewer(request)
    if not found.admin:
        raise ConsoleRefusal(403, f"this needs a key with the 'admin' scope; key {found.name!r} has not got it")
    audit(request, "admin_request")  # the key's name, the route's template and method, as require_admin's
    return found


def same_origin(request: Request) -> bool:
    """A POST's ``Origin`` (or, without one, ``Referer``) names this site, or neither is sent."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None
    sent = urlsplit(origin)
    return sent.netloc == request.url.netloc


async def checked_form(request: Request, who: Viewer) -> FormData:
    """The POSTed form, if it comes from this site and carries ``who``'s CSRF token (else 403)."""
    if not same_origin(request):
        raise ConsoleRefusal(403, "this form was sent from another site")
    form = await request.form()
    token = form.get(CSRF_FIELD)
    if not isinstance(token, str) or not hmac.compare_digest(token, who.csrf):
        raise ConsoleRefusal(403, "the form's security token is missing or out of date: reload the page and try again")
    return form


ViewerDep = Annotated[Viewer, Depends(viewer)]
AdminDep = Annotated[Viewer, Depends(admin_viewer)]
