"""A sink insert's latency while a report runs on embedded chDB: the report on the sink's own
:class:`~analytics.client.Store` (one client, one thread: how the API read the archive before
issue 17) against the report on a read store of its own (:class:`api.archive.Archive`, now).

    .venv/bin/python -m bench.report_beside_sink [--rounds 2] [--rows 150000000]

Alternating rounds in one process (chDB: one engine per process), a fresh data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

from analytics.client import Store


async def one_round(sink: Store, reader: Store, rows: int) -> tuple[float, float]:
    """(the report's seconds, the insert's seconds) for an insert sent 0.2 s into the report."""

    async def insert_later() -> float:
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        await sink.insert("t", ["x"], [[1]])
        return time.perf_counter() - started

    started = time.perf_counter()
    report = f"SELECT sum(sipHash64(number)) FROM numbers({rows})"  # noqa: S608 (an integer)
    _, insert_s = await asyncio.gather(reader.query(report), insert_later())
    return time.perf_counter() - started, insert_s


async def main(rounds: int, rows: int) -> None:
    with tempfile.TemporaryDirectory() as data:
        url = f"chdb://{data}"
        sink, own = Store(url), Store(url)
        await sink.command("CREATE TABLE IF NOT EXISTS t (x UInt64) ENGINE = MergeTree ORDER BY x")
        for _ in range(rounds):
            for label, reader in (("shared", sink), ("own", own)):
                report_s, insert_s = await one_round(sink, reader, rows)
                print(
                    f"{label:6} report {report_s:5.2f} s; an insert sent 0.2 s into it took {insert_s * 1000:8.1f} ms"
                )
        await own.close()
        await sink.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=150_000_000, help="rows the report's query hashes")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.rows))
