"""The graceful drain's order, seen from a client: the write it had in flight is applied and
acknowledged, its echo reaches the log, then the connection closes with 1012 (service restart);
a connection attempted meanwhile is refused."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import psycopg
import pytest
from websockets.asyncio.client import connect

from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.app import Server
from electricctl._server.options import ServeOptions
from tests.server.test_writes import ITEMS, connected, insert
from tests.server_fixtures import Env, ServeProcess, ws_url


async def test_a_write_in_flight_is_acknowledged_before_the_close_with_1012(env: Env) -> None:
    options = ServeOptions(port=0, data_dir=env.data_dir, slot=env.slot, fsync=False, drain_timeout=10)
    srv = Server(env.config, env.url, options)
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(srv.run(stop, started))
    await asyncio.wait_for(started.wait(), 20)
    while not srv.replication_ok:
        await asyncio.sleep(0.05)
    try:
        url = ws_url(srv)
        w = await connected(srv, env)
        await w.cl.wait_for(lambda: w.cl.outbound_lsn is not None)
        # the writer is held up by a lock: the transactions pile up in flight on the server
        lock = psycopg.connect(env.url)
        lock.execute("LOCK TABLE items IN EXCLUSIVE MODE")
        for i in range(10):
            await w.send(ITEMS, insert(ITEMS, f"drain-{i}", str(i), "t"))
        await asyncio.sleep(0.5)  # received and queued (the first one waits on the lock)
        stop.set()
        await asyncio.sleep(0.5)
        assert w.cl.closed_with is None  # the drain waits for them
        # while it does, a new connection is refused: nothing listens any more
        with pytest.raises(OSError):
            async with connect(url, open_timeout=2):
                pass
        lock.commit()
        lock.close()
        await w.cl.wait_for(lambda: w.cl.closed_with is not None, timeout=15)
        assert w.cl.closed_with is not None and w.cl.closed_with[0] == 1012
        acks = [m for m in w.cl.messages if isinstance(m, pb.SatOpLogAck)]
        assert len(acks) == 10 and acks[-1].lsn == (10).to_bytes(4, "big")
        # acknowledged means in Postgres
        assert env.sql("SELECT count(*) FROM items WHERE id LIKE 'drain-%'") == [(10,)]
        await asyncio.wait_for(task, 15)
        # the slot was told where the log is: nothing committed before the stop is left to stream
        (confirmed,) = env.sql(
            "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s", [env.slot]
        )[0]
        assert int(confirmed) >= srv.log.last_lsn  # type: ignore[call-overload]
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.shield(task), 20)


def test_serve_tells_systemd_when_it_is_ready_and_when_it_stops(
    serve_process: ServeProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sd_notify, as the systemd recipe's Type=notify expects: READY=1 once it listens, STOPPING=1
    when SIGTERM starts the drain."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        serve_process.start()
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1\n") and f":{serve_process.port}" in ready
        assert serve_process.stop(signal.SIGTERM) == 0
        assert sock.recv(4096).decode() == "STOPPING=1"
    finally:
        sock.close()
