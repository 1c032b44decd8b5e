"""What the benchmarks share: the data, a database per benchmark, `electricctl serve` as a
subprocess, clients, and the helpers that time and print (split from benchmarks/serve.py)."""

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
from contextlib import contextmanager
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
from electricctl.client import RemoteChange, SyncClient
from tests.satellite_client import SatelliteClient

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


def print_cpu(keys: Any, cpus: Sequence[dict[str, float]], wall: float | Sequence[float]) -> None:
    walls = [wall] * len(cpus) if isinstance(wall, float | int) else list(wall)
    parts = []
    for k in keys:
        shares = [c[k] / w * 100 for c, w in zip(cpus, walls, strict=True)]
        parts.append(f"{k} {statistics.median(shares):.0f}%")
    print(f"   CPU (median share of one core over the round): {', '.join(parts)}")


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


def raise_open_files() -> int:
    """Let this process, and the serve subprocesses that inherit it, open as many files as the
    system allows (many clients, each a socket and a SQLite file); return that limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run_alone(
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace, EmbeddedPostgres, Path], Coroutine[Any, Any, None]],
    prefix: str,
    quick: dict[str, Any] | None = None,
) -> None:
    """A benchmark module run by itself (``python -m benchmarks.NAME``): its options and the shared
    ones, a cluster of its own and a temporary directory. With ``quick`` (the module's QUICK), it
    also takes ``--quick``: those defaults and one round, as ``python -m benchmarks --quick``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    Parts.add_arguments(parser)
    add_arguments(parser)
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help="a small version (1 round, small sizes)")
        if parser.parse_known_args()[0].quick:
            parser.set_defaults(**quick, rounds=1)
    args = parser.parse_args()
    raise_open_files()
    sys.stdout.flush()
    with EmbeddedPostgres(durable=not args.fast) as pg, tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        asyncio.run(run(args, pg, Path(tmp)))


def postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().split()[0])


def children_cpu(pid: int) -> float:
    """CPU time of ``pid``'s children that have exited and been waited for (cutime + cstime):
    for the postmaster, every backend that ended, e.g. the server's snapshot connections."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
