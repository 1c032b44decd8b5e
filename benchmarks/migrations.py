"""Migration benchmark: from ``ALTER TABLE ... ADD COLUMN`` committing to the column being usable on
every connected client (issue 12 asks for 1,000).

`electricctl serve` runs as a subprocess against an embedded cluster (durable unless --fast). The
clients are electricctl's own ``SyncClient``s, all in this process (one event loop, one SQLite
file and store thread each), connected and idle, each subscribed to the table. A round commits one
``ALTER TABLE items ADD COLUMN`` with psycopg and times, for each client, the moment its
``on_migrate`` callback reports the migration applied: the column exists in its SQLite file and its
oplog triggers capture it, so the app can read and write it. Figures: the time until the first,
the median and the last client; medians of several rounds (runs in brackets).

The clients use a poll interval of 1 s for their own local writes (there are none here): with
1,000 clients in one process, the default 20 ms would only measure this process's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import make_database, pct, runs, serving, sql
from benchmarks.report import REPORT
from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl.client import SyncClient

SECTION = "migrations"
TITLE = "Migrations: ALTER TABLE committed -> the column usable on every connected SyncClient"


async def bench(pg: EmbeddedPostgres, tmp: Path, clients: int, rounds: int) -> None:
    db = make_database(pg, tmp, "mig", "CREATE TABLE items (id int8 PRIMARY KEY, note text)", ["items"])
    firsts: list[float] = []
    medians: list[float] = []
    lasts: list[float] = []
    with serving(db, tmp, "slot_mig") as server:
        applied: dict[str, dict[int, float]] = {}

        def on_migrate(i: int) -> object:
            def seen(version: str, tables: list[str]) -> None:
                applied.setdefault(version, {}).setdefault(i, time.perf_counter())

            return seen

        started: list[SyncClient] = []
        t0 = time.perf_counter()
        for i in range(clients):
            cl = SyncClient(
                str(tmp / f"c{i}.db"), server.ws_url, db.token(), poll_interval=1.0, on_migrate=on_migrate(i)
            )
            await cl.start()
            started.append(cl)
        subscriptions = [await cl.subscribe("items") for cl in started]
        await asyncio.gather(*(cl.synced(sub) for cl, sub in zip(started, subscriptions, strict=True)))
        print(f"   {clients:,} clients connected and subscribed in {time.perf_counter() - t0:.1f} s")
        try:
            for r in range(rounds):
                await asyncio.sleep(1.0)
                version = f"3000010100000000{r}"
                committed = await asyncio.to_thread(_alter, db.url, version, f"ALTER TABLE items ADD COLUMN c{r} int4")
                deadline = time.monotonic() + 300
                while len(applied.get(version, {})) < clients:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{len(applied.get(version, {}))} of {clients} clients applied {version}")
                    await asyncio.sleep(0.01)
                delays = [(t - committed) * 1000 for t in applied[version].values()]
                firsts.append(min(delays))
                medians.append(statistics.median(delays))
                lasts.append(max(delays))
                print(f"   round {r + 1}: first {min(delays):.0f} ms, p50 {statistics.median(delays):.0f} ms,"
                      f" p99 {pct(delays, 99):.0f} ms, last {max(delays):.0f} ms")  # fmt: skip
            # and usable: a write of the new column from one client reaches Postgres
            await asyncio.to_thread(_local_write, tmp / "c0.db", rounds - 1)
            started[0].notify()
            await started[0].flush(timeout=60)
            assert sql(db.url, f"SELECT c{rounds - 1} FROM items WHERE id = 1")[0][0] == 42
        finally:
            for cl in started:
                await cl.stop()
    print(f"   first client: {runs(firsts, '{:.0f}')} ms")
    print(f"   median client: {runs(medians, '{:.0f}')} ms")
    print(f"   last client: {runs(lasts, '{:.0f}')} ms")
    what = f"ALTER TABLE ADD COLUMN committed -> usable in every one of {clients:,} SyncClients"
    REPORT.figure(SECTION, f"{what}: the median client", medians, "ms")
    REPORT.figure(SECTION, f"{what}: the last client", lasts, "ms")


def _alter(url: str, version: str, statement: str) -> float:
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute("SELECT set_config('electric.migration_version', %s, true)", [version])
        conn.execute(statement)
        conn.commit()
        return time.perf_counter()


def _local_write(path: Path, r: int) -> None:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute(f"INSERT INTO items (id, note, c{r}) VALUES (1, 'x', 42)")
    finally:
        conn.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=1000)


QUICK = {"clients": 5}
"""What ``python -m benchmarks --quick`` changes."""


async def run(args: argparse.Namespace, pg: EmbeddedPostgres, tmp: Path) -> None:
    print(
        f"migrations: `electricctl serve` subprocess, {'fsync-off' if args.fast else 'durable'} embedded cluster,"
        f" {args.clients:,} SyncClients in this process, {args.rounds} rounds, {os.cpu_count()} cores"
    )
    print("ALTER TABLE ... ADD COLUMN committed -> the column usable in each client's SQLite file (on_migrate)")
    await bench(pg, tmp, args.clients, args.rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fast", action="store_true", help="fsync=off cluster (default: a durable cluster)")
    add_arguments(parser)
    args = parser.parse_args()
    sys.stdout.flush()
    with EmbeddedPostgres(durable=not args.fast) as pg, tempfile.TemporaryDirectory(prefix="bench-mig-") as tmp:
        asyncio.run(run(args, pg, Path(tmp)))


if __name__ == "__main__":
    main()
