"""Kafka clients built from one connection description.

Every aiokafka client of scorestream, and the Faust app's broker, is configured by
:func:`connection` (what every client of a deployment shares: where the brokers are and how to
reach them: TLS, SASL) plus the options of its own use (acks, fetch sizes, a group, a client id)::

    kafka = KafkaConnection.of(settings)        # or KafkaConnection("127.0.0.1:9092") in the bench
    producer = clients.producer(kafka, acks="all")
    consumer = clients.consumer(settings, "topic", group_id="g")   # settings work as well

:func:`check` is the preflight every process runs at start (``deploy/cli.py``): it connects as the
clients will and turns a refused login, an untrusted certificate or an unreachable cluster into
one :class:`KafkaUnavailable` line, instead of the clients' endless retries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from kafka_io.errors import KafkaIoError
from schemas.settings import Settings

SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})


class KafkaUnavailable(KafkaIoError):
    """The cluster cannot be used with this connection; the message is one line naming the cause
    and the variables to check (never a secret)."""


@dataclass(frozen=True)
class KafkaConnection:
    """How to reach the Kafka cluster: the bootstrap servers (``host:port``, comma-separated) and
    the security every client uses (``SCORESTREAM_KAFKA_*``, docs/operations.md "Secured Kafka").

    Secrets (the SASL password, the key password) are left out of ``repr``."""

    bootstrap: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_file: str | None = None
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True

    @classmethod
    def of(cls, kafka: KafkaConnection | Settings) -> KafkaConnection:
        """The connection of ``kafka`` (the one place settings become a connection)."""
        if isinstance(kafka, KafkaConnection):
            return kafka
        password = kafka.kafka_password
        key_password = kafka.kafka_ssl_key_password
        return cls(
            bootstrap=kafka.kafka_bootstrap,
            security_protocol=kafka.kafka_security_protocol,
            sasl_mechanism=kafka.kafka_sasl_mechanism,
            sasl_username=kafka.kafka_sasl_username,
            sasl_password=password.get_secret_value() if password is not None else None,
            ssl_ca_file=_text(kafka.kafka_ssl_ca_file),
            ssl_cert_file=_text(kafka.kafka_ssl_cert_file),
            ssl_key_file=_text(kafka.kafka_ssl_key_file),
            ssl_key_password=key_password.get_secret_value() if key_password is not None else None,
            ssl_check_hostname=kafka.kafka_ssl_check_hostname,
        )

    def at(self, bootstrap: str) -> KafkaConnection:
        """The same security towards other bootstrap servers."""
        return dataclasses.replace(self, bootstrap=bootstrap)

    @property
    def sasl(self) -> bool:
        return self.security_protocol in SASL_PROTOCOLS

    @property
    def tls(self) -> bool:
        return self.security_protocol in TLS_PROTOCOLS

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of every client (one per distinct configuration, shared), None without TLS."""
        if not self.tls:
            return None
        return _ssl_context(
            self.ssl_ca_file, self.ssl_cert_file, self.ssl_key_file, self.ssl_key_password, self.ssl_check_hostname
        )

    def hosts(self) -> list[tuple[str, int]]:
        """The bootstrap servers as (host, port), Kafka's default port 9092 where none is given."""
        out = []
        for server in self.bootstrap.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host:  # no port given
                host, port = port, "9092"
            out.append((host.strip("[]"), int(port)))
        return out

    def describe(self) -> str:
        """``SASL_SSL SCRAM-SHA-512 as 'alice'``: how the clients connect (no secret)."""
        out = self.security_protocol
        if self.sasl:
            out += f" {self.sasl_mechanism} as {self.sasl_username!r}"
        return out


def _text(path: object) -> str | None:
    return None if path is None else str(path)


@functools.lru_cache(maxsize=8)
def _ssl_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None, key_password: str | None, check_hostname: bool
) -> ssl.SSLContext:
    context: ssl.SSLContext = create_ssl_context(
        cafile=ca_file, certfile=cert_file, keyfile=key_file, password=key_password or (lambda: "")
    )  # an empty password, not OpenSSL's prompt on the terminal, for an encrypted key without one
    if not check_hostname:
        context.check_hostname = False
    return context


def connection(kafka: KafkaConnection | Settings) -> dict[str, Any]:
    """The aiokafka keyword arguments every client shares: the bootstrap servers, and TLS and SASL
    when the connection uses them.

    A client id is not among them: a process runs several clients, each names itself if it wants
    to (``client_id=`` in its options)."""
    kafka = KafkaConnection.of(kafka)
    out: dict[str, Any] = {"bootstrap_servers": kafka.bootstrap}
    if kafka.security_protocol != "PLAINTEXT":
        out["security_protocol"] = kafka.security_protocol
    if kafka.tls:
        out["ssl_context"] = kafka.ssl_context()
    if kafka.sasl:
        out["sasl_mechanism"] = kafka.sasl_mechanism
        out["sasl_plain_username"] = kafka.sasl_username
        out["sasl_plain_password"] = kafka.sasl_password
    return out


def consumer(kafka: KafkaConnection | Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """An aiokafka consumer (not started) of ``topics`` (none: assign partitions yourself)."""
    return AIOKafkaConsumer(*topics, **connection(kafka), **options)


def producer(kafka: KafkaConnection | Settings, **options: Any) -> AIOKafkaProducer:
    """An aiokafka producer (not started)."""
    return AIOKafkaProducer(**connection(kafka), **options)


def admin(kafka: KafkaConnection | Settings, **options: Any) -> AIOKafkaAdminClient:
    """An aiokafka admin client (not started)."""
    return AIOKafkaAdminClient(**connection(kafka), **options)


def faust_broker_options(kafka: KafkaConnection | Settings) -> dict[str, Any]:
    """The Faust app's broker settings for the same connection (``faust.App(..., **options)``).

    Faust (faust-streaming 0.15) turns ``broker_credentials`` into the same aiokafka arguments for
    every client it builds (``credentials_to_aiokafka_auth``: its consumer, including the consumer
    thread ``streams/transport.py`` subclasses, its producers and the topic creation that runs on
    their clients); the worker's own restore consumer (``streams/restore.py``) is built here."""
    kafka = KafkaConnection.of(kafka)
    options: dict[str, Any] = {"broker": [f"kafka://{host.strip()}" for host in kafka.bootstrap.split(",")]}
    if kafka.sasl:
        from faust.auth import SASLCredentials

        options["broker_credentials"] = SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password,
            ssl_context=kafka.ssl_context(),  # None: SASL_PLAINTEXT
            mechanism=kafka.sasl_mechanism,
        )
    elif kafka.tls:
        from faust.auth import SSLCredentials

        options["broker_credentials"] = SSLCredentials(kafka.ssl_context())
    return options


async def partitions_of(client: AIOKafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of those of ``topics`` that exist, in order, as the cluster's metadata says
    now (aiokafka has no public call for the partitions of topics a group-less consumer has not
    been assigned yet: a consumer with no subscription knows only what it was told)."""
    cluster = await client._client.fetch_all_metadata()
    return [TopicPartition(t, p) for t in topics for p in sorted(cluster.partitions_for_topic(t) or ())]


# --------------------------------------------------------------------------------- the preflight
async def check(kafka: KafkaConnection | Settings, timeout_s: float = 30.0, retry_s: float = 1.0) -> int:
    """Connect to the bootstrap servers as every client will (TLS handshake, SASL login, a metadata
    request); the number of brokers the cluster lists.

    A refused login, a certificate that fails verification, a failed TLS handshake or a SASL
    mechanism the broker does not offer raise :class:`KafkaUnavailable` at once (retrying cannot
    fix them); an unreachable cluster is retried every ``retry_s`` until ``timeout_s`` has passed,
    then raises it. aiokafka's own clients would log the cause and retry for ever."""
    kafka = KafkaConnection.of(kafka)
    try:
        auth = {name: value for name, value in connection(kafka).items() if name != "bootstrap_servers"}
    except (ssl.SSLError, OSError) as exc:  # settings check them first; a connection made by hand may not load
        raise KafkaUnavailable(f"Kafka TLS: the CA, certificate or key files do not load: {_reason(exc)}") from None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        causes: list[str] = []
        for host, port in kafka.hosts():
            budget = min(max(deadline - loop.time(), 1.0), 10.0)
            try:
                return await asyncio.wait_for(_probe(host, port, auth, budget), budget)
            except (TimeoutError, OSError, KafkaError) as exc:
                fatal = _fatal(kafka, host, port, exc)
                if fatal is not None:
                    raise KafkaUnavailable(fatal) from None
                causes.append(f"{host}:{port}: {_reason(exc)}")
        if loop.time() + retry_s >= deadline:
            raise KafkaUnavailable(
                f"Kafka unreachable at {kafka.bootstrap} ({kafka.describe()}) within {timeout_s:g} s: {'; '.join(causes)} "
                "(check SCORESTREAM_KAFKA_BOOTSTRAP and SCORESTREAM_KAFKA_SECURITY_PROTOCOL)"
            )
        await asyncio.sleep(retry_s)


async def _probe(host: str, port: int, auth: dict[str, Any], budget_s: float) -> int:
    conn = await create_conn(host, port, client_id="scorestream-check", request_timeout_ms=int(budget_s * 1000), **auth)
    try:
        metadata = await conn.send(MetadataRequest([]))
        return len(metadata.brokers)
    finally:
        conn.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    return " ".join(str(exc).split()) or type(exc).__name__


def _fatal(kafka: KafkaConnection, host: str, port: int, exc: BaseException) -> str | None:
    """The one line of a failure that retrying cannot fix, or None (retry)."""
    at = f"{host}:{port}"
    if isinstance(exc, KafkaError) and isinstance(exc.__cause__, ssl.SSLError):
        exc = exc.__cause__  # TLS 1.3: the broker refuses a client certificate after the handshake
    if isinstance(exc, SaslAuthenticationFailed):
        return (
            f"Kafka SASL authentication failed at {at} ({kafka.describe()}): {_reason(exc)} "
            "(check SCORESTREAM_KAFKA_SASL_USERNAME and SCORESTREAM_KAFKA_SASL_PASSWORD)"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return f"Kafka SASL mechanism refused at {at}: {_reason(exc)} (check SCORESTREAM_KAFKA_SASL_MECHANISM)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = "SCORESTREAM_KAFKA_SSL_CA_FILE"
        if "hostname" in str(exc.verify_message).lower():
            hint += ", the bootstrap address and SCORESTREAM_KAFKA_SSL_CHECK_HOSTNAME"
        return f"Kafka TLS certificate of {at} not trusted: {exc.verify_message} (check {hint})"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or _reason(exc))
        if "CERTIFICATE" in reason.upper():  # an alert from the broker: our certificate, or its absence
            hint = (
                "the broker wants a client certificate it trusts: check SCORESTREAM_KAFKA_SSL_CERT_FILE and _KEY_FILE"
            )
        else:
            hint = "is it a TLS listener? check SCORESTREAM_KAFKA_SECURITY_PROTOCOL"
        return f"Kafka TLS handshake with {at} failed: {reason} ({hint})"
    return None
