"""Issue 10, points 1, 6 and 10 (read-only data dir): `electricctl serve` on a real small tmpfs
that fills up or turns read-only, and a second `serve` on the same data dir."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from electricctl._log.filelog import FileLog
from tests.faults import tmpfs
from tests.satellite_client import SatelliteClient
from tests.server_fixtures import Env, ServeProcess, get_health

pytestmark = pytest.mark.asyncio

# one row of 512 KB of hex text: Postgres cannot compress it much, and the log stores it whole
_BIG_ROW = "INSERT INTO big SELECT %s, string_agg(md5(random()::text), '') FROM generate_series(1, 16384)"


async def _wait_health(port: int, want: int, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = get_health(port)
        if status == want:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/health stayed {status} (wanted {want}): {body}")
        await asyncio.sleep(0.1)


async def _client(proc: ServeProcess, env: Env, *tables: str) -> SatelliteClient:
    cl = await SatelliteClient(proc.url).connect()
    await cl.authenticate(env.token())
    await cl.start()
    if tables:
        await cl.subscribe(*tables)
    return cl


async def test_a_full_disk_loses_no_transaction(env: Env, tmp_path: Path) -> None:
    """20 rows of 512 KB into a log on a 6 MB tmpfs: /health turns 503 with the reason while the
    disk is full; once it is grown every row reaches the client and the log, each exactly once."""
    with tmpfs(tmp_path, "6m") as fs:
        denv = dataclasses.replace(env, data_dir=fs.path / "data")
        proc = ServeProcess(denv, log_dir=tmp_path).start()
        try:
            cl = await _client(proc, env, "big")
            for i in range(20):
                env.sql(_BIG_ROW, [i])
            body = await _wait_health(proc.port, 503)
            assert any("No space left on device" in str(r) for r in body["reasons"]), body  # type: ignore[attr-defined]
            assert len(cl.table("big")) < 20

            fs.grow("64m")
            await cl.wait_for(lambda: len(cl.table("big")) == 20, timeout=60)
            await _wait_health(proc.port, 200)
            ids = [op.insert.row_data.values[0] for t in cl.transactions for op in t.ops if op.HasField("insert")]
            assert sorted(int(v) for v in ids) == list(range(20))  # every row once, none twice
            await cl.close()
        finally:
            proc.stop()
        logged = FileLog(denv.data_dir / "log", cache_size=1).open()
        rows = [ch.new[0] for t in logged.read_after(0, 10_000) for ch in t.changes if ch.new is not None]
        assert sorted(int(r) for r in rows if r is not None) == list(range(20))
        assert "Task exception was never retrieved" not in proc.log_text()
        assert "Traceback" not in proc.log_text()


async def test_a_data_dir_that_turns_unwritable_reports_not_ready_and_recovers(env: Env, tmp_path: Path) -> None:
    with tmpfs(tmp_path, "16m") as fs:
        denv = dataclasses.replace(env, data_dir=fs.path / "data")
        proc = ServeProcess(denv, log_dir=tmp_path).start()
        try:
            cl = await _client(proc, env, "other")
            fs.freeze()
            env.sql("INSERT INTO other VALUES (1, 'while unwritable')")
            body = await _wait_health(proc.port, 503)
            assert any("Operation not permitted" in str(r) for r in body["reasons"]), body  # type: ignore[attr-defined]
            # a new client is refused with the reason (it retries), not accepted and closed with 1011
            with pytest.raises(InvalidStatus) as refused:
                await _client(proc, env)
            assert refused.value.response.status_code == 503
            assert b"Operation not permitted" in refused.value.response.body
            fs.thaw()
            await cl.wait_for(lambda: (b"1",) in cl.table("other"), timeout=60)
            await _wait_health(proc.port, 200)
            await (await _client(proc, env)).close()
            await cl.close()
        finally:
            proc.stop()
        assert "Traceback" not in proc.log_text()


def _serve_once(env: Env, data_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "electricctl",
            "serve",
            "-f",
            str(env.config_path),
            "--database-url",
            env.url,
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--slot",
            env.slot,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def test_a_read_only_data_dir_is_one_clear_line_at_startup(env: Env, tmp_path: Path) -> None:
    with tmpfs(tmp_path, "1m") as fs:
        (fs.path / "data").mkdir()
        fs.read_only()
        done = await asyncio.to_thread(_serve_once, env, fs.path / "data")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"the data dir {fs.path / 'data'} is not writable (Read-only file system)" in done.stderr, done.stderr


async def test_a_second_serve_on_the_same_data_dir_is_refused(serve_process: ServeProcess, env: Env) -> None:
    serve_process.start()
    assert serve_process.proc is not None
    done = await asyncio.to_thread(_serve_once, env, env.data_dir)
    assert done.returncode == 1
    assert f"another electricctl serve (pid {serve_process.proc.pid}) is using the data dir" in done.stderr
    assert "Traceback" not in done.stderr
    assert get_health(serve_process.port)[0] == 200  # the first one carries on
    serve_process.stop()
    # once the first has stopped, the data dir is free again
    proc = ServeProcess(env).start()
    proc.stop()
