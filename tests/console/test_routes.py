"""Every console route but the sign-in page asks for a signed-in session, admin pages and actions
for an admin one; sign-in gives a cookie that holds no key; the console's errors are HTML pages,
the API's stay problem documents."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import SecretStr

from api.app import create_api
from console.session import admin_viewer, console_secret, viewer
from schemas.settings import Settings
from tests.api.test_keys import api_routes, calls

ADMIN, READER = "console-admin-0123456789", "console-reader-012345678"
PUBLIC = {"sign_in_form", "sign_in"}
Test = Callable[[httpx.AsyncClient], Awaitable[None]]


def settings(tmp_path: Path, **more: object) -> Settings:
    keys = [SecretStr(f"{ADMIN}:admin:boss"), SecretStr(f"{READER}:read:reader")]
    return Settings(data_dir=tmp_path, api_keys=keys, **more)  # type: ignore[arg-type]


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return create_api(settings(tmp_path))


def run(app: FastAPI, test: Test, base: str = "http://testserver") -> None:
    """``test`` with a client on ``app`` (cookies kept between its requests)."""

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as client:
            await test(client)

    asyncio.run(go())


def console_routes(app: FastAPI) -> Iterator[APIRoute]:
    for route in api_routes(app.routes):
        if route.endpoint.__module__.startswith("console."):
            yield route


def test_every_console_route_but_sign_in_needs_a_session(app: FastAPI) -> None:
    routes = list(console_routes(app))
    assert len(routes) > 15  # every page module's routes are there
    for route in routes:
        needs = set(calls(route.dependant)) & {viewer, admin_viewer}
        if route.name in PUBLIC:
            assert not needs, route.path
        else:
            assert needs, f"{route.methods} {route.path} ({route.name}) asks for no signed-in session"
    admin_only = {r.path for r in routes if admin_viewer in calls(r.dependant)}
    assert {"/console/webhooks", "/console/models"} <= admin_only


def test_signed_out_pages_go_to_sign_in_and_come_back(app: FastAPI) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        for path in ("/console", "/console/funnel?mode=sequential", "/console/contacts/user-1", "/console/models"):
            answer = await client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/console/sign-in?next=%2Fconsole"), path
        signed = await client.post("/console/sign-in", data={"key": READER, "next": "/console/funnel"})
        assert (signed.status_code, signed.headers["location"]) == (303, "/console/funnel")
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
        assert "Secure" not in cookie  # development (production: test_the_cookie_is_secure_outside_development)
        assert READER not in cookie
        assert (await client.get("/console/models")).status_code == 403
        assert (await client.post("/console/sign-out", data={"csrf": "forged"})).status_code == 403

    run(app, test)


def test_an_unknown_key_and_a_foreign_target_are_refused(app: FastAPI) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        wrong = await client.post("/console/sign-in", data={"key": "nope-nope-nope-nope"})
        assert wrong.status_code == 401 and "not one this API knows" in wrong.text
        assert "set-cookie" not in wrong.headers
        away = await client.post("/console/sign-in", data={"key": ADMIN, "next": "https://evil.example/x"})
        assert away.headers["location"] == "/console"  # never sent to another site
        again = await client.get("/console/sign-in", params={"next": "//evil.example"})
        assert again.status_code == 303 and again.headers["location"] == "/console"

    run(app, test)


def test_a_forged_cookie_or_a_gone_key_is_no_session(app: FastAPI) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        client.cookies.set("scorestream_console", "eyJrIjoiMDAifQ.forged.sig", path="/console")
        assert (await client.get("/console")).status_code == 303

    run(app, test)
    sessions = app.state.console_sessions
    signed_for_nobody = sessions.serializer.dumps({"k": "00" * 32, "n": "x"})  # signed, no such key
    assert sessions.viewer(signed_for_nobody) is None


def test_the_cookie_is_secure_outside_development(tmp_path: Path) -> None:
    production = settings(tmp_path, env="production", console_secret=SecretStr("s" * 64))

    async def test(client: httpx.AsyncClient) -> None:
        signed = await client.post("/console/sign-in", data={"key": ADMIN})
        assert signed.status_code == 303 and "Secure" in signed.headers["set-cookie"]

    run(create_api(production), test, base="https://testserver")


def test_console_errors_are_pages_and_api_errors_problems(app: FastAPI) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await client.post("/console/sign-in", data={"key": READER})
        page = await client.get("/console/no-such-page")
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
        problem = await client.get("/v1/no-such-route")
        assert problem.status_code == 404 and problem.headers["content-type"] == "application/problem+json"
        signed_page = await client.get("/console/sign-in?next=/console")
        assert signed_page.status_code == 303  # already signed in: straight on

    run(app, test)


def test_pages_carry_the_security_headers(app: FastAPI) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        page = await client.get("/console/sign-in")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy

    run(app, test)


def test_the_secret_is_made_once_and_kept_private(tmp_path: Path) -> None:
    plain = Settings(data_dir=tmp_path)
    first, again = console_secret(plain), console_secret(plain)
    assert first == again and len(first) == 64
    assert (tmp_path / "console-secret").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["console-secret"]  # no draft left behind
    assert console_secret(Settings(data_dir=tmp_path, console_secret=SecretStr("given"))) == b"given"


def test_an_admin_page_is_audited_with_the_keys_name_and_the_route(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await client.post("/console/sign-in", data={"key": ADMIN})
        with caplog.at_level("INFO", logger="scorestream.audit"):
            await client.get("/console/webhooks")

    run(app, test)
    (line,) = [r for r in caplog.records if getattr(r, "audit", None) == "admin_request"]
    assert (line.key_name, line.route, line.method) == ("boss", "/console/webhooks", "GET")  # type: ignore[attr-defined]
