"""The format of ``SCORESTREAM_API_KEYS`` entries: API keys, their scopes and names.

An entry is one of::

    <key>                                 a plaintext key with every scope (as before scopes existed)
    <key>:<scopes>[:<name>]               a plaintext key with these scopes
    sha256:<64 hex>[:<scopes>[:<name>]]   a key stored as the SHA-256 of its text

``<scopes>`` is ``read``, ``write`` or ``admin``, or several joined by ``+``; ``*`` is all of
them. Scopes nest: ``admin`` ⊇ ``write`` ⊇ ``read`` (an admin key may also write and read; a read
key only reads). ``<name>`` (letters, digits, ``.``, ``_``, ``-``) names the key in logs and rate
limits; without one it is ``key-`` and the first 8 hex digits of its SHA-256, a fingerprint that
gives nothing of the key away.

Keys are high-entropy random tokens (``scorestream keys new``), so a fast hash is the right one:
nobody can try guesses against a 256-bit secret's digest, and a slow KDF (bcrypt, scrypt) would
cost milliseconds on every request. The API hashes the presented key and looks the digest up
in a dict (:mod:`api.keys`): O(1) whatever the number of keys, and comparing digests leaks nothing
useful about a key, since a digest's prefix says nothing about the text behind it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

SCOPES = ("read", "write", "admin")  # each includes the ones before it
HASH_PREFIX = "sha256"
MIN_KEY_CHARS = 16
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


def digest(key: str) -> bytes:
    """The SHA-256 of a key's text: what the API stores and looks up."""
    return hashlib.sha256(key.encode()).digest()


def implied(scope: str) -> frozenset[str]:
    """``scope`` and the scopes it includes (``admin`` -> admin, write, read)."""
    return frozenset(SCOPES[: SCOPES.index(scope) + 1])


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One configured API key: the digest of its text, every scope it holds (the implied ones
    included), its name, whether it was configured as a hash, and whether its scopes were given
    (``scoped=False``: a bare key, every scope)."""

    digest: bytes
    scopes: frozenset[str]
    name: str
    hashed: bool
    scoped: bool

    @property
    def top_scope(self) -> str:
        """The widest scope the key holds (``admin`` for an unscoped key)."""
        return next(s for s in reversed(SCOPES) if s in self.scopes)


def parse_scopes(spec: str) -> frozenset[str]:
    """``read+admin`` -> every scope held; ValueError on an unknown or empty one."""
    if spec == "*":
        return frozenset(SCOPES)
    held: set[str] = set()
    for part in spec.split("+"):
        if part not in SCOPES:
            raise ValueError(
                "API key scopes are read, write or admin joined by '+', or '*' (a key may not contain ':')"
            )
        held |= implied(part)
    return frozenset(held)


def parse_entry(entry: str) -> KeyEntry:
    """One entry of ``SCORESTREAM_API_KEYS``; ValueError says what is wrong without the key."""
    parts = entry.split(":")
    hashed = parts[0] == HASH_PREFIX and len(parts) > 1
    if hashed:
        hex_digest, rest = parts[1].lower(), parts[2:]
        if not _HEX.match(hex_digest):
            raise ValueError("a hashed API key is `sha256:<64 hex digits>[:scopes[:name]]`")
        key_digest = bytes.fromhex(hex_digest)
    else:
        key, rest = parts[0], parts[1:]
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(f"every API key must be at least {MIN_KEY_CHARS} characters")
        key_digest = digest(key)
    if len(rest) > 2:
        raise ValueError(
            "an API key entry is `key[:scopes[:name]]` or `sha256:<hex>[:scopes[:name]]` (no ':' in a key)"
        )
    scopes = parse_scopes(rest[0]) if rest else frozenset(SCOPES)
    name = rest[1] if len(rest) > 1 else f"key-{key_digest.hex()[:8]}"
    if not _NAME.match(name):
        raise ValueError("an API key name is 1-64 letters, digits, '.', '_' or '-' (a key may not contain ':')")
    return KeyEntry(key_digest, scopes, name, hashed, bool(rest))


def parse_entries(entries: list[str]) -> list[KeyEntry]:
    """Every entry, parsed; ValueError on a malformed one, a key listed twice or a name used twice."""
    parsed = [parse_entry(e) for e in entries]
    if len({e.digest for e in parsed}) < len(parsed):
        raise ValueError("an API key is listed twice in SCORESTREAM_API_KEYS")
    names = [e.name for e in parsed]
    if len(set(names)) < len(names):
        raise ValueError(f"two API keys share the name {next(n for n in names if names.count(n) > 1)!r}")
    return parsed


def new_key(scopes: str, name: str | None = None) -> tuple[str, str]:
    """A new random key (32 bytes of randomness) and its hashed ``SCORESTREAM_API_KEYS`` entry."""
    parse_scopes(scopes)  # refuses an unknown scope
    key = "sk_" + secrets.token_urlsafe(32)
    entry = f"{HASH_PREFIX}:{digest(key).hex()}:{scopes}"
    if name is not None:
        entry += f":{name}"
    parse_entry(entry)  # refuses a malformed name
    return key, entry


def key_of(entry: str) -> str | None:
    """The key of a plaintext entry (``key``, ``key:scopes[:name]``); None for a hashed one, whose
    key is not known here."""
    key = entry.split(":")[0]
    return None if key == HASH_PREFIX else key
