"""Issue 10, points 2 and 10b: a client id belongs to the user who first used it, and an identity
that Postgres could not store is refused as an auth error, not a crash."""

from __future__ import annotations

import jwt
import pytest

from electricctl._protocol import satellite_pb2 as pb
from electricctl._protocol.rpc import RpcError
from electricctl._server.app import Server
from tests.satellite_client import SatelliteClient
from tests.server.test_writes import ITEMS, Writer, insert, items, until
from tests.server_fixtures import Env, running_server, ws_url

pytestmark = pytest.mark.asyncio

ERR = pb.SatErrorResp


async def _as(server: Server, env: Env, sub: str, client_id: str) -> Writer:
    cl = await SatelliteClient(ws_url(server), client_id=client_id).connect()
    await cl.authenticate(env.token(sub))
    await cl.start()
    await cl.wait_for(lambda: cl.outbound_lsn is not None)
    return Writer(cl)


async def test_another_user_cannot_take_over_a_client_id(server: Server, env: Env) -> None:
    """The attack: Mallory reads Alice's client id from the stream (SatOpBegin.origin), connects
    under it with her own valid token and sends client LSN 0xFFFFFFFF, so that Alice's later
    writes would be skipped as already applied. Her authentication must be refused."""
    alice = await _as(server, env, "alice", "client-of-alice")
    await alice.send(ITEMS, insert(ITEMS, "a1", "1", "t"))
    await until(lambda: "a1" in items(env))
    await alice.cl.close()

    mallory = await SatelliteClient(ws_url(server), client_id="client-of-alice").connect()
    with pytest.raises(RpcError) as refused:
        await mallory.authenticate(env.token("mallory"))
    assert refused.value.error.error_type == ERR.AUTH_FAILED
    assert "belongs to another user" in refused.value.error.message
    # nothing else works on that connection either
    with pytest.raises(RpcError, match="AUTH_REQUIRED"):
        await mallory.start()
    await mallory.close()

    # the owner carries on: her next transaction (client LSN 2) is applied, not skipped
    again = await _as(server, env, "alice", "client-of-alice")
    again.lsn = alice.lsn
    await again.send(ITEMS, insert(ITEMS, "a2", "2", "t"))
    await until(lambda: "a2" in items(env))
    await again.cl.close()


async def test_the_binding_outlives_the_server(env: Env) -> None:
    async with running_server(env) as srv:
        first = await _as(srv, env, "alice", "laptop")
        await first.cl.close()
    async with running_server(env) as srv:
        intruder = await SatelliteClient(ws_url(srv), client_id="laptop").connect()
        with pytest.raises(RpcError, match="AUTH_FAILED"):
            await intruder.authenticate(env.token("bob"))
        await intruder.close()
        owner = await _as(srv, env, "alice", "laptop")
        await owner.cl.close()


@pytest.mark.parametrize(
    "claims",
    [{"sub": "ali\x00ce"}, {"sub": "alice", "team": "a\x00b"}, {"sub": "x" * 300}],
    ids=["nul-in-sub", "nul-in-claim", "overlong-sub"],
)
async def test_a_signed_token_with_an_unusable_identity_is_an_auth_error(
    server: Server, env: Env, claims: dict[str, str]
) -> None:
    import time

    now = int(time.time())
    key = env.config.auth.jwt.key
    assert key is not None
    token = jwt.encode({"iat": now, "exp": now + 60, **claims}, key, algorithm="HS256")
    cl = await SatelliteClient(ws_url(server)).connect()
    with pytest.raises(RpcError) as refused:
        await cl.authenticate(token)
    assert refused.value.error.error_type == ERR.AUTH_FAILED
    # the connection is still open and usable: a good token works on it
    await cl.authenticate(env.token())
    await cl.start()
    assert cl.closed_with is None
    await cl.close()


@pytest.mark.parametrize("client_id", ["a\x00b", "x" * 129, "tab\there"], ids=["nul", "overlong", "control"])
async def test_unusable_client_ids_are_refused(server: Server, env: Env, client_id: str) -> None:
    cl = await SatelliteClient(ws_url(server), client_id=client_id).connect()
    with pytest.raises(RpcError, match=r"INVALID_REQUEST.*client id"):
        await cl.authenticate(env.token())
    assert cl.closed_with is None
    await cl.close()
