"""Issue 10, point 10c: after a Postgres restart, the server's pooled connections (catalog,
snapshots, writer) are dead; the first request on each must reconnect and succeed, not fail
the client. A real restart of a private cluster (the shared test cluster stays up)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl._server.catalog_cache import RULES_TTL
from tests.satellite_client import SatelliteClient
from tests.server.test_writes import ITEMS, Writer, insert, items, until
from tests.server_fixtures import build_env, running_server, ws_url

pytestmark = pytest.mark.asyncio


@pytest.fixture
def private_pg(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(tmp_path / "pg").start()
    try:
        yield pg
    finally:
        pg.stop(cleanup=True)


async def test_the_first_requests_after_a_postgres_restart_succeed(
    private_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    with psycopg.connect(private_pg.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE app")
    env = build_env(private_pg.url("app"), tmp_path)
    async with running_server(env) as srv:
        old = SatelliteClient(ws_url(srv))
        await old.connect()
        await old.authenticate(env.token())
        await old.start()
        await old.subscribe("other")
        await old.wait_for(lambda: old.outbound_lsn is not None)
        writer = Writer(old)
        await writer.send(ITEMS, insert(ITEMS, "before", "1", "t"))
        await until(lambda: "before" in items(env))

        await asyncio.to_thread(private_pg.stop, cleanup=False)
        await asyncio.to_thread(private_pg.start)
        await until(lambda: srv.replication_ok, timeout=30)
        await asyncio.sleep(RULES_TTL + 0.2)  # let the catalog caches expire: the next reads go to Postgres

        # a new client: authenticate (catalog: client owner), subscribe (catalog, snapshot pool)
        new = SatelliteClient(ws_url(srv))
        await new.connect()
        await new.authenticate(env.token("user-2"))
        await new.start()
        await new.subscribe("items")
        assert (b"before",) in new.table("items")
        # the connected client writes again (writer connection), and sees a direct write
        await writer.send(ITEMS, insert(ITEMS, "after", "2", "t"))
        await until(lambda: "after" in items(env))
        env.sql("INSERT INTO other VALUES (1, 'after the restart')")
        await old.wait_for(lambda: (b"1",) in old.table("other"))
        assert old.closed_with is None and new.closed_with is None
        assert not old.errors and not new.errors
        await new.close()
        await old.close()
