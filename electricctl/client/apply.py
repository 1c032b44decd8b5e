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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from electricctl._merge.rules import RowState, Tag, Write, merge
from electricctl.client.oplog import OplogEntry, forget_transaction, pending_for_keys
from electricctl.client.schema import (
    FLOATS,
    INTS,
    LSN_KEY,
    NAMESPACE,
    OPLOG,
    SHADOW,
    Table,
    Txn,
    json_cols,
    own_trigger_names,
    q,
    set_meta,
    set_trigger,
)
from electricctl.client.values import LocalValue, RemoteChange, RowBatch

BULK_ROWS = 256
"""Once this many rows of a table are written in bulk in one transaction, its oplog triggers are dropped."""


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
        self._bulk = False
        self._bulk_rows: dict[str, int] = {}
        """Rows written in bulk per table in the open transaction."""
        self._unhooked: dict[str, list[str]] = {}
        """Tables whose oplog triggers are dropped in the open transaction, with the SQL that restores them."""

    # -- bulk loads: the oplog triggers are dropped inside one transaction -------------------------
    def begin_bulk(self) -> None:
        """The caller holds a transaction open and calls :meth:`end_bulk` before committing it:
        until then, a large part of subscription data may drop the table's own oplog triggers
        (they would only check, row by row, that they are switched off). No other connection
        sees the table without them: the change is inside the transaction, and undone by a rollback."""
        self._bulk = True
        self._unhooked = {}
        self._bulk_rows = {}

    def end_bulk(self) -> None:
        """Put back the triggers dropped since :meth:`begin_bulk` (call it before committing)."""
        for statements in self._unhooked.values():
            for statement in statements:
                self.db.execute(statement)
        self._unhooked = {}
        self._bulk = False

    def forget_bulk(self) -> None:
        """The transaction was rolled back: the triggers are back by themselves."""
        self._unhooked = {}
        self._bulk = False

    def _unhook(self, table: Table) -> None:
        if table.name in self._unhooked:
            return
        saved = self.db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", [table.name]
        ).fetchall()
        own = [(name, sql) for name, sql in saved if name in own_trigger_names(self.db, table)]
        for name, _ in own:
            self.db.execute(f"DROP TRIGGER {q(name)}")
        self._unhooked[table.name] = [sql for _, sql in own]

    def apply(
        self,
        changes: Iterable[RemoteChange],
        *,
        client_id: str,
        origin: str | None,
        timestamp: int | None,
        lsn: str | None,
        rows: Iterable[RowBatch] = (),
    ) -> None:
        """Apply one server transaction (or a part of subscription data) in one SQLite transaction.

        The client's own transaction first clears its oplog entries (they are in Postgres now).
        Each row's outcome is worked out in Python first; the writes then go to SQLite a table at
        a time, one statement for many rows, so the file is locked against the app's writes for
        as short a time as can be. Inserted ``rows`` (subscription data) go first, in bulk.
        """
        by_table: dict[str, list[RemoteChange]] = {}
        for ch in changes:
            by_table.setdefault(ch.table, []).append(ch)
        with Txn(self.db):
            if origin is not None and origin == client_id and timestamp is not None:
                forget_transaction(self.db, timestamp)
            for batch in rows:
                if not self._insert_rows(batch):
                    by_table.setdefault(batch.table.name, [])[:0] = batch.changes()
            for name, table_changes in by_table.items():
                table = self.tables[name]
                outcomes = self._outcomes(table, table_changes, client_id, timestamp, origin)
                set_trigger(self.db, name, 0)
                self._write(table, outcomes)
                set_trigger(self.db, name, 1)
            if lsn is not None:
                set_meta(self.db, LSN_KEY, lsn)

    def _insert_rows(self, batch: RowBatch) -> bool:
        """Write inserted rows in bulk: one upsert and one shadow write for them all, no merge.

        Only when no local write of the table waits for the server (nothing to merge with) and
        every row has tags (a row without any does not exist); returns False to have the rows
        merged one by one instead.
        """
        table = self.tables[batch.table.name]
        if not batch.rows or not all(batch.tags) or self._has_pending(table):
            return not batch.rows
        names = tuple(c.name for c in batch.table.columns)
        _, order, plain = self._pk_format(table)
        positions = [names.index(name) for name, _ in order]
        # a one-column key under a plain name (the usual id) is formatted inline
        single = positions[0] if len(positions) == 1 and plain else None
        prefix, key_type = '{"' + order[0][0] + '":', order[0][1]
        tag_sets = _TagSets()
        shadow: list[tuple[str, str, str, str]] = []
        for row, tags in zip(batch.rows, batch.tags, strict=True):
            tags_json = tag_sets[tuple(tags)]
            text = None if single is None else _plain_json(key_type, row[single])
            key = prefix + text + "}" if text is not None else self._pk_json_of(table, [row[i] for i in positions])
            shadow.append((NAMESPACE, table.name, key, tags_json))
        if self._bulk:
            self._bulk_rows[table.name] = rows = self._bulk_rows.get(table.name, 0) + len(batch.rows)
            if rows >= BULK_ROWS:
                self._unhook(table)
        set_trigger(self.db, table.name, 0)
        self.db.executemany(_upsert_sql(table, names), batch.rows)
        self.db.executemany(
            f"INSERT OR REPLACE INTO {SHADOW} (namespace, tablename, primaryKey, tags) VALUES (?, ?, ?, ?)", shadow
        )
        set_trigger(self.db, table.name, 1)
        return True

    def _outcomes(
        self, table: Table, changes: list[RemoteChange], client_id: str, timestamp: int | None, origin: str | None
    ) -> dict[str, _Outcome]:
        """Each touched row's end state, merged with the local writes still pending for it.

        A row with no pending local write (nearly every row) ends as the server sends it: it
        skips the merge, and its shadow tags are formatted once per distinct tag set.
        """
        keys = [self.pk_json(table, ch.values) for ch in changes]
        pending = pending_for_keys(self.db, self.tables, table.name, set(keys)) if self._has_pending(table) else {}
        tag = Tag(timestamp or 0, origin or None)
        tag_sets = _TagSets()
        pk = table.pk
        outcomes: dict[str, _Outcome] = {}
        for ch, key_json in zip(changes, keys, strict=True):
            entries = pending.get(key_json)
            values: dict[str, LocalValue] | None
            if entries is None:
                tags_json = None
                if ch.kind != "gone" and ch.kind != "delete" and ch.tags:
                    tags_json = tag_sets[tuple(ch.tags)]
                values = ch.values if tags_json is not None else None
            else:
                state = _merged(ch, tag, entries, client_id)
                if state is None or not state.exists:
                    values, tags_json = None, None
                else:
                    values, tags_json = dict(state.values), _tags_json(state.tags)
            before = outcomes.get(key_json)
            if values is None:
                outcomes[key_json] = _Outcome({c: ch.values[c] for c in pk}, None, True, None)
            elif before is None:
                outcomes[key_json] = _Outcome({c: ch.values[c] for c in pk}, values, False, tags_json)
            elif before.values is None:
                outcomes[key_json] = _Outcome(before.key, values, True, tags_json)
            else:
                before.values = {**before.values, **values}
                before.tags = tags_json
        return outcomes

    def _has_pending(self, table: Table) -> bool:
        """Does any stamped local write of ``table`` wait for the server's echo? (One index probe.)"""
        return (
            self.db.execute(
                f"SELECT 1 FROM {OPLOG} WHERE namespace = ? AND tablename = ? AND timestamp IS NOT NULL LIMIT 1",
                [NAMESPACE, table.name],
            ).fetchone()
            is not None
        )

    def _write(self, table: Table, outcomes: Mapping[str, _Outcome]) -> None:
        """The outcomes as a few statements, each for many rows."""
        where_key = " AND ".join(f"{q(c)} = ?" for c in table.pk)
        self.db.executemany(
            f"DELETE FROM {q(table.name)} WHERE {where_key}",
            [[o.key[c] for c in table.pk] for o in outcomes.values() if o.deleted_first],
        )
        every = tuple(c.name for c in table.columns)
        upserts: dict[tuple[str, ...], list[Sequence[LocalValue]]] = {}
        for o in outcomes.values():
            values = o.values
            if values is not None:
                cols = every if len(values) == len(every) else tuple(c for c in every if c in values)
                rows = upserts.get(cols)
                if rows is None:
                    rows = upserts[cols] = []
                rows.append([values[c] for c in cols])
        for cols, batch in upserts.items():
            self.db.executemany(_upsert_sql(table, cols), batch)
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
        return self._pk_json_of(table, [values[name] for name, _ in self._pk_order(table)])

    def _pk_order(self, table: Table) -> list[tuple[str, str]]:
        """The key's columns as the JSON has them (by name), with their types."""
        return self._pk_format(table)[1]

    def _pk_format(self, table: Table) -> tuple[str, list[tuple[str, str]], bool]:
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
        return cached

    def _pk_json_of(self, table: Table, key: list[LocalValue]) -> str:
        """:meth:`pk_json` of the key's values, in :meth:`_pk_order`."""
        sql, order, plain = self._pk_format(table)
        if plain:
            parts: list[str] = []
            for (name, pg_type), value in zip(order, key, strict=True):
                text = _plain_json(pg_type, value)
                if text is None:
                    break
                parts.append(f'"{name}":{text}')
            else:
                return "{" + ",".join(parts) + "}"
        return str(self.db.execute(sql, key).fetchone()[0])

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


def _tags_json(tags: Iterable[Tag]) -> str:
    return json.dumps(sorted({str(t) for t in tags}))


class _TagSets(dict[tuple[str, ...], str]):
    """Shadow JSON per tag set the server sent, formatted once per batch (a transaction's rows share one)."""

    def __missing__(self, seen: tuple[str, ...]) -> str:
        tags_json = self[seen] = _tags_json(map(Tag.parse, seen))
        return tags_json


def _merged(ch: RemoteChange, tag: Tag, entries: Iterable[OplogEntry], client_id: str) -> RowState | None:
    """The row as the server will have it once the pending local ``entries`` reach it (None: GONE)."""
    if ch.kind == "gone":
        return None  # GONE always wins: the client must not keep the row
    if ch.kind == "delete":
        state = RowState(dict(ch.values), {}, frozenset())
    else:
        old = ch.old
        changed = {c for c, v in ch.values.items() if old is None or old.get(c) != v}
        # columns this change set carry its tag; the others are older than any pending write
        state = RowState(dict(ch.values), {c: tag for c in changed}, frozenset(map(Tag.parse, ch.tags)))
    for entry in entries:
        state = merge(state, entry_write(entry, client_id))
    return state


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
