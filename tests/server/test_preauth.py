"""Issue 10, point 7: before a client has authenticated it may send only small frames, it must
authenticate within a deadline, and one address may hold only so many such connections."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from electricctl._server.app import Server
from tests.satellite_client import SatelliteClient
from tests.server.test_writes import ITEMS, Writer, insert, items, until
from tests.server_fixtures import Env, ServeProcess, running_server, subs_req, ws_url

pytestmark = pytest.mark.asyncio


async def _raw(url: str) -> ClientConnection:
    return await connect(url, subprotocols=["electric.0.12"], compression=None, max_size=None)  # type: ignore[list-item]


async def _closed_code(ws: ClientConnection, timeout: float = 10) -> int | None:
    try:
        async with asyncio.timeout(timeout):
            async for _ in ws:
                pass
    except ConnectionClosed:
        pass
    return ws.close_code


@pytest.mark.serve_args("--max-pending-per-peer", "100")
async def test_large_frames_before_authentication_are_refused_at_once(serve_process: ServeProcess, env: Env) -> None:
    """30 unauthenticated connections each send an 8 MiB frame: each is closed with 1009 as soon
    as the frame's header arrives, memory stays flat, and an authenticated client is not slowed."""
    serve_process.start()
    good = await SatelliteClient(serve_process.url).connect()
    await good.authenticate(env.token())
    await good.start()
    before = serve_process.rss_kb()

    async def attack() -> tuple[int | None, float]:
        ws = await _raw(serve_process.url)
        started = time.monotonic()
        try:
            await ws.send(b"\0" * (8 << 20))
        except ConnectionClosed:
            pass
        code = await _closed_code(ws)
        return code, time.monotonic() - started

    results = await asyncio.gather(*(attack() for _ in range(30)))
    assert [code for code, _ in results] == [1009] * 30
    growth_mb = (serve_process.rss_kb() - before) / 1024
    assert growth_mb < 40, f"serve grew by {growth_mb:.0f} MB"
    # the authenticated client is served as before
    await good.subscribe("other")
    env.sql("INSERT INTO other VALUES (7, 'after the attack')")
    await good.wait_for(lambda: (b"7",) in good.table("other"), timeout=10)
    await good.close()
    serve_process.stop()


async def test_after_authentication_large_frames_are_accepted(env: Env) -> None:
    async with running_server(env, preauth_frame_bytes=4096) as srv:
        cl = SatelliteClient(ws_url(srv))
        await cl.connect()
        await cl.authenticate(env.token())
        await cl.start()
        await cl.wait_for(lambda: cl.outbound_lsn is not None)
        big = "x" * 200_000  # one frame of about 200 KB: far above the pre-auth limit
        await Writer(cl).send(ITEMS, insert(ITEMS, "big", "1", "t"))
        await Writer(cl).send(ITEMS, insert(ITEMS, big[:10], "2", "t"))
        w = Writer(cl)
        w.lsn = 2
        await w.send(ITEMS, insert(ITEMS, "huge", "3", "t"), insert(ITEMS, big, "4", "t"))
        await until(lambda: big in items(env))
        assert cl.closed_with is None
        await cl.close()


async def test_a_connection_that_never_authenticates_is_closed(env: Env) -> None:
    async with running_server(env, auth_timeout=0.5) as srv:
        idle = await _raw(ws_url(srv))
        assert await _closed_code(idle) == 1008
        assert "authenticate within" in (idle.close_reason or "")
        # one that authenticates in time stays
        cl = await SatelliteClient(ws_url(srv)).connect()
        await cl.authenticate(env.token())
        await asyncio.sleep(1.0)
        await cl.start()
        assert cl.closed_with is None
        await cl.close()


async def test_connections_waiting_to_authenticate_are_capped_per_address(env: Env) -> None:
    async with running_server(env, max_pending_per_peer=3) as srv:
        # authenticated connections do not count
        cl = await SatelliteClient(ws_url(srv)).connect()
        await cl.authenticate(env.token())
        waiting = [await _raw(ws_url(srv)) for _ in range(3)]
        with pytest.raises(InvalidStatus) as refused:
            await _raw(ws_url(srv))
        assert refused.value.response.status_code == 429
        assert b"waiting to authenticate" in refused.value.response.body
        assert cl.closed_with is None
        # once one of them leaves there is room again
        await waiting[0].close()
        await until(lambda: srv.gate.pending("127.0.0.1") < 3)
        late = await _raw(ws_url(srv))
        for ws in (*waiting[1:], late):
            await ws.close()
        await cl.close()


async def test_a_slow_authenticated_client_is_not_affected_by_the_deadline(server: Server, env: Env) -> None:
    cl = await SatelliteClient(ws_url(server)).connect()
    await cl.authenticate(env.token())
    await cl.start()
    await cl.subscribe("items")
    assert cl.closed_with is None
    await cl.close()


async def test_a_deeply_nested_where_clause_is_an_error_reply_not_a_traceback(
    server: Server, env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    from electricctl._protocol import satellite_pb2 as pb

    cl = await SatelliteClient(ws_url(server)).connect()
    await cl.authenticate(env.token())
    await cl.start()
    for _ in range(3):  # an attacker repeats it to flood the log
        resp = await cl.rpc("subscribe", subs_req("items", "NOT " * 500 + "true"))
        assert isinstance(resp, pb.SatSubsResp) and resp.HasField("err")
        assert "nested more than" in resp.err.shape_request_error[0].message
    assert cl.closed_with is None
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text
    await cl.subscribe("items")  # the connection is fine
    await cl.close()
