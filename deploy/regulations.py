"""``scorestream regulations``: the regulations API from the command line (create, get, list).

It talks to the HTTP API (``--url``, default ``SCORESTREAM_API_URL`` or
``http://127.0.0.1:$SCORESTREAM_API_PORT``) with an admin key (``--key`` or ``SCORESTREAM_API_KEY``),
as Segment's tooling talks to its Public API: the API validates, makes the regulation durable,
audits it under the key's name and carries it out; the command needs no Kafka nor settings. The
answers are printed as the API gives them (JSON); a refusal's problem goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import httpx

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
TYPES = ("SUPPRESS", "SUPPRESS_WITH_DELETE", "DELETE_ONLY", "UNSUPPRESS")
SUBJECTS = ("USER_ID", "ANONYMOUS_ID", "EMAIL")


def default_url() -> str:
    return os.environ.get("SCORESTREAM_API_URL") or f"http://127.0.0.1:{os.environ.get('SCORESTREAM_API_PORT', '8000')}"


def add_parser(sub: Any) -> None:
    """The ``regulations`` sub-command and its own sub-commands (every option with its help)."""
    reg = sub.add_parser(
        "regulations",
        help="privacy regulations through the API: create (suppress, delete, unsuppress), get, list",
    )
    reg.add_argument("--url", default=None, help="the API's base URL (default: SCORESTREAM_API_URL, else local)")
    reg.add_argument("--key", default=None, help="an API key with the admin scope (default: SCORESTREAM_API_KEY)")
    reg_sub = reg.add_subparsers(dest="regulations_command", required=True)
    create = reg_sub.add_parser("create", help="create a regulation; prints its id")
    create.add_argument("--type", required=True, choices=TYPES, help="the regulation type")
    create.add_argument("--subject-type", required=True, choices=SUBJECTS, help="what the ids are")
    create.add_argument(
        "--idempotency-key", default=None, help="the same body and key within 24 hours give the same regulation"
    )
    create.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="seconds to wait for it to finish, printing its status at the end (default 0: do not wait)",
    )
    create.add_argument("ids", nargs="+", help="the subject ids (up to 5,000; `-` reads them from stdin, one a line)")
    get = reg_sub.add_parser("get", help="a regulation's status, overall and per store")
    get.add_argument("id", help="the regulation's id")
    listing = reg_sub.add_parser("list", help="the regulations, newest first")
    listing.add_argument("--status", default=None, help="only those with this status (pending, running, done, failed)")
    listing.add_argument("--count", type=int, default=50, help="regulations per page (default 50)")
    listing.add_argument("--cursor", default=None, help="the page after this cursor (the previous page's next)")


def _answer(response: httpx.Response) -> tuple[int, Any]:
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text}
    if response.is_success:
        return EXIT_OK, body
    print(json.dumps(body, indent=2), file=sys.stderr)
    return (EXIT_USAGE if 400 <= response.status_code < 500 else EXIT_ERROR), None


def command(args: argparse.Namespace, client: httpx.Client | None = None) -> int:
    """Run ``regulations <create|get|list>``; its exit status."""
    key = args.key or os.environ.get("SCORESTREAM_API_KEY")
    if not key:
        print("scorestream regulations: an admin API key is needed (--key or SCORESTREAM_API_KEY)", file=sys.stderr)
        return EXIT_USAGE
    client = client or httpx.Client(base_url=args.url or default_url(), timeout=30.0)
    client.headers["Authorization"] = f"Bearer {key}"
    try:
        return _run(args, client)
    except httpx.HTTPError as exc:
        print(f"scorestream regulations: the API did not answer ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_ERROR
    finally:
        client.close()


def _run(args: argparse.Namespace, client: httpx.Client) -> int:
    if args.regulations_command == "get":
        code, body = _answer(client.get(f"/v1/regulations/{args.id}"))
    elif args.regulations_command == "list":
        params = {k: v for k, v in (("status", args.status), ("count", args.count), ("cursor", args.cursor)) if v}
        code, body = _answer(client.get("/v1/regulations", params=params))
    else:
        ids = [line.strip() for line in sys.stdin if line.strip()] if args.ids == ["-"] else args.ids
        payload = {"regulationType": args.type, "subjectType": args.subject_type, "subjectIds": ids}
        headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
        code, body = _answer(client.post("/v1/regulations", json=payload, headers=headers))
        if code == EXIT_OK and args.wait > 0:
            code, body = _wait(client, body["data"]["regulateId"], args.wait)
    if body is not None:
        print(json.dumps(body, indent=2))
    return code


def _wait(client: httpx.Client, reg_id: str, seconds: float) -> tuple[int, Any]:
    """Poll until the regulation is done or failed (EXIT_ERROR if failed or not finished in time)."""
    deadline = time.monotonic() + seconds
    while True:
        code, body = _answer(client.get(f"/v1/regulations/{reg_id}"))
        if code != EXIT_OK:
            return code, None
        status = body["data"]["regulation"]["status"]
        if status in ("done", "failed") or time.monotonic() > deadline:
            return (EXIT_OK if status == "done" else EXIT_ERROR), body
        time.sleep(0.5)
