"""The local file's layout: electricctl's own tables, the synced tables' DDL and the oplog triggers.

The layout follows the 0.12 npm client's conventions, so one file reads the same to both:
``_electric_oplog`` (one row per local write, filled by triggers; ``timestamp`` is set when the
write is taken into a transaction), ``_electric_shadow`` (the tags the client has seen per row),
``_electric_meta`` (key/value: ``lsn``, ``clientId``, ``subscriptions``) and
``_electric_trigger_settings`` (the triggers are switched off while remote changes are applied).

Because the triggers capture writes, an app (or the ``sqlite3`` shell, or another process) writes
with plain SQL and the write is synced. Everything here takes an open :class:`sqlite3.Connection`;
nothing keeps state of its own.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

OPLOG = "_electric_oplog"
SHADOW = "_electric_shadow"
META = "_electric_meta"
TRIGGERS = "_electric_trigger_settings"
RELATIONS_KEY = "electricctl.relations"
LSN_KEY = "electricctl.lsn"
SCHEMA_VERSION_KEY = "electricctl.schema_version"
"""The newest migration version applied (sent when starting afresh, so the server sends only later ones)."""
"""The server position this file holds everything up to (our own key: the npm client's ``lsn`` differs)."""
LAST_TIMESTAMP_KEY = "electricctl.last_timestamp"
NAMESPACE = "main"

INTS = frozenset({"int2", "int4", "int8"})
FLOATS = frozenset({"float4", "float8"})

_INIT = f"""
CREATE TABLE IF NOT EXISTS {OPLOG} (
  "rowid" INTEGER PRIMARY KEY AUTOINCREMENT,
  "namespace" TEXT NOT NULL,
  "tablename" TEXT NOT NULL,
  "optype" TEXT NOT NULL,
  "primaryKey" TEXT NOT NULL,
  "newRow" TEXT,
  "oldRow" TEXT,
  "timestamp" TEXT,
  "clearTags" TEXT DEFAULT '[]' NOT NULL
);
CREATE INDEX IF NOT EXISTS _electric_table_pk_reference ON {OPLOG} (namespace, tablename, primaryKey);
CREATE INDEX IF NOT EXISTS _electric_timestamp ON {OPLOG} (timestamp);
CREATE TABLE IF NOT EXISTS {META} ("key" TEXT PRIMARY KEY, "value" BLOB);
INSERT OR IGNORE INTO {META} (key, value) VALUES
  ('compensations', 1), ('lsn', ''), ('clientId', ''), ('subscriptions', ''), ('seenAdditionalData', '');
CREATE TABLE IF NOT EXISTS {TRIGGERS} ("namespace" TEXT, "tablename" TEXT, "flag" INTEGER,
  PRIMARY KEY ("namespace", "tablename"));
CREATE TABLE IF NOT EXISTS {SHADOW} (
  "namespace" TEXT NOT NULL,
  "tablename" TEXT NOT NULL,
  "primaryKey" TEXT NOT NULL,
  "tags" TEXT NOT NULL,
  PRIMARY KEY ("namespace", "tablename", "primaryKey"));
"""


def q(name: str) -> str:
    """Quote an SQLite identifier (names come from the server's catalog, never from app input)."""
    return '"' + name.replace('"', '""') + '"'


def lit(text: str) -> str:
    """An SQLite string literal (for DDL, where parameters cannot go)."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class Column:
    """A synced table's column as the server's relation message describes it."""

    name: str
    pg_type: str
    primary_key: bool
    nullable: bool

    @property
    def affinity(self) -> str:
        if self.pg_type in INTS or self.pg_type == "bool":
            return "INTEGER"
        if self.pg_type in FLOATS:
            return "REAL"
        if self.pg_type == "bytea":
            return "BLOB"
        return "TEXT"


@dataclass(frozen=True, slots=True)
class Table:
    """A synced table: its name and columns, in the server's order."""

    name: str
    columns: tuple[Column, ...]
    _by_name: dict[str, Column] = field(init=False, repr=False, compare=False, hash=False)
    _pk: list[str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {c.name: c for c in self.columns})
        object.__setattr__(self, "_pk", [c.name for c in self.columns if c.primary_key])

    @property
    def pk(self) -> list[str]:
        return self._pk

    def column(self, name: str) -> Column:
        return self._by_name[name]


class Txn:
    """``with Txn(db):`` runs the block in one ``BEGIN IMMEDIATE`` transaction (nested: joins the outer one)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.outer = False

    def __enter__(self) -> None:
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self.outer:
            return
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")


def open_db(path: str) -> sqlite3.Connection:
    """Open (creating if need be) the file in WAL mode, with electricctl's tables in it."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA busy_timeout = 10000")
        db.executescript(_INIT)
    except BaseException:
        db.close()
        raise
    return db


def get_meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute(f"SELECT value FROM {META} WHERE key = ?", [key]).fetchone()
    if row is None or row[0] is None:
        return None
    value = row[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute(f"INSERT OR REPLACE INTO {META} (key, value) VALUES (?, ?)", [key, value])


def load_tables(db: sqlite3.Connection) -> dict[str, Table]:
    """The tables this file has synced so far (their relations are kept in the meta table)."""
    raw = get_meta(db, RELATIONS_KEY)
    if not raw:
        return {}
    return {name: Table(name, tuple(Column(*c) for c in cols)) for name, cols in json.loads(raw).items()}


def save_tables(db: sqlite3.Connection, tables: Mapping[str, Table]) -> None:
    set_meta(
        db,
        RELATIONS_KEY,
        json.dumps(
            {t.name: [[c.name, c.pg_type, c.primary_key, c.nullable] for c in t.columns] for t in tables.values()}
        ),
    )


def create_table(db: sqlite3.Connection, table: Table) -> None:
    """Create ``table`` (if the app has not) and its oplog triggers, as the npm client does; add the
    columns a table created earlier lacks (a column added in Postgres since), and rebuild the triggers."""
    cols = ",\n  ".join(
        f"{q(c.name)} {c.affinity}{'' if c.nullable or c.primary_key else ' NOT NULL'}" for c in table.columns
    )
    pk = ", ".join(q(c) for c in table.pk)
    db.execute(f"CREATE TABLE IF NOT EXISTS {q(table.name)} (\n  {cols},\n  PRIMARY KEY ({pk})\n) WITHOUT ROWID")
    # a column added in Postgres (the server's guard allows only additive changes): add it here too,
    # nullable (SQLite cannot add NOT NULL without a default; its rows arrive with their values)
    have = {row[1] for row in db.execute(f"PRAGMA table_info({q(table.name)})").fetchall()}
    for c in table.columns:
        if c.name not in have:
            db.execute(f"ALTER TABLE {q(table.name)} ADD COLUMN {q(c.name)} {c.affinity}")
    for stmt in trigger_statements(table):
        db.execute(stmt)
    for stmt in compensation_statements(db, table):
        db.execute(stmt)


def json_value(pg_type: str, ref: str) -> str:
    """A value as the oplog's JSON holds it (the npm client's forms: int8 and floats as text, bytea as hex).

    A float is written with ``quote()``, the form SQLite reads back as the same double (``cast(x
    as TEXT)`` keeps 15 digits: 1.7976931348623157e308 would come back as infinity); NaN, which
    SQLite cannot hold as a REAL, is the text ``NaN`` (as the npm client stores it).
    """
    if pg_type in ("float4", "float8"):
        return f"CASE typeof({ref}) WHEN 'real' THEN quote({ref}) ELSE cast({ref} as TEXT) END"
    if pg_type == "int8":
        return f"cast({ref} as TEXT)"
    if pg_type == "bytea":
        return f"CASE WHEN {ref} IS NOT NULL THEN hex({ref}) ELSE NULL END"
    return ref


def json_cols(target: str, cols: Sequence[Column]) -> str:
    """``json_object`` of ``cols`` of ``target`` (``new``/``old``), or of parameters ``?1``, ``?2``... if no target.

    The parameters are numbered (in the order of ``cols`` sorted by name) because a value may be
    referred to twice (bytea's ``CASE``)."""
    parts = [
        f"{lit(c.name)}, {json_value(c.pg_type, f'{target}.{q(c.name)}' if target else f'?{i}')}"
        for i, c in enumerate(sorted(cols, key=lambda c: c.name), start=1)
    ]
    return f"json_object({', '.join(parts)})"


def compensation_statements(db: sqlite3.Connection, table: Table) -> list[str]:
    """The npm client's compensation triggers, for each foreign key the local table declares.

    Writing a child records a COMPENSATION for its parent (if the parent is here): should the
    parent be deleted concurrently, the server revives it (add-wins) instead of refusing the
    child. Foreign keys come from the local schema (``PRAGMA foreign_key_list``): the Satellite
    relation does not carry them, so an app that wants compensations declares them locally.
    The parent's key type is taken to be the child column's.
    """
    out: list[str] = []
    for fk in db.execute(f"PRAGMA foreign_key_list({q(table.name)})").fetchall():
        parent, child_col, parent_col = fk[2], fk[3], fk[4]
        if parent_col is None:
            continue
        col_type = table.column(child_col).pg_type if any(c.name == child_col for c in table.columns) else "text"
        pk_json = f"json_object({lit(parent_col)}, {json_value(col_type, f'new.{q(child_col)}')})"
        when = (
            f"WHEN 1 = (SELECT flag from {TRIGGERS} WHERE namespace = {lit(NAMESPACE)} AND tablename = {lit(table.name)})"
            f" AND 1 = (SELECT value from {META} WHERE key = 'compensations')"
        )
        for op in ("INSERT", "UPDATE"):
            trig = q(f"compensation_{op.lower()}_{NAMESPACE}_{table.name}_{child_col}_into_oplog")
            out.append(f"DROP TRIGGER IF EXISTS {trig}")
            out.append(
                f"CREATE TRIGGER {trig} AFTER {op} ON {q(NAMESPACE)}.{q(table.name)} {when} BEGIN "
                f"INSERT INTO {OPLOG} (namespace, tablename, optype, primaryKey, newRow, oldRow, timestamp) "
                f"SELECT {lit(NAMESPACE)}, {lit(parent)}, 'COMPENSATION', {pk_json}, {pk_json}, NULL, NULL "
                f"FROM {q(NAMESPACE)}.{q(parent)} WHERE {q(parent_col)} = new.{q(child_col)}; END"
            )
    return out


def trigger_statements(table: Table) -> list[str]:
    """The npm client's oplog triggers (same names and shape), and its immutable-key guard."""
    name = table.name
    qt = f"{q(NAMESPACE)}.{q(name)}"
    pk_cols = [c for c in table.columns if c.primary_key]
    when = f"WHEN 1 = (SELECT flag from {TRIGGERS} WHERE namespace = {lit(NAMESPACE)} AND tablename = {lit(name)})"
    out = [
        f"INSERT OR IGNORE INTO {TRIGGERS} (namespace, tablename, flag) VALUES ({lit(NAMESPACE)}, {lit(name)}, 1)",
        f"DROP TRIGGER IF EXISTS {q(f'update_ensure_{NAMESPACE}_{name}_primarykey')}",
        f"CREATE TRIGGER {q(f'update_ensure_{NAMESPACE}_{name}_primarykey')} BEFORE UPDATE ON {qt} BEGIN SELECT CASE "
        + " ".join(
            f"WHEN old.{q(c.name)} != new.{q(c.name)} THEN RAISE (ABORT, "
            f"{lit(f'cannot change the value of column {c.name} as it belongs to the primary key')})"
            for c in pk_cols
        )
        + " END; END",
    ]
    for op in ("INSERT", "UPDATE", "DELETE"):
        trig = q(f"{op.lower()}_{NAMESPACE}_{name}_into_oplog")
        pk = json_cols("old" if op == "DELETE" else "new", pk_cols)
        new = "NULL" if op == "DELETE" else json_cols("new", table.columns)
        old = "NULL" if op == "INSERT" else json_cols("old", table.columns)
        out.append(f"DROP TRIGGER IF EXISTS {trig}")
        out.append(
            f"CREATE TRIGGER {trig} AFTER {op} ON {qt} {when} BEGIN "
            f"INSERT INTO {OPLOG} (namespace, tablename, optype, primaryKey, newRow, oldRow, timestamp) "
            f"VALUES ({lit(NAMESPACE)}, {lit(name)}, {lit(op)}, {pk}, {new}, {old}, NULL); END"
        )
    return out


def own_trigger_names(db: sqlite3.Connection, table: Table) -> set[str]:
    """The names of the triggers electricctl made on ``table`` (never an app's own triggers)."""
    names = {f"update_ensure_{NAMESPACE}_{table.name}_primarykey"}
    names.update(f"{op}_{NAMESPACE}_{table.name}_into_oplog" for op in ("insert", "update", "delete"))
    for fk in db.execute(f"PRAGMA foreign_key_list({q(table.name)})").fetchall():
        names.update(f"compensation_{op}_{NAMESPACE}_{table.name}_{fk[3]}_into_oplog" for op in ("insert", "update"))
    return names


def set_trigger(db: sqlite3.Connection, table: str, flag: int) -> None:
    """Switch ``table``'s oplog triggers on (1) or off (0, while remote changes are applied)."""
    db.execute(
        f"INSERT OR REPLACE INTO {TRIGGERS} (namespace, tablename, flag) VALUES (?, ?, ?)", [NAMESPACE, table, flag]
    )
