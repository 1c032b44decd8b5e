"""The write path end to end: a real server, real Postgres, Satellite clients sending transactions.

Covers the conflict rules as Postgres ends up applying them (per-column LWW with tie-breaks,
add-wins deletes, compensations, immutable keys), echo and fan-out, idempotency, refusals of bad
input that leave everything else untouched, and resuming the client's stream after a reconnect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import pytest
import pytest_asyncio

from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.app import Server
from electricctl._server.common import NATIVE_HEADER
from tests.satellite_client import ReceivedTx, SatelliteClient
from tests.server_fixtures import Env, running_server, ws_url

ITEMS = pb.SatRelation(
    schema_name="public",
    table_name="items",
    relation_id=1,
    columns=[pb.SatRelationColumn(name=n, type=t) for n, t in (("id", "text"), ("n", "int4"), ("flag", "bool"))],
)
PARENTS = pb.SatRelation(
    schema_name="public",
    table_name="parents",
    relation_id=2,
    columns=[pb.SatRelationColumn(name=n, type="text") for n in ("id", "name")],
)
CHILDREN = pb.SatRelation(
    schema_name="public",
    table_name="children",
    relation_id=3,
    columns=[pb.SatRelationColumn(name=n, type=t) for n, t in (("id", "text"), ("parent_id", "text"), ("v", "int4"))],
)


def row(*values: str | bytes | None) -> pb.SatOpRow:
    return codec.encode_row([v.encode() if isinstance(v, str) else v for v in values])


def insert(rel: pb.SatRelation, *values: str | None, tags: Sequence[str] = ()) -> pb.SatTransOp:
    return pb.SatTransOp(insert=pb.SatOpInsert(relation_id=rel.relation_id, row_data=row(*values), tags=list(tags)))


def update(
    rel: pb.SatRelation, new: Sequence[str | None], old: Sequence[str | None], tags: Sequence[str] = ()
) -> pb.SatTransOp:
    return pb.SatTransOp(
        update=pb.SatOpUpdate(relation_id=rel.relation_id, row_data=row(*new), old_row_data=row(*old), tags=list(tags))
    )


def delete(rel: pb.SatRelation, *old: str | None, tags: Sequence[str] = ()) -> pb.SatTransOp:
    return pb.SatTransOp(delete=pb.SatOpDelete(relation_id=rel.relation_id, old_row_data=row(*old), tags=list(tags)))


def first_value(op: pb.SatTransOp) -> tuple[str, bytes | None]:
    """An op's kind and its row's first value (the server's relation for items has 7 columns)."""
    kind = op.WhichOneof("op")
    assert kind is not None
    body = getattr(op, kind)
    data = body.pk_data if kind == "gone" else body.row_data
    return kind, codec.decode_row(data, 7)[0]


def first_insert(cl: SatelliteClient) -> tuple[ReceivedTx, list[str]]:
    """The first live transaction the client received with an insert, and that row's tags."""
    tx = next(t for t in cl.transactions if any(o.HasField("insert") for o in t.ops))
    return tx, list(tx.ops[1].insert.tags)


class Writer:
    """A client that sends transactions with increasing client LSNs."""

    def __init__(self, cl: SatelliteClient) -> None:
        self.cl = cl
        self.lsn = 0
        self.last_ts = 0

    async def send(self, rel: pb.SatRelation, *ops: pb.SatTransOp, ts: int | None = None) -> int:
        self.lsn += 1
        if ts is None:  # distinct timestamps, as the npm client's (one snapshot per ms at most)
            ts = max(int(time.time() * 1000), self.last_ts + 1)
        self.last_ts = ts
        return await self.cl.send_transaction(rel, ops, self.lsn, ts)

    async def echo(self, ts: int) -> pb.SatOpLog:
        """Wait for this client's own transaction (origin = its id, same timestamp) to come back."""
        cl = self.cl
        await cl.wait_for(lambda: any(t.origin == cl.client_id and t.commit_ts == ts for t in cl.transactions))
        return next(pb.SatOpLog(ops=t.ops) for t in cl.transactions if t.origin == cl.client_id and t.commit_ts == ts)


async def connected(server: Server, env: Env, *, native: bool = True, subscribe: Sequence[str] = ()) -> Writer:
    cl = SatelliteClient(ws_url(server), headers={NATIVE_HEADER: "1"} if native else {})
    await cl.connect()
    await cl.authenticate(env.token())
    await cl.start()
    await cl.wait_for(lambda: cl.outbound_lsn is not None)
    if subscribe:
        await cl.subscribe(*subscribe)
    return Writer(cl)


@pytest_asyncio.fixture
async def writers(server: Server, env: Env) -> AsyncIterator[list[Writer]]:
    made: list[Writer] = []
    yield made
    for w in made:
        await w.cl.close()


async def until(predicate: object, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


def items(env: Env) -> dict[object, tuple[object, ...]]:
    return {r[0]: r[1:] for r in env.sql("SELECT id, n, flag FROM items")}


def shadow_tags(env: Env, table: str, key: str) -> list[list[object]]:
    rows = env.sql(
        "SELECT row_tags FROM electric.shadow WHERE schema_name = 'public' AND table_name = %s AND pk = ARRAY[%s]",
        [table, key],
    )
    return rows[0][0] if rows else None  # type: ignore[return-value]


async def test_insert_is_applied_echoed_and_fanned_out(server: Server, env: Env, writers: list[Writer]) -> None:
    a = await connected(server, env, subscribe=["items"])
    b = await connected(server, env, subscribe=["items"])
    writers += [a, b]
    ts = await a.send(ITEMS, insert(ITEMS, "x", "7", "t"))
    echo = await a.echo(ts)
    assert items(env)["x"] == (7, True)
    # the echo: origin = the client, its own timestamp, the row with its tag set
    assert echo.ops[0].begin.origin == a.cl.client_id
    assert echo.ops[0].begin.commit_timestamp == ts
    assert [list(op.insert.tags) for op in echo.ops[1:-1]] == [[f"{a.cl.client_id}@{ts}"]]
    # the other client gets it as a normal transaction
    await b.cl.wait_for(lambda: ("x",) in {tuple(v.decode() for v in k) for k in b.cl.table("items")})
    assert b.cl.table("items")[(b"x",)]["n"] == b"7"
    # and the server acknowledged the client's LSN
    await a.cl.wait_for(lambda: any(isinstance(m, pb.SatOpLogAck) for m in a.cl.messages))
    ack = next(m for m in a.cl.messages if isinstance(m, pb.SatOpLogAck))
    assert int.from_bytes(ack.lsn, "big") == 1
    assert shadow_tags(env, "items", "x") == [[ts, a.cl.client_id]]


async def test_echo_reaches_a_client_without_shapes_and_drops_rows_outside_them(
    server: Server, env: Env, writers: list[Writer]
) -> None:
    a = await connected(server, env)
    writers.append(a)
    ts = await a.send(ITEMS, insert(ITEMS, "y", "1", "f"))
    echo = await a.echo(ts)
    kinds = [op.WhichOneof("op") for op in echo.ops]
    assert kinds == ["begin", "gone", "commit"]  # the client holds no shape with this row


async def test_last_writer_wins_per_column_and_postgres_wins_ties(
    server: Server, env: Env, writers: list[Writer]
) -> None:
    a = await connected(server, env)
    writers.append(a)
    now = int(time.time() * 1000)
    ts = await a.send(ITEMS, insert(ITEMS, "c", "1", "f"), ts=now - 5000)
    await a.echo(ts)
    # a direct write to flag, now (later than the client's insert)
    env.sql("UPDATE items SET flag = true WHERE id = 'c'")
    # an update from the client dated between the two: it wins n (tagged at its insert) but not flag
    ts2 = await a.send(ITEMS, update(ITEMS, ["c", "2", "f"], ["c", "1", "t"]), ts=now - 1000)
    await a.echo(ts2)
    assert items(env)["c"] == (2, True)
    # a client write dated in the future beats everything
    ts3 = await a.send(ITEMS, update(ITEMS, ["c", "3", "f"], ["c", "2", "t"]), ts=now + 60_000)
    await a.echo(ts3)
    assert items(env)["c"] == (3, False)


async def test_tie_break_between_clients_is_the_greater_origin(server: Server, env: Env, writers: list[Writer]) -> None:
    low = await connected(server, env)
    high = await connected(server, env)
    if low.cl.client_id > high.cl.client_id:
        low, high = high, low
    writers += [low, high]
    ts = int(time.time() * 1000)
    # both insert the same row with the same timestamp, in either order: the greater origin wins
    await high.echo(await high.send(ITEMS, insert(ITEMS, "t", "2", "t"), ts=ts))
    await low.echo(await low.send(ITEMS, insert(ITEMS, "t", "1", "f"), ts=ts))
    assert items(env)["t"] == (2, True)
    tags = shadow_tags(env, "items", "t")
    assert sorted(t[1] for t in tags) == sorted([low.cl.client_id, high.cl.client_id])  # both inserts' tags


async def test_delete_is_add_wins(server: Server, env: Env, writers: list[Writer]) -> None:
    a = await connected(server, env, subscribe=["items"])
    b = await connected(server, env, subscribe=["items"])
    writers += [a, b]
    # 'a' exists from before electrification: clients saw it with the tag @0
    (op,) = [m for m in a.cl.messages if isinstance(m, pb.SatOpLog) and m.ops and m.ops[0].HasField("insert")][:1]
    seen = {codec.decode_row(o.insert.row_data, 7)[0]: list(o.insert.tags) for o in op.ops if o.HasField("insert")}
    assert seen[b"a"] == ["@0"]
    # b updates 'a' having seen @0; a, concurrently, deletes 'a' having seen only @0
    ts_u = await b.send(ITEMS, update(ITEMS, ["a", "50", "t"], ["a", "1", "t"], tags=["@0"]))
    await b.echo(ts_u)
    ts_d = await a.send(ITEMS, delete(ITEMS, "a", "1", "t", tags=["@0"]))
    await a.echo(ts_d)
    assert items(env)["a"] == (50, True)  # the update the delete did not see survives
    # a delete that observed the update's tag removes the row
    ts_d2 = await a.send(ITEMS, delete(ITEMS, "a", "50", "t", tags=[f"{b.cl.client_id}@{ts_u}"]))
    await a.echo(ts_d2)
    assert "a" not in items(env)


async def test_delete_of_a_direct_write_observed_by_commit_time(
    server: Server, env: Env, writers: list[Writer]
) -> None:
    a = await connected(server, env, subscribe=["items"])
    writers.append(a)
    env.sql("INSERT INTO items (id, n) VALUES ('d', 4)")
    await a.cl.wait_for(lambda: (b"d",) in a.cl.table("items"))
    tx, tags = first_insert(a.cl)
    assert tags == [f"@{tx.commit_ts}"]  # a Postgres write is known by its commit time
    await a.echo(await a.send(ITEMS, delete(ITEMS, "d", "4", None, tags=tags)))
    assert "d" not in items(env)


async def test_compensation_revives_a_parent_deleted_concurrently(
    server: Server, env: Env, writers: list[Writer]
) -> None:
    a = await connected(server, env, subscribe=["parents"])
    writers.append(a)
    env.sql("INSERT INTO parents VALUES ('p', 'the parent')")
    await a.cl.wait_for(lambda: (b"p",) in a.cl.table("parents"))
    _, parent_tags = first_insert(a.cl)
    env.sql("DELETE FROM parents WHERE id = 'p'")  # concurrently, before the client's write arrives
    comp = pb.SatTransOp(
        compensation=pb.SatOpCompensation(relation_id=PARENTS.relation_id, pk_data=row("p", None), tags=parent_tags)
    )
    await a.cl.send(PARENTS)
    a.cl._sent_relations.add(PARENTS.relation_id)
    ts = await a.send(CHILDREN, comp, insert(CHILDREN, "c1", "p", "1"))
    await a.echo(ts)
    assert env.sql("SELECT id, name FROM parents") == [("p", "the parent")]  # revived with its last values
    assert env.sql("SELECT id, parent_id FROM children") == [("c1", "p")]


async def test_duplicates_are_applied_once_and_the_stream_resumes_after_the_last(
    server: Server, env: Env, writers: list[Writer]
) -> None:
    a = await connected(server, env)
    writers.append(a)
    ts = await a.send(ITEMS, insert(ITEMS, "dup", "1", "f"))
    await a.echo(ts)
    # the same transaction again (same client LSN), as after a lost ack
    await a.cl.send_transaction(ITEMS, [update(ITEMS, ["dup", "99", "f"], ["dup", "1", "f"])], 1, ts + 1)
    later = await a.send(ITEMS, insert(ITEMS, "after", "2", "f"))
    await a.echo(later)
    assert items(env)["dup"] == (1, False) and items(env)["after"] == (2, False)
    assert server.writer.stats["duplicates"] == 1
    # a new connection of the same client is asked to resume after its last applied transaction
    await a.cl.close()
    writers.remove(a)
    again = SatelliteClient(ws_url(server), client_id=a.cl.client_id)
    await again.connect()
    writers.append(Writer(again))
    await again.authenticate(env.token())
    await again.start()
    await again.wait_for(lambda: again.outbound_lsn is not None)
    assert int.from_bytes(again.outbound_lsn or b"", "big") == 2


BAD: list[tuple[str, pb.SatRelation, pb.SatTransOp, str]] = [
    (
        "unknown relation",
        ITEMS,
        pb.SatTransOp(insert=pb.SatOpInsert(relation_id=77, row_data=row("q"))),
        "unknown relation 77",
    ),
    (
        "column count",
        ITEMS,
        pb.SatTransOp(insert=pb.SatOpInsert(relation_id=1, row_data=row("q", "1"))),
        "2 values for 3 columns",
    ),
    (
        "bitmask",
        ITEMS,
        pb.SatTransOp(
            insert=pb.SatOpInsert(relation_id=1, row_data=pb.SatOpRow(nulls_bitmask=b"", values=[b"q", b"1", b"t"]))
        ),
        "null bitmask has 0 bytes",
    ),
    ("integer", ITEMS, insert(ITEMS, "q", "abc", "t"), "column n (int4): not an integer"),
    ("boolean", ITEMS, insert(ITEMS, "q", "1", "yes"), "column flag (bool)"),
    ("range", ITEMS, insert(ITEMS, "q", "3000000000", "t"), "out of range for int4"),
    ("not null", ITEMS, insert(ITEMS, None, "1", "t"), "column id is NOT NULL but the value is null"),
    ("primary key", ITEMS, update(ITEMS, ["b2", "1", "t"], ["b", None, "f"]), "primary keys are immutable"),
    ("constraint", CHILDREN, insert(CHILDREN, "orphan", "nobody", "1"), "violates foreign key constraint"),
    (
        "unknown table",
        pb.SatRelation(
            schema_name="public",
            table_name="nope",
            relation_id=9,
            columns=[pb.SatRelationColumn(name="id", type="text")],
        ),
        pb.SatTransOp(insert=pb.SatOpInsert(relation_id=9, row_data=row("q"))),
        "not an electrified table",
    ),
]


@pytest.mark.parametrize(("case", "rel", "op", "message"), BAD, ids=[b[0] for b in BAD])
async def test_bad_transactions_are_refused_alone(
    server: Server, env: Env, writers: list[Writer], case: str, rel: pb.SatRelation, op: pb.SatTransOp, message: str
) -> None:
    a = await connected(server, env, subscribe=["items"])
    writers.append(a)
    before = env.sql("SELECT * FROM items ORDER BY id")
    good1 = await a.send(ITEMS, insert(ITEMS, "g1", "1", "t"))
    bad = await a.send(rel, op)
    good2 = await a.send(ITEMS, insert(ITEMS, "g2", "2", "f"))
    await a.echo(good2)
    # the refusal: a clear error naming the transaction, the connection stays up
    await a.cl.wait_for(lambda: bool(a.cl.errors))
    (err,) = a.cl.errors
    assert err.error_type == pb.SatErrorResp.INVALID_REQUEST
    assert int.from_bytes(err.lsn, "big") == 2 and message in err.message, err.message
    assert a.cl.closed_with is None
    after = env.sql("SELECT * FROM items WHERE id NOT IN ('g1', 'g2') ORDER BY id")
    assert after == before  # nothing of the refused transaction landed
    assert {"g1", "g2"} <= set(items(env))
    # the refused transaction is still echoed (handled), so the client's oplog can clear
    await a.echo(bad)
    await a.echo(good1)


async def test_oversized_transactions_are_refused(env: Env) -> None:
    async with running_server(env, max_transaction_ops=5) as srv:
        a = await connected(srv, env)
        try:
            ops = [insert(ITEMS, f"big{i}", str(i), "t") for i in range(6)]
            await a.send(ITEMS, *ops)
            ok = await a.send(ITEMS, *ops[:5])
            await a.echo(ok)
            await a.cl.wait_for(lambda: bool(a.cl.errors))
            assert "6 operations is more than this server accepts in one transaction (5)" in a.cl.errors[0].message
            assert len([k for k in items(env) if str(k).startswith("big")]) == 5
        finally:
            await a.cl.close()


async def test_the_npm_style_client_gets_no_error_frame_and_its_refused_rows_are_reverted(
    server: Server, env: Env, writers: list[Writer]
) -> None:
    a = await connected(server, env, native=False, subscribe=["items"])
    writers.append(a)
    # an insert of a new row and an update of an existing one, in a transaction Postgres refuses
    ts = await a.send(
        ITEMS,
        insert(ITEMS, "new", "1", "t"),
        update(ITEMS, ["b", "5", "f"], ["b", None, "f"]),
        pb.SatTransOp(insert=pb.SatOpInsert(relation_id=1, row_data=row("bad", "x1", "t"))),
    )
    echo = await a.echo(ts)
    kinds = {first_value(op) for op in echo.ops[1:-1]}
    assert ("gone", b"new") in kinds and ("update", b"b") in kinds  # back to the server's state
    assert a.cl.errors == [] and a.cl.closed_with is None
    assert items(env)["b"] == (None, False)


async def test_a_client_on_the_older_schema_keeps_writing_and_the_new_column_keeps_its_values(
    server: Server, env: Env, writers: list[Writer]
) -> None:
    """Issue 12, writes across versions: a client that does not know a column added in Postgres
    sends its narrower relation; its writes merge, and the column it does not know is untouched."""
    a = await connected(server, env)
    writers.append(a)
    env.sql("ALTER TABLE items ADD COLUMN qty int4 DEFAULT 5")
    env.sql("UPDATE items SET qty = 42 WHERE id = 'a'")
    await a.echo(await a.send(ITEMS, update(ITEMS, ["a", "9", "t"], ["a", "1", "t"])))
    await a.echo(await a.send(ITEMS, insert(ITEMS, "old-schema", "3", "f")))
    rows = {r[0]: r[1:] for r in env.sql("SELECT id, n, qty FROM items WHERE id IN ('a', 'old-schema')")}
    assert rows == {"a": (9, 42), "old-schema": (3, 5)}  # the update kept qty; the insert got its default
