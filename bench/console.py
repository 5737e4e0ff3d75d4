"""The console's figures (issue 19): the time to first paint of each console page, and the console's
extra load on the API (``GET /v1/contacts/{id}`` with five open consoles against none).

    .venv/bin/python -m bench.console [--contacts 100000,1000000] [--events-per-contact 10]
    .venv/bin/python -m bench.run --only console

**The deployment.** Getting a million contacts and ten million events through the broker and the
worker on a 2-core machine takes hours, so the data set is built the fastest honest way, from
rows the real processes wrote:

1. a real deployment (broker, worker, API with the analytics sink into embedded chDB) scores and
   archives realistic traffic (:class:`deploy.traffic.Traffic`: ``--real-contacts`` people drawn
   Zipf-like, ``--events-per-contact`` events each on average, over the last 90 days and, 3% of
   them, in the last ten minutes) published through the broker;
2. the API is stopped (chDB: one process per data directory) and every archive table the sink wrote
   (``events``, ``score_ledger``, ``contacts``, ``triggers`` and through its materialized view
   ``stage_transitions``, ``account_changes``, ``webhook_deliveries``) is copied ``k - 1`` times
   into itself with ClickHouse's own functions (``INSERT ... SELECT ... FROM numbers(k)``): copy
   ``j`` prefixes every contact, account, message and trigger id with ``c<j>-`` (in the columns and
   in the raw JSON of the events), and moves the Kafka offsets of the events out of the originals'
   way (they are the events' deduplication key);
3. the contact views the worker published (``<app>.views``, what the API answers from) are copied
   the same way (ids prefixed, everything else as the worker wrote it) and published on the views
   topic; the API is started again and reads them.

So the archive holds ``k`` times the real traffic's rows (``k`` x contacts, ``k`` x events, same
times, same score distributions) and the API holds ``k`` times its contacts. What is not
multiplied: the accounts replica (the API's account states: an account page's cost is its
members, not the number of accounts; the archive's ``account_changes`` is multiplied, for the
pages that list accounts), the population model and the webhook subscriptions (one, made by the
bench, no deliveries: no dispatcher runs). Each size is a deployment of its own (the same real
traffic, more copies), measured while the others are stopped; ``--again-at HH:MM`` starts each
again at that time (the code on disk then) and measures it again.

**Time to first paint.** Debian's Chromium (``/usr/lib/chromium/chromium``) through Playwright,
signed in with an admin key (the sign-in form: a session cookie), opens each page once to warm up
(not counted), then ``--loads`` times: ``first-contentful-paint`` (``performance.getEntriesByType
('paint')``) and the navigation's ``responseStart`` and ``responseEnd`` (the server's time to the
first and last byte), median and p95 per page. A page that does not answer 200 is reported with
its status and no times.

**The console's extra load.** ``wrk`` drives ``GET /v1/contacts/{id}`` (ids drawn uniformly from
every contact held; ``bench/wrk/contacts.lua``, as :mod:`bench.api_load`) for ``--seconds``, in
``--rounds`` pairs in the same run (none then five, five then none, ...: a drift of the shared
machine's load falls on both modes): no console open, or five browser pages on the overview (each
in a context of its own, holding its server-sent event streams open, as a marketer leaves it on a
screen), opened and settled before the run starts. Reported: lookups/s, p50 and p99 in each mode
(medians of the rounds), their ratios (five consoles over none), the API process's CPU under the
load and, measured for 5 s before each run, with no lookups at all (what the consoles alone cost).
The browser runs on the same machine as the API and wrk (a marketer's would not).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.api_load import ensure_wrk, run_wrk
from bench.api_memory import publish_batches
from bench.harness import process_usage, wait_drained
from bench.probes import percentile
from deploy.traffic import Traffic
from schemas.view import decode_view, encode_view
from scorestream.view import ContactView
from tests.e2e.service import API_KEY, REPO, Service, archived, latest_values

CHROMIUM = Path("/usr/lib/chromium/chromium")
RESULTS = Path(__file__).parent / "results"
SEED = 19
DAY_MS = 86_400_000
RECENT_SHARE = 0.03  # of the real events, in the last ten minutes (top movers, live figures)
CONSOLES = 5
CONNECTIONS = 32  # wrk's (as bench.api_load)
LOOKUP_IDS = 300_000  # ids in wrk's file, drawn uniformly from every contact held
VIEWPORT = {"width": 1280, "height": 800}
# the pages: name -> path (``{contact}`` and ``{account}``: a real contact and account of the run)
PAGES = {
    "overview": "/console",
    "contacts": "/console/contacts",
    "contact": "/console/contacts/{contact}",
    "funnel": "/console/funnel",
    "value": "/console/value",
    "pipeline": "/console/pipeline",
    "accounts": "/console/accounts",
    "account": "/console/accounts/{account}",
    "webhooks": "/console/webhooks",
    "models": "/console/models",
}

# the JSON routes that give each page's numbers (their time beside the page's: what the console adds)
API_ROUTES = {
    "overview": ["/v1/reports/overview"],
    "contact": ["/v1/contacts/{contact}", "/v1/contacts/{contact}/history"],
    "funnel": ["/v1/reports/funnel"],
    "value": ["/v1/reports/rfm"],
    "pipeline": ["/v1/reports/personas", "/v1/reports/forecast"],
    "account": ["/v1/accounts/{account}"],
    "webhooks": ["/v1/webhooks"],
    "models": ["/v1/models"],
}
API_LOADS = 5  # timed calls of each page's routes

# --- the archive, multiplied -------------------------------------------------------------------


def prefixed(column: str) -> str:
    """SQL: ``column`` with copy ``j``'s prefix (an empty id stays empty)."""
    return f"if({column} = '', '', concat('c', toString(j), '-', {column}))"


# per table: the columns a copy changes (every other column is copied as the sink wrote it)
COPIED: dict[str, dict[str, str]] = {
    "events": {
        **{c: prefixed(c) for c in ("message_id", "user_id", "anonymous_id", "group_id", "previous_id")},
        # the events' deduplication key is (event_time, kafka_topic, kafka_partition, kafka_offset)
        "kafka_offset": "kafka_offset + j * 10000000000",
        "raw": 'replaceRegexpAll(raw, \'"(userId|anonymousId|messageId|groupId|previousId)":"\', '
        "concat('\"\\\\1\":\"c', toString(j), '-'))",
    },
    "score_ledger": {
        "contact_id": prefixed("contact_id"),
        "merged_into": prefixed("merged_into"),
        "message_ids": "arrayMap(m -> concat('c', toString(j), '-', m), message_ids)",
    },
    "contacts": {c: prefixed(c) for c in ("contact_id", "merged_into", "user_id", "email", "account_id")},
    "triggers": {c: prefixed(c) for c in ("id", "subject", "contact_id", "account_id", "cause")},
    "account_changes": {"account_id": prefixed("account_id")},
    "webhook_deliveries": {c: prefixed(c) for c in ("id", "key", "trigger_id")},
}


def original_sql(table: str) -> str:
    """SQL: the rows of ``table`` no copy wrote (copies' ids start with ``c<j>-``)."""
    return f"NOT match({next(iter(COPIED[table]))}, '^c[0-9]+-')"


async def multiply_archive(url: str, first: int, copies: int) -> dict[str, Any]:
    """Copies ``first`` to ``copies - 1`` of every table's original rows (copy 0), see the module
    docstring; then every table merged (``OPTIMIZE ... FINAL``). The rows per table after it (and
    the originals), and the seconds it took."""
    from analytics.client import Store

    store = Store(url)
    started = time.perf_counter()
    try:
        out: dict[str, Any] = {}
        for table, changed in COPIED.items():
            rows = await store.query(
                "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String} "
                "AND default_kind NOT IN ('MATERIALIZED', 'ALIAS') ORDER BY position",
                {"t": table},
            )
            columns = [str(r[0]) for r in rows]
            chosen = ", ".join(changed.get(c, c) for c in columns)  # by position, no aliases
            if first < copies:
                await store.command(
                    f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 (our own table and column names)
                    f"SELECT {chosen} FROM (SELECT * FROM {table} WHERE {original_sql(table)}) AS o "
                    f"CROSS JOIN (SELECT number AS j FROM numbers({first}, {copies - first})) AS n"
                )
        out["copied_s"] = round(time.perf_counter() - started, 1)
        # merged as the tables of a deployment that has lived a while are (and no merge left to
        # run in the API's process while it is measured)
        for table in (*COPIED, "stage_transitions"):
            await store.command(f"OPTIMIZE TABLE {table} FINAL")
        out["seconds"] = round(time.perf_counter() - started, 1)
        for table in COPIED:
            count = f"SELECT count(), countIf({original_sql(table)}) FROM {table}"  # noqa: S608
            out[table], out[f"{table}_originals"] = (int(n) for n in (await store.query(count))[0])
        out["stage_transitions"] = int((await store.query("SELECT count() FROM stage_transitions"))[0][0])
        active = "SELECT count() FROM contacts FINAL WHERE status = 'active'"
        out["contacts_active"] = int((await store.query(active))[0][0])
        return out
    finally:
        await store.close()


def multiply_in_process(url: str, first: int, copies: int) -> dict[str, Any]:
    """:func:`multiply_archive` in a process of its own (chDB: one engine per process, and this
    process may have had one)."""
    command = [sys.executable, "-m", "bench.console", "--multiply", url, "--first", str(first)]
    command += ["--copies", str(copies)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=7200, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"multiplying the archive failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


# --- the views, multiplied ---------------------------------------------------------------------


def copy_id(j: int, ident: str | None) -> str | None:
    return None if ident is None else f"c{j}-{ident}"


def view_copy(view: ContactView, j: int) -> ContactView:
    """``view`` of copy ``j``: its ids prefixed, everything else as the worker wrote it."""
    return dataclasses.replace(
        view,
        contact_id=f"c{j}-{view.contact_id}",
        user_id=copy_id(j, view.user_id),
        anonymous_ids=[f"c{j}-{a}" for a in view.anonymous_ids],
        email=copy_id(j, view.email),
        merged_ids=[f"c{j}-{m}" for m in view.merged_ids],
        merged_into=copy_id(j, view.merged_into),
        account_id=copy_id(j, view.account_id),
    )


def view_copies(topic: str, views: list[ContactView], first: int, copies: int) -> Iterator[tuple[str, bytes, bytes]]:
    for j in range(first, copies):
        for view in views:
            copied = view_copy(view, j)
            yield topic, copied.contact_id.encode(), encode_view(copied)


def lookup_id(view: ContactView) -> str | None:
    """The id a CRM looks the contact up by: its user id, else its first anonymous id."""
    if view.merged_into is not None:
        return None
    return view.user_id or (view.anonymous_ids[0] if view.anonymous_ids else view.contact_id)


# --- the deployment ----------------------------------------------------------------------------


@dataclasses.dataclass
class Deployment:
    """The bench's deployment and what it holds."""

    svc: Service
    views: list[ContactView]  # the real views (copy 0)
    copies: int = 1
    contact: str = ""  # the contact page's id (a real, identified contact with orders if any)
    account: str = ""  # the account page's id (a real account with the most members)
    build: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def contacts(self) -> int:
        return self.copies * sum(1 for v in self.views if v.merged_into is None)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.svc.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)


def real_records(contacts: int, events: int, now_ms: int) -> list[tuple[str, bytes | None, bytes]]:
    """Realistic traffic: history over the last 90 days and a share in the last hour (its message
    ids made distinct from the history's: both generators count from 0)."""
    recent_n = max(1, round(events * RECENT_SHARE))
    history = Traffic(contacts, seed=SEED, start_ms=now_ms - 90 * DAY_MS, span_ms=90 * DAY_MS - 3_600_000)
    # the last ten minutes: still in the last hour when measured again (``again_at``) within ~50 min
    recent = Traffic(contacts, seed=SEED + 1, start_ms=now_ms - 600_000, span_ms=570_000)
    out = [(r.channel, r.key, r.value) for r in history.records(events - recent_n)]
    for r in recent.records(recent_n):
        msg = orjson.loads(r.value)
        msg["messageId"] = f"r{msg['messageId']}"
        out.append((r.channel, r.key, orjson.dumps(msg)))
    return out


def wait_archived(dep: Deployment, expect: int, timeout_s: float) -> tuple[float, int]:
    """Seconds until the archive's active contacts (``GET /v1/reports/personas``) reach ``expect``
    and hold still for 3 s (the sink's last ledger rows and transitions follow the contacts rows),
    or hold still for 30 s below it; and that number."""
    started = time.perf_counter()
    last, since = -1, time.perf_counter()
    with dep.client() as http:
        while time.perf_counter() - started < timeout_s:
            r = http.get("/v1/reports/personas")
            n = int(r.json()["contacts"]) if r.status_code == 200 else -1
            if n != last:
                last, since = n, time.perf_counter()
            elif n > 0 and time.perf_counter() - since >= (3 if n >= expect else 30):
                return round(since - started, 1), n
            time.sleep(0.5)
    raise TimeoutError(f"the archive holds {last} active contacts after {timeout_s} s, not {expect}")


def wait_resolved(dep: Deployment, ids: list[str], timeout_s: float) -> float:
    """Seconds until ``/readyz`` is 200 and each of ``ids`` is found."""
    started = time.perf_counter()
    last = ""
    with dep.client() as http:
        while time.perf_counter() - started < timeout_s:
            try:
                ready = http.get("/readyz")
                if ready.status_code == 200:
                    r = http.post("/v1/contacts:batchGet", json={"ids": ids})
                    if r.status_code == 200 and not r.json()["not_found"]:
                        return round(time.perf_counter() - started, 1)
                    last = r.text[:300]
                else:
                    last = ready.text[:300]
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
    raise TimeoutError(f"ids not resolved in {timeout_s} s: {last}\n{dep.svc.logs('api')}")


def stop_api(svc: Service) -> None:
    if svc.api is not None and svc.api.poll() is None:
        svc.api.terminate()
        try:
            svc.api.wait(60)
        except subprocess.TimeoutExpired:
            svc.api.kill()
            svc.api.wait(30)


def pick_pages(dep: Deployment) -> None:
    """The contact page's contact (identified, with orders, the most active) and the account page's
    account (the real account with the most members)."""
    live = [v for v in dep.views if v.merged_into is None]

    def activity(v: ContactView) -> tuple[bool, bool, int]:
        orders = v.value is not None and v.value.frequency > 0
        return (v.user_id is not None, orders, len(v.engagement))

    best = max(live, key=activity)
    dep.contact = best.user_id or best.contact_id
    members: dict[str, int] = {}
    for v in live:
        if v.account_id:
            members[v.account_id] = members.get(v.account_id, 0) + 1
    dep.account = max(members, key=lambda a: members[a]) if members else "none"


def deploy(bootstrap: str, work: Path, real_contacts: int, events_per_contact: int) -> Deployment:
    """A real deployment scoring and archiving the real traffic (copy 0), its API stopped."""
    svc = archived(
        bootstrap,
        work / "console",
        extra_env={
            "SCORESTREAM_API_KEYS": API_KEY,
            "SCORESTREAM_SINK_BATCH_S": "0.5",
            "SCORESTREAM_WEBHOOK_ALLOW_PRIVATE": "true",  # the subscription's address: nothing listens
        },
    )
    svc.start()
    try:
        return real_run(svc, real_contacts, real_contacts * events_per_contact)
    except BaseException:
        svc.stop()
        raise


def real_run(svc: Service, real_contacts: int, real_events: int) -> Deployment:
    """:func:`deploy`'s traffic, scored and archived; the API stopped."""
    bootstrap = svc.bootstrap
    started = time.perf_counter()
    records = real_records(real_contacts, real_events, int(time.time() * 1000))
    svc.publish(records)
    group = f"ss-{svc.suffix}"
    topics = [svc.topic(c) for c in ("web", "email", "store")] + [f"{group}.identity", f"{group}.contacts"]
    wait_drained(bootstrap, group, topics, 1800)
    views = [decode_view(v) for v in latest_values(svc.settings, svc.settings.views_topic).values() if v is not None]
    dep = Deployment(svc=svc, views=views)
    dep.build["real_events"] = len(records)
    dep.build["real_contacts"] = dep.contacts
    dep.build["real_scored_s"] = round(time.perf_counter() - started, 1)
    dep.build["real_archived_s"], dep.build["real_archived_contacts"] = wait_archived(dep, dep.contacts, 600)
    pick_pages(dep)
    with dep.client() as http:  # the webhooks page's subscription (no dispatcher runs: no deliveries)
        made = http.post("/v1/webhooks", json={"url": "https://127.0.0.1:9/hooks/scorestream", "events": ["*"]})
        if made.status_code != 201:
            raise RuntimeError(f"POST /v1/webhooks: {made.status_code} {made.text[:500]}")
    stop_api(svc)
    return dep


def grow(dep: Deployment, copies: int) -> dict[str, Any]:
    """Multiply the deployment to ``copies`` times the real traffic (the API stopped before, and
    started again after): the seconds each step took and the archive's rows."""
    svc = dep.svc
    stop_api(svc)
    url = svc.env["SCORESTREAM_CLICKHOUSE_URL"]
    out: dict[str, Any] = {"copies": copies}
    out["archive"] = multiply_in_process(url, dep.copies, copies)
    started = time.perf_counter()
    partitions = svc.partitions
    records = view_copies(svc.settings.views_topic, dep.views, dep.copies, copies)
    # in a thread of its own: Playwright's sync API runs an event loop in this one
    with ThreadPoolExecutor(1) as pool:
        rate = pool.submit(asyncio.run, publish_batches(svc.bootstrap, records, partitions)).result()
    out["views_published_s"] = round(time.perf_counter() - started, 1)
    out["views_per_s"] = round(rate)
    dep.copies = copies
    svc.start_api()
    last = next(i for v in reversed(dep.views) if (i := lookup_id(v)))
    probe = [f"c{copies - 1}-{last}" if copies > 1 else last, dep.contact]
    out["api_ready_s"] = wait_resolved(dep, probe, 1800)
    return out


def ids_file(dep: Deployment, path: Path) -> Path:
    """``LOOKUP_IDS`` ids drawn uniformly from every contact held, for wrk's script."""
    ids = [i for v in dep.views if (i := lookup_id(v))]
    rng = random.Random(SEED + dep.copies)
    picks = []
    for _ in range(min(LOOKUP_IDS, dep.contacts)):
        j, ident = rng.randrange(dep.copies), rng.choice(ids)
        picks.append(ident if j == 0 else f"c{j}-{ident}")
    path.write_text("\n".join(picks) + "\n")
    return path


# --- time to first paint -----------------------------------------------------------------------

TIMING_JS = """
() => new Promise((resolve) => {
  const nav = performance.getEntriesByType('navigation')[0];
  const fcp = () => performance.getEntriesByType('paint').find((e) => e.name === 'first-contentful-paint');
  const done = () => {
    const paint = fcp();
    resolve({
      fcp_ms: paint ? paint.startTime : null,
      response_start_ms: nav.responseStart,
      response_end_ms: nav.responseEnd,
      dom_content_loaded_ms: nav.domContentLoadedEventEnd,
      load_ms: nav.loadEventEnd,
      bytes: nav.decodedBodySize,
    });
  };
  if (fcp()) { done(); return; }
  new PerformanceObserver(() => { if (fcp()) done(); }).observe({ type: 'paint', buffered: true });
  setTimeout(done, 5000);
})
"""


def summary(values: list[float]) -> dict[str, float | None]:
    """The median and the nearest-rank 95th percentile (:func:`bench.probes.percentile`), to 0.1."""
    return {"median": round(statistics.median(values), 1), "p95": percentile(values, 0.95)}


def sign_in(page: Any, url: str) -> None:
    page.goto(f"{url}/console/sign-in")
    page.fill("#key", API_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/console**")


def page_paint(page: Any, url: str, loads: int) -> dict[str, Any]:
    """One page: a warm-up load, then ``loads`` loads' first paint and server times (ms)."""
    response = page.goto(url, wait_until="load")
    status = response.status if response is not None else None
    if status != 200:
        return {"status": status}
    timings = []
    for _ in range(loads):
        page.goto(url, wait_until="load")
        timings.append(page.evaluate(TIMING_JS))
    out: dict[str, Any] = {"status": status, "loads": loads, "bytes": timings[-1]["bytes"]}
    for figure in ("fcp_ms", "response_start_ms", "response_end_ms", "load_ms"):
        values = [t[figure] for t in timings if t[figure] is not None]
        if values:
            out[figure] = summary(values)
    out["no_paint_entry"] = sum(1 for t in timings if t["fcp_ms"] is None)
    return out


def first_paints(browser: Any, dep: Deployment, loads: int) -> dict[str, Any]:
    """Every page of :data:`PAGES`, one after the other, in one signed-in context; the browser's
    console and page errors met on each (the first three)."""
    context = browser.new_context(viewport=VIEWPORT)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.set_default_navigation_timeout(300_000)  # a slow report is measured, not failed
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
        sign_in(page, dep.svc.url)
        out: dict[str, Any] = {}
        for name, path in PAGES.items():
            target = path.format(contact=dep.contact, account=dep.account)
            errors.clear()
            out[name] = {"path": target, **page_paint(page, dep.svc.url + target, loads)}
            if errors:
                out[name]["browser_errors"] = sorted(set(errors))[:3]
        return out
    finally:
        context.close()


def api_times(dep: Deployment, loads: int) -> dict[str, Any]:
    """Each page's JSON routes (:data:`API_ROUTES`) called one after the other, ``loads`` times
    after a warm-up: the milliseconds of the whole set, median and p95, and their statuses."""
    out: dict[str, Any] = {}
    with dep.client() as http:
        for name, routes in API_ROUTES.items():
            paths = [r.format(contact=dep.contact, account=dep.account) for r in routes]
            statuses = [http.get(p).status_code for p in paths]  # warm-up
            took = []
            for _ in range(loads):
                started = time.perf_counter()
                for path in paths:
                    http.get(path)
                took.append((time.perf_counter() - started) * 1000)
            out[name] = {"routes": paths, "statuses": statuses, "ms": summary(took)}
    return out


# --- the console's extra load ------------------------------------------------------------------


def open_consoles(browser: Any, dep: Deployment, n: int) -> list[Any]:
    """``n`` browser contexts, each signed in and left on the overview (its streams open)."""
    contexts = []
    for _ in range(n):
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        sign_in(page, dep.svc.url)
        page.goto(f"{dep.svc.url}/console", wait_until="load")
        contexts.append(context)
    return contexts


def lookup_run(wrk: str, dep: Deployment, ids: Path, connections: int, seconds: float) -> dict[str, Any]:
    """One wrk run of single lookups: throughput, latency, the API's and wrk's CPU (cores)."""
    assert dep.svc.api is not None
    api0 = process_usage(dep.svc.api.pid)
    result = run_wrk(wrk, dep.svc.url, "single", ids, connections, seconds)
    api1 = process_usage(dep.svc.api.pid)
    result.check("GET /v1/contacts/{id}")
    return {
        "lookups_per_s": round(result.per_s),
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
        "api_cpu_utilisation": round((api1.cpu_s - api0.cpu_s) / result.duration_s, 2),
        "wrk_cpu_utilisation": round(result.cpu_s / result.duration_s, 2),
    }


def idle_cpu(dep: Deployment, seconds: float) -> float:
    """The API process's CPU (cores) over ``seconds`` with no request but the consoles'."""
    assert dep.svc.api is not None
    before = process_usage(dep.svc.api.pid)
    time.sleep(seconds)
    return round((process_usage(dep.svc.api.pid).cpu_s - before.cpu_s) / seconds, 3)


def extra_load(browser: Any, dep: Deployment, work: Path, rounds: int, seconds: float) -> dict[str, Any]:
    """Runs without and with :data:`CONSOLES` open consoles, alternating (none-five, five-none,
    ...: a drift of the shared machine's load falls on both); medians of each mode and the ratios
    (five over none). Also the API's CPU with no lookups, without and with the consoles."""
    wrk = ensure_wrk()
    ids = ids_file(dep, work / f"ids-{dep.copies}.txt")
    run_wrk(wrk, dep.svc.url, "single", ids, CONNECTIONS, 2)  # warm-up, not reported
    runs: dict[str, list[dict[str, Any]]] = {"none": [], "five": []}
    idle: dict[str, list[float]] = {"none": [], "five": []}
    for r in range(rounds):
        for mode in ("none", "five") if r % 2 == 0 else ("five", "none"):
            contexts = open_consoles(browser, dep, CONSOLES) if mode == "five" else []
            try:
                time.sleep(5)  # the streams open and the first figures arrive before the run
                idle[mode].append(idle_cpu(dep, 5))
                runs[mode].append(lookup_run(wrk, dep, ids, CONNECTIONS, seconds))
            finally:
                for context in contexts:
                    context.close()
    out: dict[str, Any] = {"consoles": CONSOLES, "rounds": rounds, "seconds": seconds, "connections": CONNECTIONS}
    for mode, each in runs.items():
        out[mode] = {k: round(statistics.median(r[k] for r in each), 3) for k in each[0]}
        out[mode]["each_lookups_per_s"] = [r["lookups_per_s"] for r in each]
        out[mode]["idle_api_cpu"] = statistics.median(idle[mode])
    for figure in ("lookups_per_s", "p50_ms", "p99_ms", "api_cpu_utilisation"):
        if out["none"][figure]:
            out[f"ratio_{figure}"] = round(out["five"][figure] / out["none"][figure], 3)
    return out


# --- the run -----------------------------------------------------------------------------------


def measured(browser: Any, dep: Deployment, work: Path, loads: int, rounds: int, seconds: float) -> dict[str, Any]:
    """The first paints and the extra load on ``dep`` as it is now (its API up)."""
    print(f"console bench: measuring {dep.contacts} contacts", file=sys.stderr)
    figures: dict[str, Any] = {"at": time.strftime("%H:%M:%SZ", time.gmtime())}
    figures["first_paint"] = first_paints(browser, dep, loads)
    figures["api_routes"] = api_times(dep, min(loads, API_LOADS))
    figures["extra_load"] = extra_load(browser, dep, work, rounds, seconds)
    return figures


def restart(dep: Deployment) -> float:
    """Start ``dep``'s worker and API again (the code on disk now); seconds until its ids resolve."""
    dep.svc.start_worker(0)
    dep.svc.start_api()
    last = next(i for v in reversed(dep.views) if (i := lookup_id(v)))
    return wait_resolved(dep, [f"c{dep.copies - 1}-{last}" if dep.copies > 1 else last, dep.contact], 1800)


def run(
    bootstrap: str,
    work: Path,
    sizes: list[int],
    real_contacts: int = 2_000,
    events_per_contact: int = 8,
    loads: int = 10,
    rounds: int = 4,
    seconds: float = 10,
    again_at: float | None = None,
    progress: Callable[[dict[str, Any]], None] = lambda _: None,
) -> dict[str, Any]:
    """The figures at each size in ``sizes`` (contacts held), each on a deployment of its own, one
    at a time (the others stopped). With ``again_at`` (a Unix time), every deployment is started
    again at that time (the code on disk then) and measured again: those figures are reported,
    the first pass's time of measure is kept. ``progress`` gets the figures so far."""
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {"sizes": []}
    deployments: list[Deployment] = []
    try:
        with ExitStack() as stack:
            pw = stack.enter_context(sync_playwright())
            browser = pw.chromium.launch(executable_path=str(CHROMIUM))
            stack.callback(browser.close)
            for size in sorted(sizes):
                # Playwright's sync API runs an event loop in this thread: the asyncio work elsewhere
                with ThreadPoolExecutor(1) as pool:
                    dep = pool.submit(
                        deploy, bootstrap, work / f"size-{size}", real_contacts, events_per_contact
                    ).result()
                deployments.append(dep)
                copies = max(1, math.ceil(size / max(1, dep.build["real_contacts"])))
                built = {**dep.build, **grow(dep, copies)}
                figures: dict[str, Any] = {"contacts": dep.contacts, "events": built["archive"]["events"]}
                figures.update(contact_page=dep.contact, account_page=dep.account, build=built)
                figures.update(measured(browser, dep, work, loads, rounds, seconds))
                out["sizes"].append(figures)
                progress(out)
                dep.svc.stop()
            if again_at is not None:
                time.sleep(max(0.0, again_at - time.time()))
                # the largest first (the headline figure, if time runs short)
                for dep, figures in reversed(list(zip(deployments, out["sizes"], strict=True))):
                    figures["first_pass_at"] = figures["at"]
                    with ThreadPoolExecutor(1) as pool:
                        figures["build"]["restart_s"] = pool.submit(restart, dep).result()
                    figures.update(measured(browser, dep, work, loads, rounds, seconds))
                    progress(out)
                    dep.svc.stop()
    finally:
        for dep in deployments:
            dep.svc.stop()
    return out


def markdown(results: dict[str, Any]) -> str:
    """The figures as tables: time to first paint per page and size, then the extra load."""
    sizes = results["figures"]["sizes"]
    lines = [f"Command: `{results['command']}` ({results['date']})", ""]
    head = " | ".join(f"{s['contacts']:,} contacts / {s['events']:,} events (at {s['at']})" for s in sizes)
    lines += [
        "Time to first paint, ms: first-contentful-paint median / p95 over the loads "
        "(server: the navigation's responseEnd, median / p95; JSON: the API routes with the page's "
        "numbers, called one after the other, median / p95)",
        "",
        f"| page | {head} |",
        "| --- |" + " --- |" * len(sizes),
    ]
    for name in PAGES:
        cells = []
        for s in sizes:
            p = s["first_paint"].get(name, {})
            if "fcp_ms" not in p:
                cells.append(f"status {p.get('status')}")
                continue
            fcp, end = p["fcp_ms"], p["response_end_ms"]
            cell = f"{fcp['median']:.0f} / {fcp['p95']:.0f} (server {end['median']:.0f} / {end['p95']:.0f}"
            json_ms = s.get("api_routes", {}).get(name, {}).get("ms")
            cells.append(cell + (f"; JSON {json_ms['median']:.0f} / {json_ms['p95']:.0f})" if json_ms else ")"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"GET /v1/contacts/{{id}} with {CONSOLES} open consoles against none (wrk, {CONNECTIONS} connections; "
        "medians of the rounds)",
        "",
        "| contacts | consoles open | lookups/s | p50 ms | p99 ms | API CPU under wrk (cores) "
        "| API CPU, no lookups (cores) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in sizes:
        load = s["extra_load"]
        for mode in ("none", "five"):
            m = load[mode]
            lines.append(
                f"| {s['contacts']:,} | {mode} | {m['lookups_per_s']:,.0f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | "
                f"{m['api_cpu_utilisation']:.2f} | {m['idle_api_cpu']:.3f} |"
            )
        lines.append(
            f"| {s['contacts']:,} | **ratio five / none** | **{load.get('ratio_lookups_per_s')}** | "
            f"{load.get('ratio_p50_ms')} | {load.get('ratio_p99_ms')} | {load.get('ratio_api_cpu_utilisation')} | |"
        )
    return "\n".join(lines) + "\n"


def measure(sizes: list[int] | None = None) -> dict[str, Any]:
    """``bench.run``'s entry: :func:`run` in a process of its own, on a broker of its own."""
    command = [sys.executable, "-m", "bench.console", "--json"]
    if sizes:
        command += ["--contacts", ",".join(str(s) for s in sizes)]
    done = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True, timeout=6 * 3600)
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def at_time(text: str | None) -> float | None:
    """``HH:MM`` (UTC, today; tomorrow if past) as a Unix time."""
    if not text:
        return None
    hours, minutes = (int(part) for part in text.split(":"))
    now = time.time()
    day = now - now % 86_400
    when = day + hours * 3600 + minutes * 60
    return when if when > now else when + 86_400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", default="100000,1000000", help="sizes (contacts held), comma-separated")
    parser.add_argument("--real-contacts", type=int, default=2_000, help="people of the real traffic (copy 0)")
    parser.add_argument(
        "--events-per-contact",
        type=int,
        default=8,
        help="of the real traffic (the archive holds a few more: some generated contacts get no event, dead letters)",
    )
    parser.add_argument("--loads", type=int, default=10, help="counted loads per page")
    parser.add_argument("--rounds", type=int, default=4, help="alternating pairs of lookup runs")
    parser.add_argument("--seconds", type=float, default=10, help="seconds of each lookup run")
    parser.add_argument(
        "--again-at", default=None, metavar="HH:MM", help="measure every size again at this UTC time (restarted)"
    )
    parser.add_argument("--name", default="console", help="results: bench/results/<date>-<name>.{json,md}")
    parser.add_argument("--json", action="store_true", help="print one JSON line, write no results (bench.run)")
    parser.add_argument("--multiply", default=None, metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--copies", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.multiply:
        print(json.dumps(asyncio.run(multiply_archive(args.multiply, args.first, args.copies))))
        return
    from tests.e2e.service import free_port
    from tests.kafka_broker import ensure_broker, stop_broker

    sizes = [int(s) for s in args.contacts.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="scorestream-console-bench-"))
    port = free_port()
    bootstrap = ensure_broker(work / "kafka", port)
    command = " ".join([".venv/bin/python", "-m", "bench.console", *sys.argv[1:]])
    stem = RESULTS / f"{time.strftime('%Y-%m-%d')}-{args.name}"

    def save(figures: dict[str, Any]) -> None:  # after every measure: a later failure keeps what was measured
        if not args.json:
            date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            results: dict[str, Any] = {"command": command, "date": date, "figures": figures}
            stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
            stem.with_suffix(".md").write_text(markdown(results))

    try:
        a = args
        figures = run(
            bootstrap,
            work,
            sizes,
            a.real_contacts,
            a.events_per_contact,
            a.loads,
            a.rounds,
            a.seconds,
            at_time(a.again_at),
            save,
        )
    finally:
        stop_broker(work / "kafka", port)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(figures))
    else:
        save(figures)
        print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
