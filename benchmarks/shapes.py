"""Shapes benchmark: many equality shapes, many clients with a shape each, a filtered initial sync.

Targets (the many-shapes issue): with 10,000 equality shapes, commit -> client latency within 2x
of the latency with one shape; 1,000 clients, each with its own 500-row shape, all holding their
rows <= 10 s after they start to connect; a 100,000-row shape of a 1,000,000-row table synced
into a fresh client in <= 2 s.

Run with `scripts/bench` (or `.venv/bin/python -m benchmarks.shapes`). As in benchmarks/serve.py,
whose server process and SQLite client this reuses: `electricctl serve` runs as a subprocess
against a durable embedded cluster, the clients run in this process, and a row counts as delivered
when the client's SQLite transaction holding it has committed. Shapes are ad-hoc where clauses
(`adhoc_shapes: allow`) sent as shape requests. Medians of several rounds, runs in brackets.

The server takes a Postgres connection for each subscription's snapshot, so part 2 first runs
against the cluster's default max_connections; if clients fail there, it says so and measures
again on a second cluster with max_connections raised above the number of clients.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from benchmarks.serve import (
    WIDE_COLUMNS,
    WIDE_VALUES,
    Parts,
    ServeProcess,
    SqliteReplica,
    SqlRow,
    _Discard,
    cpu_seconds,
    make_database,
    pct,
    print_cpu,
    rss_kb,
    runs,
    serving,
    sql,
    walsender_pid,
)
from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl._model.wire import DISPLAY_OPTIONS
from electricctl._protocol import satellite_pb2 as pb
from tests.satellite_client import SatelliteClient


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


def sqlite_count(cl: SqliteReplica, table: str) -> int:
    row = cl.db.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    return int(row[0]) if row is not None else 0


def postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().split()[0])


def children_cpu(pid: int) -> float:
    """CPU time of ``pid``'s children that have exited and been waited for (cutime + cstime):
    for the postmaster, every backend that ended, e.g. the server's snapshot connections."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


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

    def on_commit(now: float, rows: list[SqlRow]) -> None:
        for row in rows:
            applied[row[0]] = now

    cl = SqliteReplica(server.ws_url, tmp / f"lat-{owner}.sqlite", on_commit)
    await replicating(cl, server.db.token())
    await subscribe_shapes(cl, "lat", [f"owner = '{owner}'"])
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
        await cl.wait_for(lambda: warm[-1] in applied, 30)
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
        await cl.wait_for(lambda: all(i in applied for i in mine), 60)
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()} | {"client": time.process_time() - cpu0["client"]}
    stray = sqlite_count(cl, "lat") - len(warm) - n
    await cl.close()
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
    """``clients`` connections subscribed (all at once) to ``per_client`` shapes ``owner = 'k<n>'`` each."""
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
        f"1. latency with many equality shapes: Postgres commit -> row committed in the measuring client's SQLite."
        f" {rate:.0f} single-row INSERTs/s for {seconds:.0f} s ({n} measured per round) into rows matching the"
        " measuring client's one shape `owner = '<m>'` (a fresh client each round), each followed by an INSERT"
        f" of a row no shape matches; table lat starts with {2 * owners:,} rows ({owners:,} owners), index on owner"
    )
    print(
        f"   phases: 1 shape (the measuring client alone) -> {owners:,} more shapes: {clients} connections x"
        f" {per_client} shapes `owner = 'k<n>'` (one subscription each, subscribed concurrently in {setup:.1f} s,"
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
    print("   CPU (median share of one core over the round):")
    for phase, results in phases.items():
        shares = {k: statistics.median(r.cpu[k] / seconds * 100 for r in results) for k in results[0].cpu}
        print(f"     {phase:<15} {', '.join(f'{k} {v:.0f}%' for k, v in shares.items())}")


# -- 2. many clients, each with its own shape ----------------------------------------------------
@dataclass
class ClientsRound:
    connected: float
    all_rows: float
    subscribe_seconds: list[float]
    cpu: dict[str, float]
    failures: list[str]


async def clients_round(
    server: ServeProcess, pg: EmbeddedPostgres, tmp: Path, r: int, clients: int, rows_each: int, concurrency: int
) -> ClientsRound:
    token = server.db.token()
    sem = asyncio.Semaphore(concurrency)
    connected: list[float] = []
    subscribe_seconds: list[float] = []
    failures: list[str] = []
    postmaster = postmaster_pid(pg)

    async def one(k: int) -> SqliteReplica | None:
        cl = SqliteReplica(server.ws_url, tmp / f"clients-{r}-{k}.sqlite")
        async with sem:
            await replicating(cl, token)
        connected.append(time.perf_counter())
        t0 = time.perf_counter()
        try:
            await subscribe_shapes(cl, "owned", [f"owner = 'u{k}'"])
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            await cl.close()
            return None
        subscribe_seconds.append(cl.last_commit - t0)
        return cl

    cpu0 = {"serve": cpu_seconds(server.pid), "pg (ended backends)": children_cpu(postmaster)}
    cpu0["client"] = time.process_time()
    start = time.perf_counter()
    results = await asyncio.gather(*(one(k) for k in range(clients)))
    cpu = {"serve": cpu_seconds(server.pid), "pg (ended backends)": children_cpu(postmaster)}
    cpu["client"] = time.process_time()
    conns = [c for c in results if c is not None]
    if not conns:
        raise RuntimeError(f"every client failed, e.g. {failures[0]}")
    end = max(c.last_commit for c in conns)
    wrong = [k for k, c in enumerate(results) if c is not None and sqlite_count(c, "owned") != rows_each]
    await asyncio.gather(*(c.close() for c in conns))
    if wrong:
        raise RuntimeError(f"{len(wrong)} clients do not hold exactly {rows_each} rows, e.g. client {wrong[0]}")
    return ClientsRound(
        max(connected) - start,
        end - start,
        subscribe_seconds,
        {k: cpu[k] - cpu0[k] for k in cpu0},
        failures,
    )


@dataclass
class ClientsRun:
    max_connections: str
    populate: float
    rounds: list[ClientsRound]
    logged: Counter[str]
    """Exception lines in serve's log, counted."""


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Timeout)\b.*")


async def clients_run(
    pg: EmbeddedPostgres, tmp: Path, name: str, rounds: int, clients: int, rows_each: int, concurrency: int
) -> ClientsRun:
    """Rounds against one `electricctl serve`; stops after the first round in which a client failed."""
    rows = clients * rows_each
    schema = (
        "CREATE TABLE owned (id int8 PRIMARY KEY, owner text NOT NULL, n int4, note text);"
        f" INSERT INTO owned SELECT g, 'u' || (g % {clients}), mod(g, 1000)::int4, 'note ' || g"
        f" FROM generate_series(1, {rows}) g; CREATE INDEX ON owned (owner)"
    )
    start = time.perf_counter()
    db = make_database(pg, tmp, name, schema, ["owned"])
    sql(db.url, "VACUUM ANALYZE owned")
    populate = time.perf_counter() - start
    results: list[ClientsRound] = []
    with serving(db, tmp, name) as server:
        warm = SqliteReplica(server.ws_url, tmp / f"{name}-warm.sqlite")  # load every lazy code path first
        await replicating(warm, db.token())
        await subscribe_shapes(warm, "owned", ["owner = 'u0'"])
        await warm.close()
        for r in range(rounds):
            results.append(await clients_round(server, pg, tmp, r, clients, rows_each, concurrency))
            await asyncio.sleep(1.0)
            if results[-1].failures:
                break
        lines = server.log_path.read_text(errors="replace").splitlines()
    logged = Counter(m.group(0)[:160] for m in map(EXCEPTION_LINE.match, lines) if m)
    return ClientsRun(str(sql(db.url, "SHOW max_connections")[0][0]), populate, results, logged)


def print_clients_run(run: ClientsRun, clients: int, rows_each: int) -> None:
    results = run.rounds
    print(f"   Postgres max_connections {run.max_connections} (table populated in {run.populate:.1f} s):")
    failed = [len(r.failures) for r in results]
    if any(failed):
        print(
            f"   !! failed clients per round: {failed} of {clients} (rounds stop at the first failing one); the first:"
            f" {next(f for r in results for f in r.failures)}"
        )
        for line, count in run.logged.most_common(3):
            print(f"   !! serve logged {count} x: {line}")
        print("   !! the figures below count only the clients that got their rows")
    print(f"   all connected+replicating {runs([r.connected for r in results], '{:.2f}')} s after the first connect")
    print(
        f"   all rows in SQLite        {runs([r.all_rows for r in results], '{:.2f}')} s after the first connect"
        f"  (target <= 10 s)"
    )
    delivered = [(clients - len(r.failures)) * rows_each / r.all_rows for r in results]
    print(f"   = rows/s into the clients {runs(delivered, '{:,.0f}')}")
    per = [s for r in results for s in r.subscribe_seconds]
    print(
        f"   per client, subscribe RPC sent -> its rows committed: p50 {pct(per, 50):.2f}  p90 {pct(per, 90):.2f}"
        f"  max {max(per):.2f} s (all rounds pooled)"
    )
    print_cpu(results[0].cpu.keys(), [r.cpu for r in results], [r.all_rows for r in results])


async def bench_clients(
    pg: EmbeddedPostgres, tmp: Path, rounds: int, clients: int, rows_each: int, concurrency: int, durable: bool
) -> None:
    fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    default = await clients_run(pg, tmp, "bench_shape_clients", rounds, clients, rows_each, concurrency)
    print(
        f"2. many clients, each with its own shape: {clients:,} clients (SatelliteClient + SQLite, one asyncio"
        f" process), client k subscribes to `owner = 'u<k>'`, {rows_each} rows each, of a {clients * rows_each:,}-row"
        f" table (4 columns, index on owner); connected {concurrency} at a time, each subscribing as soon as it is"
        f" replicating; fd limit {fds}; one `electricctl serve` for all rounds"
    )
    print_clients_run(default, clients, rows_each)
    if any(r.failures for r in default.rounds):
        settings = {"max_connections": str(clients + 100)}
        with EmbeddedPostgres(durable=durable, settings=settings) as pg2:
            raised = await clients_run(pg2, tmp, "bench_shape_clients_2", rounds, clients, rows_each, concurrency)
        print("   again on a second cluster with max_connections raised (the server takes a connection per snapshot):")
        print_clients_run(raised, clients, rows_each)


# -- 3. initial sync of a filtered shape ---------------------------------------------------------
@dataclass
class SyncRound:
    total: float
    subscribe: float
    serve_cpu: float
    client_cpu: float


async def sync_round(server: ServeProcess, tmp: Path, name: str, where: str, expected: int) -> SyncRound:
    cpu0, ccpu0 = cpu_seconds(server.pid), time.process_time()
    t0 = time.perf_counter()
    cl = SqliteReplica(server.ws_url, tmp / f"{name}.sqlite")
    await replicating(cl, server.db.token())
    t1 = time.perf_counter()
    await subscribe_shapes(cl, "big", [where])
    t2 = cl.last_commit
    result = SyncRound(t2 - t0, t2 - t1, cpu_seconds(server.pid) - cpu0, time.process_time() - ccpu0)
    count = sqlite_count(cl, "big")
    await cl.close()
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
        cl = SatelliteClient(server.ws_url)  # the fixed cost of a subscription: a shape matching no row
        await replicating(cl, db.token())
        for _ in range(rounds + 1):
            t0 = time.perf_counter()
            await subscribe_shapes(cl, "big", ["bucket = -1"])
            empty.append(time.perf_counter() - t0)
        empty = empty[1:]  # the first one loads lazy code paths
        await cl.close()
        for r in range(rounds):
            for key, where in shapes.items():
                results[key].append(await sync_round(server, tmp, f"sync-{key.replace(' ', '')}-{r}", where, per))
                copies[key].append(copy_alone(db.url, where)[0])
    print(
        f"3. initial sync of a filtered shape: {per:,} of {rows:,} rows (8 columns: serve.py's 6 plus bucket and"
        f" grp, both (id - 1) / {per:,}, so a shape's rows are contiguous; populated in {populate:.1f} s) into a"
        " fresh client's SQLite; connect+auth+start+subscribe -> SatSubsDataEnd committed"
    )
    for key, where in shapes.items():
        rs = results[key]
        print(f"   `{where}` ({key}; plan: {plans[key].strip()})")
        print(f"     total                     {runs([x.total for x in rs], '{:.2f}')} s  (target <= 2 s)")
        print(f"     subscribe alone           {runs([x.subscribe for x in rs], '{:.2f}')} s")
        print(f"     = rows/s into SQLite      {runs([per / x.total for x in rs], '{:,.0f}')}")
        print(f"     Postgres COPY alone       {runs(copies[key], '{:.2f}')} s  (same query, read by psycopg here)")
        print(
            f"     CPU during the sync: serve {runs([x.serve_cpu for x in rs], '{:.2f}')} s,"
            f" client process {runs([x.client_cpu for x in rs], '{:.2f}')} s"
        )
    print(f"   a shape matching no row: subscribe -> SatSubsDataEnd {runs([e * 1000 for e in empty], '{:.0f}')} ms")


# -- main --------------------------------------------------------------------------------------
async def run(args: argparse.Namespace, pg: EmbeddedPostgres, tmp: Path) -> None:
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    Parts.add_arguments(parser)
    parser.add_argument("--rate", type=float, default=100.0, help="1: measured transactions/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="1: seconds per round")
    parser.add_argument("--shape-clients", type=int, default=20, help="1: connections holding the many shapes")
    parser.add_argument("--shapes-per-client", type=int, default=500, help="1: shapes per such connection")
    parser.add_argument("--clients", type=int, default=1000, help="2: clients")
    parser.add_argument("--rows-per-client", type=int, default=500, help="2: rows in each client's shape")
    parser.add_argument("--concurrency", type=int, default=50, help="2: clients connecting at a time")
    parser.add_argument("--sync-rows", type=int, default=1_000_000, help="3: rows in the table")
    parser.add_argument("--buckets", type=int, default=10, help="3: the shape holds 1/buckets of the table")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the serve subprocess inherits it
    print(
        f"shapes: `electricctl serve` subprocess (log fsync on), "
        f"{'fsync-off' if args.fast else 'durable'} embedded cluster, clients in this process, "
        f"{args.rounds} rounds, {os.cpu_count()} cores"
    )
    sys.stdout.flush()
    with EmbeddedPostgres(durable=not args.fast) as pg, tempfile.TemporaryDirectory(prefix="bench-shapes-") as tmp:
        asyncio.run(run(args, pg, Path(tmp)))


if __name__ == "__main__":
    main()
