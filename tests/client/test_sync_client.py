"""The Python client library end to end: real server, real Postgres, real SQLite files.

Apps write with plain SQL (from another connection, or the sqlite3 shell); writes reach Postgres
and the other clients; Postgres writes reach the clients; offline writes are sent exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio

from electricctl._auth.tokens import mint
from electricctl._server.app import Server
from electricctl.client import SyncClient
from tests.server_fixtures import Env, ws_url


def local(path: Path, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """What an app does: its own connection, plain SQL, autocommit."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


async def until(predicate: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met in {timeout}s")
        await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def clients(server: Server, env: Env, tmp_path: Path) -> AsyncIterator[Callable[[str], SyncClient]]:
    made: list[SyncClient] = []

    def make(name: str) -> SyncClient:
        cl = SyncClient(str(tmp_path / f"{name}.db"), ws_url(server), env.token())
        made.append(cl)
        return cl

    yield make
    for cl in made:
        await cl.stop()


async def test_writes_flow_both_ways(
    server: Server, env: Env, clients: Callable[[str], SyncClient], tmp_path: Path
) -> None:
    a, b = clients("a"), clients("b")
    for cl in (a, b):
        await cl.start()
        await cl.synced(await cl.subscribe("items"))
    a_db, b_db = tmp_path / "a.db", tmp_path / "b.db"
    assert sorted(r[0] for r in local(a_db, "SELECT id FROM items")) == ["a", "b"]
    # the initial data kept the npm client's value forms: bool 0/1, bytea as a blob, float REAL
    assert local(a_db, "SELECT n, flag, data, price FROM items WHERE id = 'a'") == [(1, 1, b"\x00\xff", 1.5)]

    # an app writes with plain SQL on A's file
    local(a_db, "INSERT INTO items (id, n, flag, data, price) VALUES ('x', 5, 1, x'0102', 2.25)")
    await a.flush()
    assert env.sql("SELECT n, flag, data, price FROM items WHERE id = 'x'") == [(5, True, b"\x01\x02", 2.25)]
    await until(lambda: local(b_db, "SELECT n FROM items WHERE id = 'x'") == [(5,)], what="B sees A's insert")

    # the sqlite3 shell writes on B's file
    subprocess.run(
        ["sqlite3", str(b_db), "UPDATE items SET n = 6 WHERE id = 'x'; DELETE FROM items WHERE id = 'b';"], check=True
    )
    await b.flush()
    assert env.sql("SELECT n FROM items WHERE id = 'x'") == [(6,)]
    assert env.sql("SELECT count(*) FROM items WHERE id = 'b'") == [(0,)]
    await until(lambda: local(a_db, "SELECT n FROM items WHERE id = 'x'") == [(6,)], what="A sees B's update")
    await until(lambda: local(a_db, "SELECT count(*) FROM items WHERE id = 'b'") == [(0,)], what="A sees B's delete")

    # a write made in Postgres reaches both
    env.sql("UPDATE items SET n = 7, doc = '{\"z\": 1}' WHERE id = 'x'")
    for path in (a_db, b_db):
        await until(lambda p=path: local(p, "SELECT n, doc FROM items WHERE id = 'x'") == [(7, '{"z": 1}')])
    assert a.status().pending == 0 and a.status().connected


async def test_offline_writes_are_sent_once_after_reconnecting(
    server: Server, env: Env, clients: Callable[[str], SyncClient], tmp_path: Path
) -> None:
    path = tmp_path / "off.db"
    a = clients("off")
    await a.start()
    await a.synced(await a.subscribe("other"))
    await a.stop()
    # offline: the app keeps writing, in many small transactions
    for i in range(50):
        local(path, "INSERT INTO other (id, label) VALUES (?, ?)", (i, f"offline {i}"))
    local(path, "UPDATE other SET label = 'edited' WHERE id = 7")
    before = server.writer.stats["client_operations"]
    again = clients("off")  # same file: same client id, same position
    await again.start()
    await again.flush()
    assert env.sql("SELECT count(*), count(*) FILTER (WHERE label = 'edited') FROM other") == [(50, 1)]
    assert server.writer.stats["client_operations"] - before == 51  # each write exactly once
    assert server.writer.stats["duplicates"] == 0
    assert again.client_id == a.client_id


async def test_concurrent_writes_converge(
    server: Server, env: Env, clients: Callable[[str], SyncClient], tmp_path: Path
) -> None:
    a, b = clients("ca"), clients("cb")
    for cl in (a, b):
        await cl.start()
        await cl.synced(await cl.subscribe("items"))
    # A deletes 'a' while B (not having seen the delete) updates it: add-wins keeps the row
    await a.stop()
    local(tmp_path / "ca.db", "DELETE FROM items WHERE id = 'a'")
    local(tmp_path / "cb.db", "UPDATE items SET n = 42 WHERE id = 'a'")
    await b.flush()
    a2 = clients("ca")
    await a2.start()
    await a2.flush()
    want = env.sql("SELECT id, n FROM items ORDER BY id")
    assert ("a", 42) in want
    for name in ("ca", "cb"):
        await until(
            lambda n=name: local(tmp_path / f"{n}.db", "SELECT id, n FROM items ORDER BY id") == want, what=name
        )


async def _cli(*args: str, timeout: float = 60) -> tuple[int, str]:
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "electricctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode()


async def test_sync_command(server: Server, env: Env, tmp_path: Path) -> None:
    path = tmp_path / "cli.db"
    url = ws_url(server)
    code, out = await _cli(
        "sync", url, "--db", str(path), "--shape", "items:this.n > 0", "--token", env.token(), "--once"
    )
    assert code == 0, out
    assert "items where this.n > 0" in out and "1 rows" in out and "connected" in out
    assert local(path, "SELECT id FROM items") == [("a",)]
    # a local write, then sync again: it reaches Postgres
    local(path, "UPDATE items SET n = 11 WHERE id = 'a'")
    code, out = await _cli(
        "sync", url, "--db", str(path), "--shape", "items:this.n > 0", "--token", env.token(), "--once"
    )
    assert code == 0, out
    assert env.sql("SELECT n FROM items WHERE id = 'a'") == [(11,)]
    # changed in Postgres while the client was away: the next --once brings all of it before it exits
    env.sql("UPDATE items SET n = 12 WHERE id = 'a'")
    for i in range(50):
        env.sql("INSERT INTO items (id, n) SELECT 'away' || g || '-' || %s, 1 FROM generate_series(1, 200) g", [i])
    code, out = await _cli(
        "sync", url, "--db", str(path), "--shape", "items:this.n > 0", "--token", env.token(), "--once"
    )
    assert code == 0, out
    assert local(path, "SELECT n FROM items WHERE id = 'a'") == [(12,)]
    assert local(path, "SELECT count(*) FROM items WHERE id LIKE 'away%'") == [(10_000,)]
    # errors say what is wrong
    code, out = await _cli("sync", url, "--db", str(path), "--shape", "nope", "--token", env.token(), "--once")
    assert code == 1 and "shape 'nope'" in out, out
    assert "no shape declared in electric.yaml and no electrified table is named 'nope'" in out, out
    code, out = await _cli("sync", url, "--db", str(path), "--shape", "items")
    assert code == 64 and "a token is required" in out, out


async def test_sync_once_fails_when_it_could_not_do_what_it_promised(server: Server, env: Env, tmp_path: Path) -> None:
    """Issue 11, defect 1: a change the client cannot apply made `sync --once` print a traceback and
    exit 0 anyway. Here the app's own local table refuses a row (a CHECK the server does not have)."""
    path = tmp_path / "once.db"
    local(
        path,
        "CREATE TABLE items (id TEXT PRIMARY KEY, n INTEGER CHECK (n < 100), flag INTEGER, data BLOB, at TEXT,"
        " doc TEXT, price REAL) WITHOUT ROWID",
    )
    url = ws_url(server)
    args = ("sync", url, "--db", str(path), "--shape", "items", "--token", env.token(), "--once")
    code, out = await _cli(*args)
    assert code == 0, out
    env.sql("INSERT INTO items (id, n) VALUES ('new', 500)")
    local(path, "UPDATE items SET n = 12 WHERE id = 'a'")  # a local write to send
    code, out = await _cli(*args)
    assert code == 1, out
    assert "sync failed:" in out and "CHECK constraint failed" in out, out
    assert "Traceback" not in out


async def test_a_column_added_in_postgres_reaches_the_client_and_its_writes(
    server: Server, env: Env, clients: Callable[[str], SyncClient], tmp_path: Path
) -> None:
    """Issue 12's opening report: after ALTER TABLE ... ADD COLUMN the new row never reached the
    client, its trigger failed (no such column: new.qty), and a local write was never sent."""
    path = tmp_path / "mig.db"
    a = clients("mig")
    await a.start()
    await a.synced(await a.subscribe("items"))
    local(path, "UPDATE items SET n = 2 WHERE id = 'a'")  # pending across the migration
    env.sql("ALTER TABLE items ADD COLUMN qty int4")
    env.sql("INSERT INTO items (id, n, qty) VALUES ('new', 1, 7)")

    def arrived() -> bool:
        columns = {r[1] for r in local(path, "PRAGMA table_info(items)")}
        return "qty" in columns and local(path, "SELECT qty FROM items WHERE id = 'new'") == [(7,)]

    await until(arrived, what="the new column, and the new row with its value")
    local(path, "UPDATE items SET qty = 8 WHERE id = 'a'")
    local(path, "INSERT INTO items (id, qty) VALUES ('mine', 9)")
    await a.flush()
    assert env.sql("SELECT id, n, qty FROM items WHERE id IN ('a', 'mine') ORDER BY id") == [
        ("a", 2, 8),
        ("mine", None, 9),
    ]
    assert a.status().pending == 0


async def test_sync_says_at_once_what_is_wrong_with_the_token_or_the_url(
    server: Server, env: Env, tmp_path: Path
) -> None:
    """Issue 11, errors: a bad token or a URL without /ws used to end in 'could not connect within
    30s; is the server running?' after 30 s, while the server was running and had said why."""
    import time as _time

    url = ws_url(server)
    other_key = dataclasses.replace(
        env.config.auth, jwt=dataclasses.replace(env.config.auth.jwt, key="another-key-another-key-another-key")
    )
    expired = env.token(exp=int(_time.time()) - 3600, iat=int(_time.time()) - 7200)
    for token, reason in (
        ("garbage", "authentication failed: invalid token"),
        (mint(other_key, "user-1"), "authentication failed: invalid token"),
        (expired, "authentication failed: token has expired"),
    ):
        started = _time.monotonic()
        code, out = await _cli(
            "sync", url, "--db", str(tmp_path / "t.db"), "--shape", "items", "--token", token, "--once"
        )
        assert code == 1 and reason in " ".join(out.split()), out
        assert "within 30s" not in out and _time.monotonic() - started < 20, out
    code, out = await _cli(
        "sync",
        url.removesuffix("/ws"),
        "--db",
        str(tmp_path / "t.db"),
        "--shape",
        "items",
        "--token",
        env.token(),
        "--once",
    )
    assert code == 1 and "no sync endpoint at" in out and "the path is /ws" in out, out


async def test_sync_command_runs_until_interrupted(server: Server, env: Env, tmp_path: Path) -> None:
    import signal
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "electricctl", "sync", ws_url(server), "--db", str(tmp_path / "live.db"),
        "--shape", "other", "--token", env.token(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await until(
            lambda: (
                (tmp_path / "live.db").exists()
                and bool(local(tmp_path / "live.db", "SELECT name FROM sqlite_master WHERE name = 'other'"))
            ),
            what="table created",
        )
        env.sql("INSERT INTO other VALUES (1, 'live')")
        await until(lambda: local(tmp_path / "live.db", "SELECT label FROM other") == [("live",)], what="live row")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out
    assert b"pending local writes 0" in out


async def test_shape_names_and_unsubscribe(
    server: Server, env: Env, clients: Callable[[str], SyncClient], tmp_path: Path
) -> None:
    a = clients("names")
    await a.start()
    positive = await a.subscribe("positive_items")  # declared in electric.yaml as items where n > 0
    await a.synced(positive)
    other = await a.subscribe("other")
    await a.synced(other)
    env.sql("INSERT INTO other VALUES (1, 'one')")
    await until(lambda: local(tmp_path / "names.db", "SELECT id FROM other") == [(1,)])
    assert local(tmp_path / "names.db", "SELECT id FROM items") == [("a",)]
    await a.unsubscribe(other)
    # the server sends the rows it no longer covers as GONE: the client drops them
    await until(lambda: local(tmp_path / "names.db", "SELECT id FROM other") == [], what="rows gone")
    env.sql("INSERT INTO other VALUES (2, 'two')")
    env.sql("UPDATE items SET n = 5 WHERE id = 'a'")
    await until(lambda: local(tmp_path / "names.db", "SELECT n FROM items") == [(5,)])
    assert local(tmp_path / "names.db", "SELECT id FROM other") == []
    # subscriptions are remembered: a restarted client resumes without subscribing again
    await a.stop()
    again = clients("names")
    await again.start()
    env.sql("UPDATE items SET n = 6 WHERE id = 'a'")
    await until(lambda: local(tmp_path / "names.db", "SELECT n FROM items") == [(6,)], what="resumed")


async def test_compensation_revives_a_parent_deleted_while_offline(
    server: Server, env: Env, clients: Callable[[str], SyncClient], tmp_path: Path
) -> None:
    path = tmp_path / "comp.db"
    # the app declares its local schema with the foreign key (the Satellite relation carries none)
    local(path, "CREATE TABLE parents (id TEXT PRIMARY KEY, name TEXT NOT NULL)")
    local(
        path, "CREATE TABLE children (id TEXT PRIMARY KEY, parent_id TEXT NOT NULL REFERENCES parents (id), v INTEGER)"
    )
    env.sql("INSERT INTO parents VALUES ('p', 'the parent')")
    a = clients("comp")
    await a.start()
    for table in ("parents", "children"):
        await a.synced(await a.subscribe(table))
    assert local(path, "SELECT * FROM parents") == [("p", "the parent")]
    await a.stop()
    env.sql("DELETE FROM parents WHERE id = 'p'")  # concurrently, while the client is offline
    local(path, "INSERT INTO children (id, parent_id, v) VALUES ('c', 'p', 1)")
    # the compensation comes first, so the server re-asserts the parent before it inserts the child
    ops = [r[0] for r in local(path, "SELECT optype FROM _electric_oplog ORDER BY rowid")]
    assert ops == ["COMPENSATION", "INSERT"]
    again = clients("comp")
    await again.start()
    await again.flush()
    assert env.sql("SELECT id, name FROM parents") == [("p", "the parent")]  # revived, not refused
    assert env.sql("SELECT id, parent_id, v FROM children") == [("c", "p", 1)]
    assert again.refused == []


async def test_subscribing_offline_and_many_offline_writes(
    server: Server, env: Env, clients: Callable[[str], SyncClient], tmp_path: Path
) -> None:
    """A subscription made before the first connection is requested when it comes up; a long offline
    session is sent as several transactions, none over the server's bound."""
    path = tmp_path / "first.db"
    cl = clients("first")
    sub = await cl.subscribe("other")  # not started: nothing to talk to yet
    assert not sub.synced.is_set()
    await cl.start()
    await cl.synced(sub)
    await cl.stop()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO other (id, label) VALUES (?, 'x')", [(i,) for i in range(25_000)])
    conn.execute("COMMIT")
    conn.close()
    before = server.writer.stats["client_transactions"]
    again = clients("first")
    await again.start()
    await again.flush(timeout=120)
    assert env.sql("SELECT count(*) FROM other") == [(25_000,)]
    assert server.writer.stats["client_transactions"] - before == 3  # 10,000 + 10,000 + 5,000


async def test_truncate_is_refused_so_clients_never_keep_rows_that_are_gone(
    server: Server, env: Env, clients: Callable[[str], SyncClient], tmp_path: Path
) -> None:
    a = clients("t")
    await a.start()
    await a.synced(await a.subscribe("items"))
    with pytest.raises(psycopg.errors.FeatureNotSupported, match=r"cannot truncate electrified table public\.items"):
        env.sql("TRUNCATE items")
    assert env.sql("SELECT count(*) FROM items") == [(2,)]
    # what the refusal's hint says to do instead reaches the client row by row
    env.sql("DELETE FROM items")
    await until(lambda: local(tmp_path / "t.db", "SELECT count(*) FROM items") == [(0,)], what="the deletes arrive")
