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
import json
import os
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from google.protobuf.message import Message

from benchmarks.report import REPORT
from electricctl._apply import applier
from electricctl._auth.tokens import mint
from electricctl._config.loader import load_text
from electricctl._config.model import ElectricConfig
from electricctl._embedded.postgres import EmbeddedPostgres, free_port
from electricctl._model import wire
from electricctl._model.rows import Column, RelationDef
from electricctl._model.wire import DISPLAY_OPTIONS
from electricctl._replication import pgoutput as po
from electricctl._replication.txbuilder import TxBuilder
from electricctl._server.snapshot import parse_copy_lines
from electricctl.client import RemoteChange, SyncClient
from tests.satellite_client import SatelliteClient

SECTION = "serve"
TITLE = "Sync service through SyncClient: latency, live throughput, initial sync, idle connections"

WIDE_COLUMNS = "id int8 PRIMARY KEY, name text NOT NULL, n int4, flag bool, at timestamptz, doc jsonb"
WIDE_VALUES = (
    "g, 'name ' || g, mod(g, 1000)::int4, mod(g, 2) = 0,"
    " timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',"
    " jsonb_build_object('k', g, 'tags', jsonb_build_array('a', 'b'))"
)
WIDE_TYPES = [
    ("id", "int8", True),
    ("name", "text", False),
    ("n", "int4", False),
    ("flag", "bool", False),
    ("at", "timestamptz", False),
    ("doc", "jsonb", False),
]
"""The `wide` table's columns: (name, Postgres type, is primary key)."""


# -- small helpers ---------------------------------------------------------------------------
def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def runs(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    """``median M (min–max) [run, run, ...]``."""
    return (
        f"median {fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"
        f"  [{', '.join(fmt.format(v) for v in values)}]"
    )


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 10 ms; TimeoutError naming ``what`` after ``timeout`` s. (Only for
    waiting: the figures take their times in the clients' callbacks, not from this poll.)"""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.01)


def sqlite_count(path: Path, table: str) -> int:
    """count(*) of ``table`` in the SQLite file at ``path``, on a connection of its own."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        row = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    finally:
        conn.close()
    return int(row[0])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (any process we may read /proc of)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def sql(url: str, query: str, params: Sequence[object] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def walsender_pid(url: str, slot: str) -> int:
    rows = sql(url, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", [slot])
    if not rows or rows[0][0] is None:
        raise RuntimeError(f"slot {slot} has no walsender")
    return int(rows[0][0])


@dataclass
class Database:
    url: str
    config: ElectricConfig
    config_path: Path

    def token(self) -> str:
        return mint(self.config.auth, "user")


def make_database(pg: EmbeddedPostgres, tmp: Path, name: str, schema: str, tables: Sequence[str]) -> Database:
    """A fresh database with ``schema`` run in it (data too), then ``tables`` electrified."""
    sql(pg.url(), f"CREATE DATABASE {name}")
    url = pg.url(name)
    sql(url, schema)
    text = f"version: 1\nauth: {{mode: insecure}}\ntables: [{', '.join(tables)}]\nadhoc_shapes: allow\n"
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    config = load_text(text, str(path), env={})
    applier.apply(config, url)
    return Database(url, config, path)


# -- the server as a process -----------------------------------------------------------------
class ServeProcess:
    """`electricctl serve` as a subprocess, with its log in ``<tmp>/<slot>.log``."""

    def __init__(self, db: Database, tmp: Path, slot: str, extra: Sequence[str] = ()) -> None:
        self.db = db
        self.slot = slot
        self.extra = list(extra)
        self.data_dir = tmp / f"data-{slot}"
        self.log_path = tmp / f"{slot}.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> ServeProcess:
        args = ["serve", "-f", self.db.config_path, "--database-url", self.db.url, "--port", self.port]
        args += ["--data-dir", self.data_dir, "--slot", self.slot, "--log-level", "warning", *self.extra]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "electricctl", *map(str, args)], stdout=subprocess.DEVNULL, stderr=log
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.health()[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"serve did not become ready:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        sql(
            self.db.url,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
            [self.slot],
        )


@contextmanager
def serving(db: Database, tmp: Path, slot: str, extra: Sequence[str] = ()) -> Iterator[ServeProcess]:
    """Run a server; afterwards, show what it logged (it runs at --log-level warning)."""
    server = ServeProcess(db, tmp, slot, extra).start()
    try:
        yield server
    finally:
        server.stop()
        logged = [
            line
            for line in server.log_path.read_text(errors="replace").splitlines()
            if "declares no grants" not in line  # the benchmarks' configs have none, on purpose
        ]
        if logged:
            print(f"   ! serve ({slot}) logged {len(logged)} lines at warning level or above; the first:")
            print("\n".join(f"     {line}" for line in logged[:5]))


# -- the raw baseline's SQLite target ----------------------------------------------------------
def _bool(v: bytes) -> int:
    return 1 if v == b"t" else 0


def _text(v: bytes) -> str:
    return v.decode()


Convert = Callable[[bytes], object]
CONVERTERS: dict[str, tuple[Convert, str]] = {
    "int2": (int, "INTEGER"),
    "int4": (int, "INTEGER"),
    "int8": (int, "INTEGER"),
    "float4": (float, "REAL"),
    "float8": (float, "REAL"),
    "bool": (_bool, "INTEGER"),
    "bytea": (bytes, "BLOB"),
}
SqlRow = tuple[object, ...]


@dataclass(slots=True)
class SqliteTable:
    """How the raw COPY baseline turns Postgres text rows into SQLite rows: a converter per column.
    (No sync client uses it: it is the bulk insert the initial sync is compared with.)"""

    name: str
    converters: list[Convert]
    ddl: str
    insert: str

    @classmethod
    def build(cls, name: str, columns: Sequence[tuple[str, str, bool]]) -> SqliteTable:
        """``columns``: (name, Postgres type name, is primary key)."""
        convs = [CONVERTERS.get(t, (_text, "TEXT")) for _, t, _ in columns]
        q = [f'"{c}"' for c, _, _ in columns]
        pk = [q[i] for i, (_, _, key) in enumerate(columns) if key]
        defs = ", ".join(f"{n} {affinity}" for n, (_, affinity) in zip(q, convs, strict=True))
        return cls(
            name,
            [c for c, _ in convs],
            f'CREATE TABLE IF NOT EXISTS "{name}" ({defs}, PRIMARY KEY ({", ".join(pk)}))',
            f'INSERT OR REPLACE INTO "{name}" VALUES ({", ".join("?" * len(q))})',
        )

    def row(self, values: Sequence[bytes | None]) -> SqlRow:
        return tuple(None if v is None else f(v) for f, v in zip(self.converters, values, strict=True))


def open_sqlite(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


class _Discard(list[Message]):
    """The protocol test client keeps every received message; a benchmark's must not."""

    def append(self, item: Message) -> None:
        pass


async def protocol_client(server: ServeProcess, *tables: str) -> SatelliteClient:
    """Server only: a bare protocol client (tests/satellite_client.py) that discards what it receives
    (it keeps rows in a dict, no SQLite), authenticated, replicating and subscribed to ``tables``."""
    cl = SatelliteClient(server.ws_url)
    cl.messages = _Discard()
    await cl.connect()
    await cl.authenticate(server.db.token())
    await cl.start()
    if tables:
        await cl.subscribe(*tables)
    return cl


OnChange = Callable[[list[RemoteChange], str | None], None]


async def sync_client(server: ServeProcess, path: Path, table: str, on_change: OnChange | None = None) -> SyncClient:
    """A started ``SyncClient`` on the file ``path``, subscribed to ``table`` and synced."""
    cl = SyncClient(str(path), server.ws_url, server.db.token(), on_change=on_change)
    await cl.start()
    await cl.synced(await cl.subscribe(table), timeout=600)
    return cl


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


def print_cpu(keys: Any, cpus: Sequence[dict[str, float]], wall: float | Sequence[float]) -> None:
    walls = [wall] * len(cpus) if isinstance(wall, float | int) else list(wall)
    parts = []
    for k in keys:
        shares = [c[k] / w * 100 for c, w in zip(cpus, walls, strict=True)]
        parts.append(f"{k} {statistics.median(shares):.0f}%")
    print(f"   CPU (median share of one core over the round): {', '.join(parts)}")


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
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
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
class Parts:
    """Run the parts of a benchmark that ``--only`` selects, timing each (shared with the other modules)."""

    def __init__(self, only: str | None, every: str) -> None:
        self.only = set(only or every)
        self.timings: list[str] = []

    async def step(self, key: str, coro: Coroutine[Any, Any, None]) -> None:
        if key not in self.only:
            coro.close()
            return
        start = time.perf_counter()
        await coro
        self.timings.append(f"{key}: {time.perf_counter() - start:.0f} s")
        sys.stdout.flush()

    def summary(self) -> str:
        return f"wall time per part: {', '.join(self.timings)}"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """The options every benchmark takes."""
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--only", help="run only these parts, e.g. 13")
        parser.add_argument("--fast", action="store_true", help="fsync=off cluster (default: a durable cluster)")


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    Parts.add_arguments(parser)
    add_arguments(parser)
    args = parser.parse_args()
    sys.stdout.flush()
    with EmbeddedPostgres(durable=not args.fast) as pg, tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        asyncio.run(run(args, pg, Path(tmp)))


if __name__ == "__main__":
    main()
