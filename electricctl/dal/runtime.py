"""The typed data-access client that ``electricctl generate`` packages build on.

A :class:`Database` owns a :class:`~electricctl.client.SyncClient` (the sync, both ways) and a
SQLite connection of its own to the same file, on a thread of its own (:class:`LocalDb`): reads
never wait behind a large sync being written, and writes go through the file's oplog triggers,
so they sync like any other local write. Each generated table is a :class:`Table`, typed by the
generated row, create, update, filter, ordering and include types.

Live queries (:class:`LiveQuery`) know the tables they read (SQLite's authorizer reports them
when a statement is prepared) and run again only when a transaction touched one of them: a
remote one (the sync client reports the tables each applied run touched), or a local one made
through this client (its writes, ``raw`` included, are seen the same way). A new result is given
only when it differs from the last one. Writes other processes make reach a live query when the
server echoes them back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import sqlite3
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Generic, Literal, Self, TypeVar

from electricctl.client.schema import Column as ClientColumn
from electricctl.client.schema import Table as ClientTable
from electricctl.client.state import Subscription, TokenSource
from electricctl.client.sync import SyncClient
from electricctl.client.worker import StoreThread
from electricctl.dal import query as qry
from electricctl.dal.spec import MigrationSpec, SchemaSpec, TableSpec
from electricctl.errors import (
    CheckViolation,
    ConstraintError,
    ForeignKeyViolation,
    NotNullViolation,
    SyncError,
    UniqueViolation,
)

log = logging.getLogger("electricctl.dal")

RowT = TypeVar("RowT")
CreateT = TypeVar("CreateT")
UpdateT = TypeVar("UpdateT", bound=Mapping[str, object])
WhereT = TypeVar("WhereT", bound=Mapping[str, object])
OrderT = TypeVar("OrderT", bound=Mapping[str, object])
IncludeT = TypeVar("IncludeT", bound=Mapping[str, object])
T = TypeVar("T")

Order = Literal["asc", "desc"]
Tables = frozenset[str]

_INTERNAL = ("_electric", "sqlite_")
_WRITES = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)


# -- the connection ---------------------------------------------------------------------------------
class LocalDb:
    """The typed client's connection to the file, used by one thread of its own.

    Each statement's tables (read and written, electricctl's own left out) are learned from
    SQLite's authorizer when the statement is prepared, and remembered by its text (a statement
    the connection has cached is not prepared again).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread = StoreThread("electricctl-db")
        self._conn: sqlite3.Connection | None = None
        self._reads: set[str] = set()
        self._writes: set[str] = set()
        self._tables: dict[str, tuple[Tables, Tables]] = {}

    async def open(self) -> None:
        await self._thread.call(self._open)

    def _open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.set_authorizer(self._authorize)
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._thread.call(self._conn.close)
            self._conn = None
        self._thread.shutdown()

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None) -> int:
        if arg1 is not None and not arg1.startswith(_INTERNAL):
            if action == sqlite3.SQLITE_READ:
                self._reads.add(arg1)
            elif action in _WRITES:
                self._writes.add(arg1)
        return sqlite3.SQLITE_OK

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            if self._conn is None:
                raise SyncError(f"the database {self.path} is closed")
            return fn(self._conn)

        return await self._thread.call(run)

    def execute(
        self, conn: sqlite3.Connection, sql: str, params: Sequence[object] = ()
    ) -> tuple[list[tuple[Any, ...]], Tables, Tables, int]:
        """On the thread: run one statement; its rows, the tables it reads and writes, and how
        many rows it changed."""
        self._reads.clear()
        self._writes.clear()
        try:
            cur = conn.execute(sql, params)
            rows = cur.fetchall()
        except sqlite3.IntegrityError as exc:
            raise constraint_error(exc) from None
        if self._reads or self._writes:
            self._tables[sql] = (frozenset(self._reads), frozenset(self._writes))
        reads, writes = self._tables.get(sql, (frozenset(), frozenset()))
        return rows, reads, writes, max(cur.rowcount, 0)  # the statement's own rows, not its triggers'


_CONSTRAINT = re.compile(r"^(UNIQUE|NOT NULL|CHECK|FOREIGN KEY) constraint failed(?:: (.*))?$")


def constraint_error(exc: sqlite3.IntegrityError) -> ConstraintError:
    """SQLite's constraint failure as the typed error of its kind (table and columns from its message)."""
    message = str(exc)
    m = _CONSTRAINT.match(message)
    kind = m.group(1) if m else ""
    detail = (m.group(2) or "") if m else ""
    table: str | None = None
    columns: tuple[str, ...] = ()
    if kind in ("UNIQUE", "NOT NULL") and detail:
        names = [part.strip() for part in detail.split(",")]
        table = names[0].split(".", 1)[0] if "." in names[0] else None
        columns = tuple(n.split(".", 1)[1] if "." in n else n for n in names)
    cls: type[ConstraintError] = {
        "UNIQUE": UniqueViolation,
        "NOT NULL": NotNullViolation,
        "CHECK": CheckViolation,
        "FOREIGN KEY": ForeignKeyViolation,
    }.get(kind, ConstraintError)
    return cls(message, table=table, columns=columns)


# -- live queries -----------------------------------------------------------------------------------
class _Live(Generic[T]):
    """One live query's registration: what it reads, its last result, who listens."""

    def __init__(self, db: Database, run: Callable[[sqlite3.Connection], tuple[T, Tables]]) -> None:
        self.db = db
        self.run = run
        self.tables: Tables | None = None
        """Known after the first run (None: run it whatever changes)."""
        self.result: T | None = None
        self.has_result = False
        self.dirty = True
        self.task: asyncio.Task[None] | None = None
        self.listeners: list[Callable[[T | None, Exception | None], None]] = []
        """Called with each new result, or with the error a run failed with."""
        self.closed = False

    def changed(self, tables: Tables) -> None:
        if self.closed or (self.tables is not None and not (tables & self.tables)):
            return
        self.dirty = True
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._refresh())

    async def _refresh(self) -> None:
        while self.dirty and not self.closed:
            self.dirty = False
            try:
                result, tables = await self.db.local.call(self.run)
            except Exception as exc:  # the listeners hear of it; the query stays registered
                for listener in list(self.listeners):
                    listener(None, exc)
                return
            self.tables = tables
            if self.has_result and result == self.result:
                continue  # the tables changed, the result did not
            self.result, self.has_result = result, True
            for listener in list(self.listeners):
                listener(result, None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.db._lives.discard(self)
            if self.task is not None:
                self.task.cancel()


class LiveQuery(Generic[T]):
    """A query that gives a new result each time it changes: iterate it (``async for result in
    live``: the current result first), or :meth:`subscribe` a callback. :meth:`close` (or leaving
    ``async with``) releases it; so does dropping it."""

    def __init__(self, db: Database, run: Callable[[sqlite3.Connection], tuple[T, Tables]]) -> None:
        self._db = db
        self._run = run
        self._live: _Live[T] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def _registered(self) -> _Live[T]:
        if self._live is None:
            live = _Live(self._db, self._run)
            self._db._lives.add(live)
            self._live = live
            self._finalizer = weakref.finalize(self, live.close)
            live.changed(frozenset())
        return self._live

    def subscribe(self, callback: Callable[[T], None]) -> Callable[[], None]:
        """Call ``callback`` with the current result, then with each new one; returns the function
        that stops it (the query is released when nothing listens)."""
        live = self._registered()

        def listener(result: T | None, error: Exception | None) -> None:
            if error is not None:
                log.error("a live query failed: %s", error)
            else:
                callback(result)  # type: ignore[arg-type]

        live.listeners.append(listener)
        if live.has_result:
            listener(live.result, None)

        def unsubscribe() -> None:
            if listener in live.listeners:
                live.listeners.remove(listener)
            if not live.listeners:
                self.close()

        return unsubscribe

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        live = self._registered()
        latest: list[T] = []
        failed: list[Exception] = []
        ready = asyncio.Event()

        def on_result(result: T | None, error: Exception | None) -> None:
            if error is not None:
                failed.append(error)
            else:
                latest[:] = [result]  # type: ignore[list-item]
            ready.set()

        live.listeners.append(on_result)
        if live.has_result:
            on_result(live.result, None)
        try:
            while True:
                await ready.wait()
                ready.clear()
                if failed:
                    raise failed.pop()
                if latest:
                    yield latest.pop()
        finally:
            if on_result in live.listeners:
                live.listeners.remove(on_result)
            if not live.listeners:
                self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._live is not None:
            self._live.close()
            self._live = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None


# -- shapes -----------------------------------------------------------------------------------------
class Shape:
    """A table synced with a where clause and include tree (:meth:`Table.sync`)."""

    def __init__(self, client: SyncClient, subscription: Subscription) -> None:
        self.client = client
        self.subscription = subscription

    @property
    def synced(self) -> asyncio.Future[None]:
        """Done when the shape's initial data is in the file (raises if the server refused it)."""
        return asyncio.ensure_future(self.client.synced(self.subscription, timeout=3600))

    async def unsubscribe(self) -> None:
        await self.client.unsubscribe(self.subscription)


# -- tables -----------------------------------------------------------------------------------------
class Table(Generic[RowT, CreateT, UpdateT, WhereT, OrderT, IncludeT]):
    """One synced table, read and written with the generated types."""

    def __init__(self, db: Database, spec: TableSpec, row: type[RowT]) -> None:
        self.db = db
        self.spec = spec
        self.row = row
        self._make = row_factory(row, spec)

    # -- reads
    def _live_select(
        self,
        where: WhereT | None,
        order_by: OrderT | Sequence[OrderT] | None,
        limit: int | None,
        offset: int | None,
    ) -> Callable[[sqlite3.Connection], tuple[list[RowT], Tables]]:
        """:meth:`_select` for a live query: a re-run whose rows are those of the last run gives
        the last result itself (compared as SQLite's tuples, nothing converted), and rows that
        did not change keep their objects."""
        sql, params = qry.select_sql(self.spec, where, order_by, limit, offset)
        make, local = self._make, self.db.local
        last: list[Any] = [None, [], {}]  # raw rows, result, raw row -> object

        def run(conn: sqlite3.Connection) -> tuple[list[RowT], Tables]:
            rows, reads, _, _ = local.execute(conn, sql, params)
            if rows == last[0]:
                return last[1], reads
            known: dict[tuple[Any, ...], RowT] = last[2]
            objects = {r: known.get(r) or make(r) for r in rows}
            result = [objects[r] for r in rows]
            last[:] = [rows, result, objects]
            return result, reads

        return run

    def _select(
        self,
        where: WhereT | None,
        order_by: OrderT | Sequence[OrderT] | None,
        limit: int | None,
        offset: int | None,
    ) -> Callable[[sqlite3.Connection], tuple[list[RowT], Tables]]:
        sql, params = qry.select_sql(self.spec, where, order_by, limit, offset)
        make, local = self._make, self.db.local

        def run(conn: sqlite3.Connection) -> tuple[list[RowT], Tables]:
            rows, reads, _, _ = local.execute(conn, sql, params)
            return [make(r) for r in rows], reads

        return run

    async def find_many(
        self,
        where: WhereT | None = None,
        order_by: OrderT | Sequence[OrderT] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[RowT]:
        rows, _ = await self.db.local.call(self._select(where, order_by, limit, offset))
        return rows

    async def find_first(
        self, where: WhereT | None = None, order_by: OrderT | Sequence[OrderT] | None = None
    ) -> RowT | None:
        rows = await self.find_many(where, order_by, limit=1)
        return rows[0] if rows else None

    async def count(self, where: WhereT | None = None) -> int:
        sql, params = qry.count_sql(self.spec, where)
        local = self.db.local
        rows = await local.call(lambda conn: local.execute(conn, sql, params)[0])
        return int(rows[0][0])

    def live_many(
        self,
        where: WhereT | None = None,
        order_by: OrderT | Sequence[OrderT] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> LiveQuery[list[RowT]]:
        """:meth:`find_many`, live: a new result each time it changes."""
        return LiveQuery(self.db, self._live_select(where, order_by, limit, offset))

    # -- writes (through the file's triggers: they sync)
    async def create(self, data: CreateT) -> RowT:
        """Insert one row; the row as written. A constraint the local table has raises its
        :class:`~electricctl.errors.ConstraintError`."""
        if not dataclasses.is_dataclass(data) or isinstance(data, type):
            raise TypeError(f"create takes a {self.spec.name} create dataclass, got {type(data).__name__}")
        values = {
            c.name: getattr(data, f.name) for c, f in zip(self.spec.columns, dataclasses.fields(data), strict=True)
        }
        sql, params = qry.insert_sql(self.spec, values)
        await self.db._write(sql, params)
        key = {c: values[c] for c in self.spec.primary_key}
        row = await self.find_first(key)  # type: ignore[arg-type]
        assert row is not None
        return row

    async def update(self, where: WhereT, data: UpdateT) -> int:
        """Set ``data``'s columns on the rows ``where`` matches; how many rows were updated."""
        sql, params = qry.update_sql(self.spec, where, data)
        return await self.db._write(sql, params)

    async def delete(self, where: WhereT) -> int:
        """Delete the rows ``where`` matches; how many were deleted."""
        sql, params = qry.delete_sql(self.spec, where)
        return await self.db._write(sql, params)

    # -- sync
    async def sync(self, where: WhereT | None = None, include: IncludeT | None = None) -> Shape:
        """Sync this table's rows ``where`` matches (all of them with no filter), with the rows
        ``include`` follows through foreign keys; ``await shape.synced`` for the initial data."""
        tree = _include(self.db.schema, self.spec, include) if include else None
        sub = await self.db.client.subscribe(self.spec.name, qry.server_where(self.spec, where) or None, tree)
        return Shape(self.db.client, sub)


def row_factory(row: type[RowT], spec: TableSpec) -> Callable[[tuple[Any, ...]], RowT]:
    """The function making a row object from SQLite's tuple, as straight-line code.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (about 150 ns
    a field); this sets the slots directly and converts only the columns that need it, about twice
    as fast. The code is made from column positions and the names below, never from schema or user
    text. Classes without slots are made through their constructor.
    """
    slots = [c for c in getattr(row, "__slots__", ()) if not c.startswith("__")]
    readers = spec.readers
    env: dict[str, Any] = {"new": object.__new__, "R": row}
    if len(slots) != len(readers):
        lines = ["def make(t):", "    return R("]
        lines += [f"        {_value(i, f, env)}," for i, f in enumerate(readers)]
        lines.append("    )")
    else:
        lines = ["def make(t):", "    o = new(R)"]
        for i, (name, f) in enumerate(zip(slots, readers, strict=True)):
            env[f"s{i}"] = getattr(row, name).__set__
            lines.append(f"    s{i}(o, {_value(i, f, env)})")
        lines.append("    return o")
    exec("\n".join(lines), env)  # noqa: S102 - positions and fixed names only (see the docstring)
    make: Callable[[tuple[Any, ...]], RowT] = env["make"]
    return make


def _value(i: int, convert: Any, env: dict[str, Any]) -> str:
    if convert is None:
        return f"t[{i}]"
    env[f"c{i}"] = convert
    return f"(None if t[{i}] is None else c{i}(t[{i}]))"


def _include(schema: SchemaSpec, spec: TableSpec, include: Mapping[str, object]) -> list[dict[str, Any]]:
    """A typed include spec as a subscription's include list (foreign keys named)."""
    out: list[dict[str, Any]] = []
    for name, value in include.items():
        if value is False or value is None:
            continue
        rel = spec.relation(name)
        target = schema.tables[rel.table]
        item: dict[str, Any] = {"table": rel.table, "foreign_key": list(rel.foreign_key)}
        if isinstance(value, Mapping):
            unknown = set(value) - {"where", "include"}
            if unknown:
                raise qry.FilterError(f"include of {spec.name}.{name} takes where and include, not {sorted(unknown)}")
            where = value.get("where")
            if where:
                item["where"] = qry.server_where(target, where)
            nested = value.get("include")
            if nested:
                item["include"] = _include(schema, target, nested)
        elif value is not True:
            raise qry.FilterError(f"include of {spec.name}.{name} is True or a mapping, got {value!r}")
        out.append(item)
    return out


# -- the database -----------------------------------------------------------------------------------
def client_tables(migration: MigrationSpec) -> list[ClientTable]:
    return [
        ClientTable(t.name, tuple(ClientColumn(c.name, c.pg_type, c.primary_key, c.nullable) for c in t.columns))
        for t in migration.tables
    ]


class Database:
    """A local database kept in sync, read and written with a generated package's types.

    Made by the generated ``electrify()``; the generated subclass adds one :class:`Table` per
    synced table.
    """

    schema: SchemaSpec

    def __init__(self, client: SyncClient, local: LocalDb) -> None:
        self.client = client
        self.local = local
        self._lives: set[_Live[Any]] = set()

    @classmethod
    async def open(
        cls,
        path: str,
        url: str,
        *,
        token: TokenSource,
        client_id: str | None = None,
        connect: bool = True,
    ) -> Self:
        """Open the file, bring its schema up to the generated package's version (before it
        first connects, so the app can read and write at once), and start syncing (unless
        ``connect`` is False: the app works offline until :meth:`connect`)."""
        client = SyncClient(path, url, token, client_id=client_id)
        await client.apply_schema([(m.version, client_tables(m), list(m.statements)) for m in cls.schema.migrations])
        local = LocalDb(path)
        await local.open()
        db = cls(client, local)
        client.on_tables(db._changed)
        if connect:
            await client.start()
        return db

    async def connect(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        for live in list(self._lives):
            live.close()
        await self.client.stop()
        await self.local.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _changed(self, tables: Tables) -> None:
        for live in list(self._lives):
            live.changed(tables)

    async def _write(self, sql: str, params: Sequence[object]) -> int:
        local = self.local
        _, _, writes, changed = await local.call(lambda conn: local.execute(conn, sql, params))
        if changed:
            self.client.notify()  # send it now
            self._changed(writes)
        return changed

    async def sync_declared(self, name: str) -> Shape:
        """Sync a shape electric.yaml declares, by name (with its where clause and include tree)."""
        return Shape(self.client, await self.client.subscribe(name))

    # -- raw SQL
    async def raw(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run one statement of your own (parameters as ``?``); its rows. A write syncs like any
        other, and live queries reading what it wrote run again."""
        local = self.local
        rows, _, writes, changed = await local.call(lambda conn: local.execute(conn, sql, params))
        if changed and writes:
            self.client.notify()
            self._changed(writes)
        return rows

    def live_raw(self, sql: str, params: Sequence[object] = ()) -> LiveQuery[list[tuple[Any, ...]]]:
        """:meth:`raw` for a query, live: a new result each time it changes."""
        local = self.local

        def run(conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], Tables]:
            rows, reads, _, _ = local.execute(conn, sql, params)
            return rows, reads

        return LiveQuery(self, run)
