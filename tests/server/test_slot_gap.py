"""Issue 10, point 5: a replication slot dropped by hand leaves a gap in the stream. serve must
notice when it creates the slot again: clients from before the gap are sent to resync (and do),
and /health and `electricctl status` say that it happened."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from electricctl._protocol import satellite_pb2 as pb
from electricctl.client import SyncClient
from tests.client.test_sync_client import local, until
from tests.satellite_client import SatelliteClient
from tests.server_fixtures import Env, ServeProcess, get_health

pytestmark = pytest.mark.asyncio

START_ERR = pb.SatInStartReplicationResp.ReplicationError


def _drop_slot_by_hand(env: Env) -> None:
    """What an operator does: end the walsender, drop the slot (serve may grab it again in between)."""
    deadline = time.monotonic() + 20
    while True:
        env.sql(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
            " WHERE slot_name = %s AND active_pid IS NOT NULL",
            [env.slot],
        )
        try:
            env.sql("SELECT pg_drop_replication_slot(%s)", [env.slot])
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def test_a_dropped_slot_sends_clients_to_resync_and_is_reported(
    serve_process: ServeProcess, env: Env, tmp_path: Path, run_cli: object
) -> None:
    serve_process.start()
    raw = await SatelliteClient(serve_process.url).connect()
    await raw.authenticate(env.token())
    await raw.start()
    sub = await raw.subscribe("other")
    app = SyncClient(str(tmp_path / "app.db"), serve_process.url, env.token("app-user"))
    await app.start()
    await app.synced(await app.subscribe("other"))

    env.sql("INSERT INTO other VALUES (1, 'before')")
    await raw.wait_for(lambda: (b"1",) in raw.table("other"))
    await until(lambda: local(tmp_path / "app.db", "SELECT id FROM other") == [(1,)])
    lsn = raw.last_lsn

    _drop_slot_by_hand(env)
    env.sql("INSERT INTO other VALUES (2, 'while the slot was gone')")

    # the connected client is sent away (1012), and coming back from before the gap it must resync
    await raw.wait_for(lambda: raw.closed_with is not None, timeout=30)
    assert raw.closed_with is not None and raw.closed_with[0] == 1012, raw.closed_with
    deadline = time.monotonic() + 30
    while get_health(serve_process.port)[0] != 200:  # replication restarts on the new slot first
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    again = SatelliteClient(serve_process.url, client_id=raw.client_id)
    await again.connect()
    await again.authenticate(env.token())
    resp = await again.start(lsn=lsn, subscription_ids=[sub])
    assert resp.HasField("err") and resp.err.code == START_ERR.BEHIND_WINDOW, resp
    await again.close()

    # /health says so
    status, body = get_health(serve_process.port)
    assert status == 200
    assert body["stream_gap"] is not None and "was missing and was created again" in str(body["warnings"])

    # our client resyncs by itself: it ends up with the row written during the gap, and what follows
    env.sql("INSERT INTO other VALUES (3, 'after')")
    await until(lambda: local(tmp_path / "app.db", "SELECT id FROM other ORDER BY id") == [(1,), (2,), (3,)], 30)
    await app.stop()

    # electricctl status says so
    result = run_cli("status", "-f", str(env.config_path), "--database-url", env.url)  # type: ignore[operator]
    assert f"slot {env.slot} was missing and `serve` created it again" in result.out.replace("\n", " "), result.out
    await asyncio.sleep(0)
    serve_process.stop()
