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
from collections.abc import Mapping
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
) -> str:
    """Start (or reuse) a broker whose data lives in ``data_dir``; return its bootstrap address.

    The controller listens on ``controller_port`` (default: a free port the system picks; ``port
    + 1`` may belong to another process's connection). ``extra_props`` are
    appended to server.properties (for example ``{"log.segment.bytes": "1048576"}``); they only
    take effect when this call starts the broker, not when it reuses a running one.
    """
    if controller_port is None:
        with socket.socket() as s:
            s.bind((HOST, 0))
            controller_port = int(s.getsockname()[1])
    env = _env(data_dir, port, controller_port, extra_props)
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
