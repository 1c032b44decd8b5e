"""The client's local SQLite database, as one object: what the sync client asks of the file.

:class:`Store` holds one connection and the synced tables' relations; the work itself is in
:mod:`~electricctl.client.schema` (layout, DDL, triggers), :mod:`~electricctl.client.values`
(wire <-> local values), :mod:`~electricctl.client.oplog` (local writes) and
:mod:`~electricctl.client.apply` (remote changes merged into local rows).

A Store is not thread-safe: :class:`~electricctl.client.sync.SyncClient` creates it, and calls
every method, on one dedicated thread. Apps use their own connections to the same file.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from electricctl.client.apply import Applier
from electricctl.client.oplog import (
    LocalTransaction,
    OplogEntry,
    has_unstamped,
    pending_count,
    stamp,
    stamp_all,
    transactions_after,
)
from electricctl.client.schema import (
    LSN_KEY,
    SCHEMA_VERSION_KEY,
    Column,
    Table,
    Txn,
    create_table,
    load_tables,
    open_db,
    save_tables,
)
from electricctl.client.schema import get_meta as _get_meta
from electricctl.client.schema import set_meta as _set_meta
from electricctl.client.values import LocalValue, RemoteChange, RowBatch, Wire, to_local, to_wire

__all__ = [
    "LSN_KEY",
    "SCHEMA_VERSION_KEY",
    "Column",
    "LocalTransaction",
    "LocalValue",
    "OplogEntry",
    "Poll",
    "RemoteChange",
    "RemoteTransaction",
    "RowBatch",
    "Store",
    "Table",
    "Wire",
    "to_local",
    "to_wire",
]


log = logging.getLogger("electricctl.client")
SYNCED_KEY = "electricctl.synced_at"
"""Written by a commit made only to sync the log to disk."""
_FULL = 2
"""``PRAGMA synchronous``'s value for FULL."""
_STATEMENT = "electricctl_migration_statement"


@dataclass(frozen=True, slots=True)
class RemoteTransaction:
    """One server transaction (or a part of subscription data) to apply."""

    changes: Iterable[RemoteChange]
    origin: str | None
    timestamp: int | None
    lsn: str | None
    """The server position to store with it (None: keep the stored one)."""
    rows: Iterable[RowBatch] = ()
    """Inserted rows (subscription data), written in bulk before ``changes``."""


@dataclass(frozen=True, slots=True)
class Poll:
    """What :meth:`Store.poll` found."""

    stamped: int
    """New local transactions (other connections' writes taken into transactions)."""
    pending: int
    """Local writes not yet confirmed by the server."""
    tables: frozenset[str] = frozenset()
    """The tables those new transactions write."""


class Store:
    """One SQLite file, opened by the sync client (apps use their own connections)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db = open_db(path)
        # Remote changes are committed without an fsync of their own (WAL with synchronous=NORMAL):
        # after a power cut they are lost together with the position stored beside them, and the
        # server sends them again. Stamps are different: a stamped transaction may be sent at once,
        # so a commit that stamps anything is made durable before it returns (see _durably).
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.tables: dict[str, Table] = load_tables(self.db)
        self._applier = Applier(self.db, self.tables)
        self._data_version: int | None = None
        self._held = False
        self._held_stamped = 0

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> Txn:
        return Txn(self.db)

    # -- metadata ------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        return _get_meta(self.db, key)

    def set_meta(self, key: str, value: str) -> None:
        _set_meta(self.db, key, value)

    # -- schema --------------------------------------------------------------------------------
    def ensure_table(self, table: Table) -> None:
        """Create ``table`` (if the app has not) and its oplog triggers, as the npm client does."""
        if self.tables.get(table.name) == table:
            return
        self._rehook()
        with self.transaction():
            create_table(self.db, table)
            self.tables[table.name] = table
            save_tables(self.db, self.tables)

    def migrate(self, version: str, tables: Iterable[Table], statements: Iterable[str] = ()) -> None:
        """A schema migration from the server: create each table, or add the columns it lacks,
        rebuild the oplog triggers, run the local-only statements, and record the version (pending
        local writes are kept). A statement SQLite refuses is logged and skipped: the client keeps
        syncing (``validate`` checked its syntax, not what the local database holds)."""
        self._rehook()
        with self.transaction():
            for table in tables:
                have = self.tables.get(table.name)
                if have is not None:
                    # widen what the client holds; never narrow it (its relation may show fewer
                    # columns, when grants hide some)
                    known = {c.name for c in have.columns}
                    added = tuple(replace(c, nullable=True) for c in table.columns if c.name not in known)
                    if not added:
                        continue
                    table = Table(have.name, have.columns + added)
                create_table(self.db, table)
                self.tables[table.name] = table
            for statement in statements:
                try:
                    self.db.execute(f"SAVEPOINT {_STATEMENT}")
                    self.db.execute(statement)
                    self.db.execute(f"RELEASE {_STATEMENT}")
                except sqlite3.Error as exc:
                    self.db.execute(f"ROLLBACK TO {_STATEMENT}")
                    self.db.execute(f"RELEASE {_STATEMENT}")
                    log.warning("skipping the local statement of migration %s (%s): %s", version, exc, statement)
            save_tables(self.db, self.tables)
            if version > (self.meta(SCHEMA_VERSION_KEY) or ""):
                self.set_meta(SCHEMA_VERSION_KEY, version)

    # -- local writes --------------------------------------------------------------------------
    def has_unstamped(self) -> bool:
        return has_unstamped(self.db)

    def stamp(self, client_id: str, limit: int = 10_000) -> int | None:
        with self._durably():
            return stamp(self.db, client_id, limit)

    @contextlib.contextmanager
    def _durably(self) -> Iterator[None]:
        """Commits in the block are synced to disk before they return (synchronous=FULL)."""
        self.db.execute("PRAGMA synchronous = FULL")
        try:
            yield
        finally:
            self.db.execute("PRAGMA synchronous = NORMAL")

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: it changes when another connection commits to the file."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def poll(self, client_id: str, *, force: bool = False) -> Poll | None:
        """Stamp the writes other connections made since the last poll; None if none committed.

        Cheap when nothing happened: only ``data_version`` is read. ``force`` looks anyway (the
        first poll, or :meth:`SyncClient.notify`).
        """
        if self._held:
            return None
        version = self.data_version()
        if not force and version == self._data_version:
            return None
        self._data_version = version
        tables: set[str] = set()
        with self._durably():
            stamped = stamp_all(self.db, client_id, tables)
        return Poll(stamped, pending_count(self.db), frozenset(tables))

    def transactions_after(self, lsn: int) -> list[LocalTransaction]:
        """Stamped local transactions not yet sent past ``lsn`` (the server's last applied); none
        while subscription data holds a transaction open."""
        if self._held:
            return []
        return transactions_after(self.db, self.tables, lsn)

    def pending_count(self) -> int:
        return pending_count(self.db)

    # -- remote changes ------------------------------------------------------------------------
    def apply_remote(
        self,
        changes: Iterable[RemoteChange],
        *,
        client_id: str,
        origin: str | None,
        timestamp: int | None,
        lsn: str | None,
        hold: bool = False,
    ) -> Poll | None:
        """Apply one server transaction (or a part of subscription data): see :meth:`apply_transactions`."""
        return self.apply_transactions(
            [RemoteTransaction(changes, origin, timestamp, lsn)], client_id=client_id, hold=hold
        )

    def apply_transactions(
        self, transactions: Iterable[RemoteTransaction], *, client_id: str, hold: bool = False
    ) -> Poll | None:
        """Apply server transactions, in order, in one SQLite transaction.

        The local writes made so far are first taken into transactions, in the same SQLite
        transaction (so none slips in between), and the remote changes merged with them. Returns
        how many local transactions that made, and how many writes are still pending after it.

        With ``hold`` (subscription data still arriving) the SQLite transaction stays open, and
        None is returned: the next call goes on in it, and the first one without ``hold`` commits
        it; :meth:`abandon` rolls it back. Meanwhile the app's writes wait for the lock, and
        :meth:`poll` and :meth:`transactions_after` find nothing (nothing is sent from a state
        that may yet be rolled back).
        """
        if not self._held:
            if has_unstamped(self.db):  # this commit will stamp them: it must reach the disk
                self.db.execute("PRAGMA synchronous = FULL")
            self.db.execute("BEGIN IMMEDIATE")
            self._held = True
            self._held_stamped = 0
            self._applier.begin_bulk()
            try:
                self._held_stamped = stamp_all(self.db, client_id)
            except BaseException:
                self.abandon()
                raise
        try:
            for tx in transactions:
                self._applier.apply(
                    tx.changes, client_id=client_id, origin=tx.origin, timestamp=tx.timestamp, lsn=tx.lsn, rows=tx.rows
                )
            if hold:
                return None
            self._applier.end_bulk()
            self.db.execute("COMMIT")
        except BaseException:
            self.abandon()
            raise
        finally:
            if not self.db.in_transaction:
                self._sync_normally()
        self._held = False
        return Poll(self._held_stamped, pending_count(self.db))

    def _sync_normally(self) -> None:
        """After a commit of remote changes: if it stamped writes that an app committed after the
        check before it began (so it ran at synchronous=NORMAL), sync the log now, before any of
        them can be sent; then back to NORMAL."""
        if self._held_stamped and self.db.execute("PRAGMA synchronous").fetchone()[0] != _FULL:
            with self._durably(), self.transaction():  # a commit at FULL syncs the log up to it
                self.set_meta(SYNCED_KEY, str(time.time()))
        self.db.execute("PRAGMA synchronous = NORMAL")

    def _rehook(self) -> None:
        """Before a schema change inside held subscription data: put the dropped triggers back first."""
        if self._held:
            self._applier.end_bulk()
            self._applier.begin_bulk()

    def abandon(self) -> None:
        """Roll back the transaction :meth:`apply_transactions` holds open, if there is one."""
        if self._held:
            self._held = False
            self._held_stamped = 0  # rolled back with the rest: nothing stamped to make durable
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            self._applier.forget_bulk()
            self.db.execute("PRAGMA synchronous = NORMAL")

    @property
    def holding(self) -> bool:
        """Is a transaction of subscription data open (see :meth:`apply_transactions`)?"""
        return self._held

    def pk_json(self, table: Table, values: dict[str, LocalValue]) -> str:
        return self._applier.pk_json(table, values)

    def reset_tables(self, names: Iterable[str]) -> None:
        """Forget synced rows of ``names`` (the server cannot resume us); pending writes stay."""
        self._applier.reset_tables(names)
