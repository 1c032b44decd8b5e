"""The oplog of local writes: taking them into transactions (stamping), reading them back to send.

The triggers (:mod:`electricctl.client.schema`) append one row per local write with no timestamp.
:func:`stamp` takes those rows into a transaction (they share one timestamp) and records, for each
write, the tags it observed (the row's shadow tags) as the ones it clears. A transaction stays in
the oplog until the server echoes it back (:mod:`electricctl.client.apply` then deletes it).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from electricctl._merge.rules import Tag
from electricctl.client.schema import LAST_TIMESTAMP_KEY, NAMESPACE, OPLOG, SHADOW, Table, Txn, get_meta, set_meta
from electricctl.client.values import LocalValue, from_oplog

_COLUMNS = "rowid, tablename, optype, primaryKey, newRow, oldRow, timestamp, clearTags"


@dataclass(slots=True)
class OplogEntry:
    """One stamped local write."""

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


def has_unstamped(db: sqlite3.Connection) -> bool:
    return db.execute(f"SELECT 1 FROM {OPLOG} WHERE timestamp IS NULL LIMIT 1").fetchone() is not None


def pending_count(db: sqlite3.Connection) -> int:
    return int(db.execute(f"SELECT count(*) FROM {OPLOG}").fetchone()[0])


def stamp(db: sqlite3.Connection, client_id: str, limit: int = 10_000, tables: set[str] | None = None) -> int | None:
    """Take the local writes not yet in a transaction (at most ``limit``) into a new one; return its timestamp.

    The bound keeps a long offline session from becoming one transaction larger than the
    server accepts; the writes beyond it go into the next transactions, in order.

    Each write records the tags it observed (the row's shadow tags) as the ones it clears, and
    the row's shadow tags become the write's own tag (removed for a delete).
    """
    with Txn(db):
        # each write's row with the shadow tags it had before this batch; one query, not one per write
        rows = db.execute(
            f"SELECT o.rowid, o.tablename, o.optype, o.primaryKey, s.tags FROM {OPLOG} o"
            f" LEFT JOIN {SHADOW} s ON s.namespace = o.namespace AND s.tablename = o.tablename"
            " AND s.primaryKey = o.primaryKey"
            " WHERE o.timestamp IS NULL ORDER BY o.rowid LIMIT ?",
            [limit],
        ).fetchall()
        if not rows:
            return None
        if tables is not None:
            tables.update(r[1] for r in rows)
        # strictly increasing, even if the clock steps back: a timestamp names one transaction
        previous = int(get_meta(db, LAST_TIMESTAMP_KEY) or 0)
        ts = max(int(time.time() * 1000), previous + 1)
        stamp_text = str(ts)
        own = json.dumps([str(Tag(ts, client_id))])
        # the shadow as the writes go by, in order: a row written twice clears its first write's tag
        shadow: dict[tuple[str, str], str | None] = {}
        updates: list[tuple[str, str, int]] = []
        for rowid, table, optype, pk, seen in rows:
            key = (table, pk)
            tags = shadow[key] if key in shadow else seen
            updates.append((stamp_text, tags if tags is not None else "[]", rowid))
            if optype == "DELETE":
                shadow[key] = None
            elif optype != "COMPENSATION":  # a compensation re-asserts the tags seen; it adds none
                shadow[key] = own
        db.executemany(f"UPDATE {OPLOG} SET timestamp = ?, clearTags = ? WHERE rowid = ?", updates)
        db.executemany(
            f"DELETE FROM {SHADOW} WHERE namespace = ? AND tablename = ? AND primaryKey = ?",
            [(NAMESPACE, table, pk) for (table, pk), tags in shadow.items() if tags is None],
        )
        db.executemany(
            f"INSERT OR REPLACE INTO {SHADOW} (namespace, tablename, primaryKey, tags) VALUES (?, ?, ?, ?)",
            [(NAMESPACE, table, pk, tags) for (table, pk), tags in shadow.items() if tags is not None],
        )
        set_meta(db, LAST_TIMESTAMP_KEY, stamp_text)
        return ts


def stamp_all(db: sqlite3.Connection, client_id: str, tables: set[str] | None = None) -> int:
    """Stamp every unstamped write (in transactions of at most 10,000); return how many transactions
    (and add the tables they write to ``tables``)."""
    made = 0
    while stamp(db, client_id, tables=tables) is not None:
        made += 1
    return made


def transactions_after(db: sqlite3.Connection, tables: Mapping[str, Table], lsn: int) -> list[LocalTransaction]:
    """Stamped local transactions not yet sent past ``lsn`` (the server's last applied)."""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM {OPLOG} WHERE timestamp IS NOT NULL AND rowid > ? ORDER BY rowid",
        [lsn],
    ).fetchall()
    out: list[LocalTransaction] = []
    for r in rows:
        entry = _entry(tables, r)
        if not out or out[-1].timestamp != entry.timestamp:
            out.append(LocalTransaction(entry.timestamp))
        out[-1].entries.append(entry)
    return out


def pending_for_keys(
    db: sqlite3.Connection, tables: Mapping[str, Table], table: str, keys: Collection[str]
) -> dict[str, list[OplogEntry]]:
    """The stamped writes of these rows still waiting for the server's echo, oldest first, by key."""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM {OPLOG}"
        " WHERE namespace = ? AND tablename = ? AND primaryKey IN (SELECT value FROM json_each(?))"
        " AND timestamp IS NOT NULL ORDER BY rowid",
        [NAMESPACE, table, json.dumps(list(keys))],
    ).fetchall()
    out: dict[str, list[OplogEntry]] = {}
    for r in rows:
        out.setdefault(r[3], []).append(_entry(tables, r))
    return out


def forget_transaction(db: sqlite3.Connection, timestamp: int) -> None:
    """The server echoed our transaction: it is in Postgres now."""
    db.execute(f"DELETE FROM {OPLOG} WHERE timestamp = ?", [str(timestamp)])


def _entry(tables: Mapping[str, Table], r: Sequence[Any]) -> OplogEntry:
    table = tables.get(r[1])
    new = json.loads(r[4]) if r[4] else None
    old = json.loads(r[5]) if r[5] else None
    if table is not None:
        new = {k: from_oplog(table.column(k), v) for k, v in new.items()} if new else new
        old = {k: from_oplog(table.column(k), v) for k, v in old.items()} if old else old
    return OplogEntry(r[0], r[1], r[2], r[3], new, old, int(r[6]), json.loads(r[7] or "[]"))
