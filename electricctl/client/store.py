"""The client's local SQLite database: synced tables, the oplog of local writes, and sync metadata.

The layout follows the 0.12 npm client's conventions, so one file reads the same to both:
``_electric_oplog`` (one row per local write, filled by triggers; ``timestamp`` is set when the
write is taken into a transaction), ``_electric_shadow`` (the tags the client has seen per row),
``_electric_meta`` (key/value: ``lsn``, ``clientId``, ``subscriptions``) and
``_electric_trigger_settings`` (the triggers are switched off while remote changes are applied).
Values are stored as the npm client stores them: integers and booleans (0/1) as INTEGER, floats as
REAL, bytea as BLOB, everything else as TEXT in Postgres' text form.

Because the triggers capture writes, an app (or the ``sqlite3`` shell, or another process) writes
with plain SQL and the write is synced. Remote changes are merged with the writes still pending in
the oplog by :mod:`electricctl._merge.rules`, the code the server merges with.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from electricctl._merge.rules import RowState, Tag, Write, merge

OPLOG = "_electric_oplog"
SHADOW = "_electric_shadow"
META = "_electric_meta"
TRIGGERS = "_electric_trigger_settings"
RELATIONS_KEY = "electricctl.relations"
LSN_KEY = "electricctl.lsn"
"""The server position this file holds everything up to (our own key: the npm client's ``lsn`` differs)."""
NAMESPACE = "main"

LocalValue = int | float | str | bytes | None
Wire = bytes | None

_INTS = frozenset({"int2", "int4", "int8"})
_FLOATS = frozenset({"float4", "float8"})

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


def _q(name: str) -> str:
    """Quote an SQLite identifier (names come from the server's catalog, never from app input)."""
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    pg_type: str
    primary_key: bool
    nullable: bool

    @property
    def affinity(self) -> str:
        if self.pg_type in _INTS or self.pg_type == "bool":
            return "INTEGER"
        if self.pg_type in _FLOATS:
            return "REAL"
        if self.pg_type == "bytea":
            return "BLOB"
        return "TEXT"


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]

    @property
    def pk(self) -> list[str]:
        return [c.name for c in self.columns if c.primary_key]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


# -- value conversion: wire (Postgres text, bytea raw) <-> SQLite ----------------------------------


def to_local(col: Column, value: Wire) -> LocalValue:
    if value is None:
        return None
    if col.pg_type == "bytea":
        return bytes(value)
    text = value.decode()
    if col.pg_type in _INTS:
        return int(text)
    if col.pg_type in _FLOATS:
        return float(text)
    if col.pg_type == "bool":
        return 1 if text == "t" else 0
    return text


def to_wire(col: Column, value: LocalValue) -> Wire:
    if value is None:
        return None
    if col.pg_type == "bytea":
        return value if isinstance(value, bytes) else bytes.fromhex(str(value))
    if col.pg_type == "bool":
        return b"t" if value not in (0, "0", "f", "false", False) else b"f"
    if col.pg_type in _INTS:
        return str(int(value)).encode()
    if col.pg_type in _FLOATS:
        return repr(float(value)).encode()
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _from_oplog(col: Column, value: Any) -> LocalValue:
    """Oplog rows are JSON (the npm client's format): bytea as hex, int8 and floats as text."""
    if value is None:
        return None
    if col.pg_type == "bytea":
        return bytes.fromhex(value)
    if col.pg_type in _INTS:
        return int(value)
    if col.pg_type in _FLOATS:
        return float(value)
    return value  # type: ignore[no-any-return]


@dataclass(slots=True)
class OplogEntry:
    rowid: int
    table: str
    optype: str
    pk: str
    new: dict[str, LocalValue] | None
    old: dict[str, LocalValue] | None
    timestamp: int
    clear_tags: list[str]


@dataclass(slots=True)
class LocalTransaction:
    """Local writes taken together, sent as one client transaction."""

    timestamp: int
    entries: list[OplogEntry] = field(default_factory=list)

    @property
    def lsn(self) -> int:
        return self.entries[-1].rowid


@dataclass(slots=True)
class RemoteChange:
    """One change from the server, decoded to local values."""

    table: str
    kind: str
    """insert, update, delete, gone."""
    values: dict[str, LocalValue]
    """The new row (insert, update) or the old row / key (delete, gone)."""
    old: dict[str, LocalValue] | None
    tags: list[str]


class Store:
    """One SQLite file, opened by the sync client (apps use their own connections)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA busy_timeout = 10000")
        self.db.executescript(_INIT)
        self.tables: dict[str, Table] = {}
        self._pk_sql: dict[str, str] = {}
        self._pk_order: dict[str, list[str]] = {}
        raw = self.meta(RELATIONS_KEY)
        if raw:
            for name, cols in json.loads(raw).items():
                self.tables[name] = Table(name, tuple(Column(*c) for c in cols))

    def close(self) -> None:
        self.db.close()

    # -- metadata ------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self.db.execute(f"SELECT value FROM {META} WHERE key = ?", [key]).fetchone()
        if row is None or row[0] is None:
            return None
        value = row[0]
        return value.decode() if isinstance(value, bytes) else str(value)

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute(f"INSERT OR REPLACE INTO {META} (key, value) VALUES (?, ?)", [key, value])

    # -- schema --------------------------------------------------------------------------------
    def ensure_table(self, table: Table) -> None:
        """Create ``table`` (if the app has not) and its oplog triggers, as the npm client does."""
        if self.tables.get(table.name) == table:
            return
        with self.transaction():
            cols = ",\n  ".join(
                f"{_q(c.name)} {c.affinity}{'' if c.nullable or c.primary_key else ' NOT NULL'}" for c in table.columns
            )
            pk = ", ".join(_q(c) for c in table.pk)
            self.db.execute(
                f"CREATE TABLE IF NOT EXISTS {_q(table.name)} (\n  {cols},\n  PRIMARY KEY ({pk})\n) WITHOUT ROWID"
            )
            for stmt in _trigger_statements(table):
                self.db.execute(stmt)
            for stmt in self._compensation_statements(table):
                self.db.execute(stmt)
            self.tables[table.name] = table
            self.set_meta(
                RELATIONS_KEY,
                json.dumps(
                    {
                        t.name: [[c.name, c.pg_type, c.primary_key, c.nullable] for c in t.columns]
                        for t in self.tables.values()
                    }
                ),
            )

    def _compensation_statements(self, table: Table) -> list[str]:
        """The npm client's compensation triggers, for each foreign key the local table declares.

        Writing a child records a COMPENSATION for its parent (if the parent is here): should the
        parent be deleted concurrently, the server revives it (add-wins) instead of refusing the
        child. Foreign keys come from the local schema (``PRAGMA foreign_key_list``): the Satellite
        relation does not carry them, so an app that wants compensations declares them locally.
        """
        out: list[str] = []
        for fk in self.db.execute(f"PRAGMA foreign_key_list({_q(table.name)})").fetchall():
            parent, child_col, parent_col = fk[2], fk[3], fk[4]
            if parent_col is None:
                continue
            parent_table = self.tables.get(parent)
            col_type = table.column(child_col).pg_type if any(c.name == child_col for c in table.columns) else "text"
            pk_json = _json_cols(table, "", [Column(parent_col, col_type, True, False)]).replace(
                "?", f"new.{_q(child_col)}"
            )
            if parent_table is None and parent != table.name:
                pass  # the parent's key type is assumed to match the child column's
            when = (
                f"WHEN 1 = (SELECT flag from {TRIGGERS} WHERE namespace = {_lit(NAMESPACE)} AND tablename = {_lit(table.name)})"
                f" AND 1 = (SELECT value from {META} WHERE key = 'compensations')"
            )
            for op in ("INSERT", "UPDATE"):
                trig = _q(f"compensation_{op.lower()}_{NAMESPACE}_{table.name}_{child_col}_into_oplog")
                out.append(f"DROP TRIGGER IF EXISTS {trig}")
                out.append(
                    f"CREATE TRIGGER {trig} AFTER {op} ON {_q(NAMESPACE)}.{_q(table.name)} {when} BEGIN "
                    f"INSERT INTO {OPLOG} (namespace, tablename, optype, primaryKey, newRow, oldRow, timestamp) "
                    f"SELECT {_lit(NAMESPACE)}, {_lit(parent)}, 'COMPENSATION', {pk_json}, {pk_json}, NULL, NULL "
                    f"FROM {_q(NAMESPACE)}.{_q(parent)} WHERE {_q(parent_col)} = new.{_q(child_col)}; END"
                )
        return out

    def transaction(self) -> _Txn:
        return _Txn(self.db)

    # -- local writes --------------------------------------------------------------------------
    def has_unstamped(self) -> bool:
        return self.db.execute(f"SELECT 1 FROM {OPLOG} WHERE timestamp IS NULL LIMIT 1").fetchone() is not None

    def stamp(self, client_id: str, limit: int = 10_000) -> int | None:
        """Take the local writes not yet in a transaction (at most ``limit``) into a new one; return its timestamp.

        The bound keeps a long offline session from becoming one transaction larger than the
        server accepts; the writes beyond it go into the next transactions, in order.

        Each write records the tags it observed (the row's shadow tags) as the ones it clears, and
        the row's shadow tags become the write's own tag (removed for a delete).
        """
        with self.transaction():
            rows = self.db.execute(
                f"SELECT rowid, tablename, optype, primaryKey FROM {OPLOG} WHERE timestamp IS NULL ORDER BY rowid LIMIT ?",
                [limit],
            ).fetchall()
            if not rows:
                return None
            # strictly increasing, even if the clock steps back: a timestamp names one transaction
            previous = int(self.meta("electricctl.last_timestamp") or 0)
            ts = max(int(time.time() * 1000), previous + 1)
            tag = json.dumps([str(Tag(ts, client_id))])
            for rowid, table, optype, pk in rows:
                shadow = self._shadow_tags(table, pk)
                self.db.execute(
                    f"UPDATE {OPLOG} SET timestamp = ?, clearTags = ? WHERE rowid = ?",
                    [str(ts), json.dumps(shadow), rowid],
                )
                if optype == "DELETE":
                    self.db.execute(
                        f"DELETE FROM {SHADOW} WHERE namespace = ? AND tablename = ? AND primaryKey = ?",
                        [NAMESPACE, table, pk],
                    )
                elif optype != "COMPENSATION":  # a compensation re-asserts the tags seen; it adds none
                    self._set_shadow(table, pk, tag)
            self.set_meta("electricctl.last_timestamp", str(ts))
            return ts

    def transactions_after(self, lsn: int) -> list[LocalTransaction]:
        """Stamped local transactions not yet sent past ``lsn`` (the server's last applied)."""
        rows = self.db.execute(
            f"SELECT rowid, tablename, optype, primaryKey, newRow, oldRow, timestamp, clearTags FROM {OPLOG}"
            " WHERE timestamp IS NOT NULL AND rowid > ? ORDER BY rowid",
            [lsn],
        ).fetchall()
        out: list[LocalTransaction] = []
        for r in rows:
            entry = self._entry(r)
            if not out or out[-1].timestamp != entry.timestamp:
                out.append(LocalTransaction(entry.timestamp))
            out[-1].entries.append(entry)
        return out

    def pending_count(self) -> int:
        return int(self.db.execute(f"SELECT count(*) FROM {OPLOG}").fetchone()[0])

    def _entry(self, r: Sequence[Any]) -> OplogEntry:
        table = self.tables.get(r[1])
        new = json.loads(r[4]) if r[4] else None
        old = json.loads(r[5]) if r[5] else None
        if table is not None:
            new = {k: _from_oplog(table.column(k), v) for k, v in new.items()} if new else new
            old = {k: _from_oplog(table.column(k), v) for k, v in old.items()} if old else old
        return OplogEntry(r[0], r[1], r[2], r[3], new, old, int(r[6]), json.loads(r[7] or "[]"))

    def _pending_for(self, table: str, pk: str) -> list[OplogEntry]:
        rows = self.db.execute(
            f"SELECT rowid, tablename, optype, primaryKey, newRow, oldRow, timestamp, clearTags FROM {OPLOG}"
            " WHERE namespace = ? AND tablename = ? AND primaryKey = ? AND timestamp IS NOT NULL ORDER BY rowid",
            [NAMESPACE, table, pk],
        ).fetchall()
        return [self._entry(r) for r in rows]

    def _shadow_tags(self, table: str, pk: str) -> list[str]:
        row = self.db.execute(
            f"SELECT tags FROM {SHADOW} WHERE namespace = ? AND tablename = ? AND primaryKey = ?",
            [NAMESPACE, table, pk],
        ).fetchone()
        return list(json.loads(row[0])) if row else []

    def _set_shadow(self, table: str, pk: str, tags_json: str) -> None:
        self.db.execute(
            f"INSERT OR REPLACE INTO {SHADOW} (namespace, tablename, primaryKey, tags) VALUES (?, ?, ?, ?)",
            [NAMESPACE, table, pk, tags_json],
        )

    # -- remote changes --------------------------------------------------------------------------
    def apply_remote(
        self,
        changes: Iterable[RemoteChange],
        *,
        client_id: str,
        origin: str | None,
        timestamp: int | None,
        lsn: str | None,
    ) -> None:
        """Apply one server transaction (or a batch of subscription data) in one SQLite transaction.

        The client's own transaction first clears its oplog entries (they are in Postgres now).
        Each change is merged with the writes still pending for its row: the row ends as the
        server will have it once those writes arrive there.
        """
        with self.transaction():
            if origin is not None and origin == client_id and timestamp is not None:
                self.db.execute(f"DELETE FROM {OPLOG} WHERE timestamp = ?", [str(timestamp)])
            touched: set[str] = set()
            for ch in changes:
                table = self.tables[ch.table]
                if ch.table not in touched:
                    self._set_trigger(ch.table, 0)
                    touched.add(ch.table)
                self._apply_change(table, ch, client_id, timestamp, origin)
            for name in touched:
                self._set_trigger(name, 1)
            if lsn is not None:
                self.set_meta(LSN_KEY, lsn)

    def _apply_change(
        self, table: Table, ch: RemoteChange, client_id: str, timestamp: int | None, origin: str | None
    ) -> None:
        pk = self.pk_json(table, ch.values)
        pending = self._pending_for(table.name, pk)
        if ch.kind == "gone":
            self._delete_row(table, ch.values, pk)  # GONE always wins: the client must not keep the row
            return
        tag = Tag(timestamp or 0, origin or None)
        tags = frozenset(Tag.parse(t) for t in ch.tags)
        if ch.kind == "delete":
            state = RowState(dict(ch.values), {}, frozenset())
        else:
            old = ch.old
            changed = {c for c, v in ch.values.items() if old is None or old.get(c) != v}
            # columns this change set carry its tag; the others are older than any pending write
            state = RowState(dict(ch.values), {c: tag for c in changed}, tags)
        for entry in pending:
            state = merge(state, _entry_write(entry, client_id))
        if state.exists:
            self._upsert_row(table, state.values)
            self._set_shadow(table.name, pk, json.dumps(sorted(str(t) for t in state.tags)))
        else:
            self._delete_row(table, ch.values, pk)

    def pk_json(self, table: Table, values: Mapping[str, LocalValue]) -> str:
        """The row's ``primaryKey`` as the oplog triggers write it (computed by SQLite, so it matches)."""
        sql = self._pk_sql.get(table.name)
        if sql is None:
            cols = sorted((c for c in table.columns if c.primary_key), key=lambda c: c.name)
            sql = self._pk_sql[table.name] = "SELECT " + _json_cols(table, "", cols)
            order = self._pk_order[table.name] = [c.name for c in cols]
        order = self._pk_order[table.name]
        return str(self.db.execute(sql, [values[c] for c in order]).fetchone()[0])

    def _upsert_row(self, table: Table, values: Mapping[str, LocalValue]) -> None:
        cols = [c.name for c in table.columns if c.name in values]
        non_key = [c for c in cols if c not in table.pk]
        conflict = (
            "DO UPDATE SET " + ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in non_key) if non_key else "DO NOTHING"
        )
        self.db.execute(
            f"INSERT INTO {_q(table.name)} ({', '.join(_q(c) for c in cols)})"
            f" VALUES ({', '.join('?' for _ in cols)})"
            f" ON CONFLICT ({', '.join(_q(c) for c in table.pk)}) {conflict}",
            [values[c] for c in cols],
        )

    def _delete_row(self, table: Table, values: Mapping[str, LocalValue], pk: str) -> None:
        self.db.execute(
            f"DELETE FROM {_q(table.name)} WHERE " + " AND ".join(f"{_q(c)} = ?" for c in table.pk),
            [values[c] for c in table.pk],
        )
        self.db.execute(
            f"DELETE FROM {SHADOW} WHERE namespace = ? AND tablename = ? AND primaryKey = ?",
            [NAMESPACE, table.name, pk],
        )

    def _set_trigger(self, table: str, flag: int) -> None:
        self.db.execute(
            f"INSERT OR REPLACE INTO {TRIGGERS} (namespace, tablename, flag) VALUES (?, ?, ?)", [NAMESPACE, table, flag]
        )

    def reset_tables(self, names: Iterable[str]) -> None:
        """Forget synced rows of ``names`` (the server cannot resume us); pending writes stay."""
        with self.transaction():
            for name in names:
                if name in self.tables:
                    self._set_trigger(name, 0)
                    self.db.execute(f"DELETE FROM {_q(name)}")
                    self.db.execute(f"DELETE FROM {SHADOW} WHERE tablename = ?", [name])
                    self._set_trigger(name, 1)
            self.set_meta(LSN_KEY, "")


def _entry_write(entry: OplogEntry, client_id: str) -> Write:
    tag = Tag(entry.timestamp, client_id)
    observed = frozenset(Tag.parse(t) for t in entry.clear_tags)
    if entry.optype == "DELETE":
        return Write("delete", tag, observed)
    if entry.optype == "COMPENSATION":
        return Write("compensation", tag, observed)
    values = entry.new or {}
    if entry.optype == "UPDATE" and entry.old is not None:
        changed = frozenset(c for c, v in values.items() if entry.old.get(c) != v)
    else:
        changed = frozenset(values)
    return Write("insert" if entry.optype == "INSERT" else "update", tag, observed, values, changed)


class _Txn:
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


def _json_value(pg_type: str, ref: str) -> str:
    """A value as the oplog's JSON holds it (the npm client's forms: int8 and floats as text, bytea as hex)."""
    if pg_type in ("int8", "float4", "float8"):
        return f"cast({ref} as TEXT)"
    if pg_type == "bytea":
        return f"CASE WHEN {ref} IS NOT NULL THEN hex({ref}) ELSE NULL END"
    return ref


def _json_cols(table: Table, target: str, cols: Sequence[Column]) -> str:
    """``json_object`` of ``cols`` of ``target`` (``new``/``old``), or of ``?`` parameters if no target."""
    parts = [
        f"{_lit(c.name)}, {_json_value(c.pg_type, f'{target}.{_q(c.name)}' if target else '?')}"
        for c in sorted(cols, key=lambda c: c.name)
    ]
    return f"json_object({', '.join(parts)})"


def _trigger_statements(table: Table) -> list[str]:
    """The npm client's oplog triggers (same names and shape), and its immutable-key guard."""
    name = table.name
    qt = f"{_q(NAMESPACE)}.{_q(name)}"
    pk_cols = [c for c in table.columns if c.primary_key]
    when = f"WHEN 1 = (SELECT flag from {TRIGGERS} WHERE namespace = {_lit(NAMESPACE)} AND tablename = {_lit(name)})"
    out = [
        f"INSERT OR IGNORE INTO {TRIGGERS} (namespace, tablename, flag) VALUES ({_lit(NAMESPACE)}, {_lit(name)}, 1)",
        f"DROP TRIGGER IF EXISTS {_q(f'update_ensure_{NAMESPACE}_{name}_primarykey')}",
        f"CREATE TRIGGER {_q(f'update_ensure_{NAMESPACE}_{name}_primarykey')} BEFORE UPDATE ON {qt} BEGIN SELECT CASE "
        + " ".join(
            f"WHEN old.{_q(c.name)} != new.{_q(c.name)} THEN RAISE (ABORT, "
            f"{_lit(f'cannot change the value of column {c.name} as it belongs to the primary key')})"
            for c in pk_cols
        )
        + " END; END",
    ]
    for op in ("INSERT", "UPDATE", "DELETE"):
        trig = _q(f"{op.lower()}_{NAMESPACE}_{name}_into_oplog")
        pk = _json_cols(table, "old" if op == "DELETE" else "new", pk_cols)
        new = "NULL" if op == "DELETE" else _json_cols(table, "new", table.columns)
        old = "NULL" if op == "INSERT" else _json_cols(table, "old", table.columns)
        out.append(f"DROP TRIGGER IF EXISTS {trig}")
        out.append(
            f"CREATE TRIGGER {trig} AFTER {op} ON {qt} {when} BEGIN "
            f"INSERT INTO {OPLOG} (namespace, tablename, optype, primaryKey, newRow, oldRow, timestamp) "
            f"VALUES ({_lit(NAMESPACE)}, {_lit(name)}, {_lit(op)}, {pk}, {new}, {old}, NULL); END"
        )
    return out
