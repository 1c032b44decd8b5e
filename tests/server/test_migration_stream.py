"""Schema migrations in the Satellite stream (issue 12), on a running server and real Postgres.

What the 0.12 npm client relies on (../shared/reference/electric-legacy.md §1.7, §5, §9): a client
starting afresh gets every migration after its ``schema_version`` before anything else; a live
client gets each migration in its place in the stream, before the first row that needs it, with a
new ``SatRelation`` after an added column; a migration transaction holds no rows (a client that
has its version skips it whole); a resuming client gets the migrations after its position.
"""

from __future__ import annotations

from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.app import Server
from tests.satellite_client import ReceivedTx, SatelliteClient
from tests.server_fixtures import Env, ws_url

MIGRATE = pb.SatOpMigrate


def ops(tx: ReceivedTx) -> list[pb.SatOpMigrate]:
    return [op.migrate for op in tx.ops if op.HasField("migrate")]


def newest(env: Env) -> str:
    return str(env.sql("SELECT max(version) FROM electric.migrations")[0][0])


async def started(server: Server, env: Env, schema_version: str, **kw: object) -> SatelliteClient:
    cl = await SatelliteClient(ws_url(server), **kw).connect()  # type: ignore[arg-type]
    await cl.authenticate(env.token())
    resp = await cl.start(schema_version=schema_version)
    assert not resp.HasField("err"), resp
    return cl


def position(cl: SatelliteClient, predicate: object) -> int:
    return next(i for i, m in enumerate(cl.messages) if predicate(m))  # type: ignore[operator]


async def test_a_client_starting_afresh_gets_the_migrations_after_its_version_before_any_data(
    server: Server, env: Env
) -> None:
    fresh = await started(server, env, "")
    current = await started(server, env, newest(env))
    try:
        for cl in (fresh, current):
            await cl.subscribe("items")
        # no version: every migration (the first apply's baseline: one version, every table)
        (baseline,) = fresh.migrations
        begin = baseline.ops[0].begin
        assert begin.is_migration and baseline.ops[-1].HasField("commit")
        created = {m.table.name: m for m in ops(baseline)}
        assert set(created) >= {"items", "parents", "children", "other", "big"}
        assert all(m.version == newest(env) and m.stmts[0].type == MIGRATE.CREATE_TABLE for m in created.values())
        assert [c.name for c in created["items"].table.columns] == ["id", "n", "flag", "data", "at", "doc", "price"]
        assert [(list(f.fk_cols), f.pk_table) for f in created["children"].table.fks] == [(["parent_id"], "parents")]
        # ...before the subscription's data, and with no row in it
        is_migration = lambda m: isinstance(m, pb.SatOpLog) and any(op.HasField("migrate") for op in m.ops)  # noqa: E731
        assert position(fresh, is_migration) < position(fresh, lambda m: isinstance(m, pb.SatSubsDataBegin))
        assert all(op.HasField("migrate") for op in baseline.ops[1:-1])
        # a client on the newest version gets none
        assert current.migrations == []
    finally:
        await fresh.close()
        await current.close()


async def test_an_added_column_reaches_every_live_client_before_the_rows_that_use_it(server: Server, env: Env) -> None:
    items = await started(server, env, newest(env))
    others = await started(server, env, newest(env))  # subscribed to another table only
    try:
        await items.subscribe("items")
        await others.subscribe("other")
        env.sql("ALTER TABLE items ADD COLUMN qty int4")
        env.sql("INSERT INTO items (id, n, qty) VALUES ('q1', 1, 7)")
        await items.wait_for(lambda: (b"q1",) in items.table("items"))
        (migration,) = items.migrations
        (op,) = ops(migration)
        assert op.stmts[0].type == MIGRATE.ALTER_ADD_COLUMN
        assert op.stmts[0].sql == 'ALTER TABLE "items" ADD COLUMN "qty" INTEGER;\n'
        assert [c.name for c in op.table.columns][-1] == "qty" and list(op.table.pks) == ["id"]
        # migration, then a relation with the column, then the row, which carries its value
        at_migration = position(items, lambda m: isinstance(m, pb.SatOpLog) and m.ops[0].begin.is_migration)
        at_relation = position(
            items,
            lambda m: (
                isinstance(m, pb.SatRelation) and m.table_name == "items" and "qty" in [c.name for c in m.columns]
            ),
        )
        at_row = position(
            items, lambda m: isinstance(m, pb.SatOpLog) and m.ops[0].HasField("begin") and m.ops[1].HasField("insert")
        )
        assert at_migration < at_relation < at_row
        assert items.table("items")[(b"q1",)]["qty"] == b"7"
        # a client that holds no row of the table gets the schema too
        await others.wait_for(lambda: len(others.migrations) == 1)
        assert ops(others.migrations[0]) == [op]
    finally:
        await items.close()
        await others.close()


async def test_ddl_and_rows_of_one_transaction_go_as_a_migration_then_the_rows(server: Server, env: Env) -> None:
    cl = await started(server, env, newest(env))
    try:
        await cl.subscribe("items")
        env.psql(
            "BEGIN; SET LOCAL electric.migration_version = '30000101000000000';"
            " ALTER TABLE items ADD COLUMN label text;"
            " INSERT INTO items (id, label) VALUES ('t1', 'first'); COMMIT"
        )
        await cl.wait_for(lambda: (b"t1",) in cl.table("items"))
        (migration,) = cl.migrations
        (data,) = [tx for tx in cl.transactions if any(op.HasField("insert") for op in tx.ops)]
        assert [m.version for m in ops(migration)] == ["30000101000000000"]
        assert not any(op.HasField("insert") for op in migration.ops)
        # the migration sits just before the transaction's own position: a client that resumes
        # between the two gets the rows again
        assert codec.decode_server_lsn(migration.lsn) == codec.decode_server_lsn(data.lsn) - 1
        assert cl.table("items")[(b"t1",)]["label"] == b"first"
    finally:
        await cl.close()


async def test_a_client_resuming_after_two_migrations_gets_exactly_those_in_order(server: Server, env: Env) -> None:
    cl = await started(server, env, newest(env))
    sub = await cl.subscribe("items")
    env.sql("INSERT INTO items (id) VALUES ('before')")
    await cl.wait_for(lambda: (b"before",) in cl.table("items"))
    await cl.ack()
    lsn, client_id = cl.last_lsn, cl.client_id
    await cl.close()

    env.psql(
        "BEGIN; SET LOCAL electric.migration_version = '30000101000000001'; ALTER TABLE items ADD COLUMN a int4; COMMIT"
    )
    env.psql(
        "BEGIN; SET LOCAL electric.migration_version = '30000101000000002'; ALTER TABLE items ADD COLUMN b text; COMMIT"
    )
    env.sql("INSERT INTO items (id, a, b) VALUES ('after', 1, 'x')")

    again = await SatelliteClient(ws_url(server), client_id=client_id).connect()
    try:
        await again.authenticate(env.token())
        resp = await again.start(lsn=lsn, subscription_ids=[sub], schema_version="")
        assert not resp.HasField("err"), resp
        await again.wait_for(lambda: (b"after",) in again.table("items"))
        assert [[(m.version, m.stmts[0].sql) for m in ops(tx)] for tx in again.migrations] == [
            [("30000101000000001", 'ALTER TABLE "items" ADD COLUMN "a" INTEGER;\n')],
            [("30000101000000002", 'ALTER TABLE "items" ADD COLUMN "b" TEXT;\n')],
        ]
        assert again.table("items")[(b"after",)]["b"] == b"x"
    finally:
        await again.close()
