"""Sync-service benchmark, through the shipped `SyncClient`: latency, live throughput, initial sync
(ours and the npm client's), and the server's memory per idle connection.

Goals: commit in Postgres -> row in the SyncClient's SQLite at 200 single-row transactions/s with
p50 <= 5 ms and p99 <= 25 ms; >= 30,000 live rows/s into one SyncClient (and >= 0.3x the server's
own pgoutput decode + TxBuilder rate); 1M rows of a 6-column table synced into a fresh SyncClient
in <= 10 s (and >= 0.5x a raw COPY -> SQLite bulk insert), the client process peaking at <= 200 MB;
<= 50 KB of server memory per idle client.

Run with `scripts/bench` (or `.venv/bin/python -m benchmarks.serve`). `electricctl serve` runs as a
subprocess (the durable log fsyncs, as in production) against a durable embedded cluster. Every
user-facing figure goes through `electricctl.client.SyncClient` (WAL SQLite file, oplog, triggers,
its store thread): a row counts as delivered when the client's SQLite transaction holding it has
committed, which `on_change` reports. Part 4 alone measures the server only, with protocol clients
that discard what they get. Medians of several rounds, spread and runs in brackets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.common import (
    WIDE_COLUMNS,
    WIDE_VALUES,
    Database,
    Parts,
    ServeProcess,
    cpu_seconds,
    make_database,
    pct,
    print_cpu,
    protocol_client,
    raise_open_files,
    rss_kb,
    run_alone,
    runs,
    serving,
    sql,
    sqlite_count,
    sync_client,
    until,
    walsender_pid,
)
from benchmarks.report import REPORT
from benchmarks.serve_sync import SECTION, bench_initial_sync
from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl._model import wire
from electricctl._model.rows import Column, RelationDef
from electricctl._replication import pgoutput as po
from electricctl._replication.txbuilder import TxBuilder
from electricctl.client import RemoteChange, SyncClient
from tests.satellite_client import SatelliteClient

TITLE = "Sync service through SyncClient: latency, live throughput, initial sync, idle connections"


# -- 1. latency --------------------------------------------------------------------------------
@dataclass
class LatencyRound:
    from_sent: list[float]
    from_returned: list[float]
    rate: float
    cpu: dict[str, float]


async def latency_round(server: ServeProcess, tmp: Path, table: str, rate: float, seconds: float) -> LatencyRound:
    applied: dict[object, float] = {}

    def on_change(changes: list[RemoteChange], origin: str | None) -> None:
        now = time.perf_counter()  # on_change runs once the client's SQLite transaction has committed
        for ch in changes:
            applied.setdefault(ch.values["id"], now)

    cl = await sync_client(server, tmp / f"{table}.db", table, on_change)
    n = int(rate * seconds)
    sent: list[float] = [0.0] * n
    returned: list[float] = [0.0] * n
    insert = f"INSERT INTO {table} (id, note) VALUES (%s, 'x')"
    with psycopg.connect(server.db.url, autocommit=True) as conn:
        for i in range(1, 21):  # warm-up, not measured: prepared statement, server and client paths
            conn.execute(insert, [-i], prepare=True)
        await until(lambda: -20 in applied, 30, "the warm-up rows")
        backend = int(conn.execute("SELECT pg_backend_pid()").fetchall()[0][0])
        pids = {"serve": server.pid, "walsender": walsender_pid(server.db.url, server.slot), "pg writer": backend}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()} | {"client": time.process_time()}

        def writer() -> float:
            start = time.perf_counter()
            for i in range(n):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent[i] = time.perf_counter()
                conn.execute(insert, [i], prepare=True)  # autocommit: this statement is the commit
                returned[i] = time.perf_counter()
            return n / (time.perf_counter() - start)

        achieved = await asyncio.to_thread(writer)
        await until(lambda: all(i in applied for i in range(n)), 60, "every row in the client")
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()} | {"client": time.process_time() - cpu0["client"]}
    await cl.stop()
    return LatencyRound(
        [(applied[i] - sent[i]) * 1000 for i in range(n)],
        [(applied[i] - returned[i]) * 1000 for i in range(n)],
        achieved,
        cpu,
    )


async def bench_latency(pg: EmbeddedPostgres, tmp: Path, rounds: int, rate: float, seconds: float) -> None:
    tables = [f"lat_{r}" for r in range(rounds)]
    schema = ";".join(f"CREATE TABLE {t} (id int8 PRIMARY KEY, note text)" for t in tables)
    db = make_database(pg, tmp, "bench_latency", schema, tables)
    results: list[LatencyRound] = []
    with serving(db, tmp, "bench_latency") as server:
        for t in tables:
            results.append(await latency_round(server, tmp, t, rate, seconds))
    n = int(rate * seconds)
    print(
        f"1. latency: Postgres commit -> row committed in a SyncClient's SQLite (its on_change); {rate:.0f}"
        f" single-row transactions/s for {seconds:g} s ({n} per round; autocommit INSERTs from a writer thread"
        " in the client's process)"
    )
    print(f"   writer rate achieved      {runs([r.rate for r in results], '{:.0f}')} tx/s")
    for label, series in (
        ("from INSERT sent", [r.from_sent for r in results]),
        ("from commit returned", [r.from_returned for r in results]),
    ):
        p50 = [pct(s, 50) for s in series]
        p99 = [pct(s, 99) for s in series]
        pooled = [v for s in series for v in s]
        print(f"   {label:<21} p50 {runs(p50, '{:.2f}')} ms  (goal <= 5 ms)")
        print(f"   {'':<21} p99 {runs(p99, '{:.2f}')} ms  (goal <= 25 ms)")
        print(
            f"   {'':<21} all rounds pooled: p50 {pct(pooled, 50):.2f}  p90 {pct(pooled, 90):.2f}  "
            f"p99 {pct(pooled, 99):.2f}  max {max(pooled):.2f} ms"
        )
    at = f"at {rate:.0f} tx/s, single-row"
    for q, goal in ((50, 5.0), (99, 25.0)):
        REPORT.figure(
            SECTION,
            f"commit -> row in SyncClient's SQLite, p{q} ({at}, from INSERT sent)",
            [pct(r.from_sent, q) for r in results],
            "ms",
            goal=("<=", goal),
            key=5 + (q == 99),
        )
    print_cpu(results[0].cpu.keys(), [r.cpu for r in results], seconds)


# -- 2. sustained changes, and the raw pgoutput decode rate ----------------------------------
@dataclass
class ThroughputRound:
    rows: int
    write_seconds: float
    deliver_seconds: float
    cpu: dict[str, float]
    catchup_seconds: float
    catchup_cpu: dict[str, float]


class Delivered:
    """An ``on_change`` that counts rows, and when the last one arrived."""

    def __init__(self) -> None:
        self.rows = 0
        self.last = 0.0

    def __call__(self, changes: list[RemoteChange], origin: str | None) -> None:
        self.rows += len(changes)
        self.last = time.perf_counter()


def log_last_lsn(server: ServeProcess) -> int:
    return int(server.health()[1]["replication"]["log_last_lsn"])


async def throughput_round(
    server: ServeProcess, tmp: Path, table: str, rows: int, tx_rows: int, writers: int
) -> ThroughputRound:
    """Live: ``rows`` written while the client streams. Catch-up: ``rows`` more written while it
    is stopped, then it starts again on its file and resumes from its stored position (served
    from the server's log)."""
    path = tmp / f"{table}.db"
    live = Delivered()
    cl = await sync_client(server, path, table, live)
    insert = f"INSERT INTO {table} SELECT {WIDE_VALUES} FROM generate_series(%s::int8, %s::int8) g"
    with ExitStack() as stack:
        conns = [stack.enter_context(psycopg.connect(server.db.url, autocommit=True)) for _ in range(writers)]
        backends = [int(c.execute("SELECT pg_backend_pid()").fetchall()[0][0]) for c in conns]
        pids = {"serve": server.pid, "walsender": walsender_pid(server.db.url, server.slot)}

        def cpu_now() -> dict[str, float]:
            return (
                {k: cpu_seconds(p) for k, p in pids.items()}
                | {"pg writers": sum(cpu_seconds(p) for p in backends)}
                | {"client": time.process_time()}
            )

        def run(conn: psycopg.Connection[Any], chunks: Sequence[tuple[int, int]]) -> None:
            for lo, hi in chunks:
                conn.execute(insert, [lo, hi], prepare=True)

        def write(first: int) -> tuple[float, int]:
            """Write rows first..first+rows-1 (the last transaction alone, after the others); return
            when done and the WAL position just before that last transaction."""
            *chunks, last = [(lo, min(first + rows, lo + tx_rows) - 1) for lo in range(first, first + rows, tx_rows)]
            with ThreadPoolExecutor(writers) as pool:
                list(pool.map(run, conns, [chunks[i::writers] for i in range(writers)]))
            before_last = psycopg_lsn(conns[0])
            run(conns[0], [last])
            return time.perf_counter(), before_last

        cpu0 = cpu_now()
        start = time.perf_counter()
        written, _ = await asyncio.to_thread(write, 1)
        await until(lambda: live.rows >= rows, 600, f"{rows} live rows in the client")
        live_end = live.last
        cpu1 = cpu_now()
        cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}

        # catch-up: the client stops, the server logs another `rows`, the client starts again
        await cl.stop()
        _, before_last = await asyncio.to_thread(write, rows + 1)
        deadline = time.monotonic() + 300
        while log_last_lsn(server) <= before_last:
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not log the catch-up rows in time")
            await asyncio.sleep(0.05)
        caught = Delivered()
        cl = SyncClient(str(path), server.ws_url, server.db.token(), on_change=caught)
        cpu0 = cpu_now()
        start2 = time.perf_counter()
        await cl.start()
        await until(lambda: caught.rows >= rows, 600, f"{rows} catch-up rows in the client")
        cpu1 = cpu_now()
        catchup_cpu = {k: cpu1[k] - cpu0[k] for k in ("serve", "client")}
    await cl.stop()
    count = sqlite_count(path, table)
    assert count == 2 * rows, f"client SQLite has {count} rows, expected {2 * rows}"
    return ThroughputRound(rows, written - start, live_end - start, cpu, caught.last - start2, catchup_cpu)


def psycopg_lsn(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'").fetchone()
    assert row is not None
    return int(row[0])


def capture_payloads(url: str, slot: str) -> list[bytes]:
    """Everything a pgoutput slot holds, as the payloads of its XLogData messages."""
    rows = sql(
        url,
        "SELECT data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, 'proto_version', '1',"
        " 'publication_names', %s)",
        [slot, wire.PUBLICATION],
    )
    sql(url, "SELECT pg_drop_replication_slot(%s)", [slot])
    return [bytes(r[0]) for r in rows]


def decode_rates(payloads: Sequence[bytes], rounds: int) -> tuple[int, list[float], list[float]]:
    """Rows/s of ``pgoutput.decode`` alone, and of decode plus the TxBuilder (no catalog I/O)."""

    def resolve(rel: po.Relation) -> RelationDef:
        cols = tuple(Column(c.name, c.type_oid, str(c.type_oid), c.key, True) for c in rel.columns)
        return RelationDef(rel.relid, rel.schema, rel.name, cols)

    inserts = sum(1 for p in payloads if p[:1] == b"I")
    decode_only: list[float] = []
    with_builder: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        for p in payloads:
            po.decode(p)
        decode_only.append(inserts / (time.perf_counter() - start))
        builder = TxBuilder(resolve)
        start = time.perf_counter()
        for p in payloads:
            builder.feed(po.decode(p))
        with_builder.append(inserts / (time.perf_counter() - start))
    return inserts, decode_only, with_builder


async def bench_throughput(pg: EmbeddedPostgres, tmp: Path, rounds: int, rows: int, tx_rows: int, writers: int) -> None:
    tables = [f"bulk_{r}" for r in range(rounds)]
    schema = ";".join(f"CREATE TABLE {t} ({WIDE_COLUMNS})" for t in tables)
    db = make_database(pg, tmp, "bench_throughput", schema, tables)
    results: list[ThroughputRound] = []
    payloads: list[bytes] = []
    with serving(db, tmp, "bench_throughput") as server:
        for r, t in enumerate(tables):
            if r == 0:  # a second slot records round 0's stream for the decode figures below
                sql(db.url, "SELECT pg_create_logical_replication_slot('bench_capture', 'pgoutput')")
            results.append(await throughput_round(server, tmp, t, rows, tx_rows, writers))
            if r == 0:
                payloads = capture_payloads(db.url, "bench_capture")
    print(
        f"2. sustained changes into one SyncClient: {rows:,} inserted rows per phase in transactions of {tx_rows}"
        f" (INSERT ... SELECT generate_series, 6 columns), written by {writers} connection(s)"
        " as fast as Postgres takes them; a row counts when on_change reports it (committed in SQLite)"
    )
    write_rates = [r.rows / r.write_seconds for r in results]
    print(f"   Postgres write rate       {runs(write_rates, '{:,.0f}')} rows/s")
    print(
        f"   Postgres commit time      {runs([r.write_seconds for r in results], '{:.2f}')} s for the {rows:,} rows"
        " (first INSERT sent -> last COMMIT returned)"
    )
    live = [r.rows / r.deliver_seconds for r in results]
    print(
        f"   live, in SQLite           {runs(live, '{:,.0f}')} rows/s"
        "  (first INSERT sent -> last row committed in SQLite; goal >= 30,000 rows/s)"
    )
    lag = [r.deliver_seconds - r.write_seconds for r in results]
    print(f"   live delivery behind      {runs(lag, '{:.2f}')} s after the writer's last COMMIT returned")
    print_cpu(results[0].cpu.keys(), [r.cpu for r in results], [r.deliver_seconds for r in results])
    catchup = [r.rows / r.catchup_seconds for r in results]
    print(
        f"   catch-up, in SQLite       {runs(catchup, '{:,.0f}')} rows/s"
        f"  (another {rows:,} rows written while the client was stopped, already in the server's log;"
        " start() -> last row committed in SQLite)"
    )
    print_cpu(["serve", "client"], [r.catchup_cpu for r in results], [r.catchup_seconds for r in results])
    inserts, decode_only, with_builder = decode_rates(payloads, max(3, rounds))
    print(
        f"   SERVER ONLY: raw pgoutput decode of round 0's stream, captured by a second slot ({len(payloads):,}"
        f" messages, {inserts:,} inserts; in this process, no I/O):"
    )
    print(f"     pgoutput.decode         {runs(decode_only, '{:,.0f}')} rows/s")
    print(f"     decode + TxBuilder      {runs(with_builder, '{:,.0f}')} rows/s")
    ratio = [v / statistics.median(with_builder) for v in live]
    print(f"   ratio live / (decode + TxBuilder)  {runs(ratio, '{:.2f}')}x  (goal >= 0.3x)")
    label = f"live rows into one SyncClient ({tx_rows}-row transactions, {rows:,} rows)"
    REPORT.figure(
        SECTION,
        label,
        live,
        "rows/s",
        goal=(">=", 30_000.0),
        baseline_runs=with_builder,
        baseline_label="server-only pgoutput decode + TxBuilder",
        ratio_goal=0.3,
        key=4,
    )
    REPORT.figure(SECTION, f"Postgres write rate of those rows ({writers} writer connections)", write_rates, "rows/s")
    REPORT.figure(SECTION, f"catch-up after a stop, into one SyncClient ({rows:,} rows)", catchup, "rows/s")


# -- 4. many idle clients (server only) --------------------------------------------------------
@dataclass
class IdleRound:
    clients: int
    before_kb: int
    after_kb: int
    closed_kb: int
    second_kb: int
    connect_seconds: float


async def idle_wave(
    server: ServeProcess, clients: int, concurrency: int, settle: float
) -> tuple[list[SatelliteClient], float]:
    """Connect ``clients`` protocol clients, each authenticated, replicating and subscribed to ``small``."""
    sem = asyncio.Semaphore(concurrency)

    async def one() -> SatelliteClient:
        async with sem:
            return await protocol_client(server, "small")

    start = time.perf_counter()
    conns = await asyncio.gather(*(one() for _ in range(clients)))
    seconds = time.perf_counter() - start
    await asyncio.sleep(settle)
    _, health = server.health()
    assert health["clients"] == clients, f"server reports {health['clients']} clients, expected {clients}"
    return conns, seconds


async def idle_round(db: Database, tmp: Path, slot: str, clients: int, concurrency: int, settle: float) -> IdleRound:
    with serving(db, tmp, slot) as server:
        warm = await protocol_client(server, "small")  # load every lazy code path first
        await warm.close()
        await asyncio.sleep(settle / 2)
        before = rss_kb(server.pid)
        conns, connect_seconds = await idle_wave(server, clients, concurrency, settle)
        after = rss_kb(server.pid)
        await asyncio.gather(*(c.close() for c in conns))
        await asyncio.sleep(settle / 2)
        closed = rss_kb(server.pid)
        conns, _ = await idle_wave(server, clients, concurrency, settle)  # a second wave: does memory keep growing?
        second = rss_kb(server.pid)
        await asyncio.gather(*(c.close() for c in conns))
    return IdleRound(clients, before, after, closed, second, connect_seconds)


async def bench_idle(pg: EmbeddedPostgres, tmp: Path, rounds: int, clients: int, settle: float) -> None:
    hard = raise_open_files()
    clients = min(clients, hard - 200)
    schema = (
        "CREATE TABLE small (id int8 PRIMARY KEY, label text);"
        " INSERT INTO small SELECT g, 'row ' || g FROM generate_series(1, 10) g"
    )
    db = make_database(pg, tmp, "bench_idle", schema, ["small"])
    results = [await idle_round(db, tmp, f"bench_idle_{r}", clients, 50, settle) for r in range(rounds)]
    print(
        f"4. SERVER ONLY, idle connections: {clients} protocol clients that discard what they get"
        " (tests/satellite_client.py; each authenticated, replicating, subscribed to a 10-row table),"
        f" a fresh `electricctl serve` each round; serve's VmRSS from /proc; fd limit {hard}"
    )
    mb = "{:.1f}"
    print(
        f"   serve RSS before          {runs([r.before_kb / 1024 for r in results], mb)} MB (after one warm-up client)"
    )
    print(f"   serve RSS with clients    {runs([r.after_kb / 1024 for r in results], mb)} MB")
    per = [(r.after_kb - r.before_kb) / r.clients for r in results]
    print(f"   per idle client           {runs(per, '{:.1f}')} KB  (goal <= 50 KB)")
    print(f"   serve RSS after they left {runs([r.closed_kb / 1024 for r in results], mb)} MB")
    print(f"   ... with a second wave    {runs([r.second_kb / 1024 for r in results], mb)} MB ({clients} new clients)")
    print(f"   time to connect all       {runs([r.connect_seconds for r in results], '{:.2f}')} s (50 at a time)")
    REPORT.figure(
        SECTION,
        f"server memory per idle connection ({clients} connections; server only: protocol clients that discard rows)",
        per,
        "KB",
        goal=("<=", 50.0),
    )


# -- main --------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=200.0, help="1: transactions/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="1: seconds per round")
    parser.add_argument("--rows", type=int, default=200_000, help="2: rows per round")
    parser.add_argument("--tx-rows", type=int, default=100, help="2: rows per transaction")
    parser.add_argument("--writers", type=int, default=2, help="2: concurrent writer connections")
    parser.add_argument("--sync-rows", type=int, default=1_000_000, help="3: rows in the table")
    parser.add_argument("--npm-rounds", type=int, default=1, help="3: rounds of the npm client's sync (0: none)")
    parser.add_argument("--npm-cap", type=float, default=600.0, help="3: seconds the npm client may take")
    parser.add_argument("--clients", type=int, default=1000, help="4: idle clients")
    parser.add_argument("--settle", type=float, default=2.0, help="4: seconds to let the server settle")


QUICK = {
    "rate": 100.0,
    "seconds": 1.0,
    "rows": 5_000,
    "sync_rows": 10_000,
    "npm_cap": 120.0,
    "clients": 20,
    "settle": 0.5,
}
"""What ``python -m benchmarks --quick`` changes: a small version of every part."""


async def run(args: argparse.Namespace, pg: EmbeddedPostgres, tmp: Path) -> None:
    print(
        f"sync service: `electricctl serve` subprocess (log fsync on), "
        f"{'fsync-off' if args.fast else 'durable'} embedded cluster, SyncClients (parts 1-3), "
        f"{args.rounds} rounds, {os.cpu_count()} cores"
    )
    parts = Parts(args.only, "1234")
    step = parts.step
    await step("1", bench_latency(pg, tmp, args.rounds, args.rate, args.seconds))
    await step("2", bench_throughput(pg, tmp, args.rounds, args.rows, args.tx_rows, args.writers))
    await step("3", bench_initial_sync(pg, tmp, args.rounds, args.sync_rows, 1_000_000, args.npm_rounds, args.npm_cap))
    await step("4", bench_idle(pg, tmp, args.rounds, args.clients, args.settle))
    print(parts.summary())


def main() -> None:
    run_alone(__doc__, add_arguments, run, "bench-serve-")


if __name__ == "__main__":
    main()
