"""The real npm client electric-sql@0.12.1 (electrify() over better-sqlite3) against electricctl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from electricctl._server.app import Server
from tests.compat.conftest import Driver
from tests.server_fixtures import Env, ServeProcess, ws_url

pytestmark = pytest.mark.asyncio


def base_url(srv: Server) -> str:
    return ws_url(srv).replace("ws://", "http://").removesuffix("/ws")


def by_id(rows: list[dict[str, object]]) -> dict[object, dict[str, object]]:
    return {r["id"]: r for r in rows}


async def test_initial_sync_live_changes_and_acks(server: Server, env: Env, drivers: list[Driver]) -> None:
    import asyncio

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
