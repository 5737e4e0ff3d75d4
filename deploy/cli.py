"""The ``scorestream`` command: run, worker, api, dispatcher, sink, topics, views, replay, shadow, promote,
retire, models, demo, keys, regulations."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx

from deploy import regulations
from deploy.signals import StopOnSignal
from schemas.settings import Settings
from telemetry.logs import configure as configure_logs

log = logging.getLogger("scorestream")
KAFKA_SH = Path(__file__).parent / "kafka" / "kafka.sh"

# Exit statuses of every sub-command (docs/operations.md, "Exit codes"): a supervisor (Kubernetes,
# compose, systemd) restarts on EXIT_ERROR and EXIT_KAFKA, while EXIT_USAGE needs a person.
EXIT_OK = 0  # done (a service: stopped by SIGTERM/SIGINT)
EXIT_ERROR = 1  # failed while running (an exception, a worker that could not start, a service that died)
EXIT_USAGE = 2  # refused as asked: bad arguments, an invalid SCORESTREAM_* setting, a refused model operation
EXIT_KAFKA = 3  # Kafka unreachable or refused the connection (authentication, TLS)
EXIT_CODES_HELP = """exit codes:
  0  done (a service: stopped by SIGTERM or Ctrl-C)
  1  failed while running (an error, a process that died)
  2  refused as asked: bad arguments, an invalid SCORESTREAM_* setting (one line per error), a refused
     shadow/promote/retire
  3  Kafka unreachable, or it refused the connection (authentication, TLS)

Settings come from SCORESTREAM_* environment variables (docs/configuration.md)."""


def package_version() -> str:
    """The installed distribution's version (``scorestream --version``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scorestream")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def dev_key(settings: Settings, name: str = "dev-api-key", prefix: str = "dev_") -> str:
    """A development key kept in ``<data_dir>/<name>`` (created on first use, readable by its owner only)."""
    path = settings.data_dir / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{prefix}{secrets.token_urlsafe(24)}\n")
        path.chmod(0o600)
    return path.read_text().strip()


def kafka(action: str, settings: Settings) -> None:
    env = {**os.environ, "SCORESTREAM_KAFKA_DIR": str((settings.data_dir / "kafka").resolve())}
    port = settings.kafka_bootstrap.rsplit(":", 1)[-1]
    env.setdefault("SCORESTREAM_KAFKA_PORT", port)
    subprocess.run(["bash", str(KAFKA_SH), action], check=True, env=env)


def wait_ready(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def default_workers(settings: Settings) -> int:
    """One worker per core, never more than the partitions (a worker beyond them would sit idle)."""
    return max(1, min(os.cpu_count() or 1, settings.partitions))


def run(settings: Settings, workers: int | None = None) -> int:
    """Broker (unless one is configured), topics, ``workers`` workers (default: one per core, at
    most the partitions), API and webhook dispatcher (and the analytics sink when ClickHouse is a
    server; with embedded chDB the API runs it); Ctrl-C stops what it started.

    The workers share ``SCORESTREAM_DATA_DIR``: each takes the lowest free slot on the host
    (``<data_dir>/worker/<index>`` for its tables; ``streams.worker.claim_slot``), so a worker
    started by hand beside them (``scorestream shadow``, another ``scorestream worker``) is no clash."""
    workers = default_workers(settings) if workers is None else workers
    if workers > settings.partitions:
        log.warning(
            "%d workers for %d partitions: %d of them stay idle (standbys) until another one stops",
            workers,
            settings.partitions,
            workers - settings.partitions,
        )
    started_at = time.monotonic()
    own_broker = "SCORESTREAM_KAFKA_BOOTSTRAP" not in os.environ
    if own_broker:
        kafka("start", settings)
    if not settings.api_keys:
        os.environ["SCORESTREAM_API_KEYS"] = dev_key(settings)
    if not settings.write_keys:  # the HTTP collector's, for SDKs and curl on this machine: every channel
        os.environ["SCORESTREAM_WRITE_KEYS"] = dev_key(settings, "dev-write-key", "wk_dev_") + ":*"
    settings = Settings()
    env = dict(os.environ)
    from kafka_io.topics import ensure_topics

    asyncio.run(ensure_topics(settings))
    from analytics.client import sink_in_api

    # with embedded chDB the API process runs the analytics sink; with a server, a process of its own
    roles = ("api", "dispatcher") if sink_in_api(settings) else ("api", "dispatcher", "sink")
    from deploy.models import live_shadows, worker_env

    def start_workers(base_env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
        return [
            subprocess.Popen(
                [sys.executable, "-m", "deploy.cli", "worker"],
                env={k: v for k, v in base_env.items() if k != "SCORESTREAM_WORKER_INDEX"},
            )
            for _ in range(workers)
        ]

    procs = start_workers(env)
    procs += [subprocess.Popen([sys.executable, "-m", "deploy.cli", role], env=env) for role in roles]
    shadows = live_shadows(settings)  # as many workers for every shadow model namespace too
    for ns in shadows:
        procs += start_workers(worker_env(ns))
    url = f"http://{settings.api_host}:{settings.api_port}"
    signals = StopOnSignal()
    try:
        if wait_ready(url, 180):
            from schemas.api_keys import key_of

            key = key_of(env.get("SCORESTREAM_API_KEYS", "").split(",")[0]) or "<your key: the first entry is hashed>"
            write_key = env.get("SCORESTREAM_WRITE_KEYS", "").split(",")[0].split(":")[0]
            print(f"\nscorestream is ready in {time.monotonic() - started_at:.1f} s", flush=True)
            print(f"  console:  {url}/console   (sign in with the API key below)")
            print(f"  API:      {url}   (OpenAPI: {url}/docs)")
            print(f"  API key:  {key}")
            print(f"  write key (HTTP collector, Segment SDKs' host {url}): {write_key}")
            print(f"  Kafka:    {settings.kafka_bootstrap}   ({workers} worker{'s' if workers > 1 else ''})")
            if shadows:
                print(f"  shadow models: {', '.join(shadows)}   (GET /v1/models; ?model=<namespace>)")
            print(f"  try:      curl -H 'Authorization: Bearer {key}' {url}/v1/model")
            print("  Ctrl-C stops everything.\n", flush=True)
        else:
            log.error("the service did not become ready in 180 s")
            signals.stop()
        while not signals.stopping and all(p.poll() is None for p in procs):
            time.sleep(0.3)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if own_broker:
            kafka("stop", settings)
    return 0 if all(p.returncode in (0, -15) for p in procs) else 1


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1 (got {value})")
    return value


def _parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per process or operation."""
    parser = argparse.ArgumentParser(
        prog="scorestream",
        description=__doc__,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    run_parser = sub.add_parser("run", help="broker + topics + workers + API + dispatcher on embedded defaults")
    run_parser.add_argument(
        "--workers",
        type=positive,
        default=None,
        help="worker processes (default: one per core, at most SCORESTREAM_PARTITIONS); each takes the lowest "
        "free slot <data_dir>/worker/<index> for its tables",
    )
    sub.add_parser(
        "worker", help="one Faust worker (start as many as partitions, on one host or several, same SCORESTREAM_APP_ID)"
    )
    api = sub.add_parser("api", help="the HTTP API")
    api.add_argument(
        "--processes",
        type=positive,
        default=None,
        help="API processes on the API port (default: SCORESTREAM_API_PROCESSES, 1); they share the host's view "
        "store: one follows the topics, the others read it",
    )
    sub.add_parser("dispatcher", help="the webhook dispatcher")
    sub.add_parser("sink", help="the analytics sink: the topics into ClickHouse (with a ClickHouse server)")
    sub.add_parser("topics", help="create the topics (idempotent)")
    sub.add_parser(
        "views", help="send the views the API reads of every contact the views topic lacks (after upgrading to views)"
    )
    demo = sub.add_parser("demo", help="publish realistic mixed traffic and show scores moving")
    demo.add_argument("--events", type=int, default=3000, help="events to publish (default 3000)")
    demo.add_argument("--contacts", type=int, default=300, help="distinct contacts they come from (default 300)")
    demo.add_argument("--rate", type=float, default=300.0, help="events per second (default 300)")
    demo.add_argument("--seed", type=int, default=7, help="random seed: the same seed, the same traffic (default 7)")
    rep = sub.add_parser("replay", help="recompute every contact under a model from history and diff it with live")
    rep.add_argument("--model", required=True, help="the model YAML to replay under")
    rep.add_argument(
        "--source",
        choices=("kafka", "archive"),
        default="kafka",
        help="where the history is read: the source topics (default) or the ClickHouse archive",
    )
    rep.add_argument("--from", dest="from_", default=None, help="ISO time: only events at or after it (partial)")
    rep.add_argument("--json", default=None, help="write the result as JSON to this file")
    sh = sub.add_parser("shadow", help="run a model as a shadow beside the active one (from the start of the sources)")
    sh.add_argument("--model", required=True, help="the model YAML")
    sh.add_argument("--name", default=None, help="its namespace (default: <app_id>-<model version>)")
    sh.add_argument("--until-caught-up", action="store_true", help="stop once caught up and compared")
    sh.add_argument("--json", default=None, help="write the comparison with the active model as JSON to this file")
    sh.add_argument(
        "--source",
        choices=("kafka", "archive"),
        default="kafka",
        help="archive: also copy the ClickHouse archive's events for it (when the source topics no longer hold "
        "them all; embedded chDB: with the API stopped)",
    )
    pr = sub.add_parser("promote", help="make a shadow namespace the active model")
    pr.add_argument("namespace", help="the shadow namespace to make active (`scorestream models` lists them)")
    pr.add_argument("--at", default=None, help="ISO time of the cut (default: now + --delay)")
    pr.add_argument("--delay", type=float, default=10.0, help="seconds from now to the cut (default 10)")
    pr.add_argument("--max-lag", type=int, default=10_000, help="refuse if the shadow is further behind")
    rt = sub.add_parser("retire", help="stop serving and starting a (non-active) model namespace")
    rt.add_argument("namespace", help="the namespace to retire (not the active one)")
    sub.add_parser("models", help="list the model namespaces: active, shadows, retired, how far behind")
    keys = sub.add_parser("keys", help="API keys: `keys new` prints a new key and its SCORESTREAM_API_KEYS entry")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="a new random API key and its hashed entry (the key is shown only here)")
    new.add_argument(
        "--scopes",
        type=_scopes_arg,
        default="read",
        help="read, write or admin, several joined by + (admin includes write, write includes read); default read",
    )
    new.add_argument("--name", type=_name_arg, default=None, help="its name in logs and rate limits (default: hashed)")
    regulations.add_parser(sub)
    return parser


def _scopes_arg(text: str) -> str:
    from schemas.api_keys import parse_scopes

    try:
        parse_scopes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _name_arg(text: str) -> str:
    from schemas.api_keys import parse_entry

    try:
        parse_entry(f"sha256:{0:064x}:read:{text}")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _keys_command(args: argparse.Namespace) -> int:
    """``keys new``: the key on stdout with its entry (no settings, no Kafka: runs anywhere)."""
    from schemas.api_keys import new_key

    key, entry = new_key(args.scopes, args.name)
    print(f"key:    {key}")
    print(f"entry:  {entry}")
    print("give the key to its client (it is stored nowhere); add the entry to SCORESTREAM_API_KEYS", file=sys.stderr)
    return EXIT_OK


def load_settings() -> Settings:
    """The settings, or exit with EXIT_USAGE and one line per invalid ``SCORESTREAM_*`` variable
    (the value is never repeated: it may be a key)."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            where = f"SCORESTREAM_{field.upper()}: " if field else ""
            print(f"scorestream: invalid setting {where}{error['msg']}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keys":
        return _keys_command(args)
    if args.command == "regulations":  # through the HTTP API: no settings, no Kafka
        return regulations.command(args)
    settings = load_settings()
    if args.command in ("api", "run") and settings.production_without_keys():
        print(
            f"scorestream {args.command}: SCORESTREAM_API_KEYS must be set when SCORESTREAM_ENV=production",
            file=sys.stderr,
        )
        return EXIT_USAGE
    configure_logs(settings, role=args.command)  # SCORESTREAM_LOG_FORMAT: json or text, every library's lines
    if args.command in ("shadow", "promote", "retire", "models", "replay"):  # a console, not a service log
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    # every command reaches Kafka (`run` with its own broker starts it first; its processes check then)
    external = args.command != "run" or "SCORESTREAM_KAFKA_BOOTSTRAP" in os.environ
    if external and (refused := kafka_preflight(settings)) is not None:
        print(f"scorestream {args.command}: {refused}", file=sys.stderr)
        return EXIT_KAFKA
    return _command(args, settings)


def kafka_preflight(settings: Settings) -> str | None:
    """None when the Kafka cluster answers the way every client of this process will connect (TLS,
    SASL: ``kafka_io.clients.check``); else the one line naming why not. A refused login, an untrusted
    certificate or a failed TLS handshake fail at once; an unreachable cluster after
    SCORESTREAM_KAFKA_STARTUP_TIMEOUT_S (the clients themselves would retry for ever)."""
    from kafka_io.clients import KafkaConnection, KafkaUnavailable, check

    try:
        brokers = asyncio.run(check(settings, settings.kafka_startup_timeout_s))
    except KafkaUnavailable as exc:
        return str(exc)
    log.debug(
        "Kafka at %s answers (%s, %d brokers)",
        settings.kafka_bootstrap,
        KafkaConnection.of(settings).describe(),
        brokers,
    )
    return None


def _command(args: argparse.Namespace, settings: Settings) -> int:
    """Run the sub-command ``args`` names; its exit status."""
    if args.command == "run":
        return run(settings, args.workers)
    if args.command == "worker":
        from kafka_io.topics import ensure_topics
        from streams.worker import run as run_worker

        def create_topics(resolved: Settings) -> None:
            asyncio.run(ensure_topics(resolved))

        run_worker(settings, create_topics)
        return 0
    if args.command == "api":
        from api.server import serve

        serve(settings, args.processes)
        return 0
    if args.command == "dispatcher":
        from dispatcher.service import main as run_dispatcher

        run_dispatcher(settings)
        return 0
    if args.command == "sink":
        from analytics.client import clickhouse_url, embedded, sink_in_api
        from sink.service import main as run_sink

        if embedded(clickhouse_url(settings)) and sink_in_api(settings):
            log.warning("embedded chDB: the API process runs the sink; this one cannot open the same directory")
        run_sink(settings)
        return 0
    if args.command == "replay":
        from datetime import datetime

        from analytics.replay import main as run_replay

        from_ms = int(datetime.fromisoformat(args.from_).timestamp() * 1000) if args.from_ else None
        from deploy.models import active_namespace

        live, live_model = active_namespace(settings)  # the live side: the registry's active model
        return run_replay(live, args.model, args.source, args.json, from_ms, live_model)
    if args.command in ("shadow", "promote", "retire", "models"):
        return _models_command(args, settings)
    if args.command == "views":
        from deploy.models import active_namespace
        from streams.views import rebuild_views

        live, live_model = active_namespace(settings)
        sent, had = asyncio.run(rebuild_views(live, live_model))
        log.info("views: %d sent (%d contacts had one) on %s", sent, had, live.views_topic)
        return 0
    if args.command == "topics":
        from deploy.topics import main as topics_main

        topics_main(settings)
        return 0
    from deploy.demo import demo as run_demo

    return asyncio.run(run_demo(settings, args.events, args.contacts, args.rate, args.seed))


def _models_command(args: argparse.Namespace, settings: Settings) -> int:
    """``shadow``, ``promote``, ``retire`` or ``models``: the model namespaces' console."""
    from deploy import models

    if args.command == "shadow":
        return models.shadow(settings, args.model, args.name, args.until_caught_up, args.json, args.source)
    if args.command == "promote":
        return models.promote(settings, args.namespace, args.at, args.delay, args.max_lag)
    if args.command == "retire":
        return models.retire(settings, args.namespace)
    return models.list_models(settings)


if __name__ == "__main__":
    sys.exit(main())
