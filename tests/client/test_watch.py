"""Writes by other processes are noticed as they happen (inotify), not at the next poll."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import pytest

from electricctl._server.app import Server
from electricctl.client import SyncClient
from electricctl.client.watch import FileWatch
from tests.client.test_sync_client import local, until
from tests.server_fixtures import Env, ws_url

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


def test_the_watch_reports_writes_to_the_database_and_its_journal_only(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    watch = FileWatch.open(str(path))
    assert watch is not None
    try:
        assert not watch.written()  # nothing since it started
        (tmp_path / "other.txt").write_text("not the database")
        assert not watch.written()
        conn.execute("INSERT INTO t VALUES (1)")  # lands in app.db-wal
        assert watch.written()
        assert not watch.written()  # read: reported once
    finally:
        watch.close()
        conn.close()


async def test_an_apps_write_is_sent_without_waiting_for_the_poll(server: Server, env: Env, tmp_path: Path) -> None:
    path = tmp_path / "watched.db"
    # a poll so slow that only the watch can explain a prompt send
    cl = SyncClient(str(path), ws_url(server), env.token(), poll_interval=30)
    await cl.start()
    try:
        await cl.synced(await cl.subscribe("other"))
        for i in range(3):  # no notify(): the app just writes, from its own connection
            start = time.monotonic()
            local(path, "INSERT INTO other (id, label) VALUES (?, 'watched')", (100 + i,))
            await until(lambda i=i: env.sql("SELECT count(*) FROM other WHERE id = %s", [100 + i]) == [(1,)], 10)
            assert time.monotonic() - start < 5
    finally:
        await cl.stop()
