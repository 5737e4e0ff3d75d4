"""Who is calling: the process's API keys, looked up by the digest of the presented key.

The entries' format, scopes and names are :mod:`schemas.api_keys`'s. :meth:`KeyRing.authorise`
answers 401 ``unauthorized`` for a missing or unknown key and 403 ``insufficient_scope`` for a
valid key without the route's scope. The presented key is hashed once (SHA-256, about 0.3 µs)
and its digest looked up in a dict: one lookup whatever the number of keys, and what is
compared is a digest, whose timing says nothing about the key behind it.
"""

from __future__ import annotations

import hashlib
import logging

from fastapi.security import HTTPAuthorizationCredentials

from api.errors import ApiError
from schemas.api_keys import KeyEntry

log = logging.getLogger(__name__)


class KeyRing:
    """The API keys a process accepts: digest -> :class:`~schemas.api_keys.KeyEntry`."""

    def __init__(self, entries: list[KeyEntry]) -> None:
        self.by_digest = {entry.digest: entry for entry in entries}

    def __len__(self) -> int:
        return len(self.by_digest)

    def find(self, creds: HTTPAuthorizationCredentials | None) -> KeyEntry | None:
        """The key ``creds`` presents as a bearer token, or None (no key, another scheme, unknown)."""
        if creds is None or creds.scheme.lower() != "bearer":
            return None
        return self.by_digest.get(hashlib.sha256(creds.credentials.encode()).digest())

    def authorise(self, creds: HTTPAuthorizationCredentials | None, scope: str) -> KeyEntry:
        """The key ``creds`` presents, if it holds ``scope``; else 401 (no valid key) or 403."""
        if not self.by_digest:
            raise ApiError(401, "unauthorized", "no API keys are configured (set SCORESTREAM_API_KEYS)")
        if creds is None or creds.scheme.lower() != "bearer":
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <api key>'")
        key = self.by_digest.get(hashlib.sha256(creds.credentials.encode()).digest())
        if key is None:
            raise ApiError(401, "unauthorized", "unknown API key")
        if scope not in key.scopes:
            raise ApiError(
                403,
                "insufficient_scope",
                f"this route needs an API key with the {scope!r} scope; key {key.name!r} has "
                f"{', '.join(s for s in ('read', 'write', 'admin') if s in key.scopes)}",
            )
        return key

    def warn_unscoped(self) -> None:
        """Log a warning naming every key configured without scopes (it holds every scope)."""
        for key in self.by_digest.values():
            if not key.scoped:
                log.warning(
                    "API key %s has every scope (configured without ':scopes'): give each client only the scope "
                    "it needs (`key:read`, see docs/api.md#authentication)",
                    key.name,
                )
