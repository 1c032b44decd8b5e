"""Graceful drain: SIGTERM to `electricctl serve` in the middle of a write storm from our client and
the npm client. serve finishes the writes in flight, confirms its log, closes both clients with
1012 and exits in time; after a restart both resume where they were (no resync), and every write
is in Postgres exactly once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from electricctl._log.filelog import FileLog
from electricctl.client import SyncClient
from tests.compat.conftest import Driver
from tests.compat.test_convergence import NPM_THROTTLE_CRASH, UPSERT, _local_rows, _local_write
from tests.server_fixtures import Env, ServeProcess

WRITES = 120
"""Per client; the signal comes after a third of them."""


class Npm:
    """The npm client, restarted on its file when it dies of its push-throttle bug (as its
    supervisor would) once the server is back."""

    def __init__(self, serve: ServeProcess, env: Env, path: Path) -> None:
        self.serve, self.env, self.path = serve, env, path
        self.base = serve.url.replace("ws://", "http://").removesuffix("/ws")
        self.driver = Driver(self.base, env.token("npm"), str(path))
        self.migrations = self.driver.migrations
        self.restarts = 0

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        try:
            return self.driver.call(cmd, **args)
        except AssertionError as exc:
            if NPM_THROTTLE_CRASH not in str(exc):
                raise
        self.driver.close()
        self.restarts += 1
        deadline = time.monotonic() + 30
        while self.serve.proc is None or self.serve.proc.poll() is not None:  # down: wait for it
            assert time.monotonic() < deadline, "serve did not come back"
            time.sleep(0.1)
        self.driver = Driver(self.base, self.env.token("npm"), str(self.path), migrations=self.migrations)
        return self.driver.call(cmd, **args)


async def test_sigterm_during_a_write_storm_loses_and_repeats_nothing(
    serve_process: ServeProcess, env: Env, node_modules: Path, tmp_path: Path
) -> None:
    serve_process.extra += ["--drain-timeout", "10s"]
    serve_process.start()
    ours_path = tmp_path / "ours.db"
    ours = SyncClient(str(ours_path), serve_process.url, env.token("ours"), poll_interval=0.01)
    await ours.start()
    await ours.synced(await ours.subscribe("items"))
    npm = await asyncio.to_thread(Npm, serve_process, env, tmp_path / "npm.db")
    await asyncio.to_thread(npm.call, "subscribe", table="items")
    npm_id = (await asyncio.to_thread(npm.call, "meta"))["meta"]["clientId"]
    signalled = asyncio.Event()

    async def our_storm() -> None:
        for i in range(WRITES):
            await asyncio.to_thread(_local_write, ours_path, "upsert", f"ours-{i}", i, i % 2 == 0)
            if i == WRITES // 3:
                signalled.set()
            await asyncio.sleep(0.01)

    async def npm_storm() -> None:
        for i in range(WRITES):
            await asyncio.to_thread(npm.call, "exec", sql=UPSERT, args=[f"npm-{i}", i, i % 2])
            await asyncio.sleep(0.01)

    storms = asyncio.gather(our_storm(), npm_storm())
    await signalled.wait()
    began = time.monotonic()
    code = await asyncio.to_thread(serve_process.stop, signal.SIGTERM)
    took = time.monotonic() - began
    log = serve_process.log_text()
    assert code == 0, log
    assert took < 10, f"the drain took {took:.1f}s"
    assert "draining" in log and "drained: log at" in log, log
    await asyncio.sleep(0.5)  # the storms go on while serve is down: the writes queue locally
    await asyncio.to_thread(serve_process.start)
    await storms

    await ours.flush(timeout=60)
    deadline = time.monotonic() + 60
    while (await asyncio.to_thread(npm.call, "oplog"))["n"]:
        assert time.monotonic() < deadline, npm.driver.log_tail()
        await asyncio.sleep(0.05)
    expected = {str(r[0]): (r[1], int(bool(r[2]))) for r in env.sql("SELECT id, n, flag FROM items")}
    assert {k for k in expected if k.startswith(("ours-", "npm-"))} == {
        *(f"ours-{i}" for i in range(WRITES)),
        *(f"npm-{i}" for i in range(WRITES)),
    }
    deadline = time.monotonic() + 30
    while True:
        npm_rows = {
            r["id"]: (r["n"], r["flag"]) for r in (await asyncio.to_thread(npm.call, "rows", table="items"))["rows"]
        }
        mine = await asyncio.to_thread(_local_rows, ours_path)
        if mine == expected and npm_rows == expected:
            break
        assert time.monotonic() < deadline, "the clients did not converge with Postgres"
        await asyncio.sleep(0.1)
    await ours.stop()
    await asyncio.to_thread(npm.driver.close)

    # both resumed where they were: the restarted serve refused no resume (no resync)
    assert code == serve_process.stop(signal.SIGTERM) == 0
    assert "cannot resume" not in serve_process.log_text(), serve_process.log_text()
    # each write reached the log once: no transaction of a client was applied twice
    logged = FileLog(env.data_dir / "log", cache_size=1).open()
    try:
        keys: Counter[tuple[str | None, str]] = Counter()
        for tx in logged.read_after(0, 1_000_000):
            for ch in tx.changes:
                row = ch.new if ch.new is not None else ch.old
                assert row is not None and isinstance(row[0], bytes)
                keys[(tx.origin, row[0].decode())] += 1
    finally:
        logged.close()
    assert npm.restarts <= 1
    for i in range(WRITES):
        assert keys[(ours.client_id, f"ours-{i}")] == 1, f"ours-{i}"
        assert keys[(npm_id, f"npm-{i}")] == 1, f"npm-{i}"
