"""The server's one catalog connection and what it reads through it: electrified tables, table
columns, grants and assignments, declared shapes (each cached for :data:`RULES_TTL` seconds, so
an ``apply`` shows within it), client ownership and the user's roles.

A lost connection (Postgres restarted) is reconnected with backoff and the work run again; only
read-only or idempotent work goes through here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

from electricctl._auth.tokens import Identity
from electricctl._catalog.inspector import FOREIGN_KEYS, foreign_key
from electricctl._catalog.observed import ForeignKey
from electricctl._model.rows import RelationDef
from electricctl._model.table import TableRef
from electricctl._model.wire import DISPLAY_OPTIONS
from electricctl._perms.policy import Policy
from electricctl._perms.read import RoleState, read_roles
from electricctl._server.pgretry import Backoff
from electricctl._server.snapshot import describe
from electricctl._shapes.declared import ShapeRules

_T = TypeVar("_T")

RULES_TTL = 2.0
"""Seconds the catalog (declared shapes, adhoc_shapes, table columns) is cached: an apply shows within it."""
CONNECT_TIMEOUT = 10
"""Seconds to wait for a new Postgres connection (a black-holed database must not hang a client)."""
CATALOG_RECONNECT_FOR = 15.0
"""Seconds a client's request waits for the catalog connection to come back."""


_OIDS = """
SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN unnest(%s::text[], %s::text[]) AS t(s, r) ON n.nspname = t.s AND c.relname = t.r
"""
"""The oids of tables given by schema and name (those that exist)."""


_FINGERPRINT = (
    "SELECT schema_name, table_name FROM electric.electrified ORDER BY 1, 2",
    "SELECT name, definition::text FROM electric.grants ORDER BY 1",
    "SELECT name, definition::text FROM electric.assignments ORDER BY 1",
    "SELECT name, definition::text FROM electric.shapes ORDER BY 1",
    "SELECT name, definition::text FROM electric.settings ORDER BY 1",
)


class CatalogCache:
    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._relations: dict[TableRef, tuple[RelationDef | None, float]] = {}
        self._rules: tuple[ShapeRules, float] | None = None
        self._policy: tuple[Policy, dict[TableRef, RelationDef], float] | None = None
        self._electrified: tuple[set[TableRef], float] | None = None
        self._foreign_keys: tuple[list[ForeignKey], float] | None = None

    @property
    def cached_policy(self) -> Policy | None:
        """The policy last read, without reading it (None before the first read)."""
        return None if self._policy is None else self._policy[0]

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url,
                autocommit=True,
                application_name="electricctl-catalog",
                options=DISPLAY_OPTIONS,
                connect_timeout=CONNECT_TIMEOUT,
            )
        return self._conn

    async def run(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        """Run ``work`` (read-only or idempotent) on the catalog connection; when the connection
        turns out to be dead (Postgres restarted since it was last used), reconnect and run it
        again, with backoff, for a few seconds, so no client's request fails for it."""
        backoff = Backoff("the catalog connection", CATALOG_RECONNECT_FOR)
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await self.connection()
                return await work(conn)
            except psycopg.OperationalError as exc:
                self._conn = None
                await backoff.recover(exc, conn)

    async def rows(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async def run(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description else []

        return await self.run(run)

    async def bind_client(self, client_id: str, user_id: str) -> str:
        """Record ``user_id`` as the owner of ``client_id`` unless it has one; return the owner."""
        for _ in range(2):
            rows = await self.rows(
                "WITH ins AS (INSERT INTO electric.client_owners (client_id, user_id) VALUES (%s, %s)"
                " ON CONFLICT (client_id) DO NOTHING RETURNING user_id)"
                " SELECT user_id FROM ins UNION ALL"
                " SELECT user_id FROM electric.client_owners WHERE client_id = %s",
                [client_id, user_id, client_id],
            )
            if rows:
                return str(rows[0][0])
            # another connection inserted it after this statement's snapshot: read it again
        raise RuntimeError(f"the owner of client id {client_id!r} could not be read")  # pragma: no cover

    async def newest_migration(self) -> str | None:
        """The newest schema migration version recorded (None if there is none)."""
        rows = await self.rows("SELECT max(version) FROM electric.migrations")
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    async def electrified_tables(self) -> set[TableRef]:
        """Electrified tables, as applied (cached for RULES_TTL seconds)."""
        now = time.monotonic()
        if self._electrified is not None and now - self._electrified[1] < RULES_TTL:
            return self._electrified[0]
        rows = await self.rows("SELECT schema_name, table_name FROM electric.electrified")
        tables = {TableRef(r[0], r[1]) for r in rows}
        self._electrified = (tables, now)
        return tables

    def schema_changed(self, tables: Iterable[TableRef]) -> None:
        """A migration of ``tables`` reached the log: what is cached of them (and of the rules that
        name tables) is read again at its next use, so no client is served the old columns."""
        for table in tables:
            self._relations.pop(table, None)
        self._electrified = None
        self._policy = None
        self._foreign_keys = None

    def invalidate(self) -> None:
        """Forget everything cached: the catalog was applied again (see :mod:`.reload`)."""
        self._relations.clear()
        self._rules = None
        self._policy = None
        self._electrified = None
        self._foreign_keys = None

    async def generation(self) -> int:
        """The newest apply recorded (0 before any): it moves whenever ``apply`` changes something."""
        rows = await self.rows("SELECT coalesce(max(id), 0) FROM electric.applied_configs")
        return int(rows[0][0])

    async def fingerprint(self) -> tuple[object, ...]:
        """What connected clients' shapes depend on in the catalog, as it is now: electrified
        tables, grants, assignments, declared shapes and settings. Equal fingerprints: no client's
        shapes need reassessing."""

        async def read(conn: psycopg.AsyncConnection[Any]) -> tuple[object, ...]:
            parts: list[object] = []
            for query in _FINGERPRINT:
                cur = await conn.execute(query)
                parts.append(tuple(map(tuple, await cur.fetchall())))
            return tuple(parts)

        return await self.run(read)

    async def describe(self, table: TableRef, *, fresh: bool = False) -> RelationDef | None:
        """The table's columns as the stream sends them (cached for a few seconds, unless ``fresh``)."""
        now = time.monotonic()
        hit = self._relations.get(table)
        if hit is not None and now - hit[1] < RULES_TTL and not fresh:
            return hit[0]
        rel = await self.run(lambda conn: describe(conn, table))
        self._relations[table] = (rel, now)
        return rel

    async def policy(self) -> tuple[Policy, dict[TableRef, RelationDef]]:
        """Grants and assignments as applied, with the tables they name (cached for RULES_TTL seconds)."""
        now = time.monotonic()
        if self._policy is not None and now - self._policy[2] < RULES_TTL:
            return self._policy[0], self._policy[1]
        grants = await self.rows("SELECT name, definition FROM electric.grants")
        assignments = await self.rows("SELECT name, definition FROM electric.assignments")
        policy = Policy.from_catalog({r[0]: r[1] for r in grants}, {r[0]: r[1] for r in assignments})
        relations: dict[TableRef, RelationDef] = {}
        named = {g.table for g in policy.grants} | {a.table for a in policy.assignments}
        named |= {TableRef.parse(h["table"]) for g in policy.grants for h in g.scope_path}
        named |= {g.scope_table for g in policy.grants if g.scope_table is not None}
        for table in named:
            rel = await self.describe(table)
            if rel is not None:
                relations[table] = rel
        self._policy = (policy, relations, now)
        return policy, relations

    async def role_state(
        self, policy: Policy, relations: dict[TableRef, RelationDef], identity: Identity | None
    ) -> RoleState:
        """The roles ``identity`` holds now, read from the assignment tables."""
        if identity is None:
            return RoleState(frozenset(), {})
        return await self.run(lambda conn: read_roles(conn, policy, relations, identity))

    async def foreign_keys(self) -> list[ForeignKey]:
        """Foreign keys between electrified tables (cached for RULES_TTL seconds)."""
        now = time.monotonic()
        if self._foreign_keys is not None and now - self._foreign_keys[1] < RULES_TTL:
            return self._foreign_keys[0]
        electrified = await self.electrified_tables()

        async def read(conn: psycopg.AsyncConnection[Any]) -> list[ForeignKey]:
            cur = conn.cursor(row_factory=dict_row)
            tables = sorted(electrified, key=str)
            oids = await (await cur.execute(_OIDS, [[t.schema for t in tables], [t.name for t in tables]])).fetchall()
            rows = await (await cur.execute(FOREIGN_KEYS, {"oids": [r["oid"] for r in oids]})).fetchall()
            return [fk for fk in map(foreign_key, rows) if fk.table in electrified and fk.target in electrified]

        found = await self.run(read)
        self._foreign_keys = (found, now)
        return found

    async def shape_rules(self) -> ShapeRules:
        """Declared shapes and the adhoc_shapes setting, as applied (read from the catalog)."""
        now = time.monotonic()
        if self._rules is not None and now - self._rules[1] < RULES_TTL:
            return self._rules[0]
        shapes = await self.rows("SELECT name, definition FROM electric.shapes")
        settings = await self.rows("SELECT definition FROM electric.settings WHERE name = 'adhoc_shapes'")
        setting = settings[0] if settings else None
        rules = ShapeRules({r[0]: r[1] for r in shapes}, (setting[0] or {}).get("value", "deny") if setting else "deny")
        self._rules = (rules, now)
        return rules
