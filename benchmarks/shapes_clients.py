"""Part 2 of benchmarks/shapes.py: many SyncClients in one process, each with its own shape."""

from __future__ import annotations

import asyncio
import re
import resource
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    ServeProcess,
    children_cpu,
    cpu_seconds,
    make_database,
    pct,
    postmaster_pid,
    print_cpu,
    runs,
    serving,
    sql,
    sqlite_count,
)
from benchmarks.report import REPORT
from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl.client import SyncClient

SECTION = "shapes"


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

    async def one(k: int) -> tuple[SyncClient, Path, float] | None:
        path = tmp / f"clients-{r}-{k}.db"
        # poll_interval: these clients make no local writes; with many in one process the default
        # 20 ms would only measure this process's CPU (as in benchmarks/migrations.py)
        cl = SyncClient(str(path), server.ws_url, token, poll_interval=1.0)
        try:
            async with sem:
                await cl.start()
                await cl.wait_connected(timeout=300)
            connected.append(time.perf_counter())
            t0 = time.perf_counter()
            await cl.synced(await cl.subscribe("owned", where=f"owner = 'u{k}'"), timeout=300)
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            await cl.stop()
            return None
        done = time.perf_counter()
        subscribe_seconds.append(done - t0)
        return cl, path, done

    cpu0 = {"serve": cpu_seconds(server.pid), "pg (ended backends)": children_cpu(postmaster)}
    cpu0["client"] = time.process_time()
    start = time.perf_counter()
    results = await asyncio.gather(*(one(k) for k in range(clients)))
    cpu = {"serve": cpu_seconds(server.pid), "pg (ended backends)": children_cpu(postmaster)}
    cpu["client"] = time.process_time()
    conns = [c for c in results if c is not None]
    if not conns:
        raise RuntimeError(f"every client failed, e.g. {failures[0]}")
    end = max(done for _, _, done in conns)
    await asyncio.gather(*(cl.stop() for cl, _, _ in conns))
    wrong = [k for k, c in enumerate(results) if c is not None and sqlite_count(c[1], "owned") != rows_each]
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
        warm = SyncClient(str(tmp / f"{name}-warm.db"), server.ws_url, db.token())  # load every lazy code path
        await warm.start()
        await warm.synced(await warm.subscribe("owned", where="owner = 'u0'"), timeout=300)
        await warm.stop()
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
        f"  (goal <= 10 s)"
    )
    delivered = [(clients - len(r.failures)) * rows_each / r.all_rows for r in results]
    print(f"   = rows/s into the clients {runs(delivered, '{:,.0f}')}")
    per = [s for r in results for s in r.subscribe_seconds]
    print(
        f"   per client, subscribe -> synced: p50 {pct(per, 50):.2f}  p90 {pct(per, 90):.2f}"
        f"  max {max(per):.2f} s (all rounds pooled)"
    )
    print_cpu(results[0].cpu.keys(), [r.cpu for r in results], [r.all_rows for r in results])


async def bench_clients(
    pg: EmbeddedPostgres, tmp: Path, rounds: int, clients: int, rows_each: int, concurrency: int, durable: bool
) -> None:
    fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    default = await clients_run(pg, tmp, "bench_shape_clients", rounds, clients, rows_each, concurrency)
    print(
        f"2. many clients, each with its own shape: {clients:,} SyncClients (one asyncio process, poll interval"
        f" 1 s: they make no local writes), client k subscribes to `owner = 'u<k>'`, {rows_each} rows each,"
        f" of a {clients * rows_each:,}-row"
        f" table (4 columns, index on owner); connected {concurrency} at a time, each subscribing as soon as it is"
        f" replicating; fd limit {fds}; one `electricctl serve` for all rounds"
    )
    print_clients_run(default, clients, rows_each)
    final = default
    if any(r.failures for r in default.rounds):
        settings = {"max_connections": str(clients + 100)}
        with EmbeddedPostgres(durable=durable, settings=settings) as pg2:
            raised = await clients_run(pg2, tmp, "bench_shape_clients_2", rounds, clients, rows_each, concurrency)
        print("   again on a second cluster with max_connections raised (the server takes a connection per snapshot):")
        print_clients_run(raised, clients, rows_each)
        final = raised
    REPORT.figure(
        SECTION,
        f"{clients:,} SyncClients, each its own {rows_each}-row shape: first connect -> all rows in every file"
        + (f" (max_connections {final.max_connections})" if final is not default else ""),
        [r.all_rows for r in final.rounds],
        "s",
        goal=("<=", 10.0) if clients == 1000 else None,
        note="" if clients == 1000 else "goal is for 1,000 clients",
    )
