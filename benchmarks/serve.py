"""Sync-service benchmark: latency, sustained throughput, initial sync and idle clients.

Targets (the sync-service issue): commit in Postgres to applied in the client's SQLite at 200
single-row transactions/s with p50 <= 5 ms and p99 <= 25 ms; >= 30,000 row changes/s into one
client; 1M rows of a 6-column table synced into a fresh client in <= 15 s; <= 50 KB of server
memory per idle client.

Run with `scripts/bench` (or `.venv/bin/python -m benchmarks.serve`). `electricctl serve` runs as a
subprocess (the durable log fsyncs, as in production) against a durable embedded cluster, and the
clients run in this process. The client is electricctl's `SatelliteClient` with its in-memory
replica replaced by a SQLite database (WAL, synchronous=NORMAL): every live transaction is applied
in one SQLite transaction and a subscription's initial data in one; figures count a row as
delivered when that SQLite transaction has committed. Medians of several rounds, runs in brackets.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from google.protobuf.message import Message

from electricctl._apply import applier
from electricctl._auth.tokens import mint
from electricctl._config.loader import load_text
from electricctl._config.model import ElectricConfig
from electricctl._embedded.postgres import EmbeddedPostgres, free_port
from electricctl._model import wire
from electricctl._model.rows import Column, RelationDef
from electricctl._model.wire import DISPLAY_OPTIONS
from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._replication import pgoutput as po
from electricctl._replication.txbuilder import TxBuilder
from electricctl._server.snapshot import parse_copy_lines
from tests.satellite_client import SatelliteClient

WIDE_COLUMNS = "id int8 PRIMARY KEY, name text NOT NULL, n int4, flag bool, at timestamptz, doc jsonb"
WIDE_VALUES = (
    "g, 'name ' || g, mod(g, 1000)::int4, mod(g, 2) = 0,"
    " timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',"
    " jsonb_build_object('k', g, 'tags', jsonb_build_array('a', 'b'))"
)


# -- small helpers ---------------------------------------------------------------------------
def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def runs(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    return f"median {fmt.format(statistics.median(values))}  [{', '.join(fmt.format(v) for v in values)}]"


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
        logged = server.log_path.read_text(errors="replace").splitlines()
        if logged:
            print(f"   ! serve ({slot}) logged {len(logged)} lines at warning level or above; the first:")
            print("\n".join(f"     {line}" for line in logged[:5]))


# -- a client that applies into SQLite -------------------------------------------------------
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
    """How one table's rows become SQLite rows: a converter per column (Postgres text -> value)."""

    name: str
    converters: list[Convert]
    pk: list[int]
    ddl: str
    upsert: str
    delete: str

    @classmethod
    def build(cls, name: str, columns: Sequence[tuple[str, str, bool]]) -> SqliteTable:
        """``columns``: (name, Postgres type name, is primary key)."""
        convs = [CONVERTERS.get(t, (_text, "TEXT")) for _, t, _ in columns]
        q = [f'"{c}"' for c, _, _ in columns]
        pk = [i for i, (_, _, key) in enumerate(columns) if key]
        defs = ", ".join(f"{n} {affinity}" for n, (_, affinity) in zip(q, convs, strict=True))
        return cls(
            name,
            [c for c, _ in convs],
            pk,
            f'CREATE TABLE IF NOT EXISTS "{name}" ({defs}, PRIMARY KEY ({", ".join(q[i] for i in pk)}))',
            f'INSERT OR REPLACE INTO "{name}" VALUES ({", ".join("?" * len(q))})',
            f'DELETE FROM "{name}" WHERE {" AND ".join(f"{q[i]} = ?" for i in pk)}',
        )

    def row(self, values: Sequence[bytes | None]) -> SqlRow:
        return tuple(None if v is None else f(v) for f, v in zip(self.converters, values, strict=True))

    def key(self, values: Sequence[bytes | None]) -> SqlRow:
        row = self.row(values)
        return tuple(row[i] for i in self.pk)


def open_sqlite(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


class _Discard(list[Message]):
    """The client keeps every received message for tests; a benchmark must not."""

    def append(self, item: Message) -> None:
        pass


OnCommit = Callable[[float, list[SqlRow]], None]


class SqliteReplica(SatelliteClient):
    """`SatelliteClient` with its in-memory replica replaced by SQLite; acks after each commit.

    ``on_commit(perf_counter(), upserted rows)`` runs right after each SQLite COMMIT.
    """

    def __init__(self, url: str, db_path: Path, on_commit: OnCommit | None = None) -> None:
        super().__init__(url, auto_ack=False)
        self.messages = _Discard()
        self.db = open_sqlite(db_path)
        self.on_commit = on_commit
        self.sqlite_tables: dict[int, SqliteTable] = {}
        self.rows_applied = 0
        self.last_commit = 0.0
        self._ops: list[tuple[str, SqlRow]] = []
        self._upserted: list[SqlRow] = []

    def _apply(self, op: pb.SatTransOp) -> None:
        kind = op.WhichOneof("op")
        body = getattr(op, kind)
        table = self.sqlite_tables[body.relation_id]
        n = len(table.converters)
        if kind in ("insert", "update"):
            row = table.row(codec.decode_row(body.row_data, n))
            self._ops.append((table.upsert, row))
            self._upserted.append(row)
        elif kind == "delete":
            self._ops.append((table.delete, table.key(codec.decode_row(body.old_row_data, n))))
        elif kind == "gone":
            self._ops.append((table.delete, table.key(codec.decode_row(body.pk_data, n))))

    def _write(self) -> None:
        for stmt, group in itertools.groupby(self._ops, key=lambda o: o[0]):
            self.db.executemany(stmt, [params for _, params in group])
        self._ops.clear()

    def _commit(self) -> None:
        self.db.execute("COMMIT")
        now = time.perf_counter()
        self.last_commit = now
        self.rows_applied += len(self._upserted)
        if self.on_commit is not None:
            self.on_commit(now, self._upserted)
        self._upserted = []

    async def _on(self, msg: Message) -> None:
        if isinstance(msg, pb.SatRelation):
            cols = [(c.name, c.type, c.primaryKey) for c in msg.columns]
            table = SqliteTable.build(msg.table_name, cols)
            self.db.execute(table.ddl)
            self.sqlite_tables[msg.relation_id] = table
        in_data = self._in_subs is not None or self._in_unsubs
        await super()._on(msg)  # decodes the ops into self._ops through _apply
        if isinstance(msg, pb.SatSubsDataBegin | pb.SatUnsubsDataBegin):
            self.db.execute("BEGIN")
        elif isinstance(msg, pb.SatSubsDataEnd | pb.SatUnsubsDataEnd):
            self._commit()
        elif isinstance(msg, pb.SatOpLog):
            if in_data:
                self._write()  # into the subscription's open SQLite transaction
                return
            self.db.execute("BEGIN")
            self._write()
            self._commit()
            if self._unacked >= int(self.window * 0.7):
                await self.ack()

    async def close(self) -> None:
        await super().close()
        self.db.close()


async def open_client(
    server: ServeProcess, db_path: Path, *tables: str, on_commit: OnCommit | None = None
) -> SqliteReplica:
    cl = SqliteReplica(server.ws_url, db_path, on_commit)
    await cl.connect()
    await cl.authenticate(server.db.token())
    await cl.start()
    if tables:
        await cl.subscribe(*tables)
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

    def on_commit(now: float, rows: list[SqlRow]) -> None:
        for row in rows:
            applied[row[0]] = now

    cl = await open_client(server, tmp / f"{table}.sqlite", table, on_commit=on_commit)
    n = int(rate * seconds)
    sent: list[float] = [0.0] * n
    returned: list[float] = [0.0] * n
    insert = f"INSERT INTO {table} (id, note) VALUES (%s, 'x')"
    with psycopg.connect(server.db.url, autocommit=True) as conn:
        for i in range(1, 21):  # warm-up, not measured: prepared statement, server and client paths
            conn.execute(insert, [-i], prepare=True)
        await cl.wait_for(lambda: -20 in applied, 30)
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
        await cl.wait_for(lambda: all(i in applied for i in range(n)), 60)
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()} | {"client": time.process_time() - cpu0["client"]}
    await cl.close()
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
        f"1. latency: Postgres commit -> row committed in the client's SQLite; {rate:.0f} single-row "
        f"transactions/s for {seconds:.0f} s ({n} per round; autocommit INSERTs from a writer thread in the"
        " client process)"
    )
    print(f"   writer rate achieved      {runs([r.rate for r in results], '{:.0f}')} tx/s")
    for label, series in (
        ("from INSERT sent", [r.from_sent for r in results]),
        ("from commit returned", [r.from_returned for r in results]),
    ):
        p50 = [pct(s, 50) for s in series]
        p99 = [pct(s, 99) for s in series]
        pooled = [v for s in series for v in s]
        print(f"   {label:<21} p50 {runs(p50, '{:.2f}')} ms  (target <= 5 ms)")
        print(f"   {'':<21} p99 {runs(p99, '{:.2f}')} ms  (target <= 25 ms)")
        print(
            f"   {'':<21} all rounds pooled: p50 {pct(pooled, 50):.2f}  p90 {pct(pooled, 90):.2f}  "
            f"p99 {pct(pooled, 99):.2f}  max {max(pooled):.2f} ms"
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


def log_last_lsn(server: ServeProcess) -> int:
    return int(server.health()[1]["replication"]["log_last_lsn"])


async def throughput_round(
    server: ServeProcess, tmp: Path, table: str, rows: int, tx_rows: int, writers: int
) -> ThroughputRound:
    """Live: ``rows`` written while the client streams. Catch-up: ``rows`` more written while it
    is away, then it reconnects and resumes from its last LSN (served from the server's log)."""
    path = tmp / f"{table}.sqlite"
    cl = SqliteReplica(server.ws_url, path)
    await cl.connect()
    await cl.authenticate(server.db.token())
    await cl.start()
    sub_id = await cl.subscribe(table)
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
        await cl.wait_for(lambda: cl.rows_applied >= rows, 300)
        live_end = cl.last_commit
        cpu1 = cpu_now()
        cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}

        # catch-up: the client leaves, the server logs another `rows`, the client resumes
        resume_lsn, client_id = cl.last_lsn, cl.client_id
        await cl.close()
        _, before_last = await asyncio.to_thread(write, rows + 1)
        deadline = time.monotonic() + 300
        while log_last_lsn(server) <= before_last:
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not log the catch-up rows in time")
            await asyncio.sleep(0.05)
        cl = SqliteReplica(server.ws_url, path)
        cl.client_id = client_id
        cpu0 = cpu_now()
        start2 = time.perf_counter()
        await cl.connect()
        await cl.authenticate(server.db.token())
        await cl.start(lsn=resume_lsn, subscription_ids=[sub_id])
        await cl.wait_for(lambda: cl.rows_applied >= rows, 300)
        cpu1 = cpu_now()
        catchup_cpu = {k: cpu1[k] - cpu0[k] for k in ("serve", "client")}
    count = cl.db.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    assert count is not None and count[0] == 2 * rows, f"client SQLite has {count} rows, expected {2 * rows}"
    await cl.close()
    return ThroughputRound(rows, written - start, live_end - start, cpu, cl.last_commit - start2, catchup_cpu)


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
        f"2. sustained changes into one client: {rows:,} inserted rows per phase in transactions of {tx_rows}"
        f" (INSERT ... SELECT generate_series, 6 columns), written by {writers} connection(s)"
        " as fast as Postgres takes them"
    )
    print(f"   Postgres write rate       {runs([r.rows / r.write_seconds for r in results], '{:,.0f}')} rows/s")
    print(
        f"   live, in SQLite           {runs([r.rows / r.deliver_seconds for r in results], '{:,.0f}')} rows/s"
        "  (first INSERT sent -> last row committed in SQLite; target >= 30,000 rows/s)"
    )
    lag = [r.deliver_seconds - r.write_seconds for r in results]
    print(f"   live delivery behind      {runs(lag, '{:.2f}')} s after the writer's last COMMIT returned")
    print_cpu(results[0].cpu.keys(), [r.cpu for r in results], [r.deliver_seconds for r in results])
    print(
        f"   catch-up, in SQLite       {runs([r.rows / r.catchup_seconds for r in results], '{:,.0f}')} rows/s"
        f"  (another {rows} rows written while the client was away, already in the server's log;"
        " reconnect+resume -> last row in SQLite)"
    )
    print_cpu(["serve", "client"], [r.catchup_cpu for r in results], [r.catchup_seconds for r in results])
    inserts, decode_only, with_builder = decode_rates(payloads, max(3, rounds))
    print(
        f"   raw pgoutput decode of round 0's stream, captured by a second slot ({len(payloads):,} messages,"
        f" {inserts:,} inserts; in this process):"
    )
    print(f"     pgoutput.decode         {runs(decode_only, '{:,.0f}')} rows/s")
    print(f"     decode + TxBuilder      {runs(with_builder, '{:,.0f}')} rows/s")


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
                db.executemany(table.upsert, [table.row(r) for r in parsed])
                count += len(parsed)
        if rest:
            parsed, _ = parse_copy_lines(rest + b"\n")
            db.executemany(table.upsert, [table.row(r) for r in parsed])
            count += len(parsed)
    db.execute("COMMIT")
    db.close()
    return count


async def bench_initial_sync(pg: EmbeddedPostgres, tmp: Path, rounds: int, rows: int, target_rows: int) -> None:
    schema = (
        f"CREATE TABLE wide ({WIDE_COLUMNS}); INSERT INTO wide SELECT {WIDE_VALUES} FROM generate_series(1, {rows}) g"
    )
    start = time.perf_counter()
    db = make_database(pg, tmp, "bench_sync", schema, ["wide"])
    sql(db.url, "VACUUM ANALYZE wide")
    populate = time.perf_counter() - start
    columns = [
        ("id", "int8", True),
        ("name", "text", False),
        ("n", "int4", False),
        ("flag", "bool", False),
        ("at", "timestamptz", False),
        ("doc", "jsonb", False),
    ]
    synced: list[float] = []
    subscribe_only: list[float] = []
    raw: list[float] = []
    server_cpu: list[float] = []
    client_cpu: list[float] = []
    with serving(db, tmp, "bench_sync") as server:
        for r in range(rounds):
            cpu0, ccpu0 = cpu_seconds(server.pid), time.process_time()
            t0 = time.perf_counter()
            cl = SqliteReplica(server.ws_url, tmp / f"sync_{r}.sqlite")
            await cl.connect()
            await cl.authenticate(db.token())
            await cl.start()
            t1 = time.perf_counter()
            await cl.subscribe("wide", timeout=600)  # a slow machine takes more than the default 20 s
            t2 = time.perf_counter()
            server_cpu.append(cpu_seconds(server.pid) - cpu0)
            client_cpu.append(time.process_time() - ccpu0)
            count = cl.db.execute("SELECT count(*) FROM wide").fetchone()
            assert count is not None and count[0] == rows, f"client SQLite has {count} rows, expected {rows}"
            await cl.close()
            synced.append(t2 - t0)
            subscribe_only.append(t2 - t1)
            t0 = time.perf_counter()
            n = raw_copy(
                db.url, SqliteTable.build("wide", columns), [c for c, _, _ in columns], tmp / f"raw_{r}.sqlite"
            )
            raw.append(time.perf_counter() - t0)
            assert n == rows
    print(
        f"3. initial sync of a 6-column table ({rows:,} rows; populated in {populate:.1f} s)"
        " into a fresh client's SQLite"
    )
    target = f"  (target <= 15 s for {target_rows:,} rows)" if rows == target_rows else ""
    print(f"   connect+auth+start+subscribe  {runs(synced, '{:.2f}')} s{target}")
    print(f"   = rows/s into SQLite          {runs([rows / s for s in synced], '{:,.0f}')}")
    print(f"   subscribe alone               {runs(subscribe_only, '{:.2f}')} s (RPC -> SatSubsDataEnd committed)")
    if rows != target_rows:
        est = [s * target_rows / rows for s in synced]
        print(f"   EXTRAPOLATED to {target_rows:,} rows (linear)  {runs(est, '{:.1f}')} s  (target <= 15 s)")
    print(f"   raw COPY -> parse -> executemany into SQLite  {runs(raw, '{:.2f}')} s")
    print(f"   ratio sync / raw COPY         {runs([s / c for s, c in zip(synced, raw, strict=True)], '{:.2f}')}x")
    print(
        f"   CPU during the sync: serve {runs(server_cpu, '{:.2f}')} s, client process {runs(client_cpu, '{:.2f}')} s"
    )


# -- 4. many idle clients ----------------------------------------------------------------------
@dataclass
class IdleRound:
    clients: int
    before_kb: int
    after_kb: int
    closed_kb: int
    second_kb: int
    connect_seconds: float


async def idle_wave(server: ServeProcess, clients: int, concurrency: int) -> tuple[list[SatelliteClient], float]:
    """Connect ``clients`` clients, each authenticated, replicating and subscribed to ``small``."""
    sem = asyncio.Semaphore(concurrency)
    token = server.db.token()

    async def one() -> SatelliteClient:
        async with sem:
            cl = SatelliteClient(server.ws_url)
            await cl.connect()
            await cl.authenticate(token)
            await cl.start()
            await cl.subscribe("small")
            return cl

    start = time.perf_counter()
    conns = await asyncio.gather(*(one() for _ in range(clients)))
    seconds = time.perf_counter() - start
    await asyncio.sleep(2.0)
    _, health = server.health()
    assert health["clients"] == clients, f"server reports {health['clients']} clients, expected {clients}"
    return conns, seconds


async def idle_round(db: Database, tmp: Path, slot: str, clients: int, concurrency: int) -> IdleRound:
    with serving(db, tmp, slot) as server:
        warm = await open_client(server, tmp / f"{slot}-warm.sqlite", "small")  # load every lazy code path first
        await warm.close()
        await asyncio.sleep(1.0)
        before = rss_kb(server.pid)
        conns, connect_seconds = await idle_wave(server, clients, concurrency)
        after = rss_kb(server.pid)
        await asyncio.gather(*(c.close() for c in conns))
        await asyncio.sleep(1.0)
        closed = rss_kb(server.pid)
        conns, _ = await idle_wave(server, clients, concurrency)  # a second wave: does memory keep growing?
        second = rss_kb(server.pid)
        await asyncio.gather(*(c.close() for c in conns))
    return IdleRound(clients, before, after, closed, second, connect_seconds)


async def bench_idle(pg: EmbeddedPostgres, tmp: Path, rounds: int, clients: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    clients = min(clients, hard - 200)
    schema = (
        "CREATE TABLE small (id int8 PRIMARY KEY, label text);"
        " INSERT INTO small SELECT g, 'row ' || g FROM generate_series(1, 10) g"
    )
    db = make_database(pg, tmp, "bench_idle", schema, ["small"])
    results = [await idle_round(db, tmp, f"bench_idle_{r}", clients, 50) for r in range(rounds)]
    print(
        f"4. idle clients: {clients} connections (each authenticated, replicating, subscribed to a 10-row table),"
        f" a fresh `electricctl serve` each round; VmRSS from /proc; fd limit {hard}"
    )
    mb = "{:.1f}"
    print(
        f"   serve RSS before          {runs([r.before_kb / 1024 for r in results], mb)} MB (after one warm-up client)"
    )
    print(f"   serve RSS with clients    {runs([r.after_kb / 1024 for r in results], mb)} MB")
    per = [(r.after_kb - r.before_kb) / r.clients for r in results]
    print(f"   per idle client           {runs(per, '{:.1f}')} KB  (target <= 50 KB)")
    print(f"   serve RSS after they left {runs([r.closed_kb / 1024 for r in results], mb)} MB")
    print(f"   ... with a second wave    {runs([r.second_kb / 1024 for r in results], mb)} MB ({clients} new clients)")
    print(f"   time to connect all       {runs([r.connect_seconds for r in results], '{:.2f}')} s (50 at a time)")


# -- main --------------------------------------------------------------------------------------
class Parts:
    """Run the parts of a benchmark that ``--only`` selects, timing each (shared with benchmarks/shapes.py)."""

    def __init__(self, only: str | None, every: str) -> None:
        self.only = set(only or every)
        self.timings: list[str] = []

    async def step(self, key: str, coro: Any) -> None:
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
        """The options every sync-service benchmark takes."""
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--only", help="run only these parts, e.g. 13")
        parser.add_argument("--fast", action="store_true", help="fsync=off cluster (default: a durable cluster)")


async def run(args: argparse.Namespace, pg: EmbeddedPostgres, tmp: Path) -> None:
    parts = Parts(args.only, "1234")
    step = parts.step
    await step("1", bench_latency(pg, tmp, args.rounds, args.rate, args.seconds))
    await step("2", bench_throughput(pg, tmp, args.rounds, args.rows, args.tx_rows, args.writers))
    await step("3", bench_initial_sync(pg, tmp, args.rounds, args.sync_rows, 1_000_000))
    await step("4", bench_idle(pg, tmp, args.rounds, args.clients))
    print(parts.summary())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    Parts.add_arguments(parser)
    parser.add_argument("--rate", type=float, default=200.0, help="1: transactions/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="1: seconds per round")
    parser.add_argument("--rows", type=int, default=200_000, help="2: rows per round")
    parser.add_argument("--tx-rows", type=int, default=1000, help="2: rows per transaction")
    parser.add_argument("--writers", type=int, default=2, help="2: concurrent writer connections")
    parser.add_argument("--sync-rows", type=int, default=1_000_000, help="3: rows in the table")
    parser.add_argument("--clients", type=int, default=1000, help="4: idle clients")
    args = parser.parse_args()
    print(
        f"sync service: `electricctl serve` subprocess (log fsync on), "
        f"{'fsync-off' if args.fast else 'durable'} embedded cluster, clients in this process, "
        f"{args.rounds} rounds, {os.cpu_count()} cores"
    )
    sys.stdout.flush()
    with EmbeddedPostgres(durable=not args.fast) as pg, tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        asyncio.run(run(args, pg, Path(tmp)))


if __name__ == "__main__":
    main()
