"""Fixtures for the sync service: a real Postgres database, electric.yaml applied, and a running
server (in-process, or as an `electricctl serve` process for restart and kill -9 tests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio

from electricctl._apply import applier
from electricctl._auth.tokens import mint
from electricctl._config.loader import load_text
from electricctl._config.model import ElectricConfig
from electricctl._embedded.postgres import free_port
from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.app import Server
from electricctl._server.options import ServeOptions
from tests.satellite_client import SatelliteClient

SCHEMA = """
CREATE TABLE items (id text PRIMARY KEY, n int4, flag bool, data bytea, at timestamptz, doc jsonb, price float8);
CREATE TABLE other (id int8 PRIMARY KEY, label text);
CREATE TABLE big (id int4 PRIMARY KEY, payload text);
CREATE TABLE parents (id text PRIMARY KEY, name text NOT NULL);
CREATE TABLE children (id text PRIMARY KEY, parent_id text NOT NULL REFERENCES parents (id), v int4);
"""

CONFIG = """
version: 1
auth:
  mode: secure
  jwt: {alg: HS256, key: test-secret-test-secret-test-secret}
tables: [items, other, big, parents, children]
adhoc_shapes: allow
shapes:
  - name: positive_items
    table: items
    where: "n > 0"
"""


@dataclass
class Env:
    url: str
    config: ElectricConfig
    config_path: Path
    data_dir: Path
    slot: str

    def token(self, sub: str = "user-1", **kw: object) -> str:
        return mint(self.config.auth, sub, dict(kw))

    def psql(self, script: str) -> None:
        """Run SQL through the psql command-line client, as a person at a terminal would."""
        subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", self.url, "-c", script],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def sql(self, query: str, params: object = None) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []


def subs_req(table: str, where: str = "", sub_id: str | None = None) -> pb.SatSubsReq:
    """A subscription request for one shape: ``table`` with an optional where clause."""
    select = pb.SatShapeDef.Select(tablename=table, where=where)
    return pb.SatSubsReq(
        subscription_id=sub_id or str(uuid.uuid4()),
        shape_requests=[pb.SatShapeReq(request_id="r", shape_definition=pb.SatShapeDef(selects=[select]))],
    )


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Env:
    return build_env(db_url, tmp_path)


def build_env(db_url: str, tmp_path: Path) -> Env:
    """The test schema and rows, electric.yaml written to ``tmp_path`` and applied."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(
            "INSERT INTO items VALUES ('a', 1, true, '\\x00ff', '2024-01-02 03:04:05.5+00', '{\"k\": [1]}', 1.5),"
            " ('b', NULL, false, NULL, NULL, NULL, NULL)"
        )
    return applied_env(db_url, tmp_path, CONFIG)


def applied_env(db_url: str, tmp_path: Path, config_text: str, name: str = "electric.yaml") -> Env:
    """``config_text`` written to ``tmp_path / name``, loaded and applied to ``db_url``; the data
    dir and slot every test env of this database uses."""
    path = tmp_path / name
    path.write_text(config_text)
    config = load_text(config_text, str(path), env={})
    applier.apply(config, db_url)
    return Env(db_url, config, path, tmp_path / "data", f"electricctl_{db_url.rsplit('/', 1)[1]}")


@contextlib.asynccontextmanager
async def running_server(env: Env, **kwargs: object) -> AsyncIterator[Server]:
    """A Server on a free port, ready (replication running) when entered."""
    options = ServeOptions(
        **{"port": 0, "data_dir": env.data_dir, "slot": env.slot, "send_timeout": 2.0, "fsync": False, **kwargs}  # type: ignore[arg-type]
    )
    srv = Server(env.config, env.url, options)
    stop = asyncio.Event()
    started = asyncio.Event()
    task = asyncio.create_task(srv.run(stop, started))
    await asyncio.wait_for(started.wait(), 20)
    for _ in range(200):
        if srv.replication_ok or (options.log_url is not None and srv.health()[0] == 200):
            break  # (an instance of a shared log may follow: it needs no slot)
        await asyncio.sleep(0.05)
    try:
        yield srv
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest_asyncio.fixture
async def server(env: Env) -> AsyncIterator[Server]:
    async with running_server(env) as srv:
        yield srv


def ws_url(srv: Server) -> str:
    return f"ws://127.0.0.1:{srv.bound_port}/ws"


@pytest_asyncio.fixture
async def client(server: Server, env: Env) -> AsyncIterator[SatelliteClient]:
    cl = await SatelliteClient(ws_url(server)).connect()
    await cl.authenticate(env.token())
    await cl.start()
    yield cl
    await cl.close()


def get_health(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class ServeProcess:
    """`electricctl serve` as a real process."""

    def __init__(self, env: Env, *extra: str, log_dir: Path | None = None, data_dir: Path | None = None) -> None:
        self.env = env
        self.data_dir = data_dir or env.data_dir
        self.port = free_port()
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = (log_dir or env.data_dir.parent) / f"serve-{self.port}.log"

    def start(self, wait: bool = True) -> ServeProcess:
        with open(self.log_path, "ab") as log:
            self.proc = self._spawn(log)
        return self._wait_ready() if wait else self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _spawn(self, log: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "electricctl",
                "serve",
                "-f",
                str(self.env.config_path),
                "--database-url",
                self.env.url,
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                "--slot",
                self.env.slot,
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,  # type: ignore[arg-type]
        )

    def _wait_ready(self) -> ServeProcess:
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                status, _ = get_health(self.port)
                if status == 200:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise RuntimeError("serve did not become ready")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def rss_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


@pytest.fixture
def serve_process(env: Env, request: pytest.FixtureRequest) -> Iterator[ServeProcess]:
    env.data_dir.mkdir(parents=True, exist_ok=True)
    marker = request.node.get_closest_marker("serve_args")
    proc = ServeProcess(env, *(marker.args if marker else ()))
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        os.kill(proc.proc.pid, signal.SIGKILL)
        proc.proc.wait()
