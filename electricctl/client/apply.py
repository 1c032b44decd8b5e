"""Remote changes merged into local rows.

A server transaction (or a batch of subscription data) is applied in one SQLite transaction with
the oplog triggers off. Each change is merged with the local writes still pending for its row by
:mod:`electricctl._merge.rules` (the code the server merges with): the row ends as the server
will have it once those writes arrive there.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from electricctl._merge.rules import RowState, Tag, Write, merge
from electricctl.client.oplog import OplogEntry, forget_transaction, pending_for_keys
from electricctl.client.schema import (
    FLOATS,
    INTS,
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


@dataclass(slots=True)
class _Outcome:
    """Where one row ends after a batch: upserted with ``values`` (after a delete if ``deleted_first``), or gone."""

    key: dict[str, LocalValue]
    values: dict[str, LocalValue] | None
    deleted_first: bool
    tags: str | None


class Applier:
    """Applies remote changes to one connection's tables (it caches the primary-key SQL per table)."""

    def __init__(self, db: sqlite3.Connection, tables: Mapping[str, Table]) -> None:
        self.db = db
        self.tables = tables
        self._pk_sql: dict[str, tuple[str, list[tuple[str, str]], bool]] = {}

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
        Each row's outcome is worked out in Python first; the writes then go to SQLite a table at
        a time, one statement for many rows, so the file is locked against the app's writes for
        as short a time as can be.
        """
        by_table: dict[str, list[RemoteChange]] = {}
        for ch in changes:
            by_table.setdefault(ch.table, []).append(ch)
        with Txn(self.db):
            if origin is not None and origin == client_id and timestamp is not None:
                forget_transaction(self.db, timestamp)
            for name, table_changes in by_table.items():
                table = self.tables[name]
                outcomes = self._outcomes(table, table_changes, client_id, timestamp, origin)
                set_trigger(self.db, name, 0)
                self._write(table, outcomes)
                set_trigger(self.db, name, 1)
            if lsn is not None:
                set_meta(self.db, LSN_KEY, lsn)

    def _outcomes(
        self, table: Table, changes: list[RemoteChange], client_id: str, timestamp: int | None, origin: str | None
    ) -> dict[str, _Outcome]:
        """Each touched row's end state, merged with the local writes still pending for it."""
        keys = [self.pk_json(table, ch.values) for ch in changes]
        pending = pending_for_keys(self.db, self.tables, table.name, set(keys))
        tag = Tag(timestamp or 0, origin or None)
        outcomes: dict[str, _Outcome] = {}
        for ch, pk in zip(changes, keys, strict=True):
            before = outcomes.get(pk)
            state: RowState | None = None  # GONE always wins: the client must not keep the row
            if ch.kind != "gone":
                if ch.kind == "delete":
                    state = RowState(dict(ch.values), {}, frozenset())
                else:
                    old = ch.old
                    changed = {c for c, v in ch.values.items() if old is None or old.get(c) != v}
                    # columns this change set carry its tag; the others are older than any pending write
                    state = RowState(dict(ch.values), {c: tag for c in changed}, frozenset(map(Tag.parse, ch.tags)))
                for entry in pending.get(pk, ()):
                    state = merge(state, entry_write(entry, client_id))
            key = {c: ch.values[c] for c in table.pk}
            if state is None or not state.exists:
                outcomes[pk] = _Outcome(key, None, True, None)
                continue
            tags_json = json.dumps(sorted(str(t) for t in state.tags))
            if before is None:
                outcomes[pk] = _Outcome(key, dict(state.values), False, tags_json)
            elif before.values is None:
                outcomes[pk] = _Outcome(key, dict(state.values), True, tags_json)
            else:
                before.values.update(state.values)
                before.tags = tags_json
        return outcomes

    def _write(self, table: Table, outcomes: Mapping[str, _Outcome]) -> None:
        """The outcomes as a few statements, each for many rows."""
        where_key = " AND ".join(f"{q(c)} = ?" for c in table.pk)
        self.db.executemany(
            f"DELETE FROM {q(table.name)} WHERE {where_key}",
            [[o.key[c] for c in table.pk] for o in outcomes.values() if o.deleted_first],
        )
        upserts: dict[tuple[str, ...], list[list[LocalValue]]] = {}
        for o in outcomes.values():
            if o.values is not None:
                cols = tuple(c.name for c in table.columns if c.name in o.values)
                upserts.setdefault(cols, []).append([o.values[c] for c in cols])
        for cols, rows in upserts.items():
            self.db.executemany(_upsert_sql(table, cols), rows)
        self.db.executemany(
            f"DELETE FROM {SHADOW} WHERE namespace = ? AND tablename = ? AND primaryKey = ?",
            [(NAMESPACE, table.name, pk) for pk, o in outcomes.items() if o.tags is None],
        )
        self.db.executemany(
            f"INSERT OR REPLACE INTO {SHADOW} (namespace, tablename, primaryKey, tags) VALUES (?, ?, ?, ?)",
            [(NAMESPACE, table.name, pk, o.tags) for pk, o in outcomes.items() if o.tags is not None],
        )

    def pk_json(self, table: Table, values: Mapping[str, LocalValue]) -> str:
        """The row's ``primaryKey`` exactly as the oplog triggers write it.

        Plain keys (integers, bytes, and text of printable ASCII with no quote or backslash, under
        names of the same kind) are formatted here; anything else is left to SQLite's
        ``json_object``, as in the triggers.
        """
        cached = self._pk_sql.get(table.name)
        if cached is None:
            cols = sorted((c for c in table.columns if c.primary_key), key=lambda c: c.name)
            # names that JSON quotes as they are are formatted here; otherwise every key goes to SQLite
            plain = all(_PLAIN.fullmatch(c.name) for c in cols)
            cached = self._pk_sql[table.name] = (
                "SELECT " + json_cols("", cols),
                [(c.name, c.pg_type) for c in cols],
                plain,
            )
        sql, order, plain = cached
        if plain:
            parts: list[str] = []
            for name, pg_type in order:
                text = _plain_json(pg_type, values[name])
                if text is None:
                    break
                parts.append(f'"{name}":{text}')
            else:
                return "{" + ",".join(parts) + "}"
        return str(self.db.execute(sql, [values[name] for name, _ in order]).fetchone()[0])

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


def _upsert_sql(table: Table, cols: tuple[str, ...]) -> str:
    non_key = [c for c in cols if c not in table.pk]
    conflict = "DO UPDATE SET " + ", ".join(f"{q(c)} = excluded.{q(c)}" for c in non_key) if non_key else "DO NOTHING"
    return (
        f"INSERT INTO {q(table.name)} ({', '.join(q(c) for c in cols)})"
        f" VALUES ({', '.join('?' for _ in cols)})"
        f" ON CONFLICT ({', '.join(q(c) for c in table.pk)}) {conflict}"
    )


_PLAIN = re.compile(r"[ !#-\[\]-~]*")
"""Printable ASCII but ``"`` and ``\\``: JSON and SQLite's ``json_object`` quote such text as it is."""


def _plain_json(pg_type: str, value: LocalValue) -> str | None:
    """``value`` as the triggers' ``json_object`` writes it (see :func:`~electricctl.client.schema.json_value`),
    or None when only SQLite can say for sure (floats, non-ASCII or escaped text, odd types)."""
    if type(value) is int:
        if pg_type == "int8":
            return f'"{value}"'  # cast(... as TEXT)
        return str(value) if pg_type in ("int2", "int4", "bool") else None
    if type(value) is bytes:
        return f'"{value.hex().upper()}"' if pg_type == "bytea" else None
    if type(value) is str and pg_type not in INTS and pg_type not in FLOATS and pg_type != "bytea":
        return f'"{value}"' if _PLAIN.fullmatch(value) else None
    return None


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
