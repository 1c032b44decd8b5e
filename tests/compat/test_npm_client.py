"""The real npm client electric-sql@0.12.1 (electrify() over better-sqlite3) against electricctl."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from electricctl._server.app import Server
from tests.compat.conftest import Driver
from tests.server_fixtures import Env, ServeProcess, running_server, ws_url

pytestmark = pytest.mark.asyncio


def base_url(srv: Server) -> str:
    return ws_url(srv).replace("ws://", "http://").removesuffix("/ws")


def by_id(rows: list[dict[str, object]]) -> dict[object, dict[str, object]]:
    return {r["id"]: r for r in rows}


@pytest_asyncio.fixture
async def server30(env: Env) -> AsyncIterator[Server]:
    """A server with Electric's window of 30 (ours is 300): the npm client acks at 70% of it."""
    async with running_server(env, unacked_window=30) as srv:
        yield srv


async def test_initial_sync_live_changes_and_acks(server30: Server, env: Env, drivers: list[Driver]) -> None:
    import asyncio

    server = server30
    d = await asyncio.to_thread(Driver, base_url(server), env.token())
    drivers.append(d)
    await asyncio.to_thread(d.call, "subscribe", table="items")
    rows = by_id(await asyncio.to_thread(d.rows, "items"))
    assert rows["a"] == {
        "id": "a",
        "n": 1,
        "flag": 1,
        "data": [0, 255],
        "at": "2024-01-02 03:04:05.5Z",
        "doc": '{"k": [1]}',
        "price": 1.5,
    }
    assert rows["b"]["n"] is None and rows["b"]["flag"] == 0

    # changes made with psql while the client is connected
    env.psql("INSERT INTO items (id, n, flag) VALUES ('c', 3, true)")
    env.psql("UPDATE items SET n = 7 WHERE id = 'a'")
    env.psql("DELETE FROM items WHERE id = 'b'")
    final = await asyncio.to_thread(d.wait_rows, "items", lambda rs: {r["id"]: r["n"] for r in rs} == {"a": 7, "c": 3})
    assert by_id(final)["c"]["flag"] == 1

    # enough transactions for the client to ack (it acks at 70% of the window of 30)
    for i in range(25):
        env.sql("INSERT INTO items (id, n) VALUES (%s, %s)", [f"x{i:02d}", i])
    await asyncio.to_thread(d.wait_rows, "items", lambda rs: len(rs) == 27)
    client_id = (await asyncio.to_thread(d.call, "meta"))["meta"]["clientId"]
    for _ in range(50):
        state = server.store.load(client_id)
        if state.acked_lsn:
            break
        await asyncio.sleep(0.1)
    assert state.acked_lsn > 0, "the npm client never acked"
    assert list(state.subscriptions)  # its subscription is remembered for resume


async def test_reconnect_resumes_without_resync(
    server: Server, env: Env, drivers: list[Driver], tmp_path: Path
) -> None:
    import asyncio

    db = str(tmp_path / "client.db")
    d = await asyncio.to_thread(Driver, base_url(server), env.token(), db)
    drivers.append(d)
    await asyncio.to_thread(d.call, "subscribe", table="items")
    env.sql("INSERT INTO items (id) VALUES ('c')")
    await asyncio.to_thread(d.wait_rows, "items", lambda rs: len(rs) == 3)
    meta = (await asyncio.to_thread(d.call, "meta"))["meta"]
    assert meta["lsn"] and json.loads(meta["subscriptions"])
    await asyncio.to_thread(d.close)

    env.sql("INSERT INTO items (id) VALUES ('d')")
    env.sql("DELETE FROM items WHERE id = 'a'")
    deliveries = server.stats["subscription_deliveries"]
    again = await asyncio.to_thread(Driver, base_url(server), env.token(), db)  # the app restarts
    drivers.append(again)
    rows = await asyncio.to_thread(again.wait_rows, "items", lambda rs: {r["id"] for r in rs} == {"b", "c", "d"})
    assert len(rows) == 3
    assert server.stats["subscription_deliveries"] == deliveries  # resumed from its LSN: no resync


async def test_server_restart_and_kill_9_lose_nothing(
    serve_process: ServeProcess, env: Env, drivers: list[Driver], tmp_path: Path
) -> None:
    import asyncio
    import signal

    serve_process.start()
    url = serve_process.url.replace("ws://", "http://").removesuffix("/ws")
    d = await asyncio.to_thread(Driver, url, env.token(), str(tmp_path / "client.db"))
    drivers.append(d)
    await asyncio.to_thread(d.call, "subscribe", table="items")
    for round_, sig in enumerate((signal.SIGTERM, signal.SIGKILL)):
        env.sql("INSERT INTO items (id) VALUES (%s)", [f"before{round_}"])
        await asyncio.to_thread(d.wait_rows, "items", lambda rs, r=round_: any(x["id"] == f"before{r}" for x in rs))
        serve_process.stop(sig)
        env.sql("INSERT INTO items (id) VALUES (%s)", [f"down{round_}"])
        env.sql("UPDATE items SET n = %s WHERE id = 'a'", [100 + round_])
        serve_process.start()
        # the client notices the dropped socket and reconnects by itself, resuming from its LSN
        expected = {r[0]: r[1] for r in env.sql("SELECT id, n FROM items")}
        rows = await asyncio.to_thread(
            d.wait_rows, "items", lambda rs, e=expected: {r["id"]: r["n"] for r in rs} == e, 60
        )
        assert len(rows) == len(expected)


async def test_server_calls_rpcs_on_the_client(env: Env, drivers: list[Driver]) -> None:
    """RPC in the other direction: the server asks the npm client to start its own stream."""
    import asyncio

    from tests.server_fixtures import running_server

    async with running_server(env, start_client_replication=True) as srv:
        d = await asyncio.to_thread(Driver, base_url(srv), env.token())
        drivers.append(d)
        for _ in range(100):
            if any(c.client_stream_started for c in srv.connections):
                break
            await asyncio.sleep(0.05)
        assert any(c.client_stream_started for c in srv.connections), "the client did not answer startReplication"
        await asyncio.to_thread(d.call, "subscribe", table="items")  # and the connection carries on
        assert len(await asyncio.to_thread(d.rows, "items")) == 2
        await asyncio.to_thread(d.close)


async def test_where_clauses_with_move_in_and_move_out(server: Server, env: Env, drivers: list[Driver]) -> None:
    import asyncio

    env.psql("INSERT INTO items (id, n) VALUES ('c', 5), ('d', 0)")
    d = await asyncio.to_thread(Driver, base_url(server), env.token())
    drivers.append(d)
    await asyncio.to_thread(d.call, "subscribe", table="items", where="this.n > 1")
    assert {r["id"] for r in await asyncio.to_thread(d.rows, "items")} == {"c"}
    env.psql("UPDATE items SET n = 9 WHERE id = 'd'")  # moves in
    env.psql("UPDATE items SET n = 0 WHERE id = 'c'")  # moves out (GONE)
    env.psql("INSERT INTO items (id, n) VALUES ('e', 7), ('f', -1)")
    rows = await asyncio.to_thread(d.wait_rows, "items", lambda rs: {r["id"] for r in rs} == {"d", "e"})
    assert {r["id"]: r["n"] for r in rows} == {"d": 9, "e": 7}


def wait_oplog_empty(d: Driver, timeout: float = 20) -> None:
    import time

    deadline = time.monotonic() + timeout
    while d.call("oplog")["n"]:
        if time.monotonic() > deadline:
            raise AssertionError("the npm client's oplog never cleared (no echo?)")
        time.sleep(0.05)


async def test_npm_client_writes_reach_postgres_and_our_client(
    server: Server, env: Env, drivers: list[Driver], tmp_path: Path
) -> None:
    """Writes from electrify() land in Postgres, are echoed (the oplog clears) and reach other clients;
    data written by either client reads the same in Postgres."""
    import asyncio

    from electricctl.client import SyncClient

    d = await asyncio.to_thread(Driver, base_url(server), env.token())
    drivers.append(d)
    await asyncio.to_thread(d.call, "subscribe", table="items")
    ours = SyncClient(str(tmp_path / "ours.db"), ws_url(server), env.token())
    await ours.start()
    try:
        await ours.synced(await ours.subscribe("items"))
        sql = "INSERT INTO items (id, n, flag, data, at, doc, price) VALUES (?, ?, ?, ?, ?, ?, ?)"
        row = [5, 1, None, "2024-05-06 07:08:09.25Z", '{"a": [1, 2]}', 0.25]
        await asyncio.to_thread(d.call, "exec", sql=sql, args=["npm", *row])
        await asyncio.to_thread(wait_oplog_empty, d)
        import sqlite3

        conn = sqlite3.connect(tmp_path / "ours.db", isolation_level=None)
        conn.execute(sql, ["py", *row])
        conn.close()
        await ours.flush()
        got = env.sql(
            "SELECT id, n, flag, data, at::text, doc::text, price FROM items WHERE id IN ('npm', 'py') ORDER BY id"
        )
        assert len(got) == 2 and got[0][1:] == got[1][1:], got  # the same values from both clients
        assert got[0][1:] == (5, True, None, "2024-05-06 07:08:09.25+00", '{"a": [1, 2]}', 0.25)
        # each client sees the other's row
        await asyncio.to_thread(d.wait_rows, "items", lambda rs: "py" in {r["id"] for r in rs})
        for _ in range(200):
            import sqlite3 as s3

            c = s3.connect(tmp_path / "ours.db")
            seen = c.execute("SELECT count(*) FROM items WHERE id = 'npm'").fetchone()[0]
            c.close()
            if seen:
                break
            await asyncio.sleep(0.05)
        assert seen == 1
        # updates and deletes from the npm client
        await asyncio.to_thread(d.call, "exec", sql="UPDATE items SET n = 6 WHERE id = 'npm'")
        await asyncio.to_thread(d.call, "exec", sql="DELETE FROM items WHERE id = 'py'")
        await asyncio.to_thread(wait_oplog_empty, d)
        assert env.sql("SELECT id, n FROM items WHERE id IN ('npm', 'py')") == [("npm", 6)]
    finally:
        await ours.stop()


async def test_npm_client_refused_transaction_is_reverted_without_an_error(
    server: Server, env: Env, drivers: list[Driver]
) -> None:
    """Postgres refuses the transaction (a check constraint); the npm client gets no error frame (it would
    treat it as fatal), its oplog clears, and its rows return to the server's state."""
    import asyncio

    env.sql("ALTER TABLE items ADD CONSTRAINT n_small CHECK (n < 1000)")
    d = await asyncio.to_thread(Driver, base_url(server), env.token())
    drivers.append(d)
    await asyncio.to_thread(d.call, "subscribe", table="items")
    await asyncio.to_thread(d.call, "exec", sql="UPDATE items SET n = 5000 WHERE id = 'a'")
    await asyncio.to_thread(wait_oplog_empty, d)
    rows = await asyncio.to_thread(d.wait_rows, "items", lambda rs: by_id(rs)["a"]["n"] == 1)
    assert by_id(rows)["a"]["n"] == 1 and env.sql("SELECT n FROM items WHERE id = 'a'") == [(1,)]
    # the connection is still usable: a valid write goes through
    await asyncio.to_thread(d.call, "exec", sql="UPDATE items SET n = 9 WHERE id = 'a'")
    await asyncio.to_thread(wait_oplog_empty, d)
    assert env.sql("SELECT n FROM items WHERE id = 'a'") == [(9,)]


GRANTS = """
version: 1
auth:
  mode: secure
  jwt: {alg: HS256, key: test-secret-test-secret-test-secret}
tables: [items]
adhoc_shapes: allow
grants:
  - privileges: [select, insert, update, delete]
    on: items
    to: authenticated
    where: "n IS NULL OR n < 100"
"""


async def test_npm_client_permission_denial_is_reverted(env: Env, drivers: list[Driver]) -> None:
    """A transaction the grants deny: the npm client (no rollback of its own) gets no error frame, its
    oplog clears, the rows return to what it may see, and the connection stays usable."""
    import asyncio

    from electricctl._apply import applier
    from electricctl._config.loader import load_text
    from tests.server_fixtures import running_server

    env.config_path.write_text(GRANTS)
    env.config = load_text(GRANTS, str(env.config_path), env={})
    applier.apply(env.config, env.url, prune=True)
    async with running_server(env) as srv:
        d = await asyncio.to_thread(Driver, base_url(srv), env.token())
        drivers.append(d)
        await asyncio.to_thread(d.call, "subscribe", table="items")
        assert {r["id"] for r in await asyncio.to_thread(d.rows, "items")} == {"a", "b"}
        before = env.sql("SELECT * FROM items ORDER BY id")
        await asyncio.to_thread(d.call, "exec", sql="UPDATE items SET n = 500 WHERE id = 'a'")
        await asyncio.to_thread(d.call, "exec", sql="INSERT INTO items (id, n) VALUES ('big', 700)")
        await asyncio.to_thread(wait_oplog_empty, d)
        rows = await asyncio.to_thread(
            d.wait_rows, "items", lambda rs: {r["id"]: r["n"] for r in rs} == {"a": 1, "b": None}
        )
        assert {r["id"] for r in rows} == {"a", "b"}
        assert env.sql("SELECT * FROM items ORDER BY id") == before  # Postgres unchanged
        # still connected and usable
        await asyncio.to_thread(d.call, "exec", sql="UPDATE items SET n = 42 WHERE id = 'a'")
        await asyncio.to_thread(wait_oplog_empty, d)
        assert env.sql("SELECT n FROM items WHERE id = 'a'") == [(42,)]


async def test_a_dropped_slot_makes_the_npm_client_resync(
    serve_process: ServeProcess, env: Env, drivers: list[Driver], tmp_path: Path
) -> None:
    """Issue 10, point 5, with the real npm client: sent away (1012) when serve finds its slot gone,
    it reconnects, is told BEHIND_WINDOW and resets (it drops its rows rather than keep a copy with
    a hole in it). electric-sql 0.12.1 then forgets its subscriptions (its serialized shape state
    loses the ones to re-establish), as it does against Electric's own server: once the app
    subscribes again, it has every row, those written during the gap included."""
    import asyncio

    from tests.server.test_slot_gap import _drop_slot_by_hand

    serve_process.start()
    base = serve_process.url.replace("ws://", "http://").removesuffix("/ws")
    d = await asyncio.to_thread(Driver, base, env.token(), str(tmp_path / "npm.db"))
    drivers.append(d)
    await asyncio.to_thread(d.call, "subscribe", table="items")
    env.sql("INSERT INTO items (id, n) VALUES ('before', 1)")
    await asyncio.to_thread(d.wait_rows, "items", lambda rs: "before" in by_id(rs))

    await asyncio.to_thread(_drop_slot_by_hand, env)
    env.sql("INSERT INTO items (id, n) VALUES ('during', 2)")
    env.sql("INSERT INTO items (id, n) VALUES ('after', 3)")
    await asyncio.to_thread(d.wait_rows, "items", lambda rs: rs == [], 30)
    meta = (await asyncio.to_thread(d.call, "meta"))["meta"]
    assert meta["lsn"] is None  # a reset, not a resume
    await asyncio.to_thread(d.call, "subscribe", table="items")
    expected = {r[0] for r in env.sql("SELECT id FROM items")}
    assert {"before", "during", "after"} <= expected
    await asyncio.to_thread(d.wait_rows, "items", lambda rs: set(by_id(rs)) == expected, 30)
    env.sql("INSERT INTO items (id, n) VALUES ('later', 4)")
    await asyncio.to_thread(d.wait_rows, "items", lambda rs: "later" in by_id(rs))
    serve_process.stop()
