"""``scorestream shadow | promote | retire | models``: run a new model beside the active one, and
switch (see ``schemas/registry.py`` for the registry and the cut)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from deploy.lag import records_in
from deploy.signals import StopOnSignal
from kafka_io import clients
from kafka_io.promotion import Progress, PromotionRefused, namespace_progress, promote_namespace
from kafka_io.registry import read_registry, register_namespace
from schemas.api_quality import ScoreQualityOut
from schemas.model_file import load_model
from schemas.registry import NamespaceRecord, Registry, namespace_record, namespace_refusal, settings_of
from schemas.settings import Settings
from schemas.times import DAY_MS
from scorestream import Model

console = Console()


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def default_namespace(settings: Settings, model: Model) -> str:
    """``<app_id>-<model name>-<hash>``: a namespace per model version."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"{settings.app_id}-{model.version}")[:100]


def model_of(settings: Settings, registry: Registry, namespace: str) -> Model:
    """The model a namespace runs (:meth:`Registry.model_of`, the configured one by default)."""
    return registry.model_of(namespace, load_model(settings.model))


def active_namespace(settings: Settings) -> tuple[Settings, Model]:
    """The settings and model of the registry's active namespace (what the API serves as live)."""
    registry = asyncio.run(read_registry(settings))
    return settings_of(settings, registry, registry.active), model_of(settings, registry, registry.active)


def register(settings: Settings, model_path: str, name: str | None, backfill: bool = False) -> tuple[str, Model]:
    """Register ``model_path`` as a shadow namespace (idempotent for the same model); ``backfill``:
    its workers also read the archive's events, copied to ``<ns>.backfill.*``."""
    from kafka_io.topics import ensure_topics

    asyncio.run(ensure_topics(settings))
    registry = asyncio.run(read_registry(settings))
    model = load_model(model_path)
    namespace = name or default_namespace(settings, model)
    if (why := namespace_refusal(namespace)) is not None:
        raise SystemExit(why)
    if namespace == registry.active:
        raise SystemExit(f"{namespace} is the active namespace; a shadow needs a namespace of its own (--name)")
    existing = registry.namespaces.get(namespace)
    if existing is not None and existing.model_version != model.version:
        raise SystemExit(
            f"namespace {namespace} already runs {existing.model_version}; choose another --name for {model.version}"
        )
    if existing is not None and existing.backfill != backfill and existing.retired_ms is None:
        raise SystemExit(
            f"namespace {namespace} was registered with{'' if existing.backfill else 'out'} --source archive"
        )
    if existing is None or existing.retired_ms is not None:
        record = namespace_record(namespace, model_path, now_ms(), backfill=backfill)
        asyncio.run(register_namespace(settings, record))
    # its topics (the backfill ones too: an existing record has the same ``backfill``, checked above)
    asyncio.run(ensure_topics(settings.in_namespace(namespace).model_copy(update={"backfill": backfill})))
    return namespace, model


def copy_archive(settings: Settings, namespace: str) -> int:
    """Copy the accepted events of the ClickHouse archive to ``namespace``'s backfill topics, with
    the record times the worker saw (once: nothing is copied if they hold records already).
    Duplicates of events still on the source topics fold once (message ids)."""
    from analytics.replay import archive_records, progress_bar
    from kafka_io.privacy import read_privacy_list

    topics = settings.in_namespace(namespace).backfill_topics
    held = asyncio.run(records_in(settings, list(topics.values())))
    if held:
        console.print(f"the backfill topics of {namespace} hold {held} events already: not copied again")
        return 0

    async def produce(batches: Any) -> int:
        producer = clients.producer(settings, acks="all", linger_ms=20, max_batch_size=1 << 20)
        await producer.start()
        sent = 0
        try:
            while (batch := await asyncio.to_thread(next, batches, None)) is not None:
                futures = [
                    await producer.send(topics[channel], raw, timestamp_ms=ms or None)
                    for channel, raw, ms in batch
                    if channel in topics
                ]
                await asyncio.gather(*futures)
                sent += len(futures)
        finally:
            await producer.stop()
        return sent

    with progress_bar(console) as bar:
        task = bar.add_task(f"{namespace}: copying the archive", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        # nothing of a person the privacy list restricts is copied (it would be stored again)
        privacy = asyncio.run(read_privacy_list(settings, settings.privacy_topic))
        sent = asyncio.run(produce(iter(archive_records(settings, progress, privacy))))
    console.print(f"copied {sent} archived events to {', '.join(topics.values())}")
    return sent


def worker_env(namespace: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SCORESTREAM_MODEL"}
    env["SCORESTREAM_NAMESPACE"] = namespace
    return env


def shadow(
    settings: Settings,
    model_path: str,
    name: str | None,
    until_caught_up: bool,
    json_out: str | None = None,
    source: str = "kafka",
) -> int:
    """Register the model as a shadow, run its worker from the beginning of the source topics with
    a progress bar, print its difference from the active model once caught up, then keep it running
    live (Ctrl-C stops it; ``--until-caught-up`` stops there)."""
    from analytics.replay import compare_namespaces, print_diff, progress_bar

    namespace, model = register(settings, model_path, name, backfill=source == "archive")
    if source == "archive":
        copy_archive(settings, namespace)
    registry = asyncio.run(read_registry(settings))
    active = registry.active
    console.print(f"shadow namespace [bold]{namespace}[/] runs {model.version} beside [bold]{active}[/]")
    log_path = settings.data_dir / f"worker-{namespace}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"its worker's log: {log_path}")
    with log_path.open("ab") as log_file:  # the worker's own output would bury the progress bar
        worker = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "worker"],
            env=worker_env(namespace),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    signals = StopOnSignal()
    started = time.monotonic()
    try:
        with progress_bar(console) as bar:
            task = bar.add_task(f"{namespace}: source events", total=None)
            settled = None  # caught up: everything read, twice in a row with the same totals
            while not signals.stopping and worker.poll() is None:
                try:
                    seen = asyncio.run(namespace_progress(settings, namespace, registry))
                except Exception:  # the group's coordinator is not there until the worker joins
                    seen = Progress(read=0, total=0, internal=-1)
                bar.update(task, completed=seen.read, total=seen.total or None)
                if seen.total and seen.read >= seen.total and seen.internal == 0:
                    if settled == seen.total:
                        break
                    settled = seen.total
                else:
                    settled = None
                time.sleep(1.0)
        if worker.poll() is not None:
            console.print(f"[red]the shadow worker stopped (exit {worker.returncode}); see {log_path}[/]")
            return 1
        if signals.stopping:
            return 0
        console.print(
            f"caught up in {time.monotonic() - started:.1f} s ({seen.read} source events); comparing with {active}"
        )
        active_model = model_of(settings, registry, active)
        d = asyncio.run(compare_namespaces(settings, (active, active_model), (namespace, model)))
        print_diff(console, d, active, namespace)
        quality = print_quality(settings, (active, active_model), (namespace, model), now_ms())
        if json_out:
            body = {"active": active, "shadow": namespace, "model_version": model.version, "diff": d.to_json()}
            if quality is not None:
                body["quality"] = quality.model_dump(mode="json", by_alias=True)
            Path(json_out).write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
        if until_caught_up:
            return 0
        console.print(
            f"the shadow runs live: compare in the API with ?model={namespace} (GET /v1/models lists both); "
            f"make it live with `scorestream promote {namespace}`. Ctrl-C stops this worker."
        )
        while not signals.stopping and worker.poll() is None:
            time.sleep(0.5)
        return 0 if worker.poll() is None else 1
    finally:
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()


QUALITY_HORIZON_DAYS = 30
QUALITY_PERIOD_DAYS = 90


def quality_lines(report: ScoreQualityOut) -> list[str]:
    """What ``scorestream shadow`` says of the shadow's scores against the active model's: each
    stage both models scored contacts in ("the shadow's mqls convert 1.4x better (12.1% against
    8.6%)"), then the AUC; or why it cannot say."""
    head = (
        f"does the score predict? {report.outcome} within {report.horizon_days:g} days of "
        f"{len(report.snapshots)} scoring instants ({report.from_:%Y-%m-%d} to {report.to:%Y-%m-%d}):"
    )
    if report.notes or not report.comparisons:
        why = report.notes or [note for m in report.models for note in m.notes] or ["no scored contacts to compare"]
        return [head, *(f"  {note}" for note in why)]
    stages = [c for c in report.comparisons if c.group != "all" and c.ratio is not None]
    rest = [c for c in report.comparisons if c.group == "all"]
    if not stages:
        stages_note = f"  by stage: too few scored contacts to compare (at least {report.min_n} per stage)"
        return [head, stages_note, *(f"  {c.text}" for c in rest)]
    return [head, *(f"  {c.text}" for c in stages + rest)]


def print_quality(
    settings: Settings,
    active: tuple[str, Model],
    shadow: tuple[str, Model],
    now: int,
    min_n: int = 30,
    min_class: int = 10,
) -> ScoreQualityOut | None:
    """The score-quality report of the shadow beside the active model, from the archive (orders
    within 30 days, over the last 90 days whose horizon has passed), printed; None when the archive
    cannot be read from here (embedded chDB held by the API: ask ``GET /v1/reports/score-quality``)."""
    from analytics import score_quality as sq
    from analytics.client import Store, clickhouse_url

    horizon = QUALITY_HORIZON_DAYS * DAY_MS
    to = now - horizon
    models = [
        sq.Evaluated(active[1].version, active[1], active[0], "active"),
        sq.Evaluated(shadow[1].version, shadow[1], shadow[0], "shadow"),
    ]
    store = Store(clickhouse_url(settings))
    try:
        report = asyncio.run(
            sq.score_quality(
                store,
                models,
                sq.Outcome(),
                to - QUALITY_PERIOD_DAYS * DAY_MS,
                to,
                horizon,
                horizon,
                now,
                min_n,
                min_class,
            )
        )
    except Exception as exc:  # the archive elsewhere, locked or not migrated: say so, do not fail the shadow
        console.print(
            f"[yellow]score quality not computed here ({type(exc).__name__}); ask the API: "
            f"GET /v1/reports/score-quality?model={shadow[0]} and without model= for both side by side[/]"
        )
        return None
    finally:
        store.close_sync()
    for line in quality_lines(report):
        console.print(line, markup=False, highlight=False)
    return report


def promote(settings: Settings, namespace: str, at: str | None, delay_s: float, max_lag: int) -> int:
    """Make ``namespace`` the active one. Changes dated from the cut (``--at``, else now +
    ``--delay``) are announced by it, earlier ones by the previous active namespace. The checks are
    :func:`kafka_io.promotion.promote_namespace`'s (the console's Models page makes the same)."""
    now = now_ms()
    cut = int(datetime.fromisoformat(at).timestamp() * 1000) if at else now + int(delay_s * 1000)
    try:
        done = asyncio.run(promote_namespace(settings, namespace, now_ms=now, cut_ms=cut, max_lag=max_lag))
    except PromotionRefused as exc:
        console.print(f"[red]{exc.message}[/]")
        return 2
    if done.promotion is None:
        console.print(f"{namespace} is already active")
        return 0
    console.print(
        f"[bold]{namespace}[/] is active: the API answers with it now; changes dated from {iso(cut)} are "
        f"announced (triggers, webhooks) by it, earlier ones by {done.previous}.\n"
        f"Keep {done.previous}'s workers running while events dated before the cut can still arrive, then "
        f"stop them and run `scorestream retire {done.previous}`."
    )
    return 0


def retire(settings: Settings, namespace: str) -> int:
    """Mark a namespace retired: no longer served by the API nor started by ``scorestream run``
    (its topics stay; delete them with Kafka's tools when no longer wanted)."""
    registry = asyncio.run(read_registry(settings))
    if namespace == registry.active:
        console.print(f"[red]{namespace} is active: promote another namespace first[/]")
        return 2
    record = registry.namespaces.get(namespace)
    if record is None:
        if namespace != settings.app_id:
            console.print(f"[red]no namespace {namespace}[/]")
            return 2
        record = namespace_record(namespace, settings.model, 0)
    fields: dict[str, Any] = {f: getattr(record, f) for f in record.__struct_fields__}
    asyncio.run(register_namespace(settings, NamespaceRecord(**{**fields, "retired_ms": now_ms()})))
    console.print(f"{namespace} retired")
    return 0


def list_models(settings: Settings) -> int:
    registry = asyncio.run(read_registry(settings))
    table = Table(title=f"model namespaces ({settings.models_topic})")
    for column in ("namespace", "role", "model", "registered", "active from", "source read", "behind"):
        table.add_column(column)
    cuts = {p.namespace: p.from_ms for p in registry.promotions}
    names = registry.live() + sorted(ns for ns, r in registry.namespaces.items() if r.retired_ms is not None)
    for ns in names:
        record = registry.namespaces.get(ns)
        role = "active" if ns == registry.active else ("retired" if record and record.retired_ms else "shadow")
        version = record.model_version if record else load_model(settings.model).version
        try:
            seen = asyncio.run(namespace_progress(settings, ns, registry))
            read, behind = f"{seen.read}/{seen.total}", str(seen.behind)
        except Exception:
            read, behind = "-", "-"
        registered = iso(record.registered_ms) if record and record.registered_ms else "-"
        table.add_row(ns, role, version, registered, iso(cuts.get(ns)), read, behind)
    console.print(table)
    return 0


def live_shadows(settings: Settings) -> list[str]:
    """The namespaces ``scorestream run`` starts a worker for besides the active one."""
    registry = asyncio.run(read_registry(settings))
    return registry.live()[1:]
