"""Part 3 of benchmarks/serve.py: the initial sync of 1M rows into a fresh SyncClient (in a child
process, for its peak memory), beside a raw COPY -> SQLite bulk insert and the npm client."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from benchmarks.common import (
    WIDE_COLUMNS,
    WIDE_TYPES,
    WIDE_VALUES,
    ServeProcess,
    SqliteTable,
    cpu_seconds,
    make_database,
    open_sqlite,
    runs,
    serving,
    sql,
    sqlite_count,
)
from benchmarks.report import REPORT
from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl._model.wire import DISPLAY_OPTIONS
from electricctl._server.snapshot import parse_copy_lines

SECTION = "serve"


# -- 3. initial sync ---------------------------------------------------------------------------
def raw_copy(url: str, table: SqliteTable, columns: Sequence[str], path: Path) -> int:
    """COPY TO STDOUT, parse (the server's own COPY parser), convert, executemany into SQLite."""
    db = open_sqlite(path)
    db.execute(table.ddl)
    count = 0
    db.execute("BEGIN")
    with psycopg.connect(url, options=DISPLAY_OPTIONS) as conn, conn.cursor() as cur:
        rest = b""
        query = f"COPY (SELECT {', '.join(columns)} FROM {table.name}) TO STDOUT"
        with cur.copy(query) as copy:
            for block in copy:
                parsed, rest = parse_copy_lines(rest + bytes(block))
                db.executemany(table.insert, [table.row(r) for r in parsed])
                count += len(parsed)
        if rest:
            parsed, _ = parse_copy_lines(rest + b"\n")
            db.executemany(table.insert, [table.row(r) for r in parsed])
            count += len(parsed)
    db.execute("COMMIT")
    db.close()
    return count


@dataclass
class ChildSync:
    seconds: float
    subscribe_seconds: float
    rows: int
    cpu_seconds: float
    rss_before_kb: int
    peak_rss_kb: int


async def child_sync(server: ServeProcess, path: Path, table: str, timeout: float) -> ChildSync:
    """A fresh SyncClient's initial sync in a child process of its own (benchmarks/sync_child.py)."""
    args = [sys.executable, "-m", "benchmarks.sync_child", str(path), server.ws_url, server.db.token(), table]
    proc = await asyncio.create_subprocess_exec(
        *args, str(timeout), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"the sync child exited with {proc.returncode}:\n{err.decode(errors='replace')[-3000:]}")
    return ChildSync(**json.loads(out.decode().strip().splitlines()[-1]))


NPM_TABLES = {
    "wide": [
        ["id", "INTEGER", "int8", "INT8"],
        ["name", "TEXT", "text", "TEXT"],
        ["n", "INTEGER", "int4", "INT4"],
        ["flag", "INTEGER", "bool", "BOOL"],
        ["at", "TEXT", "timestamptz", "TIMESTAMPTZ"],
        ["doc", "TEXT_JSON", "jsonb", "JSONB"],
    ]
}
"""The DAL's description of `wide` for tests/compat/electrify-driver.mjs (as `electric-sql generate` writes it)."""


@dataclass
class NpmSync:
    seconds: float
    subscribe_seconds: float
    rows: int
    peak_rss_kb: int
    finished: bool
    note: str = ""


def npm_sync(server: ServeProcess, path: Path, expected: int, cap: float) -> NpmSync:
    """The npm client electric-sql@0.12.1 (electrify() over better-sqlite3, in node) syncing `wide`
    into a fresh file: driver start (node, electrify, connect) -> subscribe -> shape.synced.
    If that takes longer than ``cap`` seconds, node is killed and the rows in its file are counted."""
    from tests.compat.conftest import Driver, ensure_node_modules

    ensure_node_modules()
    base = server.ws_url.replace("ws://", "http://").removesuffix("/ws")
    start = time.perf_counter()
    driver = Driver(base, server.db.token(), str(path), tables=json.dumps(NPM_TABLES))
    t_sub = time.perf_counter()
    finished, note = True, ""
    try:
        try:
            driver.call("subscribe", timeout=cap, table="wide")
        except AssertionError as exc:
            finished, note = False, str(exc).splitlines()[0][:300]
        end = time.perf_counter()
        peak = 0
        for line in Path(f"/proc/{driver.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1])
        if finished:
            rows = int(driver.call("query", sql="SELECT count(*) AS n FROM wide")["rows"][0]["n"])
    finally:
        if not finished:  # still busy with the subscription: it would not read "exit"
            driver.proc.kill()
            driver.proc.wait()
        driver.close()
    if not finished:
        try:
            rows = sqlite_count(path, "wide")
        except sqlite3.Error as exc:
            rows, note = 0, f"{note}; its file could not be read: {exc}"
    elif rows != expected:
        raise RuntimeError(f"the npm client holds {rows} rows, expected {expected}")
    return NpmSync(end - start, end - t_sub, rows, peak, finished, note)


async def bench_initial_sync(
    pg: EmbeddedPostgres, tmp: Path, rounds: int, rows: int, target_rows: int, npm_rounds: int, npm_cap: float
) -> None:
    schema = (
        f"CREATE TABLE wide ({WIDE_COLUMNS}); INSERT INTO wide SELECT {WIDE_VALUES} FROM generate_series(1, {rows}) g"
    )
    start = time.perf_counter()
    db = make_database(pg, tmp, "bench_sync", schema, ["wide"])
    sql(db.url, "VACUUM ANALYZE wide")
    populate = time.perf_counter() - start
    ours: list[ChildSync] = []
    raw: list[float] = []
    server_cpu: list[float] = []
    npm: list[NpmSync] = []
    with serving(db, tmp, "bench_sync") as server:
        for r in range(rounds):
            cpu0 = cpu_seconds(server.pid)
            result = await child_sync(server, tmp / f"sync_{r}.db", "wide", 600)
            server_cpu.append(cpu_seconds(server.pid) - cpu0)
            assert result.rows == rows, f"the SyncClient's file has {result.rows} rows, expected {rows}"
            ours.append(result)
            t0 = time.perf_counter()
            n = await asyncio.to_thread(
                raw_copy,
                db.url,
                SqliteTable.build("wide", WIDE_TYPES),
                [c for c, _, _ in WIDE_TYPES],
                tmp / f"raw_{r}.db",
            )
            raw.append(time.perf_counter() - t0)
            assert n == rows
        for r in range(npm_rounds):
            npm.append(await asyncio.to_thread(npm_sync, server, tmp / f"npm_{r}.db", rows, npm_cap))
    print(
        f"3. initial sync of a 6-column table ({rows:,} rows; populated in {populate:.1f} s) into a fresh"
        " SyncClient's file, the client alone in a child process (benchmarks/sync_child.py)"
    )
    synced = [x.seconds for x in ours]
    goal = f"  (goal <= 10 s for {target_rows:,} rows)" if rows == target_rows else ""
    print(f"   start+subscribe+synced        {runs(synced, '{:.2f}')} s{goal}")
    print(f"   = rows/s into SQLite          {runs([rows / s for s in synced], '{:,.0f}')}")
    print(f"   subscribe+synced alone        {runs([x.subscribe_seconds for x in ours], '{:.2f}')} s")
    if rows != target_rows:
        est = [s * target_rows / rows for s in synced]
        print(f"   EXTRAPOLATED to {target_rows:,} rows (linear)  {runs(est, '{:.1f}')} s  (goal <= 10 s)")
    print(f"   raw COPY -> parse -> executemany into SQLite (baseline)  {runs(raw, '{:.2f}')} s")
    ratio = [c / s for s, c in zip(synced, raw, strict=True)]
    print(f"   speed vs raw COPY (raw s / sync s)  {runs(ratio, '{:.2f}')}x  (goal >= 0.5x)")
    peak = [x.peak_rss_kb / 1024 for x in ours]
    print(
        f"   client process peak RSS       {runs(peak, '{:.0f}')} MB  (VmHWM of the child process, read from its"
        f" /proc/self/status after the sync; {statistics.median(x.rss_before_kb for x in ours) / 1024:.0f} MB"
        " before the client started; goal <= 200 MB)"
    )
    print(
        f"   CPU during the sync: serve {runs(server_cpu, '{:.2f}')} s,"
        f" client process {runs([x.cpu_seconds for x in ours], '{:.2f}')} s"
    )
    size = f"{rows:,} rows x 6 columns"
    REPORT.figure(
        SECTION,
        f"initial sync into a fresh SyncClient ({size}: start -> subscribe -> synced)",
        synced,
        "s",
        goal=("<=", 10.0) if rows == target_rows else None,
        baseline_runs=raw,
        baseline_label="raw COPY -> SQLite bulk insert",
        ratio_goal=0.5,
        key=1,
        note="" if rows == target_rows else f"goal is for {target_rows:,} rows",
    )
    REPORT.figure(
        SECTION,
        f"SyncClient process peak RSS during that sync (VmHWM of a child process running only the client, {size})",
        peak,
        "MB",
        goal=("<=", 200.0),
        key=2,
    )
    if npm:
        for x in npm:
            if not x.finished:
                print(
                    f"   !! the npm client did not finish within {npm_cap:g} s: it held {x.rows:,} of {rows:,} rows"
                    f" ({x.note})"
                )
        print(
            "   the npm client electric-sql@0.12.1 (electrify() over better-sqlite3 in node, the same server)"
            f" syncing the same table into a fresh file, {len(npm)} round(s):"
        )
        npm_seconds = [x.seconds for x in npm]
        done = all(x.finished for x in npm)
        print(
            f"     driver start (node + electrify + connect) + subscribe + synced  {runs(npm_seconds, '{:.2f}')} s"
            f"  (ours above: median {statistics.median(synced):.2f} s)"
            + ("" if done else "  NOT FINISHED: the time until it was stopped")
        )
        print(f"     subscribe + synced alone  {runs([x.subscribe_seconds for x in npm], '{:.2f}')} s")
        print(f"     node process peak RSS     {runs([x.peak_rss_kb / 1024 for x in npm], '{:.0f}')} MB (VmHWM)")
        REPORT.figure(
            SECTION,
            f"npm client electric-sql@0.12.1, same initial sync ({size}; node start -> subscribe -> synced)"
            + ("" if done else f"; did NOT finish within {npm_cap:g} s"),
            npm_seconds,
            "s",
            baseline_runs=synced,
            baseline_label="our SyncClient (same run)",
            key=3,
        )
