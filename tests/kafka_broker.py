"""Start and stop the local single-node Kafka of ``deploy/kafka/kafka.sh`` from Python.

Plain helpers (no pytest import) for test fixtures and benchmarks::

    bootstrap = ensure_broker(tmp_dir / "kafka", 19092)   # "127.0.0.1:19092"
    ...
    stop_broker(tmp_dir / "kafka", 19092)

The first call may download the Kafka jars with Maven (seconds, once per checkout); later cold
starts take a few seconds, and a broker already running from the same data directory is reused.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"
HOST = "127.0.0.1"

# Generous: the first start may run Maven to fetch the jars before the broker's own 60 s timeout.
_START_TIMEOUT_S = 600.0
_STOP_TIMEOUT_S = 120.0


class KafkaBrokerError(RuntimeError):
    """kafka.sh failed; the message carries its output (including the broker log tail)."""


def _env(
    data_dir: Path,
    port: int,
    controller_port: int | None = None,
    extra_props: Mapping[str, str] | None = None,
    scram_users: Iterable[str] = (),
) -> dict[str, str]:
    env = dict(os.environ)
    env["SCORESTREAM_KAFKA_DIR"] = str(Path(data_dir).resolve())
    env["SCORESTREAM_KAFKA_PORT"] = str(port)
    if controller_port is not None:
        env["SCORESTREAM_KAFKA_CONTROLLER_PORT"] = str(controller_port)
    else:
        env.pop("SCORESTREAM_KAFKA_CONTROLLER_PORT", None)
    if extra_props:
        env["SCORESTREAM_KAFKA_EXTRA_PROPS"] = "\n".join(f"{k}={v}" for k, v in extra_props.items())
    else:
        env.pop("SCORESTREAM_KAFKA_EXTRA_PROPS", None)
    env["SCORESTREAM_KAFKA_SCRAM_USERS"] = "\n".join(scram_users)
    return env


def _run(args: list[str], env: Mapping[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["bash", str(KAFKA_SH), *args],
            env=dict(env),
            cwd=str(REPO_ROOT),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise KafkaBrokerError(f"kafka.sh {' '.join(args)} timed out after {timeout:.0f}s") from exc


def ensure_broker(
    data_dir: Path,
    port: int,
    *,
    controller_port: int | None = None,
    extra_props: Mapping[str, str] | None = None,
    scram_users: Iterable[str] = (),
) -> str:
    """Start (or reuse) a broker whose data lives in ``data_dir``; return its bootstrap address.

    The controller listens on ``controller_port`` (default: a free port the system picks; ``port
    + 1`` may belong to another process's connection). ``extra_props`` are
    appended to server.properties (for example ``{"log.segment.bytes": "1048576"}``); they only
    take effect when this call starts the broker, not when it reuses a running one. ``scram_users``
    (``SCRAM-SHA-512=[name=alice,password=...]``) are made when the storage is formatted (a new
    ``data_dir``).
    """
    if controller_port is None:
        with socket.socket() as s:
            s.bind((HOST, 0))
            controller_port = int(s.getsockname()[1])
    env = _env(data_dir, port, controller_port, extra_props, scram_users)
    proc = _run(["start"], env, _START_TIMEOUT_S)
    if proc.returncode != 0:
        raise KafkaBrokerError(
            f"kafka.sh start failed (exit {proc.returncode}) for {data_dir} port {port}:\n{proc.stdout}{proc.stderr}"
        )
    expected = f"{HOST}:{port}"
    lines = proc.stdout.strip().splitlines()
    bootstrap = lines[-1].strip() if lines else ""
    if bootstrap != expected:
        # A broker from this data dir was already running on another port.
        raise KafkaBrokerError(f"broker in {data_dir} is running at {bootstrap or '?'}, not {expected}:\n{proc.stderr}")
    return bootstrap


def stop_broker(data_dir: Path, port: int) -> None:
    """Stop the broker of ``data_dir`` (SIGTERM, SIGKILL after 30 s). No-op if it is not running."""
    proc = _run(["stop"], _env(data_dir, port), _STOP_TIMEOUT_S)
    if proc.returncode != 0:
        raise KafkaBrokerError(f"kafka.sh stop failed (exit {proc.returncode}):\n{proc.stderr}")


def broker_running(data_dir: Path, port: int) -> bool:
    """True if a broker started from ``data_dir`` is alive."""
    return _run(["status"], _env(data_dir, port), 30.0).returncode == 0


# ----------------------------------------------------------------------------- a secured listener
SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files made by :func:`make_tls` (a CA of the test's own, certificates it signed)."""

    ca: Path  # the CA certificate: the clients' SCORESTREAM_KAFKA_SSL_CA_FILE
    broker: Path  # the broker's PKCS#8 key and certificate chain (ssl.keystore.type=PEM)
    client: Path  # a client certificate (chain) and its key, signed by the same CA (mutual TLS)
    other_ca: Path  # a CA that signed none of them: a client trusting it refuses the broker


def make_tls(directory: Path, hosts: tuple[str, ...] = (HOST, "localhost")) -> TlsFiles:
    """A CA and the broker's and a client's certificates (for ``hosts``) in ``directory``."""
    import trustme
    from cryptography.hazmat.primitives import serialization

    directory.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert(*hosts)
    client = ca.issue_cert("scorestream-client")

    def pkcs8(key_pem: bytes) -> bytes:  # Kafka's PEM keystore reads PKCS#8 keys only
        key = serialization.load_pem_private_key(key_pem, password=None)
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    files = TlsFiles(
        ca=directory / "ca.pem",
        broker=directory / "broker.pem",
        client=directory / "client.pem",
        other_ca=directory / "other-ca.pem",
    )
    files.ca.write_bytes(ca.cert_pem.bytes())
    files.other_ca.write_bytes(other.cert_pem.bytes())
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    files.broker.write_bytes(pkcs8(leaf.private_key_pem.bytes()) + chain)
    files.client.write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems) + client.private_key_pem.bytes())
    for path in (files.broker, files.client):
        path.chmod(0o600)
    return files


def secured_props(
    port: int,
    controller_port: int,
    sasl_ssl_port: int,
    tls: TlsFiles,
    plain_users: Mapping[str, str] | None = None,
    mtls_port: int | None = None,
) -> dict[str, str]:
    """Extra server properties for a broker that also listens for SASL_SSL on ``sasl_ssl_port``
    (SCRAM-SHA-512 and -256, and PLAIN for ``plain_users``), its certificate ``tls.broker``. The
    PLAINTEXT listener (readiness probe, inter-broker) and the controller stay on loopback.
    SCRAM users are made when the storage is formatted: ``ensure_broker(..., scram_users=...)``.
    ``mtls_port``: also an SSL listener there that requires a client certificate (``tls.client``)."""
    name = "listener.name.sasl_ssl"
    plain = " ".join(f'user_{user}="{password}"' for user, password in (plain_users or {}).items())
    mechanisms = "SCRAM-SHA-512,SCRAM-SHA-256" + (",PLAIN" if plain_users else "")
    props = {
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port},SASL_SSL://{HOST}:{sasl_ssl_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port},SASL_SSL://{HOST}:{sasl_ssl_port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
        f"{name}.sasl.enabled.mechanisms": mechanisms,
        f"{name}.scram-sha-512.sasl.jaas.config": SCRAM_LOGIN,
        f"{name}.scram-sha-256.sasl.jaas.config": SCRAM_LOGIN,
        f"{name}.ssl.keystore.type": "PEM",
        f"{name}.ssl.keystore.location": str(tls.broker),
    }
    if mtls_port is not None:  # an SSL listener requiring a client certificate signed by the CA (mutual TLS)
        props["listeners"] += f",SSL://{HOST}:{mtls_port}"
        props["advertised.listeners"] += f",SSL://{HOST}:{mtls_port}"
        props["listener.security.protocol.map"] += ",SSL:SSL"
        props["listener.name.ssl.ssl.keystore.type"] = "PEM"
        props["listener.name.ssl.ssl.keystore.location"] = str(tls.broker)
        props["listener.name.ssl.ssl.truststore.type"] = "PEM"
        props["listener.name.ssl.ssl.truststore.location"] = str(tls.ca)
        props["listener.name.ssl.ssl.client.auth"] = "required"
    if plain_users:
        props[f"{name}.plain.sasl.jaas.config"] = (
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain};"
        )
    return props
