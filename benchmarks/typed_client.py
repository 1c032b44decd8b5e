"""Typed client benchmark: live query notification, and find_many beside the same raw SQL.

Goals (the typed-client issue): from a remote transaction applied in SQLite to the live query's new
result, p50 <= 5 ms and p99 <= 20 ms for a query over a 10,000-row table; ``find_many`` within
1.5x of the same SQL run raw.

A package made by ``electricctl generate`` (from the benchmark database, as a user would) over a
``tasks`` table synced whole into a fresh file by the generated ``electrify()``; ``electricctl
serve`` is a subprocess. Part 1 times, per remote transaction (one row updated in Postgres), from
the moment the sync client has written it to its SQLite file (its ``on_tables`` report) to the
live query yielding the new result, and from Postgres' commit to that yield; two queries: a UI
page (filter, order, first 50) and the whole table (every row converted, every time). Part 2 times
``find_many`` against ``db.raw`` with the SQL find_many runs (same connection, same thread hop),
returning 50 and 1,000 rows.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Parts, make_database, pct, run_alone, runs, serving, sql
from benchmarks.report import REPORT
from electricctl._codegen import generate
from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl.dal import query

SECTION = "typed_client"
TITLE = "Typed client: live query notification, find_many beside raw SQL"


def schema(rows: int) -> str:
    return f"""
        CREATE TABLE tasks (id int8 PRIMARY KEY, title text NOT NULL, status text NOT NULL,
                            priority int4 NOT NULL, updated_at timestamptz NOT NULL);
        INSERT INTO tasks SELECT g, 'task number ' || g, CASE WHEN g % 3 = 0 THEN 'done' ELSE 'open' END,
                                 g % 5, '2026-11-30 00:00:00+00'::timestamptz + g * interval '1 second'
          FROM generate_series(1, {rows}) g;
        CREATE INDEX ON tasks (status, updated_at);
    """


async def open_db(pkg: Any, server_url: str, token: str, path: Path) -> Any:
    db = await pkg.electrify(str(path), server_url, token=token)
    shape = await db.tasks.sync()
    await shape.synced
    return db


# -- 1. live query notification ------------------------------------------------------------------
async def bench_live(pkg: Any, server: Any, token: str, tmp: Path, rows: int, updates: int) -> None:
    db = await open_db(pkg, server.ws_url, token, tmp / "live.db")
    applied: list[float] = []
    changed = db._changed  # the Database's own handler of the client's report

    def on_tables(tables: frozenset[str]) -> None:
        applied.append(time.perf_counter())  # the transaction is in the file now
        changed(tables)

    db.client.on_tables(on_tables)
    queries = {
        "a page: open tasks, newest first, 50": lambda: db.tasks.live_many(
            where={"status": "open"}, order_by={"updated_at": "desc"}, limit=50
        ),
        f"the whole table ({rows:,} rows)": lambda: db.tasks.live_many(),
    }
    print(f"1. live query notification: {updates} remote updates, one at a time, of a {rows:,}-row table")
    try:
        for label, make in queries.items():
            live = make()
            it = aiter(live)
            await asyncio.wait_for(it.__anext__(), 60)  # the current result
            from_applied: list[float] = []
            from_commit: list[float] = []
            for i in range(updates):
                applied.clear()
                task_id = 3 * (i % (rows // 3)) + 1  # an open task: every page result changes
                await asyncio.to_thread(
                    sql, server.db.url, "UPDATE tasks SET updated_at = now(), priority = %s WHERE id = %s", [i, task_id]
                )
                committed = time.perf_counter()  # the commit returned
                await asyncio.wait_for(it.__anext__(), 30)
                done = time.perf_counter()
                if applied:
                    from_applied.append((done - applied[0]) * 1000)
                from_commit.append((done - committed) * 1000)
            await it.aclose()  # type: ignore[attr-defined]
            live.close()
            print(f"   {label}")
            print(
                f"     applied in SQLite -> new result   p50 {pct(from_applied, 50):.2f} ms  p99"
                f" {pct(from_applied, 99):.2f} ms  max {max(from_applied):.2f} ms  (goal p50 <= 5, p99 <= 20)"
            )
            print(
                f"     commit returned -> new result     p50 {pct(from_commit, 50):.2f} ms  p99"
                f" {pct(from_commit, 99):.2f} ms"
            )
            REPORT.figure(
                SECTION,
                f"live query, remote transaction applied in SQLite -> new result yielded, p50 ({label})",
                [pct(from_applied, 50)],
                "ms",
                goal=("<=", 5),
                note=f"{updates} updates; p99 {pct(from_applied, 99):.2f} ms (goal <= 20 ms)",
            )
            REPORT.figure(
                SECTION,
                f"live query, remote transaction applied in SQLite -> new result yielded, p99 ({label})",
                [pct(from_applied, 99)],
                "ms",
                goal=("<=", 20),
            )
    finally:
        await db.close()


# -- 2. find_many beside the same raw SQL --------------------------------------------------------
async def bench_find_many(pkg: Any, server: Any, token: str, tmp: Path, rounds: int, reps: int) -> None:
    db = await open_db(pkg, server.ws_url, token, tmp / "find.db")
    print(f"2. find_many beside db.raw with the same SQL, {reps} calls per round, {rounds} rounds")
    try:
        for limit in (50, 1000):
            where = {"status": "open"}
            order = {"updated_at": "desc"}
            sql_text, params = query.select_sql(db.tasks.spec, where, order, limit)
            typed: list[float] = []
            raw: list[float] = []
            for _ in range(rounds):
                for kind, out in (("raw", raw), ("typed", typed)):
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        if kind == "raw":
                            got = await db.raw(sql_text, params)
                        else:
                            got = await db.tasks.find_many(where=where, order_by=order, limit=limit)
                        assert len(got) == limit
                    out.append((time.perf_counter() - t0) / reps * 1e6)
            ratio = [t / r for t, r in zip(typed, raw, strict=True)]
            print(
                f"   {limit:>5} rows  find_many {runs(typed, '{:,.0f}')} us   raw {runs(raw, '{:,.0f}')} us"
                f"   find_many / raw {runs(ratio, '{:.2f}')}x  (goal <= 1.5x)"
            )
            REPORT.figure(
                SECTION,
                f"find_many of {limit:,} rows (typed rows) beside db.raw with the same SQL (tuples)",
                typed,
                "µs",
                baseline_runs=raw,
                baseline_label="db.raw, same SQL, same connection",
                ratio_goal=1 / 1.5,
                note=f"median find_many/raw {statistics.median(ratio):.2f}x (goal <= 1.5x)",
            )
    finally:
        await db.close()


# -- main --------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=10_000, help="rows in the table")
    parser.add_argument("--updates", type=int, default=200, help="1: remote updates per query")
    parser.add_argument("--reps", type=int, default=200, help="2: calls per round")


QUICK = {"rows": 2000, "updates": 20, "reps": 20}
"""What ``python -m benchmarks --quick`` changes: a small version of every part."""


async def run(args: argparse.Namespace, pg: EmbeddedPostgres, tmp: Path) -> None:
    print(f"typed_client: `electricctl serve` subprocess, generated package, {args.rounds} rounds")
    db = make_database(pg, tmp, "bench_typed", schema(args.rows), ["tasks"])
    out = tmp / "gen" / "tasks_db"
    generate(out, database_url=db.url)
    sys.path.insert(0, str(out.parent))
    pkg = importlib.import_module("tasks_db")
    parts = Parts(args.only, "12")
    try:
        with serving(db, tmp, "bench_typed") as server:
            token = db.token()
            await parts.step("1", bench_live(pkg, server, token, tmp, args.rows, args.updates))
            await parts.step("2", bench_find_many(pkg, server, token, tmp, args.rounds, args.reps))
    finally:
        sys.path.remove(str(out.parent))
        for name in [m for m in sys.modules if m == "tasks_db" or m.startswith("tasks_db.")]:
            del sys.modules[name]
    print(parts.summary())


def main() -> None:
    run_alone(__doc__, add_arguments, run, "bench-typed-")


if __name__ == "__main__":
    main()
