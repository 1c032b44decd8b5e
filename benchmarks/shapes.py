"""Shapes benchmark: many equality shapes, many clients with a shape each, a filtered initial sync.

Goals (the many-shapes issue): with 10,000 equality shapes, commit -> client latency within 2x
of the latency with one shape; 1,000 clients, each with its own 500-row shape, all holding their
rows <= 10 s after they start to connect; a 100,000-row shape of a 1,000,000-row table synced
into a fresh client in <= 2 s.

Run with `scripts/bench` (or `.venv/bin/python -m benchmarks.shapes`). As in benchmarks/serve.py,
whose server process (benchmarks/common.py) this reuses: `electricctl serve` runs as a subprocess against a durable
embedded cluster, and the clients are the shipped `SyncClient`s in this process
(``subscribe(table, where=...)``); a row counts as delivered when the client's SQLite transaction
holding it has committed (``on_change``, or ``synced`` for a subscription's initial data). Shapes
are ad-hoc where clauses (`adhoc_shapes: allow`). The 10,000 shapes of part 1 are held, as server
load only, by protocol clients that discard what they get. Medians of several rounds, spread and
runs in brackets.

The server takes a Postgres connection for each subscription's snapshot, so part 2 first runs
against the cluster's default max_connections; if clients fail there, it says so and measures
again on a second cluster with max_connections raised above the number of clients.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from benchmarks.common import (
    WIDE_COLUMNS,
    WIDE_VALUES,
    Parts,
    ServeProcess,
    _Discard,
    cpu_seconds,
    make_database,
    pct,
    rss_kb,
    run_alone,
    runs,
    serving,
    sql,
    sqlite_count,
    until,
    walsender_pid,
)
from benchmarks.report import REPORT
from benchmarks.shapes_clients import SECTION, bench_clients
from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl._model.wire import DISPLAY_OPTIONS
from electricctl._protocol import satellite_pb2 as pb
from electricctl.client import RemoteChange, SyncClient
from tests.satellite_client import SatelliteClient

TITLE = "Shapes: many equality shapes, many clients with a shape each, a filtered initial sync"


# -- helpers -----------------------------------------------------------------------------------
def shapes_request(table: str, wheres: Sequence[str]) -> pb.SatSubsReq:
    """One subscription holding one shape request per where clause."""
    return pb.SatSubsReq(
        subscription_id=str(uuid.uuid4()),
        shape_requests=[
            pb.SatShapeReq(
                request_id=f"r{i}",
                shape_definition=pb.SatShapeDef(selects=[pb.SatShapeDef.Select(tablename=table, where=where)]),
            )
            for i, where in enumerate(wheres)
        ],
    )


async def subscribe_shapes(cl: SatelliteClient, table: str, wheres: Sequence[str], timeout: float = 300) -> str:
    """Subscribe and wait until the subscription's data has arrived (SatSubsDataEnd handled)."""
    req = shapes_request(table, wheres)
    sub_id = req.subscription_id
    resp = await cl.rpc("subscribe", req, timeout=timeout)
    if not isinstance(resp, pb.SatSubsResp) or resp.HasField("err"):
        raise RuntimeError(f"subscribe refused: {resp}")

    def done() -> bool:
        if sub_id in cl.subscriptions_done:
            return True
        if cl.closed_with is not None:
            raise RuntimeError(f"the server closed the connection during the subscription: {cl.closed_with}")
        return False

    await cl.wait_for(done, timeout)
    return sub_id


async def replicating(cl: SatelliteClient, token: str) -> None:
    await cl.connect()
    await cl.authenticate(token)
    await cl.start()


# -- 1. latency with 10,000 equality shapes ------------------------------------------------------
@dataclass
class LatencyRound:
    from_sent: list[float]
    from_returned: list[float]
    rate: float
    cpu: dict[str, float]


async def latency_round(
    server: ServeProcess, tmp: Path, owner: str, ids: Iterator[int], rate: float, seconds: float
) -> LatencyRound:
    """A fresh client with the one shape ``owner = '<owner>'``; ``rate`` INSERTs/s of rows it
    matches, each followed by an INSERT of a row no shape matches (owner 'nobody')."""
    applied: dict[object, float] = {}

    def on_change(changes: list[RemoteChange], origin: str | None) -> None:
        now = time.perf_counter()  # on_change runs once the client's SQLite transaction has committed
        for ch in changes:
            applied.setdefault(ch.values["id"], now)

    path = tmp / f"lat-{owner}.db"
    cl = SyncClient(str(path), server.ws_url, server.db.token(), on_change=on_change)
    await cl.start()
    await cl.synced(await cl.subscribe("lat", where=f"owner = '{owner}'"), timeout=300)
    n = int(rate * seconds)
    warm = [next(ids) for _ in range(20)]
    mine = [next(ids) for _ in range(n)]
    others = [next(ids) for _ in range(n)]
    sent: list[float] = [0.0] * n
    returned: list[float] = [0.0] * n
    insert = "INSERT INTO lat (id, owner, note) VALUES (%s, %s, 'x')"
    with psycopg.connect(server.db.url, autocommit=True) as conn:
        for i in warm:  # not measured: prepared statement, server and client paths
            conn.execute(insert, [i, owner], prepare=True)
        await until(lambda: warm[-1] in applied, 30, "the warm-up rows")
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
                conn.execute(insert, [mine[i], owner], prepare=True)  # autocommit: the statement is the commit
                returned[i] = time.perf_counter()
                conn.execute(insert, [others[i], "nobody"], prepare=True)
            return n / (time.perf_counter() - start)

        achieved = await asyncio.to_thread(writer)
        await until(lambda: all(i in applied for i in mine), 60, "every row in the client")
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()} | {"client": time.process_time() - cpu0["client"]}
    await cl.stop()
    stray = sqlite_count(path, "lat") - len(warm) - n
    if stray:
        raise RuntimeError(f"the measuring client holds {stray} rows its shape does not match")
    return LatencyRound(
        [(applied[k] - sent[i]) * 1000 for i, k in enumerate(mine)],
        [(applied[k] - returned[i]) * 1000 for i, k in enumerate(mine)],
        achieved,
        cpu,
    )


async def shape_holders(
    server: ServeProcess, table: str, clients: int, per_client: int
) -> tuple[list[SatelliteClient], float]:
    """Server load only: ``clients`` protocol clients that discard what they get (rows kept in a dict,
    no SQLite), subscribed (all at once) to ``per_client`` shapes ``owner = 'k<n>'`` each."""
    token = server.db.token()

    async def one(k: int) -> SatelliteClient:
        cl = SatelliteClient(server.ws_url)
        cl.messages = _Discard()
        await replicating(cl, token)
        await subscribe_shapes(cl, table, [f"owner = 'k{n}'" for n in range(k * per_client, (k + 1) * per_client)])
        return cl

    start = time.perf_counter()
    conns = await asyncio.gather(*(one(k) for k in range(clients)))
    return list(conns), time.perf_counter() - start


async def bench_latency(
    pg: EmbeddedPostgres, tmp: Path, rounds: int, rate: float, seconds: float, clients: int, per_client: int
) -> None:
    owners = clients * per_client
    schema = (
        "CREATE TABLE lat (id int8 PRIMARY KEY, owner text NOT NULL, note text); CREATE INDEX ON lat (owner);"
        f" INSERT INTO lat SELECT g, 'k' || (g % {owners}), 'x' FROM generate_series(1, {2 * owners}) g"
    )
    db = make_database(pg, tmp, "bench_shape_latency", schema, ["lat"])
    ids = itertools.count(10 * owners)
    phases: dict[str, list[LatencyRound]] = {}
    with serving(db, tmp, "bench_shape_latency") as server:
        rss_before = rss_kb(server.pid)
        phases["1 shape"] = [await latency_round(server, tmp, f"a{r}", ids, rate, seconds) for r in range(rounds)]
        holders, setup = await shape_holders(server, "lat", clients, per_client)
        rss_with = rss_kb(server.pid)
        held = sum(len(c.table("lat")) for c in holders)
        phases[f"{owners + 1:,} shapes"] = [
            await latency_round(server, tmp, f"b{r}", ids, rate, seconds) for r in range(rounds)
        ]
        await asyncio.gather(*(c.close() for c in holders))
        await asyncio.sleep(0.5)
        phases["1 shape again"] = [await latency_round(server, tmp, f"c{r}", ids, rate, seconds) for r in range(rounds)]
    n = int(rate * seconds)
    print(
        f"1. latency with many equality shapes: Postgres commit -> row committed in the measuring SyncClient's SQLite."
        f" {rate:.0f} single-row INSERTs/s for {seconds:.0f} s ({n} measured per round) into rows matching the"
        " measuring client's one shape `owner = '<m>'` (a fresh client each round), each followed by an INSERT"
        f" of a row no shape matches; table lat starts with {2 * owners:,} rows ({owners:,} owners), index on owner"
    )
    print(
        f"   phases: 1 shape (the measuring client alone) -> {owners:,} more shapes: {clients} connections x"
        f" {per_client} shapes `owner = 'k<n>'` (server load only: protocol clients that discard rows; one"
        f" subscription each, subscribed concurrently in {setup:.1f} s,"
        f" {held:,} rows held; serve RSS {rss_before / 1024:.0f} -> {rss_with / 1024:.0f} MB)"
        " -> those connections closed, 1 shape again"
    )
    print(
        f"   writer rate achieved      {runs([r.rate for rs in phases.values() for r in rs], '{:.0f}')} tx/s (measured)"
    )
    for label, attr in (("from INSERT sent", "from_sent"), ("from commit returned", "from_returned")):
        print(f"   {label}:")
        for phase, results in phases.items():
            series = [getattr(r, attr) for r in results]
            pooled = [v for s in series for v in s]
            print(
                f"     {phase:<15} p50 {runs([pct(s, 50) for s in series], '{:.2f}')} ms   "
                f"p99 {runs([pct(s, 99) for s in series], '{:.2f}')} ms   (pooled p99 {pct(pooled, 99):.2f},"
                f" max {max(pooled):.2f})"
            )
    many = next(rs for p, rs in phases.items() if p.endswith("shapes"))
    single = phases["1 shape"] + phases["1 shape again"]
    for q in (50, 99):
        ratio = statistics.median(pct(r.from_sent, q) for r in many) / statistics.median(
            pct(r.from_sent, q) for r in single
        )
        print(
            f"   ratio p{q} (from INSERT sent), {owners + 1:,} shapes / 1 shape (both 1-shape phases): {ratio:.2f}x"
            "  (goal <= 2x)"
        )
        REPORT.figure(
            SECTION,
            f"commit -> row in a SyncClient, p{q}, with {owners + 1:,} equality shapes on the server",
            [pct(r.from_sent, q) for r in many],
            "ms",
            baseline_runs=[pct(r.from_sent, q) for r in single],
            baseline_label="1 shape",
            ratio_goal=0.5,
        )
    print("   CPU (median share of one core over the round):")
    for phase, results in phases.items():
        shares = {k: statistics.median(r.cpu[k] / seconds * 100 for r in results) for k in results[0].cpu}
        print(f"     {phase:<15} {', '.join(f'{k} {v:.0f}%' for k, v in shares.items())}")


# -- 3. initial sync of a filtered shape ---------------------------------------------------------
@dataclass
class SyncRound:
    total: float
    subscribe: float
    serve_cpu: float
    client_cpu: float


async def sync_round(server: ServeProcess, tmp: Path, name: str, where: str, expected: int) -> SyncRound:
    cpu0, ccpu0 = cpu_seconds(server.pid), time.process_time()
    path = tmp / f"{name}.db"
    t0 = time.perf_counter()
    cl = SyncClient(str(path), server.ws_url, server.db.token())
    await cl.start()
    t1 = time.perf_counter()
    await cl.synced(await cl.subscribe("big", where=where), timeout=600)
    t2 = time.perf_counter()
    result = SyncRound(t2 - t0, t2 - t1, cpu_seconds(server.pid) - cpu0, time.process_time() - ccpu0)
    await cl.stop()
    count = sqlite_count(path, "big")
    if count != expected:
        raise RuntimeError(f"client SQLite has {count} rows, expected {expected}")
    return result


def copy_alone(url: str, where: str) -> tuple[float, int]:
    """The server's snapshot query alone: COPY (SELECT <all columns> WHERE ...) read by psycopg."""
    start = time.perf_counter()
    size = 0
    with psycopg.connect(url, options=DISPLAY_OPTIONS) as conn, conn.cursor() as cur:
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        with cur.copy(f"COPY (SELECT * FROM big WHERE {where}) TO STDOUT") as copy:
            for block in copy:
                size += len(block)
    return time.perf_counter() - start, size


async def bench_filtered_sync(pg: EmbeddedPostgres, tmp: Path, rounds: int, rows: int, buckets: int) -> None:
    per = rows // buckets
    target = min(7, buckets - 1)
    schema = (
        f"CREATE TABLE big ({WIDE_COLUMNS}, bucket int4 NOT NULL, grp int4 NOT NULL);"
        f" INSERT INTO big SELECT {WIDE_VALUES}, (g - 1) / {per}, (g - 1) / {per} FROM generate_series(1, {rows}) g;"
        " CREATE INDEX big_bucket ON big (bucket)"
    )
    start = time.perf_counter()
    db = make_database(pg, tmp, "bench_shape_sync", schema, ["big"])
    sql(db.url, "VACUUM ANALYZE big")
    populate = time.perf_counter() - start
    shapes = {"index": f"bucket = {target}", "no index": f"grp = {target}"}
    plans = {k: sql(db.url, f"EXPLAIN SELECT * FROM big WHERE {w}")[0][0] for k, w in shapes.items()}
    results: dict[str, list[SyncRound]] = {k: [] for k in shapes}
    copies: dict[str, list[float]] = {k: [] for k in shapes}
    empty: list[float] = []
    with serving(db, tmp, "bench_shape_sync") as server:
        # the fixed cost of a subscription: a shape matching no row, on a connected SyncClient
        cl = SyncClient(str(tmp / "sync-empty.db"), server.ws_url, db.token())
        await cl.start()
        await cl.wait_connected()
        for i in range(rounds + 1):
            t0 = time.perf_counter()
            await cl.synced(await cl.subscribe("big", where=f"bucket = {-1 - i}"))
            empty.append(time.perf_counter() - t0)
        empty = empty[1:]  # the first one loads lazy code paths
        await cl.stop()
        for r in range(rounds):
            for key, where in shapes.items():
                results[key].append(await sync_round(server, tmp, f"sync-{key.replace(' ', '')}-{r}", where, per))
                copies[key].append(copy_alone(db.url, where)[0])
    print(
        f"3. initial sync of a filtered shape: {per:,} of {rows:,} rows (8 columns: serve.py's 6 plus bucket and"
        f" grp, both (id - 1) / {per:,}, so a shape's rows are contiguous; populated in {populate:.1f} s) into a"
        " fresh SyncClient's file: start -> subscribe -> synced"
    )
    for key, where in shapes.items():
        rs = results[key]
        print(f"   `{where}` ({key}; plan: {plans[key].strip()})")
        print(f"     total                     {runs([x.total for x in rs], '{:.2f}')} s  (goal <= 2 s)")
        print(f"     subscribe+synced alone    {runs([x.subscribe for x in rs], '{:.2f}')} s")
        print(f"     = rows/s into SQLite      {runs([per / x.total for x in rs], '{:,.0f}')}")
        print(f"     Postgres COPY alone       {runs(copies[key], '{:.2f}')} s  (same query, read by psycopg here)")
        print(
            f"     CPU during the sync: serve {runs([x.serve_cpu for x in rs], '{:.2f}')} s,"
            f" client process {runs([x.client_cpu for x in rs], '{:.2f}')} s"
        )
    print(f"   a shape matching no row: subscribe -> synced {runs([e * 1000 for e in empty], '{:.0f}')} ms")
    for key, where in shapes.items():
        REPORT.figure(
            SECTION,
            f"filtered initial sync into a fresh SyncClient, {per:,} of {rows:,} rows, `{where}` ({key})",
            [x.total for x in results[key]],
            "s",
            goal=("<=", 2.0) if rows == 1_000_000 else None,
            baseline_runs=copies[key],
            baseline_label="the same COPY read by psycopg",
            note="" if rows == 1_000_000 else "goal is for 100,000 of 1,000,000 rows",
        )


# -- main --------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=100.0, help="1: measured transactions/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="1: seconds per round")
    parser.add_argument("--shape-clients", type=int, default=20, help="1: connections holding the many shapes")
    parser.add_argument("--shapes-per-client", type=int, default=500, help="1: shapes per such connection")
    parser.add_argument("--clients", type=int, default=1000, help="2: clients")
    parser.add_argument("--rows-per-client", type=int, default=500, help="2: rows in each client's shape")
    parser.add_argument("--concurrency", type=int, default=50, help="2: clients connecting at a time")
    parser.add_argument("--sync-rows", type=int, default=1_000_000, help="3: rows in the table")
    parser.add_argument("--buckets", type=int, default=10, help="3: the shape holds 1/buckets of the table")


QUICK = {
    "rate": 50.0,
    "seconds": 1.0,
    "shape_clients": 2,
    "shapes_per_client": 20,
    "clients": 10,
    "rows_per_client": 20,
    "sync_rows": 10_000,
}
"""What ``python -m benchmarks --quick`` changes: a small version of every part."""


async def run(args: argparse.Namespace, pg: EmbeddedPostgres, tmp: Path) -> None:
    print(
        f"shapes: `electricctl serve` subprocess (log fsync on), "
        f"{'fsync-off' if args.fast else 'durable'} embedded cluster, SyncClients in this process, "
        f"{args.rounds} rounds, {os.cpu_count()} cores"
    )
    parts = Parts(args.only, "123")
    step = parts.step
    await step(
        "1", bench_latency(pg, tmp, args.rounds, args.rate, args.seconds, args.shape_clients, args.shapes_per_client)
    )
    await step(
        "2", bench_clients(pg, tmp, args.rounds, args.clients, args.rows_per_client, args.concurrency, not args.fast)
    )
    await step("3", bench_filtered_sync(pg, tmp, args.rounds, args.sync_rows, args.buckets))
    print(parts.summary())


def main() -> None:
    run_alone(__doc__, add_arguments, run, "bench-shapes-")


if __name__ == "__main__":
    main()
