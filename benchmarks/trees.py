"""Include trees benchmark: a tree's initial sync beside a flat one, a move-in, many clients' trees.

Goals (the include-trees issue): the initial sync of a tree of 1,000 projects, 100,000 issues and
300,000 comments into a fresh client at >= 0.7x the rows/s of a flat single-table sync in the same
run; a move-in that brings 1,000 rows, commit -> subtree in the client's SQLite, p50 <= 50 ms;
1,000 clients each holding a different project's tree, one comment insert reaching its project's
holder within 2x of the same with a flat shape.

Run with `scripts/bench` (or `.venv/bin/python -m benchmarks.trees`). As everywhere: `electricctl
serve` is a subprocess on a durable embedded cluster and every client is a shipped `SyncClient`
(``subscribe(..., include=...)``); a row counts when it is committed in the client's SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import time
from pathlib import Path

from benchmarks.common import (
    Parts,
    ServeProcess,
    cpu_seconds,
    make_database,
    pct,
    run_alone,
    runs,
    serving,
    sql,
    sqlite_count,
    until,
)
from benchmarks.report import REPORT
from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl.client import SyncClient
from electricctl.client.values import RemoteChange

SECTION = "trees"
TITLE = "Include trees: a tree's initial sync beside a flat one, a move-in, many clients' trees"
TREE = {"issues": {"include": {"comments": True}}}


def schema(projects: int, issues: int, comments: int) -> str:
    return f"""
        CREATE TABLE projects (id int8 PRIMARY KEY, name text NOT NULL, status text NOT NULL);
        CREATE TABLE issues (id int8 PRIMARY KEY, project_id int8 NOT NULL REFERENCES projects(id),
                             title text NOT NULL, state text NOT NULL, n int4 NOT NULL);
        CREATE TABLE comments (id int8 PRIMARY KEY, issue_id int8 NOT NULL REFERENCES issues(id),
                               body text NOT NULL, n int4 NOT NULL);
        CREATE INDEX ON issues (project_id);
        CREATE INDEX ON comments (issue_id);
        INSERT INTO projects SELECT g, 'project ' || g, 'active' FROM generate_series(1, {projects}) g;
        INSERT INTO issues SELECT g, 1 + (g - 1) % {projects}, 'issue number ' || g, 'open', g % 97
          FROM generate_series(1, {issues}) g;
        INSERT INTO comments SELECT g, 1 + (g - 1) % {issues}, 'a comment about something ' || g, g % 89
          FROM generate_series(1, {comments}) g;
        -- the move-in part's project: archived, with its own subtree
        INSERT INTO projects VALUES (0, 'moving', 'archived');
        ANALYZE;
    """


async def timed_sync(server_url: str, token: str, path: Path, table: str, **kw: object) -> float:
    cl = SyncClient(str(path), server_url, token)
    t0 = time.perf_counter()
    await cl.start()
    await cl.synced(await cl.subscribe(table, **kw), timeout=900)  # type: ignore[arg-type]
    took = time.perf_counter() - t0
    await cl.stop()
    return took


# -- 1. initial sync: a tree beside a flat table -----------------------------------------------
async def bench_initial(
    pg: EmbeddedPostgres, tmp: Path, rounds: int, projects: int, issues: int, comments: int
) -> None:
    t0 = time.perf_counter()
    db = make_database(pg, tmp, "bench_trees", schema(projects, issues, comments), ["projects", "issues", "comments"])
    populated = time.perf_counter() - t0
    total = projects + 1 + issues + comments  # the archived project has no rows under it yet
    tree_s: list[float] = []
    flat_s: list[float] = []
    cpu: list[float] = []
    with serving(db, tmp, "bench_trees") as server:
        token = db.token()
        for r in range(rounds):
            c0 = cpu_seconds(server.pid)
            tree_s.append(await timed_sync(server.ws_url, token, tmp / f"tree-{r}.db", "projects", include=TREE))
            cpu.append(cpu_seconds(server.pid) - c0)
            counts = [sqlite_count(tmp / f"tree-{r}.db", t) for t in ("projects", "issues", "comments")]
            if sum(counts) != total:
                raise RuntimeError(f"the tree synced {counts} rows, expected {total} in all")
            flat_s.append(await timed_sync(server.ws_url, token, tmp / f"flat-{r}.db", "comments"))
    tree_rate = [total / s for s in tree_s]
    flat_rate = [comments / s for s in flat_s]
    print(
        f"1. initial sync into a fresh SyncClient: projects -> issues -> comments ({projects:,} + {issues:,} +"
        f" {comments:,} rows, populated in {populated:.1f} s) against comments alone ({comments:,} rows), start ->"
        " synced"
    )
    print(f"   tree                      {runs(tree_s, '{:.2f}')} s = {runs(tree_rate, '{:,.0f}')} rows/s")
    print(f"   flat (comments alone)     {runs(flat_s, '{:.2f}')} s = {runs(flat_rate, '{:,.0f}')} rows/s")
    ratios = [t / f for t, f in zip(tree_rate, flat_rate, strict=True)]
    print(f"   tree / flat rows/s        {runs(ratios, '{:.2f}')}x  (goal >= 0.7x)")
    print(f"   serve CPU during the tree {runs(cpu, '{:.2f}')} s")
    REPORT.figure(
        SECTION,
        f"initial sync of a project tree ({total:,} rows) into a fresh SyncClient",
        tree_rate,
        "rows/s",
        baseline_runs=flat_rate,
        baseline_label=f"a flat table ({comments:,} rows), same run",
        ratio_goal=0.7,
    )


# -- 2. a move-in ------------------------------------------------------------------------------
async def bench_move_in(pg: EmbeddedPostgres, tmp: Path, rounds: int, rows: int) -> None:
    issues = max(1, rows // 4)
    per = (rows - issues) // issues
    db_schema = (
        schema(10, 100, 200)
        + f"""
        INSERT INTO issues SELECT 1000000 + g, 0, 'moving issue ' || g, 'open', 0 FROM generate_series(1, {issues}) g;
        INSERT INTO comments SELECT 2000000 + g, 1000000 + 1 + (g - 1) % {issues}, 'moving comment ' || g, 0
          FROM generate_series(1, {issues * per}) g;
    """
    )
    db = make_database(pg, tmp, "bench_trees_move", db_schema, ["projects", "issues", "comments"])
    moving = issues + issues * per
    took: list[float] = []
    with serving(db, tmp, "bench_trees_move") as server:
        path = tmp / "move.db"
        cl = SyncClient(str(path), server.ws_url, db.token())
        await cl.start()
        await cl.synced(await cl.subscribe("projects", where="status = 'active'", include=TREE))
        reader = sqlite3.connect(path)

        def held() -> int:
            return int(reader.execute("SELECT count(*) FROM issues WHERE project_id = 0").fetchone()[0]) + int(
                reader.execute("SELECT count(*) FROM comments WHERE id > 2000000").fetchone()[0]
            )

        for _ in range(rounds + 1):
            t0 = time.perf_counter()
            sql(db.url, "UPDATE projects SET status = 'active' WHERE id = 0")
            while held() < moving:
                await asyncio.sleep(0.001)
            took.append(time.perf_counter() - t0)
            sql(db.url, "UPDATE projects SET status = 'archived' WHERE id = 0")
            await until(lambda: held() == 0, 60, "the subtree to leave")
        reader.close()
        await cl.stop()
    took = took[1:]  # the first loads lazy code paths
    print(
        f"2. move-in: a project starts matching and brings {moving:,} rows ({issues:,} issues, {issues * per:,}"
        " comments); UPDATE sent -> all in the SyncClient's SQLite (a reader polling every 1 ms)"
    )
    print(
        f"   p50 {statistics.median(took) * 1000:.0f} ms, max {max(took) * 1000:.0f} ms over {len(took)} moves (goal p50 <= 50 ms)"
    )
    REPORT.figure(
        SECTION,
        f"move-in of {moving:,} rows: commit -> subtree in the SyncClient",
        [t * 1000 for t in took],
        "ms",
        goal=("<=", 50.0) if moving >= 1000 else None,
    )


# -- 3. many clients, each with a project tree -------------------------------------------------
async def many_round(
    server: ServeProcess, tmp: Path, kind: str, clients: int, inserts: int, concurrency: int
) -> tuple[list[float], float]:
    """``clients`` SyncClients, each with a tree (or a flat shape); the latency of each insert."""
    arrived: dict[int, float] = {}

    def seen(changes: list[RemoteChange], origin: str | None) -> None:
        now = time.perf_counter()
        for ch in changes:
            key = ch.values.get("id")
            if ch.table == "comments" and isinstance(key, int) and key >= 10**8:
                arrived[key] = now

    sem = asyncio.Semaphore(concurrency)

    async def one(k: int) -> SyncClient:
        # poll_interval: these clients write nothing (see benchmarks/shapes_clients.py)
        path = str(tmp / f"{kind}-{k}.db")
        cl = SyncClient(path, server.ws_url, server.db.token(), on_change=seen, poll_interval=1.0)
        async with sem:
            await cl.start()
            if kind == "tree":  # project k holds issue k (issues go round-robin over projects)
                sub = await cl.subscribe("projects", where=f"id = {k}", include=TREE)
            else:  # the flat equivalent: the comments of issue k
                sub = await cl.subscribe("comments", where=f"issue_id = {k}")
            await cl.synced(sub, timeout=600)
        return cl

    t0 = time.perf_counter()
    conns = await asyncio.gather(*(one(k) for k in range(1, clients + 1)))
    connected = time.perf_counter() - t0
    latencies: list[float] = []
    for i in range(inserts):
        k = 1 + (i * 7919) % clients
        cid = 10**8 + i + (0 if kind == "flat" else inserts)
        t1 = time.perf_counter()
        sql(server.db.url, "INSERT INTO comments VALUES (%s, %s, 'live', 0)", [cid, k])
        await until(lambda: cid in arrived, 30, "a comment at its holder")  # noqa: B023 - awaited here
        latencies.append(arrived[cid] - t1)
    await asyncio.gather(*(c.stop() for c in conns))
    return latencies, connected


async def bench_many(pg: EmbeddedPostgres, tmp: Path, clients: int, inserts: int, concurrency: int) -> None:
    tables = ["projects", "issues", "comments"]
    db = make_database(pg, tmp, "bench_trees_many", schema(clients, clients * 5, clients * 10), tables)
    results: dict[str, tuple[list[float], float]] = {}
    with serving(db, tmp, "bench_trees_many") as server:
        for kind in ("flat", "tree"):
            results[kind] = await many_round(server, tmp, kind, clients, inserts, concurrency)
    print(
        f"3. {clients:,} SyncClients in this process, each holding one project's tree (1 project, 5 issues, 10"
        " comments) or, flat, the comments of one issue; one comment inserted at a time into a held issue: INSERT"
        " sent -> committed in its holder's SQLite"
    )
    for kind, (ls, connected) in results.items():
        print(
            f"   {kind:4}  p50 {pct(ls, 50) * 1000:6.1f} ms  p99 {pct(ls, 99) * 1000:6.1f} ms  over {len(ls)} inserts"
            f"  (all {clients:,} clients subscribed and synced in {connected:.1f} s)"
        )
    ratio = statistics.median(results["tree"][0]) / statistics.median(results["flat"][0])
    print(f"   tree / flat p50           {ratio:.2f}x  (goal <= 2x)")
    REPORT.figure(
        SECTION,
        f"{clients:,} SyncClients each holding a project tree: a comment insert -> its holder",
        [v * 1000 for v in results["tree"][0]],
        "ms",
        baseline_runs=[v * 1000 for v in results["flat"][0]],
        baseline_label="each holding a flat shape instead",
        note="goal: within 2x of the flat latency (each run is one insert)",
    )


# -- main --------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--projects", type=int, default=1000, help="1: projects in the tree")
    parser.add_argument("--issues", type=int, default=100_000, help="1: issues")
    parser.add_argument("--comments", type=int, default=300_000, help="1: comments")
    parser.add_argument("--move-rows", type=int, default=1000, help="2: rows a move-in brings")
    parser.add_argument("--clients", type=int, default=1000, help="3: clients, each with its own tree")
    parser.add_argument("--inserts", type=int, default=50, help="3: comments inserted, one at a time")
    parser.add_argument("--concurrency", type=int, default=50, help="3: clients connecting at a time")


QUICK = {"projects": 20, "issues": 2000, "comments": 6000, "move_rows": 200, "clients": 10, "inserts": 10}
"""What ``python -m benchmarks --quick`` changes: a small version of every part."""


async def run(args: argparse.Namespace, pg: EmbeddedPostgres, tmp: Path) -> None:
    print(
        f"trees: `electricctl serve` subprocess (log fsync on), {'fsync-off' if args.fast else 'durable'} embedded"
        f" cluster, SyncClients in this process, {args.rounds} rounds, {os.cpu_count()} cores"
    )
    parts = Parts(args.only, "123")
    await parts.step("1", bench_initial(pg, tmp, args.rounds, args.projects, args.issues, args.comments))
    await parts.step("2", bench_move_in(pg, tmp, max(5, args.rounds * 3), args.move_rows))
    await parts.step("3", bench_many(pg, tmp, args.clients, args.inserts, args.concurrency))
    print(parts.summary())


def main() -> None:
    run_alone(__doc__, add_arguments, run, "bench-trees-")


if __name__ == "__main__":
    main()
