"""SyncClient's public API (issue 11): no I/O in the constructor, restartable, token functions,
electricctl's own errors, SQLite off the event loop, other connections' writes noticed through
``PRAGMA data_version``. Real server, real Postgres, real SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from electricctl._auth.tokens import mint
from electricctl._server.app import Server
from electricctl.client import ConnectionLost, SyncClient, SyncError, Timeout
from electricctl.client.store import Store
from electricctl.errors import AuthenticationFailed
from tests.client.test_sync_client import local, until
from tests.server_fixtures import Env, ServeProcess, ws_url


async def test_the_constructor_does_no_io_and_start_opens_the_file(server: Server, env: Env, tmp_path: Path) -> None:
    path = tmp_path / "later" / "app.db"
    cl = SyncClient(str(path), ws_url(server), env.token())  # the directory does not exist yet: fine
    assert not path.parent.exists() and cl.client_id is None and not cl.connected
    with pytest.raises(SyncError, match="cannot open"):
        await cl.start()
    path.parent.mkdir()
    await cl.start()
    try:
        await cl.synced(await cl.subscribe("items"))
        assert cl.client_id and sorted(r[0] for r in local(path, "SELECT id FROM items")) == ["a", "b"]
        assert list(cl.subscriptions) and cl.refused == []
        with pytest.raises(TypeError):
            cl.subscriptions["x"] = cl.subscriptions[next(iter(cl.subscriptions))]  # type: ignore[index]
    finally:
        await cl.stop()


async def test_stop_then_start_syncs_again(server: Server, env: Env, tmp_path: Path) -> None:
    path = tmp_path / "again.db"
    cl = SyncClient(str(path), ws_url(server), env.token())
    await cl.start()
    await cl.synced(await cl.subscribe("other"))
    first_id = cl.client_id
    await cl.stop()
    env.sql("INSERT INTO other VALUES (1, 'while stopped')")
    local(path, "INSERT INTO other VALUES (2, 'written while stopped')")
    await cl.start()  # the same object again
    try:
        await cl.wait_connected(20)
        await until(lambda: local(path, "SELECT id FROM other ORDER BY id") == [(1,), (2,)], what="resumed")
        await cl.flush()
        assert env.sql("SELECT label FROM other WHERE id = 2") == [("written while stopped",)]
        assert cl.client_id == first_id and cl.status().pending == 0
    finally:
        await cl.stop()


async def test_a_token_function_is_called_again_at_each_reconnect(server: Server, env: Env, tmp_path: Path) -> None:
    """Tokens that expire after 2 s: the server closes the connection then, and the client asks
    the function (here async) for a fresh token and carries on syncing."""
    calls: list[float] = []

    async def token() -> str:
        calls.append(asyncio.get_running_loop().time())
        return mint(env.config.auth, "user-1", ttl_seconds=2)

    path = tmp_path / "fresh.db"
    cl = SyncClient(str(path), ws_url(server), token)
    await cl.start()
    try:
        await cl.synced(await cl.subscribe("other"))
        await until(lambda: len(calls) >= 2, timeout=20, what="the token function called again")
        await cl.wait_connected(20)
        env.sql("INSERT INTO other VALUES (5, 'after the first token expired')")
        await until(lambda: local(path, "SELECT id FROM other") == [(5,)], what="synced with a fresh token")
        assert cl.failure is None
    finally:
        await cl.stop()


async def test_a_refused_static_token_fails_and_the_retries_slow_down(server: Server, env: Env, tmp_path: Path) -> None:
    attempts: list[float] = []
    expired = mint(env.config.auth, "user-1", ttl_seconds=-10)

    def token() -> str:  # the same refused token each time; counts the attempts
        attempts.append(asyncio.get_running_loop().time())
        return expired

    cl = SyncClient(str(tmp_path / "expired.db"), ws_url(server), token)
    await cl.start()
    try:
        await asyncio.wait_for(cl.failed.wait(), 10)
        assert isinstance(cl.failure, AuthenticationFailed) and "expired" in str(cl.failure)
        await asyncio.sleep(3)
        assert 2 <= len(attempts) <= 5, attempts  # it retries (a new token may come), but slowly
        with pytest.raises(Timeout):
            await cl.wait_connected(0.1)
    finally:
        await cl.stop()


async def test_timeouts_and_lost_connections_raise_electricctls_errors(
    serve_process: ServeProcess, env: Env, tmp_path: Path
) -> None:
    serve_process.start()
    path = tmp_path / "lost.db"
    cl = SyncClient(str(path), serve_process.url, env.token())
    await cl.start()
    try:
        other = await cl.subscribe("other")
        await cl.synced(other)
        serve_process.stop()
        await until(lambda: not cl.connected, what="the client notices")
        with pytest.raises(ConnectionLost):
            await cl.unsubscribe(other, timeout=0.5)
        items = await cl.subscribe("items")  # offline: requested when the connection is back
        with pytest.raises(Timeout) as info:
            await cl.synced(items, timeout=0.3)
        assert isinstance(info.value, TimeoutError)  # old callers' except TimeoutError still works
        local(path, "INSERT INTO other VALUES (9, 'offline')")
        with pytest.raises(Timeout):
            await cl.flush(timeout=0.3)
        serve_process.start()
        await cl.synced(items, timeout=30)
        await cl.flush(timeout=30)
        assert env.sql("SELECT label FROM other WHERE id = 9") == [("offline",)]
    finally:
        await cl.stop()


async def test_writes_of_other_processes_are_noticed_without_notify(server: Server, env: Env, tmp_path: Path) -> None:
    path = tmp_path / "other-process.db"
    cl = SyncClient(str(path), ws_url(server), env.token(), poll_interval=0.05)
    await cl.start()
    try:
        await cl.synced(await cl.subscribe("other"))
        subprocess.run(["sqlite3", str(path), "INSERT INTO other VALUES (3, 'from the shell');"], check=True)
        await until(lambda: env.sql("SELECT label FROM other WHERE id = 3") == [("from the shell",)], what="sent")
        await until(lambda: cl.status().pending == 0, what="echoed")
    finally:
        await cl.stop()


def test_the_store_polls_data_version_before_looking_at_the_oplog(tmp_path: Path) -> None:
    path = str(tmp_path / "poll.db")
    store = Store(path)
    try:
        from electricctl.client.schema import Column, Table

        store.ensure_table(Table("t", (Column("id", "int4", True, False), Column("v", "text", False, True))))
        assert store.poll("me", force=True) is not None
        assert store.poll("me") is None  # nothing committed by anyone else: only data_version was read
        app = sqlite3.connect(path, isolation_level=None)
        app.execute("INSERT INTO t VALUES (1, 'x')")
        found = store.poll("me")
        assert found is not None and found.stamped == 1 and found.pending == 1
        assert store.poll("me") is None
        app.close()
    finally:
        store.close()


async def test_sqlite_runs_on_one_thread_that_is_not_the_event_loops(server: Server, env: Env, tmp_path: Path) -> None:
    seen: set[int] = set()
    path = tmp_path / "thread.db"
    cl = SyncClient(str(path), ws_url(server), env.token())
    await cl.start()
    try:
        sqlite_conn = cl._st.store.db  # type: ignore[union-attr]
        sqlite_conn.set_trace_callback(lambda _sql: seen.add(threading.get_ident()))
        await cl.synced(await cl.subscribe("items"))
        local(path, "UPDATE items SET n = 3 WHERE id = 'a'")
        cl.notify()
        await cl.flush()
        assert len(seen) == 1 and threading.get_ident() not in seen
    finally:
        await cl.stop()
