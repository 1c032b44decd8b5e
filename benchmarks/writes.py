"""Write-path benchmark: client writes merged into Postgres, client-to-client latency, offline catch-up.

Targets (the bidirectional-sync issue): >= 2,000 row operations/s merged into Postgres from one
client; client A writes, client B sees it with p50 <= 20 ms; after 10,000 offline writes a client
is fully synced <= 10 s after it reconnects.

`electricctl serve` runs as a subprocess against an embedded cluster (durable unless --fast); the
clients are electricctl's own `SyncClient`s in this process, each on its own SQLite file (WAL);
the "app" writes with plain SQL on its own SQLite connection, as an app would. Figures are medians
of several rounds (runs in brackets).

1. throughput: the app inserts N rows in transactions of T rows, as fast as SQLite takes them;
   timed from the first write until Postgres holds every row and the client's oplog is empty
   (every transaction echoed back). Also with one row per app transaction: ``notify()`` after each
   (the client's store thread takes every write committed by the time it looks into one client
   transaction), and without it (the client is told of the write by inotify, or finds it by its poll). Baseline, in each round: the same
   inserts made straight into Postgres with psycopg from this process, in transactions of the
   same size (one each for the 1-row modes), into a plain table of the same columns.
2. latency: A's app inserts one row and calls ``notify()``; timed until B has applied it (B's
   ``on_change``). Also without ``notify()``: A's client is told of the write by inotify on Linux
   (elsewhere it finds it at its next poll, every 20 ms).
3. offline: the app makes 10,000 single-row writes while the client is stopped; timed from
   ``start()`` until Postgres holds them all and the oplog is empty.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import time
from pathlib import Path

import psycopg

from benchmarks.common import Parts, make_database, pct, run_alone, runs, serving, sql
from benchmarks.report import REPORT
from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl.client import SyncClient

SECTION = "writes"
TITLE = "Write path: SyncClient writes merged into Postgres, client-to-client latency, offline catch-up"


def app_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


async def started(path: Path, url: str, token: str, table: str, **kw: object) -> SyncClient:
    cl = SyncClient(str(path), url, token, **kw)  # type: ignore[arg-type]
    await cl.start()
    await cl.synced(await cl.subscribe(table))
    return cl


def direct_writes(url: str, table: str, n: int, per_tx: int) -> float:
    """The baseline: the same inserts made directly in Postgres with psycopg from this process, in
    transactions of ``per_tx`` rows (one each for 1), into a plain table of the same columns."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int8 PRIMARY KEY, note text, n int4)")
        insert = f"INSERT INTO {table} (id, note, n) VALUES (%s, %s, %s)"
        start = time.perf_counter()
        for i in range(0, n, per_tx):
            rows = [(j, f"note {j}", j % 1000) for j in range(i, min(n, i + per_tx))]
            if per_tx == 1:
                conn.execute(insert, rows[0], prepare=True)  # autocommit: the statement is the transaction
            else:
                with conn.transaction():
                    conn.cursor().executemany(insert, rows)
        return n / (time.perf_counter() - start)


async def bench_throughput(pg: EmbeddedPostgres, tmp: Path, rounds: int, rows: int, tx_rows: int) -> None:
    print(f"1. client writes merged into Postgres ({rows:,} inserts per round; the 1-row modes {max(1, rows // 4):,})")
    modes = ((tx_rows, True, "rows per app transaction"), (1, True, "row per app transaction, notify()"),
             (1, False, "row per app transaction, no notify()"))  # fmt: skip
    for per_tx, notify, label in modes:
        n = rows if per_tx > 1 else max(1, rows // 4)
        rates: list[float] = []
        direct: list[float] = []
        for r in range(rounds):
            name = f"wt_{per_tx}_{int(notify)}_{r}"
            db = make_database(pg, tmp, name, f"CREATE TABLE {name} (id int8 PRIMARY KEY, note text, n int4)", [name])
            direct.append(await asyncio.to_thread(direct_writes, db.url, f"{name}_direct", n, per_tx))
            with serving(db, tmp, f"slot_{name}") as server:
                path = tmp / f"{name}.db"
                cl = await started(path, server.ws_url, db.token(), name)
                conn = app_db(path)
                start = time.perf_counter()
                for i in range(0, n, per_tx):
                    conn.execute("BEGIN")
                    conn.executemany(
                        f"INSERT INTO {name} (id, note, n) VALUES (?, ?, ?)",
                        [(j, f"note {j}", j % 1000) for j in range(i, min(n, i + per_tx))],
                    )
                    conn.execute("COMMIT")
                    if notify:
                        cl.notify()  # send now: what was committed since the client last looked goes out together
                    await asyncio.sleep(0)
                await cl.flush(timeout=600)
                elapsed = time.perf_counter() - start
                count = sql(db.url, f"SELECT count(*) FROM {name}")[0][0]
                assert count == n, f"Postgres has {count} of {n} rows"
                rates.append(n / elapsed)
                conn.close()
                await cl.stop()
        print(f"   {per_tx:>5} {label}: {runs(rates, '{:,.0f}')} row operations/s (goal >= 2,000)")
        print(
            f"   {'':>5} baseline, psycopg straight into Postgres ({per_tx} row(s) per transaction, this process):"
            f" {runs(direct, '{:,.0f}')} rows/s"
        )
        REPORT.figure(
            SECTION,
            f"client writes -> Postgres through SyncClient, {per_tx} {label} ({n:,} rows)",
            rates,
            "rows/s",
            goal=(">=", 2000.0),
            baseline_runs=direct,
            baseline_label=f"psycopg inserts straight into Postgres, {per_tx} per transaction",
            key=7 if per_tx == 1 and notify else 0,
        )


async def bench_latency(pg: EmbeddedPostgres, tmp: Path, rounds: int, samples: int) -> None:
    print(f"2. client A writes, client B sees it ({samples} single-row transactions per round, 20/s)")
    for notify in (True, False):
        p50s: list[float] = []
        p99s: list[float] = []
        for r in range(rounds):
            name = f"lat_{int(notify)}_{r}"
            db = make_database(pg, tmp, name, f"CREATE TABLE {name} (id int8 PRIMARY KEY, note text)", [name])
            with serving(db, tmp, f"slot_{name}") as server:
                seen: dict[int, float] = {}

                def on_change(changes: list, origin: str | None, seen: dict[int, float] = seen) -> None:  # type: ignore[type-arg]
                    now = time.perf_counter()
                    for ch in changes:
                        seen.setdefault(int(ch.values["id"]), now)

                a = await started(tmp / f"{name}-a.db", server.ws_url, db.token(), name)
                b = await started(tmp / f"{name}-b.db", server.ws_url, db.token(), name, on_change=on_change)
                conn = app_db(tmp / f"{name}-a.db")
                sent: dict[int, float] = {}
                for i in range(samples):
                    sent[i] = time.perf_counter()
                    conn.execute(f"INSERT INTO {name} (id, note) VALUES (?, ?)", (i, "x"))
                    if notify:
                        a.notify()
                    await asyncio.sleep(0.05)
                deadline = time.monotonic() + 30
                while len(seen) < samples and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                lat = [(seen[i] - sent[i]) * 1000 for i in sent if i in seen]
                assert len(lat) == samples, f"B saw {len(lat)} of {samples}"
                p50s.append(pct(lat, 50))
                p99s.append(pct(lat, 99))
                conn.close()
                await a.stop()
                await b.stop()
        how = "with notify()" if notify else "no notify()"
        print(f"   {how:>16}: p50 {runs(p50s, '{:.1f}')} ms, p99 {runs(p99s, '{:.1f}')} ms (goal p50 <= 20 ms)")
        REPORT.figure(
            SECTION,
            f"client A writes -> client B has it, p50 ({how})",
            p50s,
            "ms",
            goal=("<=", 20.0) if notify else None,
        )


async def bench_offline(pg: EmbeddedPostgres, tmp: Path, rounds: int, writes: int) -> None:
    print(f"3. reconnect after {writes:,} offline writes (single-row transactions)")
    times: list[float] = []
    for r in range(rounds):
        name = f"off_{r}"
        db = make_database(pg, tmp, name, f"CREATE TABLE {name} (id int8 PRIMARY KEY, note text)", [name])
        with serving(db, tmp, f"slot_{name}") as server:
            path = tmp / f"{name}.db"
            cl = await started(path, server.ws_url, db.token(), name)
            await cl.stop()
            conn = app_db(path)
            for i in range(writes):
                conn.execute(f"INSERT INTO {name} (id, note) VALUES (?, ?)", (i, f"offline {i}"))
            conn.close()
            again = SyncClient(str(path), server.ws_url, db.token())
            start = time.perf_counter()
            await again.start()
            await again.flush(timeout=600)
            times.append(time.perf_counter() - start)
            count = sql(db.url, f"SELECT count(*) FROM {name}")[0][0]
            assert count == writes, f"Postgres has {count} of {writes}"
            await again.stop()
    print(f"   fully synced after reconnecting: {runs(times, '{:.2f}')} s (goal <= 10 s)")
    REPORT.figure(
        SECTION,
        f"{writes:,} offline writes: start() -> all in Postgres",
        times,
        "s",
        goal=("<=", 10.0) if writes == 10_000 else None,
        note="" if writes == 10_000 else "goal is for 10,000 writes",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=20_000, help="1: rows per round")
    parser.add_argument("--tx-rows", type=int, default=100, help="1: rows per transaction")
    parser.add_argument("--samples", type=int, default=200, help="2: writes per round")
    parser.add_argument("--offline", type=int, default=10_000, help="3: offline writes")


QUICK = {"rows": 800, "samples": 20, "offline": 300}
"""What ``python -m benchmarks --quick`` changes."""


async def run(args: argparse.Namespace, pg: EmbeddedPostgres, tmp: Path) -> None:
    print(
        f"write path: `electricctl serve` subprocess, {'fsync-off' if args.fast else 'durable'} embedded cluster, "
        f"SyncClients in this process, {args.rounds} rounds, {os.cpu_count()} cores"
    )
    parts = Parts(args.only, "123")
    await parts.step("1", bench_throughput(pg, tmp, args.rounds, args.rows, args.tx_rows))
    await parts.step("2", bench_latency(pg, tmp, args.rounds, args.samples))
    await parts.step("3", bench_offline(pg, tmp, args.rounds, args.offline))
    print(parts.summary())


def main() -> None:
    run_alone(__doc__, add_arguments, run, "bench-writes-")


if __name__ == "__main__":
    main()
