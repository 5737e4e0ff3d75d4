"""``scorestream regulations``: what it sends the API and how it answers (a mock transport; the
routes themselves are tested in ``tests/api/test_regulations_api.py``, the whole path in
``tests/e2e/test_regulations.py``)."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import pytest

from deploy import regulations
from deploy.cli import _parser

KEY = "admin-key-0123456789abcdef"


class Api:
    def __init__(self, answers: list[tuple[int, Any]]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, body = self.answers.pop(0)
        return httpx.Response(status, json=body)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url="http://api", transport=httpx.MockTransport(self.handle))


def run(api: Api, *argv: str) -> int:
    args = _parser().parse_args(["regulations", "--key", KEY, *argv])
    return regulations.command(args, api.client())


def status(value: str) -> dict[str, Any]:
    return {"data": {"regulation": {"id": "reg_1", "status": value}}}


def test_create_posts_segment_s_body_with_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    api = Api([(200, {"data": {"regulateId": "reg_1"}})])
    code = run(
        api, "create", "--type", "DELETE_ONLY", "--subject-type", "USER_ID", "--idempotency-key", "t-1", "u1", "u2"
    )
    assert code == 0
    (request,) = api.requests
    assert (request.method, request.url.path) == ("POST", "/v1/regulations")
    assert request.headers["authorization"] == f"Bearer {KEY}" and request.headers["idempotency-key"] == "t-1"
    assert json.loads(request.content) == {
        "regulationType": "DELETE_ONLY",
        "subjectType": "USER_ID",
        "subjectIds": ["u1", "u2"],
    }
    assert json.loads(capsys.readouterr().out) == {"data": {"regulateId": "reg_1"}}


def test_create_reads_ids_from_stdin_and_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a@example.com\n\nb@example.com\n"))
    monkeypatch.setattr("deploy.regulations.time.sleep", lambda _: None)
    api = Api([(200, {"data": {"regulateId": "reg_1"}}), (200, status("running")), (200, status("done"))])
    assert run(api, "create", "--type", "SUPPRESS", "--subject-type", "EMAIL", "--wait", "60", "-") == 0
    assert json.loads(api.requests[0].content)["subjectIds"] == ["a@example.com", "b@example.com"]
    assert [r.url.path for r in api.requests[1:]] == ["/v1/regulations/reg_1"] * 2
    failed = Api([(200, {"data": {"regulateId": "reg_1"}}), (200, status("failed"))])
    assert run(failed, "create", "--type", "SUPPRESS", "--subject-type", "EMAIL", "--wait", "60", "x") == 1


def test_get_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    api = Api([(200, status("done")), (200, {"data": {"regulations": [], "pagination": {}}})])
    assert run(api, "get", "reg_1") == 0
    assert run(api, "list", "--status", "failed", "--count", "10") == 0
    assert api.requests[0].url.path == "/v1/regulations/reg_1"
    assert dict(api.requests[1].url.params) == {"status": "failed", "count": "10"}


def test_refusals_are_usage_errors_and_outages_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = Api([(422, {"code": "invalid_request", "detail": "subjectIds: empty"})])
    assert run(refused, "create", "--type", "SUPPRESS", "--subject-type", "USER_ID", " ") == 2
    assert "invalid_request" in capsys.readouterr().err
    assert run(Api([(503, {"code": "not_ready"})]), "get", "reg_1") == 1
    monkeypatch.delenv("SCORESTREAM_API_KEY", raising=False)
    args = _parser().parse_args(["regulations", "get", "reg_1"])
    assert regulations.command(args, Api([]).client()) == 2
    assert "admin API key" in capsys.readouterr().err
