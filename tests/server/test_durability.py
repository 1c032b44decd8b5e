"""The durable log: restarts and kill -9 of `electricctl serve` lose and duplicate nothing."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.satellite_client import SatelliteClient
from tests.server_fixtures import Env, ServeProcess

pytestmark = pytest.mark.asyncio


async def _session(url: str, env: Env, cl: SatelliteClient, lsn: bytes, subs: list[str]) -> SatelliteClient:
    fresh = SatelliteClient(url, client_id=cl.client_id)
    fresh.rows = cl.rows
    await fresh.connect()
    await fresh.authenticate(env.token())
    resp = await fresh.start(lsn=lsn, subscription_ids=subs)
    assert not resp.HasField("err"), resp
    return fresh


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "kill-9"])
async def test_nothing_lost_or_duplicated_across_server_restarts(
    serve_process: ServeProcess, env: Env, how: int
) -> None:
    serve_process.start()
    cl = await SatelliteClient(serve_process.url).connect()
    await cl.authenticate(env.token())
    await cl.start()
    sub = await cl.subscribe("other")
    for i in range(20):
        env.sql("INSERT INTO other VALUES (%s, 'before')", [i])
    await cl.wait_for(lambda: len(cl.table("other")) == 20)
    lsn = cl.last_lsn
    seen = len(cl.transactions)
    await cl.close()

    # more writes arrive; the server goes down while (or after) it logs them
    for i in range(20, 40):
        env.sql("INSERT INTO other VALUES (%s, 'around')", [i])
    await asyncio.sleep(0.3)
    serve_process.stop(how)
    for i in range(40, 60):
        env.sql("INSERT INTO other VALUES (%s, 'while down')", [i])
    env.sql("UPDATE other SET label = 'changed' WHERE id < 5")
    env.sql("DELETE FROM other WHERE id = 59")

    serve_process.start()
    again = await _session(serve_process.url, env, cl, lsn, [sub])
    expected = {(str(r[0]).encode(),): r[1] for r in env.sql("SELECT id, label FROM other")}
    await again.wait_for(lambda: {k: v["label"].decode() for k, v in again.table("other").items()} == expected)
    env.sql("INSERT INTO other VALUES (1000, 'sentinel')")  # commits last, so it arrives last
    await again.wait_for(lambda: (b"1000",) in again.table("other"))
    # every transaction exactly once, in commit order, continuing after the client's LSN
    lsns = [int(t.lsn) for t in again.transactions]
    assert lsns == sorted(lsns) and len(lsns) == len(set(lsns)) == 43
    assert min(lsns) > int(lsn)
    assert seen == 20
    await again.close()

    # the slot follows the log, not the clients: this client never acked, yet no WAL is pinned
    (written,) = env.sql("SELECT pg_current_wal_lsn()")[0]
    for _ in range(100):
        (lag,) = env.sql(
            "SELECT pg_wal_lsn_diff(%s::pg_lsn, confirmed_flush_lsn) FROM pg_replication_slots WHERE slot_name = %s",
            [written, env.slot],
        )[0]
        if lag <= 0:
            break
        await asyncio.sleep(0.1)
    assert lag <= 0, f"the slot is {lag} bytes behind the last write"
    serve_process.stop()


@pytest.mark.serve_args("--send-timeout", "3s")
async def test_a_stalled_client_costs_bounded_memory_and_is_dropped(serve_process: ServeProcess, env: Env) -> None:
    import uuid

    from websockets.asyncio.client import connect

    from electricctl._protocol import codec
    from electricctl._protocol import satellite_pb2 as pb

    env.sql("INSERT INTO big SELECT i, repeat(md5(i::text), 60) FROM generate_series(1, 25000) i")  # ~50 MB
    serve_process.start()
    good = await SatelliteClient(serve_process.url).connect()
    await good.authenticate(env.token())
    await good.start()
    await good.subscribe("other")
    before = serve_process.rss_kb()

    stalled = await connect(serve_process.url, subprotocols=["electric.0.12"], max_queue=1)  # type: ignore[list-item]
    requests = [
        ("authenticate", pb.SatAuthReq(id=str(uuid.uuid4()), token=env.token())),
        ("startReplication", pb.SatInStartReplicationReq()),
        (
            "subscribe",
            pb.SatSubsReq(
                subscription_id=str(uuid.uuid4()),
                shape_requests=[
                    pb.SatShapeReq(
                        request_id="r",
                        shape_definition=pb.SatShapeDef(selects=[pb.SatShapeDef.Select(tablename="big")]),
                    )
                ],
            ),
        ),
    ]
    for i, (method, body) in enumerate(requests, 1):
        await stalled.send(
            codec.encode(pb.SatRpcRequest(method=method, request_id=i, message=body.SerializeToString()))
        )
    stalled.transport.pause_reading()  # this client stops reading
    peak = before
    for _ in range(80):
        peak = max(peak, serve_process.rss_kb())
        await asyncio.sleep(0.1)
    growth_mb = (peak - before) / 1024
    assert growth_mb < 30, f"the server grew by {growth_mb:.0f} MB for one stalled client"
    # dropped after the send timeout; everyone else is still served
    env.sql("INSERT INTO other VALUES (1, 'served')")
    await good.wait_for(lambda: (b"1",) in good.table("other"))
    stalled.transport.resume_reading()
    await asyncio.wait_for(stalled.wait_closed(), 20)
    await good.close()
