"""The audit log: who did what with personal data, without the personal data itself.

One line per audited act on the logger ``scorestream.audit`` (rendered like every other line:
JSON by default, so the fields below are fields of the line): every regulation created, and each
of its status changes to done or failed (:mod:`api.regulations`); every export of a person's data
(``GET /v1/contacts/{id}/export``); every request authorised with the admin scope
(:func:`api.deps.require_admin`).

Fields: ``audit`` (the action: ``admin_request``, ``regulation_created``, ``regulation_done``,
``regulation_failed``, ``export``...), ``key_name`` (the API key's *name*, never the key), and
what the caller gives: ``route`` (the route's template, e.g. ``/v1/contacts/{contact_id}/export``,
never the path: a path may hold an id), ``method``, ``regulation_id``, ``subject_count``,
``subject_keys`` (:func:`scorestream.privacy.subject_key` hashes; at most
:data:`MAX_KEYS_LOGGED` of them, ``subject_keys_truncated`` when there were more: the regulation's
record keeps them all). Never an id, an email, a trait or a key: callers pass hashes only
(:func:`subject_keys`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from starlette.requests import HTTPConnection

from schemas.api_keys import KeyEntry
from scorestream.privacy import SubjectKind, subject_key

log = logging.getLogger("scorestream.audit")
MAX_KEYS_LOGGED = 100
KEY_SCOPE = "scorestream.api_key"  # api.deps.API_KEY: the authorised caller's KeyEntry in the request scope
ROUTE_SCOPE = "scorestream.route"  # telemetry.access.ROUTE: a direct path's route template


def key_name(who: HTTPConnection | KeyEntry | str | None) -> str | None:
    """The API key's name of a request (its authorised key), of a key, or a name given as is."""
    if isinstance(who, HTTPConnection):
        entry = who.scope.get(KEY_SCOPE)
        return entry.name if isinstance(entry, KeyEntry) else None
    if isinstance(who, KeyEntry):
        return who.name
    return who


def route_of(conn: HTTPConnection) -> str | None:
    """The template of the route a request matched (never its path, which may hold an id)."""
    route = conn.scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    template = conn.scope.get(ROUTE_SCOPE)
    return template if isinstance(template, str) else None


def subject_keys(kind: SubjectKind, values: Iterable[str]) -> list[str]:
    """The audit log's (and the privacy list's) keys of identifiers: their SHA-256 hashes."""
    return [subject_key(kind, v) for v in values]


def audit(who: HTTPConnection | KeyEntry | str | None, action: str, **fields: Any) -> None:
    """Log one audited act on ``scorestream.audit``. ``who``: the request (its key's name and
    route are taken from it), the key, or a key name (None: the service itself). ``fields``: the
    act's (see the module docstring; ``subject_keys`` are hashes, cut to :data:`MAX_KEYS_LOGGED`)."""
    line: dict[str, Any] = {"audit": action, "key_name": key_name(who)}
    if isinstance(who, HTTPConnection):
        line["route"] = route_of(who)
        line["method"] = who.scope.get("method")
    keys = fields.pop("subject_keys", None)
    if keys is not None:
        keys = list(keys)
        line["subject_keys"] = keys[:MAX_KEYS_LOGGED]
        if len(keys) > MAX_KEYS_LOGGED:
            line["subject_keys_truncated"] = True
    line.update(fields)
    log.info("audit %s", action, extra=line)
