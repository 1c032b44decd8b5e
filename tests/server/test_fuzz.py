"""Fuzz the live session with hypothesis: whatever a client sends, the server answers with valid
frames or closes that connection, and keeps serving everyone else."""

from __future__ import annotations

import asyncio
import threading
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.app import Server
from tests.satellite_client import SatelliteClient
from tests.server_fixtures import Env, get_health, running_server


class ThreadedServer:
    """A server on its own event loop thread, so hypothesis can drive it from plain functions."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.ready = threading.Event()
        self.srv: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self.ready.wait(30)

    async def _main(self) -> None:
        async with running_server(self.env) as srv:
            self.srv = srv
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def rpc(method: str, body: bytes, request_id: int = 1) -> bytes:
    return codec.encode(pb.SatRpcRequest(method=method, request_id=request_id, message=body))


METHODS = ["authenticate", "startReplication", "stopReplication", "subscribe", "unsubscribe", "nope", ""]
frames = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda t, b: bytes([t]) + b,
        st.sampled_from([0, 9, 10, 14, 15, 16, 17, 18, 21, 22, 23, 24, 25]),
        st.binary(max_size=64),
    ),
    st.builds(rpc, st.sampled_from(METHODS), st.binary(max_size=64), st.integers(0, 2**32 - 1)),
    st.builds(
        lambda sub, table: rpc(
            "subscribe",
            pb.SatSubsReq(
                subscription_id=sub,
                shape_requests=[
                    pb.SatShapeReq(
                        request_id="r",
                        shape_definition=pb.SatShapeDef(selects=[pb.SatShapeDef.Select(tablename=table)]),
                    )
                ],
            ).SerializeToString(),
        ),
        st.one_of(st.just(str(uuid.uuid4())), st.text(max_size=10)),
        st.sampled_from(["items", "other", "nope", "electric.shadow", ""]),
    ),
    st.builds(
        lambda lsn: rpc("startReplication", pb.SatInStartReplicationReq(lsn=lsn).SerializeToString()),
        st.binary(max_size=12),
    ),
    st.builds(lambda lsn: codec.encode(pb.SatOpLogAck(lsn=lsn)), st.binary(max_size=12)),
)


def test_fuzzed_sessions_never_take_the_server_down(env: Env) -> None:
    ts = ThreadedServer(env)
    assert ts.srv is not None
    url = f"ws://127.0.0.1:{ts.srv.bound_port}/ws"

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.booleans(), st.lists(frames, min_size=1, max_size=6))
    def session(authenticate: bool, sequence: list[bytes]) -> None:
        with connect(url, subprotocols=["electric.0.12"], open_timeout=10) as ws:  # type: ignore[list-item]
            try:
                if authenticate:
                    ws.send(
                        rpc("authenticate", pb.SatAuthReq(id=str(uuid.uuid4()), token=env.token()).SerializeToString())
                    )
                for frame in sequence:
                    ws.send(frame)
                while True:
                    reply = ws.recv(timeout=0.3)
                    assert isinstance(reply, bytes)
                    codec.decode(reply)  # the server only ever sends valid frames
            except (TimeoutError, ConnectionClosed):
                pass

    try:
        session()
        status, body = get_health(ts.srv.bound_port)
        assert status == 200 and body["ready"] is True

        async def still_serving() -> int:
            cl = await SatelliteClient(url).connect()
            await cl.authenticate(env.token())
            await cl.start()
            await cl.subscribe("items")
            n = len(cl.table("items"))
            await cl.close()
            return n

        assert asyncio.run(still_serving()) == 2
    finally:
        ts.stop()
