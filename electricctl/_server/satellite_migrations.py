"""Schema migrations as the Satellite protocol carries them: ``SatOpMigrate`` with SQLite DDL (pure).

What the 0.12 npm client needs (../shared/reference/electric-legacy.md §1.7, §5 and §9):
- ``stmts``: the SQLite DDL: ``CREATE TABLE ... WITHOUT ROWID`` with the primary key as
  ``CONSTRAINT "<t>_pkey"``, or one ``ALTER TABLE ... ADD COLUMN`` per added column;
- ``table``: the whole table after the migration (every column with its SQLite and Postgres type,
  its primary key and its foreign keys), even for an added column: the client rebuilds its oplog
  triggers from it, and refuses the migration without it;
- the version, compared by the client as text.

Types map as Electric's SQLite dialect maps them (§5): integers and bool to INTEGER, floats to
REAL, bytea to BLOB, json and jsonb to TEXT_JSON, everything else (text, dates, times, uuid, enums)
to TEXT.
"""

from __future__ import annotations

from collections.abc import Callable

from electricctl._model.migrations import Migration, MigrationColumn
from electricctl._protocol import satellite_pb2 as pb

_SQLITE_TYPES = {
    "int2": "INTEGER",
    "int4": "INTEGER",
    "int8": "INTEGER",
    "bool": "INTEGER",
    "float4": "REAL",
    "float8": "REAL",
    "bytea": "BLOB",
    "json": "TEXT_JSON",
    "jsonb": "TEXT_JSON",
}


def sqlite_type(col: MigrationColumn) -> str:
    if col.type_name.startswith("_"):
        return "TEXT_JSON"  # an array, held as JSON (electricctl._model.arrays)
    return _SQLITE_TYPES.get(col.type_name, "TEXT")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _create_table(m: Migration, column_type: Callable[[MigrationColumn], str], options: str) -> str:
    parts = [f"{_q(c.name)} {column_type(c)}" + (" NOT NULL" if c.notnull else "") for c in m.table_columns]
    for fk in m.foreign_keys:
        parts.append(
            f"CONSTRAINT {_q(fk.name)} FOREIGN KEY ({', '.join(map(_q, fk.columns))})"
            f" REFERENCES {_q(fk.parent_table)} ({', '.join(map(_q, fk.parent_columns))})"
        )
    if m.primary_key:
        parts.append(f"CONSTRAINT {_q(m.table + '_pkey')} PRIMARY KEY ({', '.join(map(_q, m.primary_key))})")
    body = ",\n  ".join(parts)
    return f"CREATE TABLE {_q(m.table)} (\n  {body}\n){options};\n"


def _pg_type(col: MigrationColumn) -> str:
    return col.type


def create_table_sql(m: Migration) -> str:
    return _create_table(m, sqlite_type, " WITHOUT ROWID")


def pg_create_table_sql(m: Migration) -> str:
    """The Postgres dialect (``sql_dialect=POSTGRES``, ``/api/migrations?dialect=postgresql``)."""
    return _create_table(m, _pg_type, "")


def add_column_sql(m: Migration, col: MigrationColumn) -> str:
    # SQLite cannot add a NOT NULL column without a default; the guard only lets through NOT NULL
    # columns that have one in Postgres, whose rows arrive with their values
    return f"ALTER TABLE {_q(m.table)} ADD COLUMN {_q(col.name)} {sqlite_type(col)};\n"


def pg_add_column_sql(m: Migration, col: MigrationColumn) -> str:
    return f"ALTER TABLE {_q(m.table)} ADD COLUMN {_q(col.name)} {col.type};\n"


def migrate_op(m: Migration, dialect: str = "sqlite") -> pb.SatOpMigrate:
    """One migration as a ``SatOpMigrate`` with DDL in ``dialect`` (``sqlite`` or ``postgresql``);
    a ValueError for an operation clients cannot take."""
    pg = dialect == "postgresql"
    if m.op == "create_table":
        sql = pg_create_table_sql(m) if pg else create_table_sql(m)
        stmts = [pb.SatOpMigrate.Stmt(type=pb.SatOpMigrate.CREATE_TABLE, sql=sql)]
    elif m.op == "add_column":
        stmts = [
            pb.SatOpMigrate.Stmt(
                type=pb.SatOpMigrate.ALTER_ADD_COLUMN, sql=pg_add_column_sql(m, c) if pg else add_column_sql(m, c)
            )
            for c in m.columns
        ]
    elif m.op == "sqlite":
        # electric.yaml's statements for the clients' own databases (indexes, triggers, views): the
        # protocol has no type for them but CREATE_INDEX, whose statement a client runs as it is,
        # with no table to rebuild triggers for. The Postgres dialect has nothing to run.
        sql = "" if pg else m.sql.rstrip().rstrip(";") + ";\n"
        return pb.SatOpMigrate(
            version=m.version, stmts=[pb.SatOpMigrate.Stmt(type=pb.SatOpMigrate.CREATE_INDEX, sql=sql)]
        )
    else:
        raise ValueError(f"migration {m.version} of {m.schema}.{m.table}: unknown operation {m.op!r}")
    table = pb.SatOpMigrate.Table(
        name=m.table,
        columns=[
            pb.SatOpMigrate.Column(
                name=c.name, sqlite_type=sqlite_type(c), pg_type=pb.SatOpMigrate.PgColumnType(name=c.type_name)
            )
            for c in m.table_columns
        ],
        fks=[
            pb.SatOpMigrate.ForeignKey(
                fk_cols=list(fk.columns), pk_table=fk.parent_table, pk_cols=list(fk.parent_columns)
            )
            for fk in m.foreign_keys
        ],
        pks=list(m.primary_key),
    )
    return pb.SatOpMigrate(version=m.version, stmts=stmts, table=table)
