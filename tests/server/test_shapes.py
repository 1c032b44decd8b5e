"""Shapes with where clauses over the live server: filtered snapshots, move-in and move-out,
auth claims, declared shapes and adhoc_shapes, overlapping shapes, and bad clauses."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import psycopg
import pytest

from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.app import Server
from tests.satellite_client import RpcError, SatelliteClient
from tests.server_fixtures import Env, applied_env, running_server, subs_req, ws_url

pytestmark = pytest.mark.asyncio


async def subscribe(cl: SatelliteClient, table: str, where: str = "", sub_id: str | None = None) -> str:
    sub_id = sub_id or str(uuid.uuid4())
    resp = await cl.rpc("subscribe", subs_req(table, where, sub_id))
    assert isinstance(resp, pb.SatSubsResp)
    if resp.HasField("err"):
        errors = "; ".join(
            f"{pb.SatSubsResp.SatSubsError.ShapeReqError.Code.Name(e.code)}: {e.message}"
            for e in resp.err.shape_request_error
        )
        raise RpcError(pb.SatErrorResp(error_type=pb.SatErrorResp.INVALID_REQUEST, message=errors))
    await cl.wait_for(lambda: sub_id in cl.subscriptions_done)
    return sub_id


def ids(cl: SatelliteClient, table: str = "other") -> set[int]:
    return {int(k[0]) for k in cl.table(table)}


def ops_for(cl: SatelliteClient, kind: str) -> list[pb.SatTransOp]:
    return [op for t in cl.transactions for op in t.ops if op.WhichOneof("op") == kind]


async def test_filtered_snapshot_then_move_in_and_move_out(client: SatelliteClient, env: Env) -> None:
    env.sql("INSERT INTO other SELECT i, CASE WHEN i % 2 = 0 THEN 'even' ELSE 'odd' END FROM generate_series(1, 10) i")
    await subscribe(client, "other", "this.label = 'even' AND id > 2")
    assert ids(client) == {4, 6, 8, 10}

    env.sql("UPDATE other SET label = 'even' WHERE id = 5")  # moves in: arrives as an insert
    await client.wait_for(lambda: 5 in ids(client))
    assert len(ops_for(client, "insert")) == 1 and not ops_for(client, "update")

    env.sql("UPDATE other SET label = 'odd' WHERE id = 4")  # moves out: GONE (the row still exists)
    await client.wait_for(lambda: 4 not in ids(client))
    (gone,) = ops_for(client, "gone")
    assert gone.gone.pk_data.values[0] == b"4"

    env.sql("UPDATE other SET id = id WHERE id = 6")  # stays in, unchanged: nothing to send
    env.sql("UPDATE other SET label = 'even' WHERE id = 6")
    env.sql("DELETE FROM other WHERE id = 8")  # deleted while in the shape: a delete
    await client.wait_for(lambda: 8 not in ids(client))
    assert len(ops_for(client, "delete")) == 1

    before = len(client.transactions)
    env.sql("UPDATE other SET label = 'odd' WHERE id = 3")  # outside before and after
    env.sql("INSERT INTO other VALUES (100, 'odd'), (1, 'x') ON CONFLICT (id) DO NOTHING")
    env.sql("INSERT INTO other VALUES (12, 'even')")
    await client.wait_for(lambda: 12 in ids(client))
    assert len(client.transactions) == before + 1  # changes outside the shape never reached the client
    expected = {r[0] for r in env.sql("SELECT id FROM other WHERE label = 'even' AND id > 2")}
    assert ids(client) == expected


async def test_auth_claims_in_clauses(server: Server, env: Env) -> None:
    env.sql("INSERT INTO other VALUES (1, 'alice'), (2, 'bob'), (3, 'alice')")
    alice = await SatelliteClient(ws_url(server)).connect()
    await alice.authenticate(env.token("alice"))
    await alice.start()
    await subscribe(alice, "other", "label = auth.sub")
    assert ids(alice) == {1, 3}
    with pytest.raises(RpcError, match="the token has no 'team' claim"):
        await subscribe(alice, "other", "label = auth.team")
    env.sql("INSERT INTO other VALUES (4, 'bob'), (5, 'alice')")
    await alice.wait_for(lambda: 5 in ids(alice))
    assert ids(alice) == {1, 3, 5}
    await alice.close()


@pytest.mark.parametrize(
    ("where", "fragment"),
    [
        ("nope = 1", "INVALID_WHERE_CLAUSE: invalid where clause at position 1: column 'nope' does not exist"),
        ("label = 'a' OR now() IS NULL", "position 16: function now() is not allowed"),
        ("id + 1", "the clause must be a boolean condition"),
        ("id = 1; DROP TABLE other", "position 7: must be a single expression"),
        ("label = 5", "operator does not exist: text = int"),
        ("id IN (SELECT 1)", "subqueries are not allowed"),
    ],
)
async def test_bad_clauses_are_refused_and_the_connection_stays(
    client: SatelliteClient, env: Env, where: str, fragment: str
) -> None:
    with pytest.raises(RpcError) as info:
        await subscribe(client, "other", where)
    assert fragment in str(info.value)
    env.sql("INSERT INTO other VALUES (1, 'x')")
    await subscribe(client, "other", "id = 1")
    assert ids(client) == {1}


async def test_overlapping_shapes_send_a_row_once_and_keep_it_while_held(client: SatelliteClient, env: Env) -> None:
    env.sql("INSERT INTO other SELECT i, 'l' || i FROM generate_series(1, 6) i")
    low = await subscribe(client, "other", "id <= 4")
    high = await subscribe(client, "other", "id >= 3")
    assert ids(client) == {1, 2, 3, 4, 5, 6}
    sent = [
        op.insert.row_data.values[0]
        for m in client.messages
        if isinstance(m, pb.SatOpLog)
        for op in m.ops
        if op.WhichOneof("op") == "insert"
    ]
    assert sorted(sent) == sorted({b"1", b"2", b"3", b"4", b"5", b"6"})  # 3 and 4 match both: sent once

    env.sql("UPDATE other SET id = 40 WHERE id = 4")  # leaves 'low', still in 'high'
    await client.wait_for(lambda: 40 in ids(client) and 4 not in ids(client))

    await client.unsubscribe(low)
    await client.wait_for(lambda: ids(client) == {3, 5, 6, 40})  # 1 and 2 are gone; 3 is still held
    await client.unsubscribe(high)
    await client.wait_for(lambda: ids(client) == set())


async def test_filtered_snapshot_joins_the_stream_under_concurrent_writes(client: SatelliteClient, env: Env) -> None:
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(env.url, autocommit=True) as conn:
            for i in range(2000):
                if stop.is_set():
                    break
                conn.execute("INSERT INTO big VALUES (%s, %s)", [i, "keep" if i % 3 else "drop"])
                if i % 5 == 0:
                    conn.execute("UPDATE big SET payload = 'keep' WHERE id = %s", [i // 2])
                if i % 7 == 0:
                    conn.execute("UPDATE big SET payload = 'drop' WHERE id = %s", [i // 3])

    thread = threading.Thread(target=writer)
    thread.start()
    await asyncio.sleep(0.3)
    await subscribe(client, "big", "payload = 'keep'")
    await asyncio.sleep(0.5)
    stop.set()
    thread.join()
    expected = {r[0] for r in env.sql("SELECT id FROM big WHERE payload = 'keep'")}
    await client.wait_for(lambda: ids(client, "big") == expected)


async def test_declared_shapes_and_adhoc_deny(env: Env, tmp_path: Path) -> None:
    config_text = """
version: 1
auth:
  mode: secure
  jwt: {alg: HS256, key: test-secret-test-secret-test-secret}
tables: [items, other, big]
shapes:
  - name: mine
    table: other
    where: "label = auth.sub"
  - name: all_items
    table: items
adhoc_shapes: deny
"""
    deny_env = applied_env(env.url, tmp_path, config_text, "deny.yaml")
    env.sql("INSERT INTO other VALUES (1, 'alice'), (2, 'bob')")
    async with running_server(deny_env) as srv:
        cl = await SatelliteClient(ws_url(srv)).connect()
        await cl.authenticate(env.token("alice"))
        await cl.start()
        with pytest.raises(RpcError, match=r"not declared in electric\.yaml, and adhoc_shapes is deny"):
            await subscribe(cl, "other", "id = 2")
        with pytest.raises(RpcError, match="not declared"):
            await subscribe(cl, "other")
        await subscribe(cl, "other", "this.label = auth.sub")  # the declared clause, in the client's dialect
        assert ids(cl) == {1}
        await subscribe(cl, "mine")  # or by the declared shape's name
        await subscribe(cl, "items")
        assert len(cl.table("items")) == 2
        await cl.close()


async def test_ten_thousand_equality_shapes_each_client_gets_exactly_its_rows(server: Server, env: Env) -> None:
    clients, per_client = 20, 500  # 10,000 shapes `id = n`
    env.sql("INSERT INTO other SELECT i, 'before' FROM generate_series(0, 20000, 7) i")
    conns: list[SatelliteClient] = []
    for k in range(clients):
        cl = await SatelliteClient(ws_url(server)).connect()
        await cl.authenticate(env.token(f"user-{k}"))
        await cl.start()
        sub_id = str(uuid.uuid4())
        req = pb.SatSubsReq(
            subscription_id=sub_id,
            shape_requests=[
                pb.SatShapeReq(
                    request_id=f"r{n}",
                    shape_definition=pb.SatShapeDef(
                        selects=[pb.SatShapeDef.Select(tablename="other", where=f"id = {n}")]
                    ),
                )
                for n in range(k * per_client, (k + 1) * per_client)
            ],
        )
        resp = await cl.rpc("subscribe", req, timeout=60)
        assert isinstance(resp, pb.SatSubsResp) and not resp.HasField("err")
        await cl.wait_for(lambda cl=cl, sub_id=sub_id: sub_id in cl.subscriptions_done, timeout=60)
        conns.append(cl)
    for _ in range(100):  # the server registers a subscription's shapes right after its data
        if len(server.router._tables["public.other"].by_value) == clients * per_client:
            break
        await asyncio.sleep(0.05)
    assert len(server.router._tables["public.other"].by_value) == clients * per_client

    env.sql(
        "INSERT INTO other SELECT i, 'new' FROM generate_series(1, 10000, 3) i ON CONFLICT (id) DO UPDATE SET label = 'moved'"
    )
    env.sql("DELETE FROM other WHERE id % 10 = 0")
    env.sql("UPDATE other SET label = 'last' WHERE id % 10 = 5")
    expected_all = {r[0]: r[1] for r in env.sql("SELECT id, label FROM other WHERE id < %s", [clients * per_client])}
    for k, cl in enumerate(conns):
        mine = {i: label for i, label in expected_all.items() if k * per_client <= i < (k + 1) * per_client}
        await cl.wait_for(
            lambda cl=cl, mine=mine: {int(p[0]): r["label"].decode() for p, r in cl.table("other").items()} == mine
        )
    # nobody received a change to someone else's rows
    for k, cl in enumerate(conns):
        for tx in cl.transactions:
            for op in tx.ops[1:-1]:
                body = getattr(op, op.WhichOneof("op"))
                row = (
                    body.row_data
                    if op.WhichOneof("op") in ("insert", "update")
                    else (body.old_row_data if op.WhichOneof("op") == "delete" else body.pk_data)
                )
                assert k * per_client <= int(row.values[0]) < (k + 1) * per_client
    for cl in conns:
        await cl.close()


async def test_a_value_python_cannot_hold_does_not_stop_the_stream(client: SatelliteClient, env: Env) -> None:
    # Postgres stores timestamps Python's datetime cannot hold (+-infinity, BC, past year 9999).
    # A clause on such a column cannot be decided for that row in the stream: the row does not
    # match there, and the stream goes on (it used to fail, cutting off every client with a
    # clause on the column, again at each reconnect).
    await subscribe(client, "items", "this.at > '2020-01-01'")
    env.sql("INSERT INTO items (id, at) VALUES ('inf', 'infinity'), ('bc', '0044-03-15 BC'), ('far', '10000-01-01')")
    env.sql("INSERT INTO items (id, at) VALUES ('ok', '2024-05-01')")
    await client.wait_for(lambda: (b"ok",) in client.table("items"))
    assert {(b"inf",), (b"bc",), (b"far",)}.isdisjoint(client.table("items"))
    env.sql("UPDATE items SET at = '2025-01-01' WHERE id = 'inf'")  # now decidable: moves in
    await client.wait_for(lambda: (b"inf",) in client.table("items"))
