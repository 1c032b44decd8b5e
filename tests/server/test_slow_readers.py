"""Issue 10, point 3: slow readers must not starve other clients' subscriptions. Subscription
data is spooled while the snapshot is held, so the snapshot ends at Postgres' speed; a user may
hold only a few snapshots at once; and a client that reads far too slowly is dropped."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from electricctl._model.table import TableRef
from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.snapshot import SnapshotPool
from tests.satellite_client import SatelliteClient
from tests.server_fixtures import Env, ServeProcess, subs_req

pytestmark = pytest.mark.asyncio

# 20,000 rows of 1.9 KB: about 40 MB to send, in frames of 1,000 rows
_BIG = "INSERT INTO big SELECT i, repeat(md5(i::text), 60) FROM generate_series(1, 20000) i"


class SlowReader:
    """A raw Satellite client that subscribes to ``big`` and then reads one frame per interval."""

    def __init__(self, ws: ClientConnection, interval: float) -> None:
        self.ws = ws
        self.interval = interval
        self.frames = 0
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, url: str, env: Env, sub: str, interval: float = 1.0) -> SlowReader:
        ws = await connect(url, subprotocols=["electric.0.12"], max_queue=1, max_size=None)  # type: ignore[list-item]
        calls = [
            ("authenticate", pb.SatAuthReq(id=str(uuid.uuid4()), token=env.token(sub))),
            ("startReplication", pb.SatInStartReplicationReq()),
            ("subscribe", subs_req("big")),
        ]
        for i, (method, body) in enumerate(calls, 1):
            await ws.send(codec.encode(pb.SatRpcRequest(method=method, request_id=i, message=body.SerializeToString())))
        return cls(ws, interval)

    async def _read(self) -> None:
        try:
            while True:
                await self.ws.recv()
                self.frames += 1
                await asyncio.sleep(self.interval)
        except ConnectionClosed:
            pass

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.ws.transport.abort()  # a closing handshake would queue behind the unread data


def _open_snapshots(env: Env) -> int:
    rows = env.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'electricctl-snapshot'"
        " AND state = 'idle in transaction' AND datname = current_database()"
    )
    return int(rows[0][0])  # type: ignore[call-overload]


@pytest.mark.serve_args("--send-timeout", "60s")
async def test_slow_readers_do_not_starve_a_small_subscription(serve_process: ServeProcess, env: Env) -> None:
    env.sql(_BIG)
    serve_process.start()
    readers = [await SlowReader.start(serve_process.url, env, f"slow-{i}") for i in range(4)]
    deadline = time.monotonic() + 30
    while min(r.frames for r in readers) < 3:  # every delivery has begun
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    # their snapshots were read at Postgres' speed and closed: none stays open while they read
    while _open_snapshots(env):
        assert time.monotonic() < deadline, "a snapshot stays open while its client reads slowly"
        await asyncio.sleep(0.1)

    started = time.monotonic()
    small = await SatelliteClient(serve_process.url).connect()
    await small.authenticate(env.token("someone-else"))
    await small.start()
    await small.subscribe("other")
    took = time.monotonic() - started
    print(f"a small subscription while 4 slow readers read 40 MB each: {took * 1000:.0f} ms")
    assert took < 10, f"the small subscription took {took:.1f} s"
    assert all(not r.task.done() for r in readers)  # the slow readers are still being served
    await small.close()
    for r in readers:
        await r.close()
    serve_process.stop()


@pytest.mark.serve_args("--send-timeout", "8s", "--min-send-rate", "10MiB")
async def test_a_client_reading_below_the_minimum_rate_is_dropped(serve_process: ServeProcess, env: Env) -> None:
    env.sql(_BIG)
    serve_process.start()
    crawler = await SlowReader.start(serve_process.url, env, "crawler", interval=1.0)  # about 2 MB/s
    await asyncio.wait_for(crawler.task, 30)
    assert crawler.frames < 20  # dropped before it had the whole shape
    assert "slower than 10485760 bytes/s" in serve_process.log_text()
    serve_process.stop()


async def test_one_owner_holds_at_most_its_share_of_snapshots(env: Env) -> None:
    pool = SnapshotPool(env.url, size=3, per_owner=2)
    try:
        a1 = await pool.take(owner="alice")
        a2 = await pool.take(owner="alice")
        third: asyncio.Task[Any] = asyncio.ensure_future(pool.take(owner="alice"))
        await asyncio.sleep(0.2)
        assert not third.done()  # alice waits for one of her own
        bob = await asyncio.wait_for(pool.take(owner="bob"), 5)  # bob does not wait for alice
        rel = await bob.describe(TableRef("public", "items"))
        assert rel is not None
        assert pool.in_use == 3 and pool.waiting == 0  # alice's third waits for her share, not the pool
        await a1.close()
        a3 = await asyncio.wait_for(third, 5)
        for snap in (a2, a3, bob):
            await snap.close()
        assert not pool._owners  # owners that hold nothing are forgotten
        assert pool.in_use == 0
    finally:
        await pool.close()
    with psycopg.connect(env.url) as conn:  # the pool's connections are gone
        assert conn.execute("SELECT 1").fetchone() == (1,)
