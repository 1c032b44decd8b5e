"""Remote changes merged into local rows.

A server transaction (or a batch of subscription data) is applied in one SQLite transaction with
the oplog triggers off. Each change is merged with the local writes still pending for its row by
:mod:`electricctl._merge.rules` (the code the server merges with): the row ends as the server
will have it once those writes arrive there.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping

from electricctl._merge.rules import RowState, Tag, Write, merge
from electricctl.client.oplog import OplogEntry, forget_transaction, pending_for, set_shadow
from electricctl.client.schema import (
    LSN_KEY,
    NAMESPACE,
    SHADOW,
    Table,
    Txn,
    json_cols,
    q,
    set_meta,
    set_trigger,
)
from electricctl.client.values import LocalValue, RemoteChange


class Applier:
    """Applies remote changes to one connection's tables (it caches the primary-key SQL per table)."""

    def __init__(self, db: sqlite3.Connection, tables: Mapping[str, Table]) -> None:
        self.db = db
        self.tables = tables
        self._pk_sql: dict[str, tuple[str, list[str]]] = {}

    def apply(
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
        """
        with Txn(self.db):
            if origin is not None and origin == client_id and timestamp is not None:
                forget_transaction(self.db, timestamp)
            touched: set[str] = set()
            for ch in changes:
                table = self.tables[ch.table]
                if ch.table not in touched:
                    set_trigger(self.db, ch.table, 0)
                    touched.add(ch.table)
                self._apply_change(table, ch, client_id, timestamp, origin)
            for name in touched:
                set_trigger(self.db, name, 1)
            if lsn is not None:
                set_meta(self.db, LSN_KEY, lsn)

    def _apply_change(
        self, table: Table, ch: RemoteChange, client_id: str, timestamp: int | None, origin: str | None
    ) -> None:
        pk = self.pk_json(table, ch.values)
        pending = pending_for(self.db, self.tables, table.name, pk)
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
            state = merge(state, entry_write(entry, client_id))
        if state.exists:
            self._upsert_row(table, state.values)
            set_shadow(self.db, table.name, pk, json.dumps(sorted(str(t) for t in state.tags)))
        else:
            self._delete_row(table, ch.values, pk)

    def pk_json(self, table: Table, values: Mapping[str, LocalValue]) -> str:
        """The row's ``primaryKey`` as the oplog triggers write it (computed by SQLite, so it matches)."""
        cached = self._pk_sql.get(table.name)
        if cached is None:
            cols = sorted((c for c in table.columns if c.primary_key), key=lambda c: c.name)
            cached = self._pk_sql[table.name] = ("SELECT " + json_cols("", cols), [c.name for c in cols])
        sql, order = cached
        return str(self.db.execute(sql, [values[c] for c in order]).fetchone()[0])

    def _upsert_row(self, table: Table, values: Mapping[str, LocalValue]) -> None:
        cols = [c.name for c in table.columns if c.name in values]
        non_key = [c for c in cols if c not in table.pk]
        conflict = (
            "DO UPDATE SET " + ", ".join(f"{q(c)} = excluded.{q(c)}" for c in non_key) if non_key else "DO NOTHING"
        )
        self.db.execute(
            f"INSERT INTO {q(table.name)} ({', '.join(q(c) for c in cols)})"
            f" VALUES ({', '.join('?' for _ in cols)})"
            f" ON CONFLICT ({', '.join(q(c) for c in table.pk)}) {conflict}",
            [values[c] for c in cols],
        )

    def _delete_row(self, table: Table, values: Mapping[str, LocalValue], pk: str) -> None:
        self.db.execute(
            f"DELETE FROM {q(table.name)} WHERE " + " AND ".join(f"{q(c)} = ?" for c in table.pk),
            [values[c] for c in table.pk],
        )
        self.db.execute(
            f"DELETE FROM {SHADOW} WHERE namespace = ? AND tablename = ? AND primaryKey = ?",
            [NAMESPACE, table.name, pk],
        )

    def reset_tables(self, names: Iterable[str]) -> None:
        """Forget synced rows of ``names`` (the server cannot resume us); pending writes stay."""
        with Txn(self.db):
            for name in names:
                if name in self.tables:
                    set_trigger(self.db, name, 0)
                    self.db.execute(f"DELETE FROM {q(name)}")
                    self.db.execute(f"DELETE FROM {SHADOW} WHERE tablename = ?", [name])
                    set_trigger(self.db, name, 1)
            set_meta(self.db, LSN_KEY, "")


def entry_write(entry: OplogEntry, client_id: str) -> Write:
    """A pending local write as the merge rules see it."""
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
