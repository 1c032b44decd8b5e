"""Shared fixtures: one real PostgreSQL cluster per test session, a fresh database per test.

The cluster is started by electricctl's own EmbeddedPostgres (wal_level=logical, a free port,
run as the postgres OS user when we are root). Set ELECTRICCTL_TEST_DSN to use an existing
server with wal_level=logical instead; each test still gets its own database.
"""

from __future__ import annotations

import contextlib
import os
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl._resources import resource
from electricctl.cli.main import main

REPO = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.server_fixtures", "tests.nats_fixtures"]


@dataclass
class Server:
    admin_url: str

    def url(self, dbname: str) -> str:
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    dsn = os.environ.get("ELECTRICCTL_TEST_DSN")
    if dsn:
        yield Server(dsn)
        return
    pg = EmbeddedPostgres()
    pg.start()
    try:
        yield Server(pg.url("postgres"))
    finally:
        pg.stop()


def _drop_slot(conn: psycopg.Connection[Any], slot: str) -> None:
    """Drop a slot; a walsender may still be exiting after its server stopped (on a busy machine)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def fresh_database(pg_server: Server) -> Iterator[str]:
    """A new, empty database on the test cluster; dropped (with its replication slots) afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield pg_server.url(name)
    finally:
        with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
            for (slot,) in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s", [name]
            ).fetchall():
                _drop_slot(conn, slot)
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db_url(pg_server: Server) -> Iterator[str]:
    with fresh_database(pg_server) as url:
        yield url


@pytest.fixture
def demo_db(db_url: str) -> str:
    """A database holding the demo schema from recipes/demo/schema.sql."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(resource("recipes/demo/schema.sql").read_text().encode())
    return db_url


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run the real CLI entry point in-process; return exit code and output."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        else:  # pragma: no cover - main always exits
            code = 0
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def write_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a YAML config (dedented) and return its path."""

    def write(text: str, name: str = "electric.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write


# A config for the demo schema, small enough to reason about in tests.
DEMO_CONFIG = """
version: 1
auth:
  mode: insecure
tables:
  - users
  - projects
  - issues
  - comments
assignments:
  - role: admin
    to: users.id
grants:
  - privileges: all
    on: issues
    to: admin
    where: "status <> 'archived'"
shapes:
  - name: projects
    table: projects
    where: "owner_id = auth.sub"
    include:
      - table: issues
        include:
          - table: comments
"""
