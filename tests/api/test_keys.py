"""Scoped API keys: the entries' format, every route's scope (walked from the app, so a new route
cannot be forgotten), 401 / 403, hashed keys, ``/readyz`` detail and the docs switch."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from api import deps
from api.app import create_api
from api.replica import Replica
from deploy.cli import main as cli_main
from schemas.api_keys import SCOPES, digest, key_of, new_key, parse_entries, parse_entry
from schemas.model_file import load_model
from schemas.settings import Settings
from tests.api.view_bytes import ready_replica
from tests.factories import T0

MODEL = load_model()
READ, WRITE, ADMIN, ALL = (f"{s}-key-0123456789abcdef" for s in ("read", "write", "admin", "every"))
KEYS = f"{READ}:read:crm,{WRITE}:write,{ADMIN}:admin:ops,{ALL}"

# Routes open to anyone: health, the collector (it takes write keys of its own), metrics (its own
# token), the problem type pages. Any other route must declare a scope.
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics"}
PUBLIC_PREFIXES = ("/problems",)
# The scope each route needs: a route missing here fails test_every_route_has_the_scope_of_the_table.
ROUTE_SCOPES: dict[tuple[str, str], str] = {
    ("GET", "/v1/contacts/{contact_id}"): "read",
    ("POST", "/v1/contacts:batchGet"): "read",
    ("GET", "/v1/contacts"): "read",
    ("GET", "/v1/contacts/{contact_id}/history"): "read",
    ("GET", "/v1/contacts/{contact_id}/export"): "admin",
    ("POST", "/v1/contacts/{contact_id}/adjustments"): "write",
    ("GET", "/v1/contacts/{contact_id}/adjustments"): "read",
    ("GET", "/v1/contacts/{contact_id}/adjustments/{adjustment_id}"): "read",
    ("DELETE", "/v1/contacts/{contact_id}/adjustments/{adjustment_id}"): "write",
    ("GET", "/v1/accounts/{account_id}"): "read",
    ("GET", "/v1/model"): "read",
    ("GET", "/v1/models"): "read",
    ("GET", "/v1/models/clv"): "read",
    ("GET", "/v1/reports/funnel"): "read",
    ("GET", "/v1/reports/rfm"): "read",
    ("GET", "/v1/reports/churn-risk"): "read",
    ("GET", "/v1/reports/personas"): "read",
    ("GET", "/v1/reports/forecast"): "read",
    ("GET", "/v1/reports/groups"): "read",
    ("GET", "/v1/reports/interests"): "read",
    ("GET", "/v1/reports/journey"): "read",
    ("GET", "/v1/reports/score-quality"): "read",
    ("GET", "/v1/contacts/{contact_id}/interests"): "read",
    ("GET", "/v1/contacts/{contact_id}/journey"): "read",
    ("GET", "/v1/reports/overview"): "read",
    ("POST", "/v1/webhooks"): "admin",
    ("GET", "/v1/webhooks"): "admin",
    ("GET", "/v1/webhooks/{webhook_id}"): "admin",
    ("PATCH", "/v1/webhooks/{webhook_id}"): "admin",
    ("DELETE", "/v1/webhooks/{webhook_id}"): "admin",
    ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"): "admin",
    ("POST", "/v1/webhooks/{webhook_id}/test"): "admin",
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): "admin",
    ("POST", "/v1/regulations"): "admin",
    ("GET", "/v1/regulations"): "admin",
    ("GET", "/v1/regulations/{regulation_id}"): "admin",
    ("GET", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}"): "admin",
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"): "admin",
    ("POST", "/v1/webhooks/{webhook_id}/deliveries:retry-failed"): "admin",
}
SCOPE_OF_DEPENDENCY = {
    deps.require_read: "read",
    deps.ready_readers: "read",
    deps.authorised_readers: "read",
    deps.require_write: "write",
    deps.require_admin: "admin",
}
KEY_OF = {"read": READ, "write": WRITE, "admin": ADMIN}
SHORT_OF = {"write": READ, "admin": WRITE}  # a valid key one scope short


def code_of(response: httpx.Response) -> str:
    """The error code, in the problem+json shape or the older ``{"error": {...}}`` one."""
    body = response.json()
    return str(body.get("code") or body["error"]["code"])


def make_replica() -> Replica:
    return ready_replica(MODEL, {}, T0)


def make_app(keys: str = KEYS, **settings: Any) -> FastAPI:
    return create_api(Settings(api_keys=keys, **settings), model=MODEL, replica=make_replica(), clock=lambda: T0)  # type: ignore[arg-type]


def send(app: FastAPI, requests: list[tuple[str, str, str | None]]) -> list[httpx.Response]:
    """``(method, path, key)`` each; JSON bodies where a route takes one."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async def go() -> list[httpx.Response]:
        out = []
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            for method, path, key in requests:
                headers = {} if key is None else {"Authorization": f"Bearer {key}"}
                body = {"ids": ["x"]} if path.endswith(":batchGet") else {} if method in ("POST", "PATCH") else None
                out.append(await client.request(method, path, headers=headers, json=body))
        return out

    return asyncio.run(go())


def calls(dependant: Dependant) -> list[Any]:
    """Every function a route's dependencies call, depth first."""
    found = []
    for sub in dependant.dependencies:
        found.append(sub.call)
        found += calls(sub)
    return found


def api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Every API route of ``routes``, those of included routers too (FastAPI 0.16x keeps an
    included router as one route that holds the router)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from api_routes(included.routes)
        elif isinstance(route, APIRoute):
            yield route


def scoped_routes(app: FastAPI) -> dict[tuple[str, str], str]:
    """(method, path) -> the scope its dependencies ask for, for every API route that is not public."""
    out: dict[tuple[str, str], str] = {}
    for route in api_routes(app.routes):
        if route.name.startswith("collect"):
            continue
        if route.endpoint.__module__.startswith("console."):  # signed in by cookie: tests/console/test_routes.py
            continue
        if route.path in PUBLIC_PATHS or route.path.startswith(PUBLIC_PREFIXES):
            continue
        scopes = {SCOPE_OF_DEPENDENCY[c] for c in calls(route.dependant) if c in SCOPE_OF_DEPENDENCY}
        for method in route.methods or ():
            out[(method, route.path)] = max(scopes, key=SCOPES.index) if scopes else "none"
    return out


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_every_route_has_the_scope_of_the_table() -> None:
    """A new route needs a scope (or a place among the public ones) and a line in the table."""
    assert scoped_routes(make_app()) == ROUTE_SCOPES


def test_every_route_refuses_a_missing_an_unknown_and_a_short_key() -> None:
    app = make_app()
    routes = sorted(scoped_routes(app).items())
    assert len(routes) == len(ROUTE_SCOPES)
    requests = []
    for (method, path), scope in routes:
        url = concrete(path)
        requests += [(method, url, None), (method, url, "unknown-key-0123456789"), (method, url, KEY_OF[scope])]
        requests += [(method, url, ALL)]
        if scope in SHORT_OF:
            requests.append((method, url, SHORT_OF[scope]))
    answers = iter(send(app, requests))
    for (method, path), scope in routes:
        missing, unknown, holder, every = next(answers), next(answers), next(answers), next(answers)
        where = f"{method} {path}"
        assert (missing.status_code, code_of(missing)) == (401, "unauthorized"), where
        assert missing.headers["www-authenticate"] == "Bearer", where
        assert (unknown.status_code, code_of(unknown)) == (401, "unauthorized"), where
        assert holder.status_code not in (401, 403, 429), (where, holder.text)
        assert every.status_code not in (401, 403, 429), (where, every.text)
        if scope in SHORT_OF:
            short = next(answers)
            assert (short.status_code, code_of(short)) == (403, "insufficient_scope"), where
            assert repr(scope) in short.text, where  # names the scope needed


def test_scopes_nest_admin_write_read() -> None:
    assert parse_entry(f"{READ}:read").scopes == {"read"}
    assert parse_entry(f"{READ}:write").scopes == {"read", "write"}
    assert parse_entry(f"{READ}:admin").scopes == {"read", "write", "admin"}
    assert parse_entry(f"{READ}:read+admin").scopes == {"read", "write", "admin"}
    assert parse_entry(f"{READ}:*").scopes == set(SCOPES)
    bare = parse_entry(READ)
    assert bare.scopes == set(SCOPES) and not bare.scoped  # a bare key: every scope, as before scopes
    assert parse_entry(f"{READ}:read").scoped


def test_entries_names_and_hashes() -> None:
    key = "a-random-key-0123456789"
    plain, hashed, named = parse_entries(
        [
            key,
            f"sha256:{hashlib.sha256(b'other-key-0123456789').hexdigest().upper()}:read",
            "third-key-0123456789:read:crm",
        ]
    )
    assert plain.digest == digest(key) and plain.name == f"key-{digest(key).hex()[:8]}" and not plain.hashed
    assert hashed.digest == digest("other-key-0123456789") and hashed.hashed and hashed.scopes == {"read"}
    assert named.name == "crm"


@pytest.mark.parametrize(
    ("entries", "fault"),
    [
        (["short-key"], "at least 16 characters"),
        (["secret-part-0123456789:reed"], "scopes are read, write or admin"),
        (["secret-part-0123456789:read:bad name"], "name is 1-64"),
        (["secret-part-0123456789:read:crm:more"], "an API key entry is"),
        (["sha256:abcd:read"], "64 hex digits"),
        (["secret-part-0123456789", "secret-part-0123456789:read"], "listed twice"),
        (["secret-part-0123456789:read:crm", "other-part-0123456789:read:crm"], "share the name 'crm'"),
    ],
)
def test_malformed_entries_are_refused_without_the_key(entries: list[str], fault: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fault)) as raised:
        Settings(api_keys=",".join(entries))  # type: ignore[arg-type]
    assert "secret-part" not in str(raised.value) and "reed" not in str(raised.value)


def test_the_key_of_an_entry_for_the_demo_and_run() -> None:
    assert key_of(READ) == READ and key_of(f"{READ}:read:crm") == READ
    assert key_of(new_key("read")[1]) is None  # hashed: the key is not known


def test_a_hashed_key_is_accepted_and_its_text_is_not_kept() -> None:
    key, entry = new_key("read", "crm")
    app = make_app(entry)
    assert key not in repr(app.state.api_keys.by_digest)
    model, webhooks, other = send(
        app, [("GET", "/v1/model", key), ("GET", "/v1/webhooks", key), ("GET", "/v1/model", entry)]
    )
    assert model.status_code == 200
    assert (webhooks.status_code, code_of(webhooks)) == (403, "insufficient_scope")
    assert "'crm'" in webhooks.text  # the key's name, never the key
    assert key not in webhooks.text
    assert other.status_code == 401  # the entry itself is no key


def test_the_direct_contact_path_checks_the_key_too() -> None:
    app = make_app(f"{READ}:read")
    known, unknown = send(app, [("GET", "/v1/contacts/nobody", READ), ("GET", "/v1/contacts/nobody", ALL)])
    assert known.status_code == 404 and unknown.status_code == 401


def test_readyz_shows_its_detail_only_with_a_valid_key() -> None:
    app = make_app()
    anonymous, wrong, read, admin = send(
        app,
        [
            ("GET", "/readyz", None),
            ("GET", "/readyz", "unknown-key-0123456789"),
            ("GET", "/readyz", READ),
            ("GET", "/readyz", ADMIN),
        ],
    )
    assert {r.status_code for r in (anonymous, wrong, read, admin)} == {503}  # not caught up: same status
    assert anonymous.json() == {"status": "not_ready", "detail": {}} == wrong.json()
    assert read.json()["detail"]["replica_caught_up"] is True and read.json() == admin.json()
    assert send(app, [("GET", "/healthz", None)])[0].json() == {"status": "ok", "detail": {}}


@pytest.mark.parametrize(
    ("env", "docs", "served"),
    [
        ("development", None, True),
        ("production", None, False),
        ("production", True, True),
        ("development", False, False),
    ],
)
def test_docs_are_off_in_production_unless_asked(env: str, docs: bool | None, served: bool) -> None:
    app = make_app(env=env, api_docs=docs)
    answers = send(app, [("GET", "/docs", None), ("GET", "/redoc", None), ("GET", "/openapi.json", None)])
    assert [r.status_code for r in answers] == ([200] * 3 if served else [404] * 3)
    assert make_app(env=env, api_docs=docs).openapi()["paths"]  # the document itself is still built


def test_production_warns_about_keys_with_every_scope(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="api.keys"):
        make_app(f"{READ}:read:crm,{ALL}", env="production")
        make_app(ALL)  # development: no warning
    warned = [r.getMessage() for r in caplog.records if r.name == "api.keys"]
    assert len(warned) == 1 and f"key-{digest(ALL).hex()[:8]} has every scope" in warned[0]
    assert ALL not in warned[0] and "crm" not in warned[0]


def test_cli_keys_new_prints_a_key_and_its_hashed_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["keys", "new", "--scopes", "read+write", "--name", "etl"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"^key:\s+(\S+)$", out, flags=re.MULTILINE)
    entry = re.search(r"^entry:\s+(\S+)$", out, flags=re.MULTILINE)
    assert key and entry, out
    parsed = parse_entry(entry[1])
    assert parsed.digest == digest(key[1]) and parsed.hashed and parsed.name == "etl"
    assert parsed.scopes == {"read", "write"} and len(key[1]) >= 40
    assert cli_main(["keys", "new", "--scopes", "read"]) == 0
    assert key[1] not in capsys.readouterr().out  # a new key each time
    with pytest.raises(SystemExit):
        cli_main(["keys", "new", "--scopes", "owner"])
