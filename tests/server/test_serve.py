"""The sync service end to end: real Postgres, real server, real WebSocket clients."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import jwt
import psycopg
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.app import Server
from electricctl._server.options import ServeOptions
from electricctl._server.session import Replicating
from tests.satellite_client import RpcError, SatelliteClient
from tests.server_fixtures import Env, get_health, ws_url

pytestmark = pytest.mark.asyncio


async def test_health_and_http_errors(server: Server) -> None:
    status, body = await asyncio.to_thread(get_health, server.bound_port)
    assert status == 200 and body["ready"] is True and body["status"] == "ok"
    for offered, fragment in (
        ([], "Missing satellite websocket subprotocol"),
        (["electric.0.9"], "Cannot connect satellite version electric.0.9"),
        (["electric.0.13"], "Cannot connect satellite version electric.0.13"),
    ):
        with pytest.raises(InvalidStatus) as info:
            await connect(ws_url(server), subprotocols=offered)  # type: ignore[arg-type]
        assert info.value.response.status_code == 400
        assert fragment in info.value.response.body.decode()
    with pytest.raises(InvalidStatus) as info:
        await connect(ws_url(server).replace("/ws", "/elsewhere"), subprotocols=["electric.0.12"])  # type: ignore[list-item]
    assert info.value.response.status_code == 404
    for version in ("electric.0.10", "electric.0.12"):
        ws = await connect(ws_url(server), subprotocols=[version], compression=None)  # type: ignore[list-item]
        assert ws.subprotocol == version
        await ws.close()


async def test_initial_data_then_live_changes(client: SatelliteClient, env: Env) -> None:
    await client.subscribe("items")
    rows = client.table("items")
    assert rows[(b"a",)] == {
        "id": b"a",
        "n": b"1",
        "flag": b"t",
        "data": b"\x00\xff",  # bytea travels as raw bytes
        "at": b"2024-01-02 03:04:05.5Z",  # timestamptz in UTC with a Z
        "doc": b'{"k": [1]}',
        "price": b"1.5",
    }
    assert rows[(b"b",)]["n"] is None and rows[(b"b",)]["flag"] == b"f"
    # the relation came before any data that uses it
    kinds = [type(m).__name__ for m in client.messages]
    assert kinds.index("SatRelation") < kinds.index("SatSubsDataBegin")

    env.sql("INSERT INTO items (id, n) VALUES ('c', 3)")
    env.sql("UPDATE items SET n = 10, flag = NULL WHERE id = 'a'")
    env.sql("DELETE FROM items WHERE id = 'b'")
    with_two = "BEGIN; INSERT INTO items (id) VALUES ('d'); INSERT INTO items (id) VALUES ('e'); COMMIT"
    env.sql(with_two)
    env.sql("INSERT INTO other VALUES (1, 'not subscribed')")
    env.sql("INSERT INTO items (id) VALUES ('sentinel')")  # commits last, so it arrives last
    await client.wait_for(lambda: (b"sentinel",) in rows)
    assert len(client.transactions) == 5  # nothing from the unsubscribed table
    del rows[(b"sentinel",)]
    client.transactions.pop()
    assert set(rows) == {(b"a",), (b"c",), (b"d",), (b"e",)}
    assert rows[(b"a",)]["n"] == b"10" and rows[(b"a",)]["flag"] is None
    # one SatOpLog per transaction, framed by begin and commit
    last = client.transactions[-1]
    kinds = [op.WhichOneof("op") for op in last.ops]
    assert kinds == ["begin", "insert", "insert", "commit"]
    lsns = [int(t.lsn) for t in client.transactions]
    assert lsns == sorted(lsns) and len(set(lsns)) == 4
    assert all(t.xid > 0 for t in client.transactions)
    update = client.transactions[1].ops[1].update
    assert codec.decode_row(update.old_row_data, 7)[1] == b"1"  # old values (REPLICA IDENTITY FULL)
    assert client.transactions[0].ops[1].insert.tags[0].startswith("@")


async def test_snapshot_joins_the_stream_under_concurrent_writes(client: SatelliteClient, env: Env) -> None:
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        import psycopg

        with psycopg.connect(env.url, autocommit=True) as conn:
            i = 0
            while not stop.is_set() and i < 3000:
                conn.execute("INSERT INTO big VALUES (%s, 'x')", [i])
                if i % 7 == 0:
                    conn.execute("UPDATE big SET payload = 'y' WHERE id = %s", [i // 2])
                if i % 11 == 0:
                    conn.execute("DELETE FROM big WHERE id = %s", [i // 3])
                written.append(i)
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    await asyncio.sleep(0.3)
    await client.subscribe("big")
    await asyncio.sleep(0.5)
    stop.set()
    thread.join()
    expected = {(str(r[0]).encode(),): r[1] for r in env.sql("SELECT id, payload FROM big")}
    await client.wait_for(lambda: {k: v["payload"].decode() for k, v in client.table("big").items()} == expected)

    # no insert was applied twice: each id arrives once, through the snapshot or through the stream
    seen: dict[bytes, int] = {}
    in_snapshot = False
    for m in client.messages:
        if isinstance(m, pb.SatSubsDataBegin):
            in_snapshot = True
        elif isinstance(m, pb.SatSubsDataEnd):
            in_snapshot = False
        elif isinstance(m, pb.SatOpLog):
            for op in m.ops:
                if op.WhichOneof("op") == "insert" and client.relations[op.insert.relation_id].table == "big":
                    key = op.insert.row_data.values[0]
                    seen[key] = seen.get(key, 0) + 1
    assert seen and max(seen.values()) == 1, "a row was delivered twice"
    assert in_snapshot is False


async def test_acks_and_the_unacked_window(server: Server, env: Env) -> None:
    cl = await SatelliteClient(ws_url(server), auto_ack=False).connect()
    await cl.authenticate(env.token())
    # on the newest schema: no migration transaction takes a place in the window
    resp = await cl.start(schema_version=str(env.sql("SELECT max(version) FROM electric.migrations")[0][0]))
    window = resp.unacked_window_size
    assert window == ServeOptions().unacked_window == 300
    await cl.subscribe("other")
    with psycopg.connect(env.url, autocommit=True) as conn:  # one transaction each
        for i in range(window + 10):
            conn.execute("INSERT INTO other VALUES (%s, 'x')", [i])
    await cl.wait_for(lambda: len(cl.transactions) >= window)
    await server.caught_up()  # all are in the log: only the window holds the last 10 back
    client = server.clients[cl.client_id]
    for _ in range(100):  # until the streamer waits for an ack (it has nothing else to do)
        if not client.sink.acked.is_set():
            break
        await asyncio.sleep(0.01)
    assert isinstance(client.phase, Replicating)
    assert not client.sink.acked.is_set() and len(client.phase.unacked) == window
    assert len(cl.transactions) == window  # the window is full: the server waits for an ack
    await cl.ack()
    await cl.wait_for(lambda: len(cl.transactions) == window + 10)
    assert len(cl.table("other")) == window + 10
    await cl.close()


async def test_unsubscribe_sends_gone_for_rows_no_longer_covered(client: SatelliteClient, env: Env) -> None:
    first = await client.subscribe("items")
    second = await client.subscribe("other", "items")
    env.sql("INSERT INTO other VALUES (7, 'seven')")
    await client.wait_for(lambda: (b"7",) in client.table("other"))
    await client.unsubscribe(second)
    await client.wait_for(lambda: not client.table("other"))
    assert len(client.table("items")) == 2  # still covered by the first subscription
    begin = next(m for m in client.messages if isinstance(m, pb.SatUnsubsDataBegin))
    assert list(begin.subscription_ids) == [second]
    gone = [op for m in client.messages if isinstance(m, pb.SatOpLog) for op in m.ops if op.WhichOneof("op") == "gone"]
    assert len(gone) == 1
    env.sql("INSERT INTO other VALUES (8, 'eight')")
    env.sql("INSERT INTO items (id) VALUES ('z')")
    await client.wait_for(lambda: (b"z",) in client.table("items"))
    assert not client.table("other")
    await client.unsubscribe(first)
    await client.wait_for(lambda: not client.table("items"))


async def test_resume_with_lsn_and_subscriptions(server: Server, env: Env) -> None:
    cl = await SatelliteClient(ws_url(server)).connect()
    await cl.authenticate(env.token())
    await cl.start()
    sub = await cl.subscribe("items")
    env.sql("INSERT INTO items (id) VALUES ('c')")
    await cl.wait_for(lambda: (b"c",) in cl.table("items"))
    lsn = cl.last_lsn
    await cl.close()

    env.sql("INSERT INTO items (id) VALUES ('d')")
    env.sql("UPDATE items SET n = 5 WHERE id = 'c'")

    again = SatelliteClient(ws_url(server), client_id=cl.client_id)
    again.rows = cl.rows
    await again.connect()
    await again.authenticate(env.token())
    await again.start(lsn=lsn, subscription_ids=[sub])
    await again.wait_for(lambda: len(again.transactions) == 2)
    assert not any(isinstance(m, pb.SatSubsDataBegin) for m in again.messages)  # no resync
    assert again.table("items")[(b"c",)]["n"] == b"5" and (b"d",) in again.table("items")

    bad = SatelliteClient(ws_url(server)).connect()
    other = await bad
    await other.authenticate(env.token())
    for lsn_value, subs, code in (
        (b"not-an-lsn", [], "MALFORMED_LSN"),
        (lsn, [str(uuid.uuid4())], "SUBSCRIPTION_NOT_FOUND"),
        (b"", [sub], "INVALID_POSITION"),
        (b"99999999999999", [], "INVALID_POSITION"),
    ):
        resp = await other.start(lsn=lsn_value, subscription_ids=subs)
        assert pb.SatInStartReplicationResp.ReplicationError.Code.Name(resp.err.code) == code
    await other.close()
    await again.close()


async def test_behind_window_after_the_log_is_pruned(server: Server, env: Env) -> None:
    cl = await SatelliteClient(ws_url(server)).connect()
    await cl.authenticate(env.token())
    await cl.start()
    await cl.subscribe("other")
    env.sql("INSERT INTO other VALUES (1, 'x')")
    await cl.wait_for(lambda: len(cl.transactions) == 1)
    old = cl.last_lsn
    await cl.close()
    server.log.segment_bytes = 1  # every transaction now opens a new segment
    for i in range(2, 5):
        env.sql("INSERT INTO other VALUES (%s, 'x')", [i])
    await server.caught_up()  # the three are in the log, each in a segment of its own
    server.log.retention_seconds = 0
    assert server.log.prune(now=time.time() + 10) >= 1
    late = await SatelliteClient(ws_url(server), client_id=cl.client_id).connect()
    await late.authenticate(env.token())
    resp = await late.start(lsn=old)
    assert resp.err.code == pb.SatInStartReplicationResp.ReplicationError.BEHIND_WINDOW
    await late.close()


def _forged(token: str) -> str:
    """A valid token whose payload was changed (sub -> admin) and its signature kept."""
    import base64
    import json as json_

    header, payload, signature = token.split(".")
    claims = json_.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json_.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_auth_failures(server: Server, env: Env) -> None:
    cl = await SatelliteClient(ws_url(server)).connect()
    with pytest.raises(RpcError, match="AUTH_REQUIRED"):
        await cl.start()  # an RPC before auth
    now = int(time.time())
    bad_tokens = {
        "wrong key": jwt.encode({"sub": "u", "iat": now, "exp": now + 60}, "x" * 32, algorithm="HS256"),
        "expired": jwt.encode(
            {"sub": "u", "iat": now - 100, "exp": now - 60}, "test-secret-test-secret-test-secret", algorithm="HS256"
        ),
        "alg none": jwt.encode({"sub": "u", "iat": now, "exp": now + 60}, key="", algorithm="none"),
        "no sub": jwt.encode({"iat": now, "exp": now + 60}, "test-secret-test-secret-test-secret", algorithm="HS256"),
        "garbage": "not.a.jwt",
        "forged": _forged(env.token("u")),
    }
    for why, token in bad_tokens.items():
        with pytest.raises(RpcError, match="AUTH_REQUIRED") as info:
            await cl.authenticate(token)
        assert info.value.error.message, why
    await cl.authenticate(env.token())
    # a second connection with the same client id is refused; the first keeps working
    twin = await SatelliteClient(ws_url(server), client_id=cl.client_id).connect()
    with pytest.raises(RpcError, match="INVALID_REQUEST"):
        await twin.authenticate(env.token())
    await twin.close()
    await cl.start()
    await cl.subscribe("items")
    assert len(cl.table("items")) == 2
    await cl.close()


async def test_bad_subscriptions(client: SatelliteClient) -> None:
    with pytest.raises(RpcError, match="subscription_id must be a UUID"):
        await client.subscribe("items", subscription_id="not-a-uuid")
    with pytest.raises(RpcError, match="TABLE_NOT_FOUND"):
        await client.subscribe("nonexistent")
    with pytest.raises(RpcError, match="TABLE_NOT_FOUND"):
        await client.subscribe("electric.shadow")
    sub = await client.subscribe("items")
    with pytest.raises(RpcError, match="SUBSCRIPTION_ID_ALREADY_EXISTS"):
        await client.subscribe("items", subscription_id=sub)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "empty frame"),
        (b"\x07\x00", "unknown message type 7"),
        (b"\x15\xff\xff\xff", "malformed SatRpcRequest"),
        (b"\x09\x0a\x02\x0a\x00", "authenticate first"),
    ],
)
async def test_malformed_frames_close_with_1007_and_others_keep_working(
    server: Server, env: Env, frame: bytes, reason: str
) -> None:
    good = await SatelliteClient(ws_url(server)).connect()
    await good.authenticate(env.token())
    await good.start()
    await good.subscribe("other")

    bad = await SatelliteClient(ws_url(server)).connect()
    assert bad.ws is not None
    await bad.ws.send(frame)
    await bad.wait_for(lambda: bad.closed_with is not None)
    assert bad.closed_with is not None and bad.closed_with[0] == 1007
    errors = [m for m in bad.messages if isinstance(m, pb.SatErrorResp)]
    assert errors and reason in errors[0].message

    env.sql("INSERT INTO other VALUES (42, 'still here')")
    await good.wait_for(lambda: (b"42",) in good.table("other"))
    await good.close()


async def test_text_frames_are_refused(server: Server) -> None:
    ws = await connect(ws_url(server), subprotocols=["electric.0.12"])  # type: ignore[list-item]
    await ws.send("hello")
    frame = await ws.recv()
    assert isinstance(frame, bytes) and isinstance(codec.decode(frame), pb.SatErrorResp)
    await ws.wait_closed()
    assert ws.close_code == 1007


async def test_a_client_that_stops_reading_is_dropped(server: Server, env: Env) -> None:
    env.sql("INSERT INTO big SELECT i, repeat('p', 2000) FROM generate_series(1, 20000) i")
    good = await SatelliteClient(ws_url(server)).connect()
    await good.authenticate(env.token())
    await good.start()
    await good.subscribe("other")

    stalled = await connect(ws_url(server), subprotocols=["electric.0.12"], max_queue=1)  # type: ignore[list-item]
    slow = SatelliteClient(ws_url(server))
    auth = pb.SatAuthReq(id=slow.client_id, token=env.token())
    await stalled.send(
        codec.encode(pb.SatRpcRequest(method="authenticate", request_id=1, message=auth.SerializeToString()))
    )
    start = pb.SatInStartReplicationReq()
    await stalled.send(
        codec.encode(pb.SatRpcRequest(method="startReplication", request_id=2, message=start.SerializeToString()))
    )
    sub = pb.SatSubsReq(
        subscription_id=str(uuid.uuid4()),
        shape_requests=[
            pb.SatShapeReq(
                request_id="r", shape_definition=pb.SatShapeDef(selects=[pb.SatShapeDef.Select(tablename="big")])
            )
        ],
    )
    await stalled.send(
        codec.encode(pb.SatRpcRequest(method="subscribe", request_id=3, message=sub.SerializeToString()))
    )
    stalled.transport.pause_reading()  # the client stops reading: 40 MB are waiting for it
    deadline = time.monotonic() + 20
    while slow.client_id in server.clients and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert slow.client_id not in server.clients, "the stalled client was not dropped"
    env.sql("INSERT INTO other VALUES (1, 'served')")
    await good.wait_for(lambda: (b"1",) in good.table("other"))
    await good.close()
    stalled.transport.abort()


async def test_expired_jwt_closes_the_connection_with_4000(server: Server, env: Env) -> None:
    cl = await SatelliteClient(ws_url(server)).connect()
    now = int(time.time())
    token = jwt.encode(
        {"sub": "u", "iat": now, "exp": now + 2}, "test-secret-test-secret-test-secret", algorithm="HS256"
    )
    await cl.authenticate(token)
    await cl.start()
    await cl.wait_for(lambda: cl.closed_with is not None, timeout=15)
    assert cl.closed_with == (4000, "JWT-expired")


async def test_replication_recovers_after_the_walsender_is_killed(
    client: SatelliteClient, server: Server, env: Env
) -> None:
    await client.subscribe("other")
    env.sql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s", [env.slot])
    for _ in range(200):
        if server.stats["replication_restarts"]:
            break
        await asyncio.sleep(0.05)
    assert server.stats["replication_restarts"] == 1
    env.sql("INSERT INTO other VALUES (5, 'after the outage')")
    await client.wait_for(lambda: (b"5",) in client.table("other"), timeout=30)
    status, body = await asyncio.to_thread(get_health, server.bound_port)
    assert status == 200 and body["ready"] is True


async def test_token_command_mints_a_verifiable_token(env: Env, run_cli) -> None:  # type: ignore[no-untyped-def]
    from electricctl._auth.tokens import verify

    result = run_cli("token", "-f", str(env.config_path), "--sub", "alice", "--claim", "role=editor", "--ttl", "5m")
    assert result.code == 0, result.err
    identity = verify(result.out.strip(), env.config.auth)
    assert identity.user_id == "alice" and identity.claims["role"] == "editor"
    assert identity.expires_at is not None and 250 < identity.expires_at - time.time() <= 300


async def test_large_transactions_stream_before_commit_and_rollbacks_never_arrive(env: Env) -> None:
    from tests.server_fixtures import running_server

    async with running_server(env, replication_work_mem="64kB") as srv:
        cl = await SatelliteClient(ws_url(srv)).connect()
        await cl.authenticate(env.token())
        await cl.start()
        await cl.subscribe("big")
        env.sql(  # ~1 MB: far over 64kB, so the walsender streams it while it runs
            "BEGIN; INSERT INTO big SELECT i, repeat('p', 200) FROM generate_series(1, 5000) i;"
            " SAVEPOINT s; INSERT INTO big SELECT i, 'undone' FROM generate_series(5001, 7000) i; ROLLBACK TO s;"
            " INSERT INTO big VALUES (9999, 'after the savepoint'); COMMIT"
        )
        env.sql("BEGIN; INSERT INTO big SELECT i, repeat('p', 200) FROM generate_series(10001, 14000) i; ROLLBACK")
        env.sql("INSERT INTO big VALUES (20000, 'small, committed after the rollback')")
        await cl.wait_for(lambda: (b"20000",) in cl.table("big"), timeout=30)
        rows = cl.table("big")
        assert len(rows) == 5002 and (b"9999",) in rows and (b"5001",) not in rows and (b"10001",) not in rows
        big_tx = next(t for t in cl.transactions if len(t.ops) > 100)
        assert len(big_tx.ops) == 5003  # one SatOpLog: begin, 5,001 inserts, commit
        await cl.close()


async def test_a_client_that_leaves_as_its_subscription_data_ends_resumes_with_it(server: Server, env: Env) -> None:
    """``electricctl sync --once`` and apps that quit right after a sync close the socket the
    moment the subscription's data has ended: the server must still have recorded it, or the next
    resume is refused (unknown subscription) and the client syncs everything again."""
    for _ in range(20):
        cl = await SatelliteClient(ws_url(server)).connect()
        await cl.authenticate(env.token())
        await cl.start()
        sub = await cl.subscribe("items")
        assert cl.ws is not None
        cl.ws.transport.abort()  # gone at once, without a close handshake
        await cl.close()
        again, resp = await cl.resume(env.token(), [sub])
        assert not resp.HasField("err"), resp.err.message
        await again.close()


async def test_caught_up_answers_after_everything_committed_before_it(server: Server, env: Env) -> None:
    """electricctl's ``electricctl.caughtUp`` RPC (an extension Electric's clients never call):
    its answer comes after every frame carrying what Postgres had committed before the request."""
    from electricctl._protocol import codec

    cl = await SatelliteClient(ws_url(server)).connect()
    await cl.authenticate(env.token())
    with pytest.raises(RpcError, match="start replication first"):
        await cl.rpc(codec.CAUGHT_UP, pb.ElectricctlCaughtUpReq())
    await cl.start()
    sub = await cl.subscribe("items")
    lsn = cl.last_lsn
    await cl.close()
    for i in range(30):  # while away, in 30 transactions
        env.sql("INSERT INTO items (id, n) VALUES (%s, %s)", [f"away{i}", i])
    env.sql("INSERT INTO other VALUES (99, 'not subscribed')")  # the newest commit is not for this client
    again, resp = await cl.resume(env.token(), [sub], lsn)
    assert not resp.HasField("err")
    assert isinstance(await again.rpc(codec.CAUGHT_UP, pb.ElectricctlCaughtUpReq()), pb.ElectricctlCaughtUpResp)
    # no waiting: the answer came after all of them
    assert {f"away{i}".encode() for i in range(30)} <= {k[0] for k in again.table("items")}
    # live too: a commit just before the request is in before the answer
    env.sql("INSERT INTO items (id, n) VALUES ('live', 1)")
    await again.rpc(codec.CAUGHT_UP, pb.ElectricctlCaughtUpReq())
    assert (b"live",) in again.table("items")
    await again.close()
