"""A schema migration while clients write (issue 12): two Python clients and the real npm client.

One Python client is offline during the migration and writes under the old schema; the other and
the npm client keep writing while ``ALTER TABLE ... ADD COLUMN`` commits, then write the new
column with plain SQL once it has reached them. After quiescence every client's table has the
new column and the same rows as Postgres.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from electricctl._apply import applier
from electricctl._config.loader import load_text
from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.app import Server
from electricctl.client import SyncClient
from tests.client.test_sync_client import local, until
from tests.compat.conftest import Driver, bundled_migrations
from tests.server_fixtures import CONFIG, Env, ws_url

MigrateOp = pb.SatOpMigrate

pytestmark = pytest.mark.asyncio

Row = tuple[object, ...]


def base_url(srv: Server) -> str:
    return ws_url(srv).replace("ws://", "http://").removesuffix("/ws")


def columns_of_tables(path: Path) -> set[str]:
    return {r[0] for r in local(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}


def columns(path: Path) -> list[str]:
    return [r[1] for r in local(path, "PRAGMA table_info(items)")]


def py_rows(path: Path) -> set[Row]:
    return set(local(path, "SELECT id, n, qty FROM items"))


def npm_rows(d: Driver) -> set[Row]:
    return {(r["id"], r["n"], r.get("qty")) for r in d.rows("items")}


async def until_npm(d: Driver, predicate: Callable[[set[Row]], bool], what: str, timeout: float = 30) -> None:
    """Poll the npm client's rows off the event loop (the server runs on it)."""
    deadline = time.monotonic() + timeout
    while not predicate(await asyncio.to_thread(npm_rows, d)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met in {timeout}s: {d.log_tail(20)}")
        await asyncio.sleep(0.05)


async def test_a_migration_while_two_python_clients_and_the_npm_client_write(
    server: Server, env: Env, drivers: list[Driver], tmp_path: Path
) -> None:
    a_path, b_path = tmp_path / "a.db", tmp_path / "b.db"
    a = SyncClient(str(a_path), ws_url(server), env.token("user-a"))
    b = SyncClient(str(b_path), ws_url(server), env.token("user-b"))
    npm = await asyncio.to_thread(Driver, base_url(server), env.token("user-n"))
    drivers.append(npm)
    try:
        for cl in (a, b):
            await cl.start()
            await cl.synced(await cl.subscribe("items"))
        await asyncio.to_thread(npm.call, "subscribe", table="items")

        # b goes offline and writes under the old schema
        await b.stop()
        local(b_path, "INSERT INTO items (id, n) VALUES ('b-offline', 1)")
        local(b_path, "UPDATE items SET n = 11 WHERE id = 'a'")

        # a and the npm client write while the migration commits
        async def writes(prefix: str, write: Callable[[str], Awaitable[object]], count: int) -> None:
            for i in range(count):
                await write(f"{prefix}-{i}")
                await asyncio.sleep(0.02)

        async def a_write(key: str) -> None:
            await asyncio.to_thread(local, a_path, "INSERT INTO items (id, n) VALUES (?, 1)", (key,))
            a.notify()

        async def npm_write(key: str) -> None:
            await asyncio.to_thread(npm.call, "exec", sql="INSERT INTO items (id, n) VALUES (?, 1)", args=[key])

        writers = asyncio.gather(writes("a", a_write, 15), writes("npm", npm_write, 15))
        await asyncio.sleep(0.1)
        # off the event loop: the ALTER waits for the in-process server's open write transactions,
        # which need the loop to commit
        await asyncio.to_thread(env.sql, "ALTER TABLE items ADD COLUMN qty int4")
        await asyncio.to_thread(env.sql, "INSERT INTO items (id, n, qty) VALUES ('pg', 1, 100)")
        await writers

        # the column reaches the online clients, and they write it with plain SQL
        await until(lambda: "qty" in columns(a_path), timeout=30, what="qty at client a")
        await until_npm(npm, lambda rows: ("pg", 1, 100) in rows, "the new row with qty at the npm client")
        local(a_path, "UPDATE items SET qty = 1 WHERE id = 'a-0'")
        await asyncio.to_thread(npm.call, "exec", sql="UPDATE items SET qty = 2 WHERE id = 'npm-0'")
        await asyncio.to_thread(npm.call, "exec", sql="INSERT INTO items (id, n, qty) VALUES ('npm-new', 1, 3)")
        a.notify()

        # b comes back: its old-schema writes merge, then the migration reaches it
        await b.start()
        await until(lambda: "qty" in columns(b_path), timeout=30, what="qty at client b")
        local(b_path, "UPDATE items SET qty = 4 WHERE id = 'b-offline'")
        b.notify()

        # quiescence: nothing pending anywhere, every client holds what Postgres holds
        for cl in (a, b):
            await cl.flush(timeout=30)
        deadline = time.monotonic() + 30
        while (await asyncio.to_thread(npm.call, "oplog"))["n"]:
            assert time.monotonic() < deadline, "the npm client's writes were never acknowledged"
            await asyncio.sleep(0.05)
        pg = set(await asyncio.to_thread(env.sql, "SELECT id, n, qty FROM items"))
        assert {("a", 11), ("b-offline", 1)} <= {(r[0], r[1]) for r in pg}
        assert {(r[0], r[2]) for r in pg} >= {("a-0", 1), ("npm-0", 2), ("npm-new", 3), ("b-offline", 4), ("pg", 100)}
        assert len(pg) == 2 + 1 + 15 + 15 + 1 + 1  # the fixture's rows, b's, a's, the npm client's, psql's, npm-new
        for name, read in (("a", lambda: py_rows(a_path)), ("b", lambda: py_rows(b_path))):
            await until(lambda read=read: read() == pg, timeout=30, what=f"client {name} equal to Postgres")  # type: ignore[misc]
        await until_npm(npm, lambda rows: rows == pg, "the npm client equal to Postgres")
        pg_columns = [
            r[0]
            for r in env.sql(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'items'::regclass AND attnum > 0"
                " AND NOT attisdropped ORDER BY attnum"
            )
        ]
        assert columns(a_path) == columns(b_path) == pg_columns
        assert list((await asyncio.to_thread(npm.rows, "items"))[0]) == pg_columns
    finally:
        await a.stop()
        await b.stop()


async def test_sqlite_statements_of_electric_yaml_reach_every_client_as_migrations(
    server: Server, env: Env, drivers: list[Driver], tmp_path: Path
) -> None:
    path = tmp_path / "py.db"
    py = SyncClient(str(path), ws_url(server), env.token())
    npm = await asyncio.to_thread(Driver, base_url(server), env.token("user-n"))
    drivers.append(npm)
    try:
        await py.start()
        await until(lambda: "items" in columns_of_tables(path), timeout=30, what="the tables at the Python client")
        statement = "CREATE INDEX IF NOT EXISTS items_n ON items(n)"
        text = CONFIG + f'sqlite:\n  - "{statement}"\n'
        await asyncio.to_thread(applier.apply, load_text(text, str(env.config_path), env={}), env.url)

        def npm_indexes() -> list[object]:
            found = npm.call("query", sql="SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'items_n'")
            return [r["name"] for r in found["rows"]]

        await until(
            lambda: local(path, "SELECT name FROM sqlite_master WHERE name = 'items_n'") != [],
            timeout=30,
            what="index at the Python client",
        )
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(npm_indexes):
            assert time.monotonic() < deadline, f"the npm client never got the index: {npm.log_tail(20)}"
            await asyncio.sleep(0.1)
        # and an app built after it bundles it: /api/migrations has it as its own version
        newest = (await asyncio.to_thread(bundled_migrations, ws_url(server)))[-1]
        (op,) = [MigrateOp.FromString(base64.b64decode(o)) for o in newest["ops"]]
        assert (op.stmts[0].type, op.stmts[0].sql) == (MigrateOp.CREATE_INDEX, statement + ";\n")
    finally:
        await py.stop()
