"""HTTP Shape API benchmark, through the npm client `@electric-sql/client` (ShapeStream + Shape).

Goals (issue 17): 1,000 concurrent long-poll clients on one shape, one write reaching all of them
in <= 1 s (p99); the initial fetch of a 100k-row shape printed beside the Satellite path on the
same data.

`electricctl serve` runs as a subprocess (its config declares no grants: every client shares one
shape log). The clients are the real `@electric-sql/client` 1.5.28 (tests/compat/http, pinned by
its package-lock.json), in node processes running benchmarks/http_shapes.mjs: each stream is a
ShapeStream with a Shape, as an app uses them, on node's own fetch.

1. Fan-out: N streams on one shape, spread over a few node processes, all live (long-polling).
   Then single-row UPDATEs in Postgres, one at a time; for each, Python takes the time its commit
   returned (time.time()) and every Shape records when its subscriber was notified of the new
   value (the same machine clock, performance.timeOrigin + performance.now() in node). Per write:
   p50/p99/max of (notified - commit returned) over every client; the figures are the medians of
   those over the writes. Each stream also records when the fetch of the response that carried
   the change resolved (its headers were in), which splits the time into server + wire and the
   client's own work (JSON parse, Shape, subscriber). The clients share this machine's cores with
   serve and Postgres, so this is an upper bound of what 1,000 separate devices would see.
2. Initial fetch of a 100k-row, 6-column table: a fresh node process, ShapeStream + Shape
   constructed -> the Shape's first value (first up-to-date, every row parsed into its Map), vs
   our SyncClient (a fresh process, benchmarks/sync_child.py: constructor -> connect -> subscribe
   -> synced, every row committed in its SQLite file). Each round has a fresh `serve`: the first
   HTTP fetch makes the shape's log (serve reads the snapshot from Postgres), a second one is
   served from that log; the Satellite subscription reads its own snapshot every time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.common import (
    WIDE_COLUMNS,
    WIDE_VALUES,
    Parts,
    ServeProcess,
    cpu_seconds,
    make_database,
    pct,
    raise_open_files,
    run_alone,
    runs,
    serving,
    sql,
)
from benchmarks.report import REPORT
from benchmarks.serve_sync import child_sync
from electricctl._embedded.postgres import EmbeddedPostgres

SECTION = "http_shapes"
TITLE = "HTTP Shape API through @electric-sql/client: long-poll fan-out, initial fetch beside Satellite"

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "http_shapes.mjs"
NODE_MODULES = ROOT / "tests" / "compat" / "http" / "node_modules"


def ensure_node_modules() -> None:
    """The pinned npm client in tests/compat/http (``npm ci`` there if missing or stale)."""
    from tests.compat.http.driver import install_node_modules

    install_node_modules()


class Node:
    """benchmarks/http_shapes.mjs in a node process of its own: one command at a time."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path, version: str) -> None:
        self.proc = proc
        self.log = log
        self.version = version

    @classmethod
    async def start(cls, log: Path) -> Node:
        with open(log, "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                "node",
                str(SCRIPT),
                str(NODE_MODULES),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                limit=64 * 1024 * 1024,
            )
        node = cls(proc, log, "")
        hello = await node._answer(60)
        node.version = str(hello.get("version"))
        return node

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _answer(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"node exited ({self.proc.returncode}):\n{self.log_tail()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def call(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a command, return its answer; RuntimeError for an ``ok: false`` one."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await self.proc.stdin.drain()
        answer = await self._answer(timeout)
        if not answer.get("ok"):
            raise RuntimeError(f"node ({cmd['cmd']}): {answer.get('error')}\n{self.log_tail()}")
        return answer

    def log_tail(self, lines: int = 10) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.call({"cmd": "exit"}, 10)
                await asyncio.wait_for(self.proc.wait(), 10)
            except (OSError, RuntimeError, TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


# -- 1. fan-out: one write, every long-polling client ------------------------------------------
@dataclass
class Write:
    value: int
    seen: list[float]
    """Per client that saw it: its Shape notified - commit returned, ms."""
    response: list[float]
    """Per client: the fetch of the response carrying it resolved - commit returned, ms."""
    missing: int
    commit_ms: float
    """UPDATE sent -> commit returned."""
    window: float
    """Commit returned -> the last client notified (or the wait's end), s."""
    cpu: dict[str, float]


@dataclass
class Fanout:
    clients: int
    procs: int
    connect_seconds: float
    connect_cpu: dict[str, float]
    writes: list[Write] = field(default_factory=list)
    status: list[dict[str, Any]] = field(default_factory=list)


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def fanout_run(
    server: ServeProcess, tmp: Path, clients: int, procs: int, writes: int, settle: float, concurrency: int
) -> Fanout:
    url = f"http://127.0.0.1:{server.port}/v1/shape"
    nodes = await asyncio.gather(*(Node.start(tmp / f"fanout-node-{i}.log") for i in range(procs)))
    try:
        pids = {"serve": server.pid} | {f"node {i}": n.pid for i, n in enumerate(nodes)}

        def cpu_now() -> dict[str, float]:
            return {k: cpu_seconds(p) for k, p in pids.items()}

        def cpu_delta(before: dict[str, float]) -> dict[str, float]:
            now = cpu_now()
            out = {"serve": now["serve"] - before["serve"]}
            out["node (all)"] = sum(now[k] - before[k] for k in now if k.startswith("node"))
            return out

        cpu0 = cpu_now()
        t0 = time.perf_counter()
        cmd = {
            "cmd": "streams",
            "url": url,
            "params": {"table": "fanout"},
            "token": server.db.token(),
            "concurrency": concurrency,
            "watchKey": '"public"."fanout"/"1"',
            "watchColumn": "v",
            "timeout": 600_000,
        }
        await asyncio.gather(
            *(n.call(cmd | {"count": c}, 660) for n, c in zip(nodes, split(clients, procs), strict=True))
        )
        result = Fanout(clients, procs, time.perf_counter() - t0, cpu_delta(cpu0))
        with psycopg.connect(server.db.url, autocommit=True) as conn:
            for value in range(1, writes + 2):  # the first write warms up every path: not counted
                await asyncio.gather(*(n.call({"cmd": "inflight", "timeout": 60_000}, 90) for n in nodes))
                await asyncio.sleep(settle)
                before = cpu_now()

                def update(v: int = value) -> tuple[float, float]:
                    sent = time.time()
                    conn.execute("UPDATE fanout SET v = %s WHERE id = 1", [v], prepare=True)
                    return sent, time.time()

                sent, committed = await asyncio.to_thread(update)
                answers = await asyncio.gather(
                    *(n.call({"cmd": "arrivals", "value": value, "timeout": 60_000}, 90) for n in nodes)
                )
                cpu = cpu_delta(before)
                seen_at = [t for a in answers for t in a["seen"]]
                arrived = [t / 1000 for t in seen_at if t is not None]
                window = (max(arrived) if arrived else time.time()) - committed
                if value == 1:
                    continue
                result.writes.append(
                    Write(
                        value,
                        [(t - committed) * 1000 for t in arrived],
                        [(t / 1000 - committed) * 1000 for a in answers for t in a["response"] if t is not None],
                        sum(1 for t in seen_at if t is None),
                        (committed - sent) * 1000,
                        window,
                        cpu,
                    )
                )
        result.status = list(await asyncio.gather(*(n.call({"cmd": "status"}, 30) for n in nodes)))
        return result
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def bench_fanout(
    pg: EmbeddedPostgres, tmp: Path, clients: int, procs: int, writes: int, settle: float, concurrency: int
) -> None:
    fds = raise_open_files()
    schema = (
        "CREATE TABLE fanout (id int8 PRIMARY KEY, v int4 NOT NULL, note text);"
        " INSERT INTO fanout SELECT g, 0, 'row ' || g FROM generate_series(1, 10) g"
    )
    db = make_database(pg, tmp, "bench_http_fanout", schema, ["fanout"])
    with serving(db, tmp, "bench_http_fanout") as server:
        run = await fanout_run(server, tmp, clients, procs, writes, settle, concurrency)
    print(
        f"1. fan-out: {clients:,} ShapeStream + Shape (@electric-sql/client, long polling, node's fetch) on one"
        f" 10-row shape, in {procs} node process(es) on this machine ({os.cpu_count()} cores shared with serve and"
        f" Postgres; fd limit {fds}); no grants, so every client reads the same shape log. {writes} single-row"
        " UPDATEs (after one warm-up write), one at a time, each once every client has its long poll in flight"
        f" plus {settle:g} s; latency = the client's Shape subscriber notified - the UPDATE's commit returned"
    )
    w = run.writes
    print(
        f"   all {clients:,} live (first up-to-date) {run.connect_seconds:.2f} s after the first started"
        f" ({concurrency} starting at a time per process); serve CPU then {run.connect_cpu['serve']:.2f} s,"
        f" node {run.connect_cpu['node (all)']:.2f} s"
    )
    print("   per write (ms from commit returned):   notified p50 / p99 / max   | response in p50 / p99 | missing")
    for x in w:
        print(
            f"     write {x.value - 1:>2} (commit {x.commit_ms:5.1f} ms)"
            f"    {pct(x.seen, 50):7.0f} / {pct(x.seen, 99):7.0f} / {max(x.seen):7.0f}"
            f"   | {pct(x.response, 50):7.0f} / {pct(x.response, 99):7.0f} | {x.missing}"
            f"   serve CPU {x.cpu['serve']:.2f} s, node {x.cpu['node (all)']:.2f} s in {x.window:.2f} s"
        )
    p50 = [pct(x.seen, 50) for x in w]
    p99 = [pct(x.seen, 99) for x in w]
    top = [max(x.seen) for x in w]
    print(f"   notified p50 over the writes  {runs(p50, '{:.0f}')} ms")
    print(f"   notified p99 over the writes  {runs(p99, '{:.0f}')} ms  (goal <= 1000 ms)")
    print(f"   notified max over the writes  {runs(top, '{:.0f}')} ms")
    r50 = [pct(x.response, 50) for x in w]
    r99 = [pct(x.response, 99) for x in w]
    print(
        f"   response headers in (node's fetch resolved) p50 {runs(r50, '{:.0f}')} ms, p99 {runs(r99, '{:.0f}')} ms"
        " (node's fetch resolved for the response that carried it; after that: the client parsing that body and its"
        " Shape notifying. A node process reads a response only when its event loop gets to it, so this includes"
        " waiting behind the other streams of the same process)"
    )
    serve_share = [x.cpu["serve"] / x.window * 100 for x in w if x.window > 0]
    node_share = [x.cpu["node (all)"] / x.window * 100 for x in w if x.window > 0]
    print(
        f"   CPU per write: serve {runs([x.cpu['serve'] for x in w], '{:.2f}')} s"
        f" = {statistics.median(serve_share):.0f}% of one core over the write's window (commit -> last client"
        f" notified; median), node processes together {runs([x.cpu['node (all)'] for x in w], '{:.2f}')} s"
        f" = {statistics.median(node_share):.0f}%; serve's CPU per client per write"
        f" {statistics.median(x.cpu['serve'] for x in w) / clients * 1e6:.0f} µs"
    )
    busy = [(x.cpu["serve"] + x.cpu["node (all)"]) / (os.cpu_count() or 1) for x in w]
    print(
        f"   (serve + node CPU) / {os.cpu_count()} cores per write {runs(busy, '{:.2f}')} s, against a window of"
        f" {runs([x.window for x in w], '{:.2f}')} s (commit -> last client notified): when the two are close, the"
        " window is the machine's CPU, most of it the clients' (separate devices would each parse their own response)"
    )
    missing = sum(x.missing for x in w)
    errors = sum(int(s["errors"]) for s in run.status)
    if missing or errors:
        last = next((s["lastError"] for s in run.status if s["lastError"]), None)
        print(f"   !! {missing} client notifications missing (60 s wait per write); stream errors {errors}: {last}")
    requests = sum(int(s["requests"]) for s in run.status)
    print(f"   requests made by all streams: {requests:,} ({requests / clients:.1f} per client)")
    note = "" if clients == 1000 else "goal is for 1,000 clients"
    REPORT.figure(
        SECTION,
        f"{clients:,} long-polling @electric-sql/client streams on one shape: one write's commit -> every client's"
        " Shape notified, p99 over the clients (median over the writes)",
        p99,
        "ms",
        goal=("<=", 1000.0) if clients == 1000 else None,
        key=9,
        note=note,
    )
    REPORT.figure(
        SECTION,
        f"the same, p50 over the clients ({clients:,} clients)",
        p50,
        "ms",
    )
    REPORT.figure(SECTION, f"serve CPU per write fanned out to {clients:,} clients", [x.cpu["serve"] for x in w], "s")


# -- 2. initial fetch of a large shape, beside the Satellite path -------------------------------
@dataclass
class HttpFetch:
    seconds: float
    rows: int
    requests: int
    serve_cpu: float
    node_cpu: float
    peak_rss_kb: int
    parsed: bool
    """Row 1's values were parsed into their types (the client had a schema for them)."""
    first_schema: str | None
    """The electric-schema header of the first response: the client keeps that one."""
    sample: dict[str, Any]


async def http_fetch(server: ServeProcess, tmp: Path, name: str, rows: int) -> HttpFetch:
    """A fresh node process: ShapeStream + Shape on `wide`, constructed -> the Shape's first value."""
    node = await Node.start(tmp / f"{name}.log")
    try:
        cpu0 = cpu_seconds(server.pid)
        node0 = cpu_seconds(node.pid)
        answer = await node.call(
            {
                "cmd": "fetch",
                "url": f"http://127.0.0.1:{server.port}/v1/shape",
                "params": {"table": "wide"},
                "token": server.db.token(),
                "sampleKey": '"public"."wide"/"1"',
                "timeout": 600_000,
            },
            660,
        )
        serve_cpu = cpu_seconds(server.pid) - cpu0
        node_cpu = cpu_seconds(node.pid) - node0
        peak = peak_rss_kb(node.pid)
    finally:
        await node.close()
    if answer["rows"] != rows:
        raise RuntimeError(f"the Shape holds {answer['rows']} rows, expected {rows}")
    sample = answer["sample"] or {}
    if sample.get("name") != "name 1" or str(sample.get("id")) != "1":
        raise RuntimeError(f"row 1 of the Shape is not as in Postgres: {sample!r}")
    # parsed by the client per the response's electric-schema: int4 a number, bool a boolean, jsonb an object
    parsed = sample.get("n") == 1 and sample.get("flag") is False and isinstance(sample.get("doc"), dict)
    schema = (answer["schemas"] or [None])[0]
    return HttpFetch(
        answer["ms"] / 1000, answer["rows"], answer["requests"], serve_cpu, node_cpu, peak, parsed, schema, sample
    )


@dataclass
class FetchRound:
    first: HttpFetch
    again: HttpFetch
    satellite: float
    satellite_subscribe: float
    satellite_serve_cpu: float
    satellite_client_cpu: float


async def bench_fetch(pg: EmbeddedPostgres, tmp: Path, rounds: int, rows: int) -> None:
    schema = (
        f"CREATE TABLE wide ({WIDE_COLUMNS}); INSERT INTO wide SELECT {WIDE_VALUES} FROM generate_series(1, {rows}) g"
    )
    start = time.perf_counter()
    db = make_database(pg, tmp, "bench_http_fetch", schema, ["wide"])
    sql(db.url, "VACUUM ANALYZE wide")
    populate = time.perf_counter() - start
    results: list[FetchRound] = []
    for r in range(rounds):
        with serving(db, tmp, f"bench_http_fetch_{r}") as server:
            made = await http_fetch(server, tmp, f"fetch-{r}-first", rows)
            logged = await http_fetch(server, tmp, f"fetch-{r}-again", rows)
            cpu0 = cpu_seconds(server.pid)
            child = await child_sync(server, tmp / f"satellite_{r}.db", "wide", 600)
            sat_cpu = cpu_seconds(server.pid) - cpu0
            if child.rows != rows:
                raise RuntimeError(f"the SyncClient's file has {child.rows} rows, expected {rows}")
            results.append(FetchRound(made, logged, child.seconds, child.subscribe_seconds, sat_cpu, child.cpu_seconds))
    size = f"{rows:,} rows x 6 columns"
    print(
        f"2. initial fetch of a {size} table (populated in {populate:.1f} s), each round on a fresh `serve`,"
        f" {rounds} rounds"
    )
    first = [x.first.seconds for x in results]
    again = [x.again.seconds for x in results]
    sat = [x.satellite for x in results]
    print(
        "   HTTP, @electric-sql/client in a fresh node process: ShapeStream + Shape constructed -> the Shape's first"
        " value (every row received, JSON-parsed and in its Map; in memory only, nothing persisted)"
    )
    print(
        f"     first fetch (serve makes the shape log)   {runs(first, '{:.2f}')} s"
        f"  = {runs([rows / s for s in first], '{:,.0f}')} rows/s"
    )
    print(
        f"     again (served from that log)              {runs(again, '{:.2f}')} s"
        f"  = {runs([rows / s for s in again], '{:,.0f}')} rows/s"
    )
    print(f"     requests per fetch {results[0].first.requests} (first), {results[0].again.requests} (again)")
    print(
        f"     CPU: serve {runs([x.first.serve_cpu for x in results], '{:.2f}')} s (first),"
        f" {runs([x.again.serve_cpu for x in results], '{:.2f}')} s (again);"
        f" node {runs([x.first.node_cpu for x in results], '{:.2f}')} s (first),"
        f" {runs([x.again.node_cpu for x in results], '{:.2f}')} s (again)"
    )
    print(f"     node peak RSS {runs([x.first.peak_rss_kb / 1024 for x in results], '{:.0f}')} MB (VmHWM)")
    unparsed = [
        (r, kind, x) for r, res in enumerate(results) for kind, x in (("first", res.first), ("again", res.again))
    ]
    unparsed = [u for u in unparsed if not u[2].parsed]
    if unparsed:
        r, kind, x = unparsed[0]
        print(
            f"   !! SERVER BUG: in {len(unparsed)} of {2 * len(results)} fetches the client kept every value as text"
            f" (its first response's electric-schema header was {x.first_schema!r}; the client keeps the first"
            f" schema it gets), e.g. round {r} ({kind}): row 1 = {json.dumps(x.sample)}. Those fetches skipped"
            " the client's value parsing: their times understate the client's work."
        )
    print(
        "   Satellite, our SyncClient in a fresh process (benchmarks/sync_child.py): constructor -> connect ->"
        " subscribe -> synced (every row committed in a fresh SQLite file)"
    )
    print(
        f"     start+subscribe+synced                    {runs(sat, '{:.2f}')} s"
        f"  = {runs([rows / s for s in sat], '{:,.0f}')} rows/s"
    )
    print(
        f"     subscribe+synced alone                    {runs([x.satellite_subscribe for x in results], '{:.2f}')} s"
    )
    print(
        f"     CPU: serve {runs([x.satellite_serve_cpu for x in results], '{:.2f}')} s,"
        f" client process {runs([x.satellite_client_cpu for x in results], '{:.2f}')} s"
    )
    ratio = [s / f for f, s in zip(first, sat, strict=True)]
    print(f"   HTTP first fetch vs Satellite: Satellite s / HTTP s {runs(ratio, '{:.2f}')}x (> 1: HTTP faster)")
    note = "" if rows == 100_000 else "the issue asks for 100,000 rows"
    text_only = sum(1 for x in results if not x.first.parsed)
    if text_only:
        note += ("; " if note else "") + (
            f"in {text_only} of {len(results)} runs the client left values as text (serve's first electric-schema"
            " was {}), skipping its value parsing"
        )
    REPORT.figure(
        SECTION,
        f"initial fetch over HTTP, @electric-sql/client ShapeStream + Shape ({size}; constructed -> first"
        " up-to-date, rows JSON-parsed into the Shape's Map in memory; the shape's first fetch: serve makes its log)",
        first,
        "s",
        baseline_runs=sat,
        baseline_label="Satellite: our SyncClient, start -> synced into a fresh SQLite file (same run)",
        key=10,
        note=note,
    )
    REPORT.figure(
        SECTION,
        f"initial fetch over HTTP again, served from the existing shape log ({size}; same client and measure)",
        again,
        "s",
        baseline_runs=sat,
        baseline_label="Satellite, as above",
    )


# -- main --------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=1000, help="1: long-polling streams")
    parser.add_argument(
        "--node-procs", type=int, default=0, help="1: node processes (0: one per 250 clients, at most one per core)"
    )
    parser.add_argument("--writes", type=int, default=10, help="1: single-row writes, one at a time")
    parser.add_argument("--settle", type=float, default=1.0, help="1: seconds between writes, every poll in flight")
    parser.add_argument("--concurrency", type=int, default=50, help="1: streams starting at a time per process")
    parser.add_argument("--fetch-rows", type=int, default=100_000, help="2: rows in the table")


QUICK = {"clients": 100, "writes": 5, "settle": 0.5, "fetch_rows": 10_000}
"""What ``python -m benchmarks --quick`` changes: a small version of every part."""


async def run(args: argparse.Namespace, pg: EmbeddedPostgres, tmp: Path) -> None:
    ensure_node_modules()
    # the clients share the machine with serve and Postgres: more node processes than cores only adds
    # each process's own overhead to the clients' CPU (and so to the latency measured)
    procs = args.node_procs or max(1, min(os.cpu_count() or 1, math.ceil(args.clients / 250)))
    print(
        f"HTTP Shape API: `electricctl serve` subprocess, {'fsync-off' if args.fast else 'durable'} embedded cluster,"
        f" @electric-sql/client in node (benchmarks/http_shapes.mjs), {args.rounds} rounds for part 2,"
        f" {os.cpu_count()} cores"
    )
    parts = Parts(args.only, "12")
    await parts.step("1", bench_fanout(pg, tmp, args.clients, procs, args.writes, args.settle, args.concurrency))
    await parts.step("2", bench_fetch(pg, tmp, args.rounds, args.fetch_rows))
    print(parts.summary())


def main() -> None:
    run_alone(__doc__, add_arguments, run, "bench-http-shapes-", QUICK)


if __name__ == "__main__":
    main()
