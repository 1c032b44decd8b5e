"""Migrations from the capture message to the wire, without Postgres: the model, the transaction
builder (plain and streamed, with a rolled-back savepoint), the durable log, and ``SatOpMigrate``."""

from __future__ import annotations

import struct

from electricctl._log import records
from electricctl._model.migrations import ForeignKeyRef, Migration, MigrationColumn
from electricctl._model.rows import Column, RelationDef, Transaction
from electricctl._model.wire import MIGRATION_PREFIX
from electricctl._protocol import satellite_pb2 as pb
from electricctl._replication import pgoutput as po
from electricctl._replication.txbuilder import TxBuilder
from electricctl._server.satellite_migrations import migrate_op

ID = MigrationColumn("id", "uuid", "uuid", True)
TITLE = MigrationColumn("title", "text", "text", True)
PROJECT = MigrationColumn("project_id", "uuid", "uuid", True)
DATA = MigrationColumn("data", "jsonb", "jsonb", False)
QTY = MigrationColumn("qty", "integer", "int4", False)
FK = ForeignKeyRef("issues_project_id_fkey", ("project_id",), "public", "projects", ("id",))
CREATE = Migration("20261130100000000", "public", "issues", "create_table", (ID, PROJECT, TITLE, DATA),
                   (ID, PROJECT, TITLE, DATA), ("id",), (FK,))  # fmt: skip
ADD = Migration(
    "20261130100500000", "public", "issues", "add_column", (QTY,), (ID, PROJECT, TITLE, DATA, QTY), ("id",), (FK,)
)


def test_a_migration_survives_its_json() -> None:
    assert Migration.from_json(CREATE.to_json()) == CREATE
    assert Migration.from_json(ADD.to_json()) == ADD


def test_create_table_is_sqlite_ddl_with_the_key_and_foreign_keys_and_the_whole_table() -> None:
    op = migrate_op(CREATE)
    assert op.version == CREATE.version
    (stmt,) = op.stmts
    assert stmt.type == pb.SatOpMigrate.CREATE_TABLE
    assert stmt.sql == (
        'CREATE TABLE "issues" (\n'
        '  "id" TEXT NOT NULL,\n'
        '  "project_id" TEXT NOT NULL,\n'
        '  "title" TEXT NOT NULL,\n'
        '  "data" TEXT_JSON,\n'
        '  CONSTRAINT "issues_project_id_fkey" FOREIGN KEY ("project_id") REFERENCES "projects" ("id"),\n'
        '  CONSTRAINT "issues_pkey" PRIMARY KEY ("id")\n'
        ") WITHOUT ROWID;\n"
    )
    assert [(c.name, c.sqlite_type, c.pg_type.name) for c in op.table.columns] == [
        ("id", "TEXT", "uuid"), ("project_id", "TEXT", "uuid"), ("title", "TEXT", "text"), ("data", "TEXT_JSON", "jsonb")
    ]  # fmt: skip
    assert list(op.table.pks) == ["id"]
    assert [(list(f.fk_cols), f.pk_table, list(f.pk_cols)) for f in op.table.fks] == [
        (["project_id"], "projects", ["id"])
    ]


def test_an_added_column_carries_the_whole_table_after_it() -> None:
    op = migrate_op(ADD)
    assert [(s.type, s.sql) for s in op.stmts] == [
        (pb.SatOpMigrate.ALTER_ADD_COLUMN, 'ALTER TABLE "issues" ADD COLUMN "qty" INTEGER;\n')
    ]
    assert [c.name for c in op.table.columns] == ["id", "project_id", "title", "data", "qty"]  # §9: the whole table
    assert list(op.table.pks) == ["id"] and len(op.table.fks) == 1


def _message(migration: Migration, lsn: int = 5) -> bytes:
    raw = migration.to_json().encode()
    return b"M" + struct.pack("!BQ", 1, lsn) + MIGRATION_PREFIX.encode() + b"\0" + struct.pack("!I", len(raw)) + raw


def _resolve(rel: po.Relation) -> RelationDef:
    return RelationDef(
        rel.relid, rel.schema, rel.name, tuple(Column(c.name, c.type_oid, "text", c.key, True) for c in rel.columns)
    )


def test_the_builder_puts_a_transactions_migrations_on_it_and_drops_those_of_a_rolled_back_savepoint() -> None:
    b = TxBuilder(_resolve)
    b.feed(po.decode(b"B" + struct.pack("!QqI", 100, 1000, 42)))
    b.feed(po.decode(_message(ADD)))
    tx = b.feed(po.decode(b"C" + struct.pack("!BQQq", 0, 200, 250, 3_000_000)))
    assert tx is not None and tx.migrations == (ADD,) and tx.changes == ()
    # streamed (protocol 2): a migration in a subtransaction rolled back to its savepoint is gone
    b.feed(po.decode(b"S" + struct.pack("!IB", 10, 1)))
    b.feed(po.decode(b"M" + struct.pack("!I", 10) + _message(CREATE)[1:], streaming=True), 10)
    b.feed(po.decode(b"M" + struct.pack("!I", 11) + _message(ADD)[1:], streaming=True), 11)
    b.feed(po.decode(b"E"))
    b.feed(po.decode(b"A" + struct.pack("!II", 10, 11)))
    tx = b.feed(po.decode(b"c" + struct.pack("!IBQQq", 10, 0, 500, 550, 7_000_000)))
    assert tx is not None and tx.migrations == (CREATE,)


def test_the_log_keeps_migrations_and_reads_records_written_before_them() -> None:
    rel = RelationDef(7, "public", "items", (Column("id", 23, "int4", True, False),))
    plain = Transaction(10, 11, 1, 1000, None, ())
    with_migrations = Transaction(20, 21, 2, 2000, None, (), migrations=(CREATE, ADD))
    for tx in (plain, with_migrations):
        assert records.decode(records.encode_transaction(tx), {7: rel}) == tx
