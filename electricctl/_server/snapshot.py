"""Consistent initial data for subscriptions: a REPEATABLE READ snapshot, read with COPY.

The snapshot's xmin, xmax and xip (``pg_current_snapshot()``) say which streamed transactions its
data already holds (:class:`~electricctl._shapes.visibility.Visibility`), so the data joins the live
stream with nothing lost and nothing applied twice. ``pg_current_wal_insert_lsn()`` read after the
snapshot bounds the transactions that need that check.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from electricctl._model.rows import Column, RelationDef, Row, canonical
from electricctl._model.table import TableRef
from electricctl._model.wire import DISPLAY_OPTIONS
from electricctl._replication import lsn as lsnmod
from electricctl._server.pgretry import Backoff, connection_lost
from electricctl._shapes.visibility import Visibility

_DESCRIBE = """
SELECT c.oid, a.attname, t.typname, a.atttypid, a.attnotnull,
       coalesce(a.attnum = ANY(i.indkey), false) AS pk
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
 WHERE n.nspname = %s AND c.relname = %s
 ORDER BY a.attnum
"""


async def describe(conn: psycopg.AsyncConnection[Any], table: TableRef) -> RelationDef | None:
    rows = await (await conn.execute(_DESCRIBE, [table.schema, table.name])).fetchall()
    if not rows:
        return None
    cols = tuple(Column(r[1], r[3], r[2], bool(r[5]), not r[4]) for r in rows)
    return canonical(RelationDef(rows[0][0], table.schema, table.name, cols))


_UNESCAPE = {
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("v"): b"\v",
    ord("\\"): b"\\",
}


def _unescape(field: bytes) -> bytes:
    out = bytearray()
    i = 0
    n = len(field)
    while i < n:
        ch = field[i]
        if ch == 0x5C and i + 1 < n:  # backslash
            nxt = field[i + 1]
            if nxt in _UNESCAPE:
                out += _UNESCAPE[nxt]
                i += 2
                continue
            if 0x30 <= nxt <= 0x37:  # octal \ooo
                j = i + 1
                while j < n and j < i + 4 and 0x30 <= field[j] <= 0x37:
                    j += 1
                out.append(int(field[i + 1 : j], 8) & 0xFF)
                i = j
                continue
            out.append(nxt)
            i += 2
            continue
        out.append(ch)
        i += 1
    return bytes(out)


def parse_copy_lines(buf: bytes) -> tuple[list[Row], bytes]:
    """Parse complete lines of COPY text format; return the rows and the incomplete remainder."""
    lines = buf.split(b"\n")
    rest = lines.pop()
    rows: list[Row] = []
    for line in lines:
        fields = line.split(b"\t")
        rows.append(tuple(None if f == b"\\N" else (_unescape(f) if b"\\" in f else f) for f in fields))
    return rows, rest


class SnapshotPool:
    """A few reusable connections for snapshots; at most ``size`` snapshots are open at once.

    Each subscription change needs a snapshot; opening a Postgres connection per snapshot costs
    milliseconds of Postgres CPU and, with many clients at once, hits max_connections. Requests
    beyond ``size`` wait their turn instead.
    """

    def __init__(self, url: str, size: int = 4, per_owner: int | None = None) -> None:
        self.url = url
        self.size = size
        self.per_owner = per_owner if per_owner is not None else max(1, size // 2)
        """Snapshots one owner (a user) may hold at once, so that one user cannot take every slot."""
        self._slots = asyncio.Semaphore(size)
        self._owners: dict[str, asyncio.Semaphore] = {}
        self._users: collections.Counter[str] = collections.Counter()
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._all: set[psycopg.AsyncConnection[Any]] = set()
        self.in_use = 0
        """Snapshots open now (at most ``size``)."""
        self.waiting = 0
        """Requests waiting for a free slot."""

    async def take(self, owner: str | None = None) -> Snapshot:
        """Open a snapshot; with ``owner``, wait while that owner already holds its share."""
        mine: asyncio.Semaphore | None = None
        if owner is not None:
            mine = self._owners.get(owner)
            if mine is None:
                mine = self._owners[owner] = asyncio.Semaphore(self.per_owner)
            self._users[owner] += 1  # holding or waiting
            try:
                await mine.acquire()
            except BaseException:
                self._forget(owner)
                raise
        try:
            snap = await self._take()
        except BaseException:
            if mine is not None:
                self._release_owner(owner, mine)
            raise
        if mine is not None:
            snap.on_close = lambda: self._release_owner(owner, mine)
        return snap

    def _release_owner(self, owner: str | None, sem: asyncio.Semaphore) -> None:
        sem.release()
        if owner is not None:
            self._forget(owner)

    def _forget(self, owner: str) -> None:
        """One holder or waiter fewer; an owner nobody holds or waits for is forgotten."""
        self._users[owner] -= 1
        if self._users[owner] <= 0:
            del self._users[owner]
            self._owners.pop(owner, None)

    async def _take(self) -> Snapshot:
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.in_use += 1
        try:
            conn = self._idle.pop() if self._idle else None
            backoff = Backoff("a snapshot connection", 15.0)
            while True:
                try:
                    conn, row = await self._begin(conn)
                    break
                except psycopg.OperationalError as exc:
                    # an idle connection that died with its server (a Postgres restart), or a new
                    # one that cannot be made yet: try again with a new one, for a while
                    if conn is not None and connection_lost(exc, conn):
                        self._all.discard(conn)
                    await backoff.recover(exc, conn)
                    conn = None
        except BaseException:
            self.in_use -= 1
            self._slots.release()
            raise
        return Snapshot(conn, Visibility.parse(row[0], lsnmod.parse(row[1])), self)

    async def _begin(self, conn: psycopg.AsyncConnection[Any] | None) -> tuple[psycopg.AsyncConnection[Any], Any]:
        if conn is None or conn.closed:
            conn = await psycopg.AsyncConnection.connect(
                self.url, application_name="electricctl-snapshot", options=DISPLAY_OPTIONS, connect_timeout=10
            )
            self._all.add(conn)
        try:
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = await (
                await conn.execute("SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text")
            ).fetchone()
        except BaseException:
            if conn.broken:
                self._all.discard(conn)
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
            else:
                with contextlib.suppress(psycopg.Error):
                    await conn.rollback()
            raise
        assert row is not None
        return conn, row

    async def release(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            if not conn.closed:
                await conn.rollback()
                self._idle.append(conn)
                return
        except psycopg.Error:
            self._all.discard(conn)  # the connection is broken: drop it
            await conn.close()
        except BaseException:
            # cancelled mid-rollback: its state is unknown, so close it, then let the cancel go on
            self._all.discard(conn)
            await asyncio.shield(conn.close())
            raise
        finally:
            self.in_use -= 1
            self._slots.release()
        self._all.discard(conn)

    async def close(self) -> None:
        """Close every connection, including any still held by a cancelled snapshot."""
        for conn in list(self._all):
            await conn.close()
        self._all.clear()
        self._idle.clear()


class Snapshot:
    """An open REPEATABLE READ transaction; read tables with :meth:`rows`, then :meth:`close`."""

    def __init__(
        self, conn: psycopg.AsyncConnection[Any], visibility: Visibility, pool: SnapshotPool | None = None
    ) -> None:
        self.conn = conn
        self.visibility = visibility
        self._pool = pool
        self.on_close: Callable[[], None] | None = None

    async def describe(self, table: TableRef) -> RelationDef | None:
        return await describe(self.conn, table)

    async def rows(
        self,
        rel: RelationDef,
        where: sql.Composable | None = None,
        batch: int = 1000,
        *,
        tags: bool = False,
        order_by: sql.Composable | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> AsyncIterator[Sequence[Row]]:
        """The table's rows (those ``where`` matches), in the text form the stream uses.

        With ``tags``, each row ends with one more value: its shadow entry's ``row_tags`` (JSON),
        or None for a row from before the table was electrified. ``order_by``, ``limit`` and
        ``offset``: a page of them (the HTTP Shape API's subset snapshots).
        """
        alias = sql.Identifier("electric_row")
        cols: sql.Composable = sql.SQL(", ").join(
            sql.SQL("{}.{}").format(alias, sql.Identifier(c.name)) for c in rel.columns
        )
        if tags:
            key = sql.SQL(", ").join(
                sql.SQL("{}.{}::text").format(alias, sql.Identifier(rel.columns[i].name)) for i in rel.pk_indexes
            )
            cols = sql.SQL(
                "{}, (SELECT s.row_tags FROM electric.shadow AS s"
                " WHERE s.schema_name = {} AND s.table_name = {} AND s.pk = ARRAY[{}])"
            ).format(cols, sql.Literal(rel.schema), sql.Literal(rel.name), key)
        # COPY takes no bind parameters: the clause's constants are psycopg.sql.Literals
        page: sql.Composable = sql.SQL("")
        if order_by is not None:
            page = sql.SQL(" ORDER BY {}").format(order_by)
        if limit is not None:
            page = sql.SQL("{} LIMIT {}").format(page, sql.Literal(limit))
        if offset is not None:
            page = sql.SQL("{} OFFSET {}").format(page, sql.Literal(offset))
        query = sql.SQL("COPY (SELECT {} FROM {} AS {}{}{}) TO STDOUT").format(
            cols,
            sql.Identifier(rel.schema, rel.name),
            alias,
            sql.SQL("") if where is None else sql.SQL(" WHERE {}").format(where),
            page,
        )
        pending: list[Row] = []
        rest = b""
        async with self.conn.cursor().copy(query) as copy:
            async for block in copy:
                rows, rest = parse_copy_lines(rest + bytes(block))
                pending.extend(rows)
                if len(pending) >= batch:
                    yield pending
                    pending = []
        if rest:
            rows, _ = parse_copy_lines(rest + b"\n")
            pending.extend(rows)
        if pending:
            yield pending

    async def close(self) -> None:
        try:
            if self._pool is not None:
                await self._pool.release(self.conn)
            else:
                await self.conn.close()
        finally:
            if self.on_close is not None:
                self.on_close()
                self.on_close = None
