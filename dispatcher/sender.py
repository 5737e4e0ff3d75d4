"""One webhook attempt over HTTP/1.1: POST, bounded in time and in what is read, never
redirected, and never to an address it may not reach.

A small client on asyncio streams with h11 for the protocol (httpcore's pool spent most of the
dispatcher's CPU checking every idle connection on every request). Per origin it keeps idle
keep-alive connections (LIFO); a connection the receiver closed is noticed by the event loop and
dropped before reuse, and a reused one that fails before any answer byte is retried once on a
fresh connection (the receiver saw nothing, or deduplicates on ``webhook-id``).

The SSRF guard sits where the connection is made: :class:`Connector` resolves the host itself,
drops every address :func:`scorestream.delivery.address_refusal` refuses (unless private
addresses are allowed) and connects to a vetted IP, so there is no window between the check and
the connect for a DNS answer to change (no DNS rebinding); TLS still uses the host name for SNI
and certificate checks, and the ``Host`` header is the URL's. No proxy settings are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

from dispatcher.errors import DispatcherError
from schemas.webhooks import MAX_RESPONSE_EXCERPT, AttemptOutcome
from scorestream.delivery import RETRY_AFTER_STATUSES, address_refusal, outcome, parse_retry_after

USER_AGENT = "scorestream-webhooks/1"
KEEPALIVE_S = 30.0  # an idle connection older than this is closed rather than reused
MAX_IDLE_PER_ORIGIN = 32
READ_CHUNK = 65536

Resolver = Callable[[str, int], Awaitable[list[str]]]
Opener = Callable[..., Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class Refused(DispatcherError):
    """The destination may not be connected to (the message says why)."""


async def resolve(host: str, port: int) -> list[str]:
    """The addresses of ``host``, in the resolver's order, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class Connector:
    """Opens connections to vetted addresses only (all addresses when ``allow_private``)."""

    def __init__(
        self,
        allow_private: bool,
        resolver: Resolver = resolve,
        opener: Opener = asyncio.open_connection,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_private = allow_private
        self._resolve = resolver
        self._open = opener
        self._ssl = ssl_context or ssl.create_default_context()

    async def open(self, scheme: str, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        addresses = await self._resolve(host, port)
        vetted: list[str] = []
        refusals: list[str] = []
        for address in addresses:
            reason = None if self.allow_private else address_refusal(address)
            if reason is None:
                vetted.append(address)
            else:
                refusals.append(reason)
        if not vetted:
            raise Refused(f"{host}: " + ("; ".join(refusals[:3]) if refusals else "no address"))
        tls = scheme == "https"
        last: OSError | None = None
        for address in vetted:
            try:
                return await self._open(
                    address, port, ssl=self._ssl if tls else None, server_hostname=host if tls else None
                )
            except OSError as exc:  # ssl.SSLError and ConnectionRefusedError included
                last = exc
        assert last is not None
        raise last


@dataclass(frozen=True, slots=True)
class Answer:
    """What one attempt came to."""

    outcome: AttemptOutcome
    latency_ms: float
    status_code: int | None = None
    error: str | None = None
    response: str | None = None
    retry_after_s: float | None = None


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    proto: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    idle_since: float = 0.0
    reused: bool = False

    def usable(self, now: float) -> bool:
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and self.proto.our_state is h11.IDLE
            and now - self.idle_since < KEEPALIVE_S
        )

    def close(self) -> None:
        self.writer.close()


class _Closed(DispatcherError):
    """A reused connection failed before any byte of an answer."""


def _error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


class Sender:
    """POSTs webhook bodies, keeping idle connections per origin for the process."""

    def __init__(
        self,
        timeout_s: float,
        max_response_bytes: int,
        allow_private: bool,
        connector: Connector | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self.connector = connector or Connector(allow_private)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> Answer:
        """One attempt: ``outcome`` per :func:`scorestream.delivery.outcome` for an answer,
        ``timeout``/``connection_error``/``refused`` otherwise. At most ``max_response_bytes``
        of the answer are read."""
        started = time.perf_counter()
        try:
            parts = urlsplit(url)
            origin = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        except ValueError as exc:
            return Answer("refused", _ms(started), error=f"not a valid URL: {exc}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = h11.Request(
            method="POST",
            target=target,
            headers=[
                ("host", parts.netloc),
                ("user-agent", USER_AGENT),
                ("content-length", str(len(body))),
                *headers.items(),
            ],
        )
        try:
            async with asyncio.timeout(self.timeout_s):  # the whole attempt, connect and TLS included
                try:
                    status, answer_headers, data = await self._exchange(origin, request, body, reuse=True)
                except _Closed:
                    status, answer_headers, data = await self._exchange(origin, request, body, reuse=False)
        except Refused as exc:
            return Answer("refused", _ms(started), error=str(exc))
        except TimeoutError:
            return Answer("timeout", _ms(started), error=f"no answer in {self.timeout_s:g} s")
        except (OSError, h11.ProtocolError, _Closed) as exc:
            return Answer("connection_error", _ms(started), error=_error(exc))
        retry_after = None
        if status in RETRY_AFTER_STATUSES:
            raw = next((v for k, v in answer_headers if k == b"retry-after"), None)
            retry_after = parse_retry_after(raw.decode("latin-1") if raw else None, time.time())
        text = bytes(data[: self.max_response_bytes]).decode("utf-8", "replace")[:MAX_RESPONSE_EXCERPT]
        result = outcome(status)
        kind: AttemptOutcome = "success" if result == "success" else "gone" if result == "gone" else "http_error"
        return Answer(kind, _ms(started), status_code=status, response=text or None, retry_after_s=retry_after)

    async def _exchange(
        self, origin: tuple[str, str, int], request: h11.Request, body: bytes, reuse: bool
    ) -> tuple[int, list[tuple[bytes, bytes]], bytearray]:
        conn = self._take(origin) if reuse else None
        if conn is None:
            reader, writer = await self.connector.open(*origin)
            conn = _Connection(reader, writer)
        answered = False
        try:
            proto = conn.proto
            conn.writer.write(proto.send(request) + proto.send(h11.Data(data=body)) + proto.send(h11.EndOfMessage()))
            await conn.writer.drain()
            status = 0
            answer_headers: list[tuple[bytes, bytes]] = []
            data = bytearray()
            complete = False
            while True:
                event = proto.next_event()
                if event is h11.NEED_DATA:
                    chunk = await conn.reader.read(READ_CHUNK)
                    answered = answered or bool(chunk)
                    proto.receive_data(chunk)
                elif isinstance(event, h11.Response):
                    status, answer_headers = event.status_code, list(event.headers)
                elif isinstance(event, h11.Data):
                    data += event.data
                    if len(data) >= self.max_response_bytes:
                        break  # enough read; the rest is dropped with the connection
                elif isinstance(event, h11.EndOfMessage):
                    complete = True
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionError("the receiver closed the connection")
        except (OSError, h11.ProtocolError) as exc:
            conn.close()
            if conn.reused and not answered:
                raise _Closed(_error(exc)) from exc
            raise
        except BaseException:
            conn.close()
            raise
        if complete and proto.our_state is h11.DONE and proto.their_state is h11.DONE:
            proto.start_next_cycle()
            self._give_back(origin, conn)
        else:
            conn.close()
        return status, answer_headers, data

    def _take(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now):
                conn.reused = True
                return conn
            conn.close()
        return None

    def _give_back(self, origin: tuple[str, str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def prune(self) -> int:
        """Close idle connections that expired or were closed by their receiver."""
        now = time.monotonic()
        closed = 0
        for origin in list(self._idle):
            keep = []
            for conn in self._idle[origin]:
                if conn.usable(now):
                    keep.append(conn)
                else:
                    conn.close()
                    closed += 1
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]
        return closed

    async def aclose(self) -> None:
        conns = [conn for idle in self._idle.values() for conn in idle]
        self._idle.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await conn.writer.wait_closed()
