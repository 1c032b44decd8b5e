"""The Python client's schema comes from the server's migrations (issue 12), end to end."""

from __future__ import annotations

from pathlib import Path

from electricctl._server.app import Server
from electricctl.client import SyncClient
from tests.client.test_sync_client import local, until
from tests.server_fixtures import Env, ws_url


def schema(path: Path) -> dict[str, list[str]]:
    tables = [
        r[0]
        for r in local(path, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\'")
    ]
    return {t: [r[1] for r in local(path, f'PRAGMA table_info("{t}")')] for t in tables}


def version(path: Path) -> object:
    rows = local(path, "SELECT value FROM _electric_meta WHERE key = 'electricctl.schema_version'")
    return rows[0][0] if rows else None


async def test_a_new_client_gets_every_table_from_the_migrations_and_later_ones_after_an_outage(
    server: Server, env: Env, tmp_path: Path
) -> None:
    path = tmp_path / "fresh.db"
    newest = env.sql("SELECT max(version) FROM electric.migrations")[0][0]
    cl = SyncClient(str(path), ws_url(server), env.token())
    await cl.start()
    try:
        # no subscription: the tables exist locally all the same, as Postgres has them
        await until(lambda: "children" in schema(path), what="the tables from the baseline migration")
        assert schema(path)["items"] == ["id", "n", "flag", "data", "at", "doc", "price"]
        assert set(schema(path)) >= {"items", "other", "big", "parents", "children"}
        assert version(path) == newest
        # the app can write to a table it never subscribed to: its triggers are there (the row
        # goes back to the server, and leaves the client, which holds no shape of it)
        local(path, "INSERT INTO other (id, label) VALUES (1, 'local')")
        cl.notify()
        await cl.flush()
        assert env.sql("SELECT label FROM other WHERE id = 1") == [("local",)]
    finally:
        await cl.stop()

    # offline during a migration: it arrives in the stream once the client is back
    env.psql(
        "BEGIN; SET LOCAL electric.migration_version = '30000101000000000'; ALTER TABLE other ADD COLUMN extra text; COMMIT"
    )
    env.sql("INSERT INTO other (id, label, extra) VALUES (2, 'pg', 'x')")
    migrated: list[tuple[str, list[str]]] = []
    again = SyncClient(str(path), ws_url(server), env.token(), on_migrate=lambda v, t: migrated.append((v, t)))
    await again.start()
    try:
        await again.synced(await again.subscribe("other"))
        await until(lambda: "extra" in schema(path)["other"], what="the added column after reconnecting")
        assert version(path) == "30000101000000000"
        assert migrated == [("30000101000000000", ["other"])]
        # the row written with the new column arrived with its value (the server read the table
        # again when the migration reached its log, not its cached columns)
        assert local(path, "SELECT extra FROM other WHERE id = 2") == [("x",)]
        local(path, "UPDATE other SET extra = 'y' WHERE id = 1")
        again.notify()
        await again.flush()
        assert env.sql("SELECT id, label, extra FROM other ORDER BY id") == [(1, "local", "y"), (2, "pg", "x")]
    finally:
        await again.stop()
