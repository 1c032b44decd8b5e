"""`electricctl dev`: a local stack that keeps its data across restarts, with a working token."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from electricctl._embedded.postgres import free_port
from electricctl.client import SyncClient

pytestmark = pytest.mark.asyncio

SCHEMA = "CREATE TABLE notes (id text PRIMARY KEY, body text NOT NULL);\nINSERT INTO notes VALUES ('n1', 'first');\n"
CONFIG = "version: 1\ndatabase:\n  url: ${DATABASE_URL}\nauth:\n  jwt: {key: '${AUTH_JWT_KEY}'}\ntables: [notes]\nadhoc_shapes: allow\n"


def start(tmp_path: Path, port: int) -> tuple[subprocess.Popen[str], str, str]:
    ready = tmp_path / "ready"
    ready.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "AUTH_JWT_KEY")}
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "electricctl", "dev", "-f", str(tmp_path / "electric.yaml"),
            "--dir", str(tmp_path / ".electric"), "--schema", str(tmp_path / "schema.sql"),
            "--port", str(port), "--ready-file", str(ready),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"dev did not start: {proc.communicate()[0]}")
        time.sleep(0.1)
    url, token = ready.read_text().split()
    return proc, url, token


def wait_for_shape(tmp_path: Path, name: str) -> None:
    port = int((tmp_path / ".electric" / "port").read_text())
    deadline = time.monotonic() + 30
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/app", autocommit=True) as conn:
        while not conn.execute("SELECT 1 FROM electric.shapes WHERE name = %s", [name]).fetchone():
            assert time.monotonic() < deadline, f"{name} was never applied"
            time.sleep(0.1)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


async def test_dev_serves_the_file_and_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    (tmp_path / "schema.sql").write_text(SCHEMA)
    (tmp_path / "electric.yaml").write_text(CONFIG)
    port = free_port()
    proc, url, token = await asyncio.to_thread(start, tmp_path, port)
    try:
        assert url == f"ws://127.0.0.1:{port}/ws"
        client = SyncClient(str(tmp_path / "app.db"), url, token)
        await client.start()
        await client.synced(await client.subscribe("notes"))
        # an edit of the file is applied while dev runs; one that does not validate is not
        (tmp_path / "electric.yaml").write_text(CONFIG + "shapes:\n  - {name: all_notes, table: notes}\n")
        await asyncio.to_thread(wait_for_shape, tmp_path, "all_notes")
        (tmp_path / "electric.yaml").write_text(CONFIG.replace("tables: [notes]", "tables: [nosuch]"))
        await asyncio.sleep(1.5)
        (tmp_path / "electric.yaml").write_text(CONFIG)  # as it was: all_notes goes again
        await asyncio.sleep(1.5)
        await client.stop()
    finally:
        out = await asyncio.to_thread(stop, proc)
    assert "electric.yaml changed: applied (1 to create" in out, out
    assert "electric.yaml changed and was not applied" in out and "nosuch" in out, out
    assert "electric.yaml changed: applied (0 to create, 0 to update, 1 to delete)" in out, out
    assert f"ran {tmp_path / 'schema.sql'}" in out and "DATABASE_URL=postgresql://" in out and "stopped." in out
    pg_url = next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("DATABASE_URL="))
    # again: the same cluster and data, the schema not run twice
    proc, url, token = await asyncio.to_thread(start, tmp_path, port)
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            assert conn.execute("SELECT body FROM notes").fetchall() == [("first",)]
            conn.execute("INSERT INTO notes VALUES ('n2', 'second')")
        client = SyncClient(str(tmp_path / "app.db"), url, token)
        await client.start()
        await client.caught_up()
        await client.stop()
        import sqlite3

        rows = sqlite3.connect(tmp_path / "app.db").execute("SELECT id FROM notes ORDER BY id").fetchall()
        assert rows == [("n1",), ("n2",)]
    finally:
        out = await asyncio.to_thread(stop, proc)
    assert "ran " not in out
