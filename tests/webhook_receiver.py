"""A real local webhook receiver for tests and benchmarks: ``http.server`` in a thread.

Each path answers by its rule (default 200): a rule gets the request and how many times this
``webhook-id`` was received on that path before, and returns ``(status, headers)``, or sleeps to
play a slow or hanging endpoint. Every request is recorded with its arrival time::

    receiver = Receiver().start()
    receiver.rules["/flaky"] = lambda req, seen: (500, {}) if seen < 2 else (200, {})
    url = receiver.url("/flaky")
    ...
    receiver.stop()
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() on arrival

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


Rule = Callable[[Received, int], tuple[int, dict[str, str]]]


class Receiver:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: a server context; the receiver then speaks HTTPS and :meth:`url` names
        ``localhost`` (the name its certificate must carry)."""
        self.tls = tls
        self.received: list[Received] = []
        self.rules: dict[str, Rule] = {}
        self._seen: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                req = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                with receiver._lock:
                    receiver.received.append(req)
                    seen = receiver._seen[(req.path, req.webhook_id)]
                    receiver._seen[(req.path, req.webhook_id)] += 1
                    rule = receiver.rules.get(req.path)
                status, extra = rule(req, seen) if rule is not None else (200, {})
                answer = b'{"ok":true}' if 200 <= status < 300 else b'{"error":"nope"}'
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # the default 5 drops connections a busy dispatcher opens at once

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that gave up (a timeout) is part of the play

        self._server = Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str) -> str:
        if self.tls is not None:
            return f"https://localhost:{self.port}{path}"
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]


def hang(seconds: float) -> Rule:
    """A rule that keeps the request open ``seconds`` before answering 200."""

    def rule(req: Received, seen: int) -> tuple[int, dict[str, str]]:
        time.sleep(seconds)
        return 200, {}

    return rule
