"""The one writer of client transactions into Postgres.

Each client transaction becomes one Postgres transaction (REPEATABLE READ, retried on a
serialization failure or deadlock, so a concurrent direct write is never overwritten by a merge
computed from an older state):

1. skip it if ``electric.client_positions`` shows it was applied before (idempotent by client
   id and client LSN);
2. read the current state of every row it touches: the row itself, and its shadow entry (row
   tags, column tags, the last values of a deleted row);
3. merge each operation into that state with :mod:`electricctl._merge.rules`, the code the
   Python client uses too;
4. write the result: upserts with the merged values (always for an insert or update, even if it
   lost every column, so the transaction echoed to the client carries the row as resolved),
   deletes of rows that lost their last tag, then the shadow entries;
5. emit the transaction's origin and each written row's tag set as logical messages, which the
   replication stream attaches to the transaction; and record the client's position.

``SET LOCAL electric.writer`` makes the tagging triggers skip these rows (the writer tags them).
Values go through ``jsonb_populate_recordset`` on the table's own row type: Postgres parses each
value with the column's input function, so no type name or value is ever pasted into SQL.
A data or constraint error refuses the transaction alone (:class:`InvalidTransaction`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import errors, sql

from electricctl._merge.rules import RowState, Tag, Write, merge
from electricctl._perms.policy import Describe, GrantRule, Policy
from electricctl._replication.model import ClientWrite, RelationDef, row_key
from electricctl._replication.source import DISPLAY_OPTIONS
from electricctl._replication.txbuilder import ORIGIN_PREFIX, WRITE_PREFIX
from electricctl._server.inbound import ClientOp, ClientTransaction, InvalidTransaction, PermissionDenied
from electricctl._server.pgretry import Backoff
from electricctl._sql import names

log = logging.getLogger("electricctl.server")

Key = tuple[str, ...]
_T = TypeVar("_T")
_RETRIES = 8
_JSON_TYPES = frozenset({"json", "jsonb"})


def parse_tag_json(raw: Any) -> Tag:
    return Tag(int(raw[0]), raw[1])


def _tags_json(tags: frozenset[Tag]) -> list[list[Any]]:
    return [[t.ts, t.origin] for t in sorted(tags, key=_tag_order)]


@dataclass(slots=True)
class _Row:
    rel: RelationDef
    key: Key
    """The canonical key: Postgres' text of the key values."""
    state: RowState
    present: bool
    """The row is in the table now (as far as this transaction has written)."""


@dataclass(slots=True)
class _Action:
    kind: Literal["upsert", "delete"]
    rel: RelationDef
    key: Key
    values: dict[str, Any]


class Writer:
    """Applies client transactions, one at a time, on its own connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self.stats = {"client_transactions": 0, "client_operations": 0, "duplicates": 0, "refused": 0, "retries": 0}

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url, application_name="electricctl-writer", options=DISPLAY_OPTIONS, connect_timeout=10
            )
            await self._conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def position(self, client_id: str) -> int:
        """The client LSN of the last transaction applied for ``client_id`` (0: none)."""

        async def read(conn: psycopg.AsyncConnection[Any]) -> int:
            cur = await conn.execute("SELECT lsn FROM electric.client_positions WHERE client_id = %s", [client_id])
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        return await self._retrying(read)

    async def apply(
        self, tx: ClientTransaction, policy: Policy | None = None, describe: Describe | None = None
    ) -> bool:
        """Apply ``tx``; False if it was applied before.

        Raises InvalidTransaction for bad data, and PermissionDenied when ``policy`` (enforced)
        does not allow one of its operations; ``describe`` gives the tables the policy names.
        """
        try:
            # pipelined: the reads go in one round trip, the writes and the commit in another
            applied = await self._retrying(
                lambda conn: self._apply(conn, tx, policy if policy and policy.enforced else None, describe),
                pipelined=True,
            )
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            self.stats["refused"] += 1
            diag = exc.diag
            where = f" (table {diag.table_name}" + (f", column {diag.column_name}" if diag.column_name else "")
            raise InvalidTransaction(
                f"{tx.describe()}: Postgres refused the data: {diag.message_primary or exc}"
                + (where + ")" if diag.table_name else "")
                + (f"; {diag.message_detail}" if diag.message_detail else "")
            ) from None
        if applied:
            self.stats["client_transactions"] += 1
            self.stats["client_operations"] += len(tx.ops)
        else:
            self.stats["duplicates"] += 1
        return applied

    async def _retrying(
        self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]], *, pipelined: bool = False
    ) -> _T:
        """Run ``work`` in one transaction on the writer's connection, one at a time; run it again
        (with backoff) when Postgres reports a serialization failure or a deadlock."""
        async with self._lock:
            delay = 0.005
            attempt = 0
            backoff = Backoff("the writer")
            while True:
                conn: psycopg.AsyncConnection[Any] | None = None
                try:
                    conn = await self._connection()
                    async with contextlib.AsyncExitStack() as stack:
                        if pipelined:
                            await stack.enter_async_context(conn.pipeline())
                        await stack.enter_async_context(conn.transaction())
                        return await work(conn)
                except (errors.SerializationFailure, errors.DeadlockDetected):
                    self.stats["retries"] += 1
                    attempt += 1
                    if attempt == _RETRIES:
                        raise
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
                except psycopg.OperationalError as exc:
                    # the connection died with its server (a Postgres restart), or a new one could
                    # not be made yet: reconnect and run the work again; it is idempotent (the
                    # client position is checked first)
                    self._conn = None
                    await backoff.recover(exc, conn)

    async def _apply(
        self,
        conn: psycopg.AsyncConnection[Any],
        tx: ClientTransaction,
        policy: Policy | None = None,
        describe: Describe | None = None,
    ) -> bool:
        cur = await conn.execute(
            "SELECT set_config(%s, %s, true),"
            " (SELECT lsn FROM electric.client_positions WHERE client_id = %s FOR UPDATE)",
            [names.WRITER_SETTING, tx.client_id, tx.client_id],
        )
        reads = await self._read(conn, tx.ops)
        row = await cur.fetchone()
        if row is not None and row[1] is not None and tx.lsn <= int(row[1]):
            return False
        rows = await _states(reads)
        actions: list[_Action] = []
        checks: list[_Check | None] = []
        tag = Tag(tx.commit_ts_ms, tx.client_id)
        for n, op in enumerate(tx.ops, start=1):
            current = rows[(op.relation.qualified, op.key)]
            before, was_present = current.state, current.present
            state = merge(before, _write(op, tag))
            current.state = state
            action: _Action | None = None
            if state.exists and (op.kind != "compensation" or not current.present):
                if op.kind == "compensation" and not _complete(op.relation, state):
                    continue  # nothing to revive the row from (it was never seen whole)
                action = _Action("upsert", op.relation, current.key, dict(state.values))
                current.present = True
            elif not state.exists and current.present:
                action = _Action("delete", op.relation, current.key, dict(state.values))
                current.present = False
            if policy is not None:
                checks.append(_check(tx, n, op, policy, before if was_present else None, state, action))
            if action is not None:
                actions.append(action)
        if policy is None:
            for batch in _batches(actions):
                await _execute(conn, batch)
        else:
            assert describe is not None
            wanted = [c for c in checks if c is not None]
            for c in wanted:
                if not c.grants:  # no grant can allow it: denied before anything is written
                    raise c.denied(tx)
            try:
                async with conn.transaction():  # a savepoint: a permission denial outranks bad data
                    for batch in _batches(actions):
                        await _execute(conn, batch)
            except (psycopg.DataError, psycopg.IntegrityError):
                await _verify(conn, tx, policy, describe, wanted)
                raise
            # checked against the data as the transaction leaves it (a scope row written earlier
            # in the same transaction counts)
            await _verify(conn, tx, policy, describe, wanted)
        await self._write_shadow(conn, rows)
        written = {
            row_key(r.rel.qualified, r.key): tuple(str(t) for t in sorted(r.state.tags, key=_tag_order))
            for r in _unique(rows)
            if r.present
        }
        await _finish(conn, tx, ClientWrite(tx.commit_ts_ms, written))
        return True

    async def refuse(self, tx: ClientTransaction, reason: str) -> None:
        """Record a refused transaction as handled, and echo what Postgres has for its rows.

        The echo (an otherwise empty transaction from the client, with its timestamp) carries
        the current version of each row it touched that exists, and a GONE for each that does
        not: a client that cannot roll back by itself (the npm client) returns to the server's
        state, clears the transaction from its oplog, and does not send it again.
        """
        log.warning("refused: %s", reason)
        await self._retrying(lambda conn: self._refuse(conn, tx))

    async def _refuse(self, conn: psycopg.AsyncConnection[Any], tx: ClientTransaction) -> None:
        await conn.execute("SELECT set_config(%s, %s, true)", [names.WRITER_SETTING, tx.client_id])
        try:
            async with conn.transaction():  # a savepoint: keys that do not parse are left out
                rows = await self._load(conn, tx.ops)
        except (psycopg.DataError, psycopg.IntegrityError):
            rows = {}
        present = [r for r in _unique(rows) if r.present]
        for r in present:
            # rewrite the row as it is, so the echo carries it
            await _execute(conn, [_Action("upsert", r.rel, r.key, dict(r.state.values))])
        gone: dict[str, None] = {}
        for op in tx.ops:
            found = rows.get((op.relation.qualified, op.key))
            if found is None or not found.present:
                gone[row_key(op.relation.qualified, found.key if found is not None else op.key)] = None
        written = {
            row_key(r.rel.qualified, r.key): tuple(str(t) for t in sorted(r.state.tags, key=_tag_order))
            for r in present
        }
        await _finish(conn, tx, ClientWrite(tx.commit_ts_ms, written, tuple(gone)))

    async def _load(self, conn: psycopg.AsyncConnection[Any], ops: Sequence[ClientOp]) -> dict[tuple[str, Key], _Row]:
        """Read the rows ``ops`` touch and their shadow entries, keyed by (table, requested key)."""
        return await _states(await self._read(conn, ops))

    async def _read(self, conn: psycopg.AsyncConnection[Any], ops: Sequence[ClientOp]) -> list[_Read]:
        """Send the queries that read the rows ``ops`` touch (results are fetched by :func:`_states`)."""
        by_table: dict[str, tuple[RelationDef, dict[Key, None]]] = {}
        for op in ops:
            by_table.setdefault(op.relation.qualified, (op.relation, {}))[1][op.key] = None
        reads: list[_Read] = []
        for qualified, (rel, keys) in by_table.items():
            pk = [rel.columns[i].name for i in rel.pk_indexes]
            table = sql.Identifier(rel.schema, rel.name)
            query = sql.SQL(
                """SELECT e.i, {r_key}, t.{first} IS NOT NULL, {t_cols}, s.row_tags, s.col_tags, s.tombstone
  FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS e(j, i)
 CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, e.j) AS r
  LEFT JOIN {table} AS t ON {join}
  LEFT JOIN LATERAL (
        -- one index lookup per key, whatever the statistics say (a hash join would read the
        -- table's whole shadow); LIMIT keeps the planner from flattening it into a join
        SELECT row_tags, col_tags, tombstone FROM electric.shadow AS s
         WHERE s.schema_name = %s AND s.table_name = %s AND s.pk = ARRAY[{r_key}]
         LIMIT 1
       ) AS s ON true"""
            ).format(
                r_key=sql.SQL(", ").join(sql.SQL("r.{}::text").format(sql.Identifier(c)) for c in pk),
                first=sql.Identifier(pk[0]),
                t_cols=sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c.name)) for c in rel.columns),
                table=table,
                join=sql.SQL(" AND ").join(sql.SQL("t.{c} = r.{c}").format(c=sql.Identifier(c)) for c in pk),
            )
            requested = list(keys)
            payload = json.dumps([dict(zip(pk, k, strict=True)) for k in requested])
            cur = await conn.execute(query, [payload, rel.schema, rel.name])
            reads.append(_Read(qualified, rel, pk, requested, cur))
        return reads

    async def _write_shadow(self, conn: psycopg.AsyncConnection[Any], rows: dict[tuple[str, Key], _Row]) -> None:
        by_table: dict[str, list[dict[str, Any]]] = {}
        for r in _unique(rows):
            by_table.setdefault(r.rel.qualified, []).append(
                {
                    "pk": list(r.key),
                    "row_tags": _tags_json(r.state.tags),
                    "col_tags": {c: [t.ts, t.origin] for c, t in r.state.col_tags.items()},
                    "deleted": not r.state.exists,
                }
            )
        for qualified, entries in by_table.items():
            schema, _, name = qualified.partition(".")
            await conn.execute(
                """INSERT INTO electric.shadow AS s (schema_name, table_name, pk, row_tags, col_tags, deleted)
SELECT %s, %s, x.pk, x.row_tags, x.col_tags, x.deleted
  FROM jsonb_to_recordset(%s::jsonb) AS x(pk text[], row_tags jsonb, col_tags jsonb, deleted boolean)
    ON CONFLICT (schema_name, table_name, pk) DO UPDATE
   SET row_tags = EXCLUDED.row_tags, col_tags = EXCLUDED.col_tags, deleted = EXCLUDED.deleted,
       tombstone = CASE WHEN EXCLUDED.deleted THEN s.tombstone END""",
                [schema, name, json.dumps(entries)],
            )


async def _finish(conn: psycopg.AsyncConnection[Any], tx: ClientTransaction, write: ClientWrite) -> None:
    """Describe the transaction in the WAL (origin, timestamp, tags) and record the client's position."""
    await conn.execute(
        "WITH position AS ("
        " INSERT INTO electric.client_positions (client_id, lsn) VALUES (%s, %s)"
        " ON CONFLICT (client_id) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = now() RETURNING 1)"
        " SELECT pg_logical_emit_message(true, %s, %s), pg_logical_emit_message(true, %s, %s) FROM position",
        [tx.client_id, tx.lsn, WRITE_PREFIX, write.to_json(), ORIGIN_PREFIX, tx.client_id],
    )


def _tag_order(t: Tag) -> tuple[int, str]:
    return (t.ts, t.origin or "")


@dataclass(slots=True)
class _Read:
    qualified: str
    rel: RelationDef
    pk: list[str]
    requested: list[Key]
    cursor: psycopg.AsyncCursor[Any]


async def _states(reads: list[_Read]) -> dict[tuple[str, Key], _Row]:
    """The merge state of each requested row, keyed by (table, requested key).

    The client's text of a key can differ from Postgres' (e.g. a uuid's case): requests that
    name the same row share one state, under the canonical key (Postgres' text of it).
    """
    out: dict[tuple[str, Key], _Row] = {}
    for read in reads:
        npk = len(read.pk)
        canonical_rows: dict[Key, _Row] = {}
        for rec in await read.cursor.fetchall():
            canonical: Key = tuple(rec[1 : 1 + npk])
            shared = canonical_rows.get(canonical)
            if shared is None:
                shared = canonical_rows[canonical] = _state_row(read.rel, read.pk, canonical, rec[1 + npk :])
            out[(read.qualified, read.requested[int(rec[0]) - 1])] = shared
    return out


@dataclass(slots=True)
class _Check:
    n: int
    op: ClientOp
    privilege: str
    grants: tuple[GrantRule, ...]
    """The grants that may allow it (empty: denied without asking)."""
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str

    def denied(self, tx: ClientTransaction) -> PermissionDenied:
        table = self.op.relation.qualified
        return PermissionDenied(
            f"{tx.describe()}: operation {self.n} ({self.op.kind} on {table}): permission denied: {self.reason}",
            table,
            self.privilege,
        )


def _check(
    tx: ClientTransaction,
    n: int,
    op: ClientOp,
    policy: Policy,
    before: RowState | None,
    after: RowState,
    action: _Action | None,
) -> _Check | None:
    """What must hold for operation ``n`` to be allowed, as it takes effect (None: nothing to check).

    An insert or update is an insert where there was no row and an update where there was one;
    a delete needs the delete privilege for the row as it is; a compensation that revives a row
    is an insert. The row before is Postgres' (not what the client says it had).
    """
    rel = op.relation
    if op.kind == "delete":
        if before is None:
            return None  # nothing there to delete
        privilege, rows_before, rows_after = "delete", before, None
        written: frozenset[str] = frozenset()
    elif op.kind == "compensation":
        if action is None or action.kind != "upsert":
            return None  # the row is there already: nothing changes
        privilege, rows_before, rows_after = "insert", None, after
        written = frozenset(c for c, v in after.values.items() if v is not None)
    else:
        privilege = "update" if before is not None else "insert"
        rows_before, rows_after = before, after
        if privilege == "insert":
            written = frozenset(c for c, v in op.values.items() if v is not None)
        else:
            old = op.old or {}
            written = frozenset(c for c, v in op.values.items() if old.get(c) != v)
    grants = tuple(policy.candidates(privilege, rel, written))
    reason = (
        f"{privilege} on {rel.qualified} is not allowed for this row by any grant this user holds"
        if grants
        else policy.denial(privilege, rel, written)
    )
    return _Check(
        n,
        op,
        privilege,
        grants,
        _as_json(rel, rows_before.values) if rows_before is not None else None,
        _as_json(rel, rows_after.values) if rows_after is not None else None,
        reason,
    )


async def _verify(
    conn: psycopg.AsyncConnection[Any], tx: ClientTransaction, policy: Policy, describe: Describe, checks: list[_Check]
) -> None:
    """Raise PermissionDenied for the first operation its grants do not allow.

    Operations that need the same check (table, privilege, grants, which rows) share one query,
    composed once, that takes their rows as a parameter and returns the ones that fail.
    """
    groups: dict[tuple[Any, ...], list[_Check]] = {}
    for c in checks:
        names = tuple(g.name for g in c.grants)
        key = (c.op.relation, c.privilege, names, c.before is not None, c.after is not None)
        groups.setdefault(key, []).append(c)
    failed: list[_Check] = []
    for (rel, _privilege, _names, has_before, has_after), members in groups.items():
        grants = members[0].grants
        table = sql.Identifier(rel.schema, rel.name)
        before = sql.SQL("(SELECT electric_before.*)") if has_before else None
        after = sql.SQL("(SELECT electric_after.*)") if has_after else None
        ok = policy.write_check(grants, rel, tx.user_id, tx.claims, before, after, describe)
        query = sql.SQL(
            """SELECT e.i FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS e(j, i)
  CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, e.j->'b') AS electric_before
  CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, e.j->'a') AS electric_after
 WHERE NOT coalesce(({ok}), false)"""
        ).format(table=table, ok=ok)
        payload = json.dumps([{"b": c.before or {}, "a": c.after or {}} for c in members])
        cur = await conn.execute(query, [payload])
        failed.extend(members[int(r[0]) - 1] for r in await cur.fetchall())
    if failed:
        raise min(failed, key=lambda c: c.n).denied(tx)


def _as_json(rel: RelationDef, values: Mapping[str, Any]) -> dict[str, Any]:
    return {c: _json_value(rel, c, v) for c, v in values.items()}


def _unique(rows: dict[tuple[str, Key], _Row]) -> list[_Row]:
    seen: dict[int, _Row] = {}
    for r in rows.values():
        seen.setdefault(id(r), r)
    return list(seen.values())


def _state_row(rel: RelationDef, pk: list[str], key: Key, rec: Sequence[Any]) -> _Row:
    """A row's merge state from its table row (``present``, values) and its shadow entry."""
    ncols = len(rel.columns)
    present = bool(rec[0])
    values = rec[1 : 1 + ncols]
    row_tags, col_tags, tombstone = rec[1 + ncols :]
    if present:
        vals = {c.name: v for c, v in zip(rel.columns, values, strict=True)}
    elif tombstone is not None:
        vals = dict(tombstone)
    else:
        vals = {}
    vals.update(zip(pk, key, strict=True))
    if row_tags is None:
        # no shadow entry: a row from before the table was electrified (or no row at all)
        state = RowState(vals, {}, frozenset({Tag(0, None)}) if present else frozenset())
    else:
        state = RowState(
            vals,
            {c: parse_tag_json(t) for c, t in (col_tags or {}).items()},
            frozenset(parse_tag_json(t) for t in row_tags),
        )
    return _Row(rel, key, state, present)


def _write(op: ClientOp, tag: Tag) -> Write:
    observed = frozenset(Tag.parse(t) for t in op.tags)
    if op.kind in ("delete", "compensation"):
        return Write(op.kind, tag, observed)
    pk = {op.relation.columns[i].name for i in op.relation.pk_indexes}
    if op.kind == "insert" or op.old is None:
        changed = frozenset(c for c in op.values if c not in pk)
    else:
        old = op.old
        changed = frozenset(c for c, v in op.values.items() if c not in pk and old.get(c) != v)
    return Write(op.kind, tag, observed, op.values, changed)


def _complete(rel: RelationDef, state: RowState) -> bool:
    return all(c.nullable or state.values.get(c.name) is not None for c in rel.columns)


def _batches(actions: list[_Action]) -> list[list[_Action]]:
    """Consecutive actions of one kind on one table, each key at most once per batch."""
    out: list[list[_Action]] = []
    for a in actions:
        last = out[-1] if out else None
        if last is not None and last[0].kind == a.kind and last[0].rel is a.rel and all(b.key != a.key for b in last):
            last.append(a)
        else:
            out.append([a])
    return out


def _json_value(rel: RelationDef, column: str, value: Any) -> Any:
    if value is None:
        return None
    col = next(c for c in rel.columns if c.name == column)
    if col.type_name in _JSON_TYPES:
        return json.loads(value)
    return value


async def _execute(conn: psycopg.AsyncConnection[Any], batch: list[_Action]) -> None:
    rel = batch[0].rel
    table = sql.Identifier(rel.schema, rel.name)
    pk = [rel.columns[i].name for i in rel.pk_indexes]
    if batch[0].kind == "delete":
        payload = json.dumps([dict(zip(pk, a.key, strict=True)) for a in batch])
        await conn.execute(
            sql.SQL(
                "DELETE FROM {table} AS t USING jsonb_populate_recordset(NULL::{table}, %s::jsonb) AS r WHERE {join}"
            ).format(
                table=table,
                join=sql.SQL(" AND ").join(sql.SQL("t.{c} = r.{c}").format(c=sql.Identifier(c)) for c in pk),
            ),
            [payload],
        )
        return
    # one statement per set of known columns (a client may know fewer columns than the table has)
    groups: dict[tuple[str, ...], list[_Action]] = {}
    order = [c.name for c in rel.columns]
    for a in batch:
        cols = tuple(c for c in order if c in a.values)
        groups.setdefault(cols, []).append(a)
    for cols, group in groups.items():
        payload = json.dumps([{c: _json_value(rel, c, a.values[c]) for c in cols} for a in group])
        non_key = [c for c in cols if c not in pk]
        conflict = (
            sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in non_key)
            )
            if non_key
            else sql.SQL("DO UPDATE SET {c} = EXCLUDED.{c}").format(c=sql.Identifier(pk[0]))
        )
        await conn.execute(
            sql.SQL(
                "INSERT INTO {table} ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb)"
                " ON CONFLICT ({pk}) {conflict}"
            ).format(
                table=table,
                cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
                pk=sql.SQL(", ").join(sql.Identifier(c) for c in pk),
                conflict=conflict,
            ),
            [payload],
        )
