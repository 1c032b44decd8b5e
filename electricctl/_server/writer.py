"""The one writer of client transactions into Postgres.

Each client transaction becomes one Postgres transaction (REPEATABLE READ, retried on a
serialization failure or deadlock, so a concurrent direct write is never overwritten by a merge
computed from an older state):

1. skip it if ``electric.client_positions`` shows it was applied before (idempotent by client
   id and client LSN);
2. read the current state of every row it touches: the row itself, and its shadow entry (row
   tags, column tags, the last values of a deleted row);
3. merge each operation into that state: :func:`electricctl._merge.plan.plan_client_transaction`
   (pure, with the rules of :mod:`electricctl._merge.rules` that the Python client uses too);
4. write the result (the statements are in :mod:`electricctl._sql.client_writes`): upserts with the merged values (always for an insert or update, even if it
   lost every column, so the transaction echoed to the client carries the row as resolved),
   deletes of rows that lost their last tag, then the shadow entries;
5. emit the transaction's origin and each written row's tag set as logical messages, which the
   replication stream attaches to the transaction; and record the client's position.

``SET LOCAL electric.writer`` makes the tagging triggers skip these rows (the writer tags them).
A data or constraint error refuses the transaction alone (:class:`InvalidTransaction`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import errors

from electricctl._merge.plan import (
    Action,
    Check,
    CurrentRow,
    Key,
    RowId,
    plan_client_transaction,
    shadow_entries,
    state_row,
    tags_of,
    unique,
)
from electricctl._model.client import ClientOp, ClientTransaction, InvalidTransaction
from electricctl._model.rows import ClientWrite, RelationDef, row_key
from electricctl._model.wire import DISPLAY_OPTIONS
from electricctl._perms.policy import Describe, Policy
from electricctl._server.pgretry import Backoff
from electricctl._sql import client_writes as stmt

log = logging.getLogger("electricctl.server")

_T = TypeVar("_T")
_RETRIES = 8


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
            cur = await _run(conn, stmt.position(client_id))
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
        cur = await _run(conn, stmt.claim(tx.client_id))
        reads = await _read(conn, tx.ops)
        row = await cur.fetchone()
        if row is not None and row[1] is not None and tx.lsn <= int(row[1]):
            return False
        plan = plan_client_transaction(tx, await _states(reads), policy)
        if policy is None:
            await _execute(conn, plan.batches())
        else:
            assert describe is not None
            refused = plan.refused_outright()
            if refused is not None:  # no grant can allow it: denied before anything is written
                raise refused.denied(tx)
            try:
                async with conn.transaction():  # a savepoint: a permission denial outranks bad data
                    await _execute(conn, plan.batches())
            except (psycopg.DataError, psycopg.IntegrityError):
                await _verify(conn, tx, policy, describe, plan.checks)
                raise
            # checked against the data as the transaction leaves it (a scope row written earlier
            # in the same transaction counts)
            await _verify(conn, tx, policy, describe, plan.checks)
        for qualified, entries in shadow_entries(plan.unique_rows()).items():
            await _run(conn, stmt.write_shadow(qualified, entries))
        await _run(conn, stmt.finish(tx, ClientWrite(tx.commit_ts_ms, plan.written_tags())))
        if tx.report_xid:
            # the 32-bit xid pgoutput reports (and TanStack DB's awaitTxId compares with)
            cur = await conn.execute("SELECT pg_current_xact_id()::xid::text")
            row = await cur.fetchone()
            tx.xid = int(row[0]) if row is not None else None
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
        await _run(conn, stmt.mark_writer(tx.client_id))
        try:
            async with conn.transaction():  # a savepoint: keys that do not parse are left out
                rows = await _states(await _read(conn, tx.ops))
        except (psycopg.DataError, psycopg.IntegrityError):
            rows = {}
        present = [r for r in unique(rows) if r.present]
        for r in present:
            # rewrite the row as it is, so the echo carries it
            await _execute(conn, [[Action("upsert", r.rel, r.key, dict(r.state.values))]])
        gone: dict[str, None] = {}
        for op in tx.ops:
            found = rows.get((op.relation.qualified, op.key))
            if found is None or not found.present:
                gone[row_key(op.relation.qualified, found.key if found is not None else op.key)] = None
        await _run(conn, stmt.finish(tx, ClientWrite(tx.commit_ts_ms, tags_of(present), tuple(gone))))


@dataclass(slots=True)
class _Read:
    qualified: str
    rel: RelationDef
    pk: list[str]
    requested: list[Key]
    cursor: psycopg.AsyncCursor[Any]


async def _read(conn: psycopg.AsyncConnection[Any], ops: Sequence[ClientOp]) -> list[_Read]:
    """Send the queries that read the rows ``ops`` touch (results are fetched by :func:`_states`)."""
    by_table: dict[str, tuple[RelationDef, dict[Key, None]]] = {}
    for op in ops:
        by_table.setdefault(op.relation.qualified, (op.relation, {}))[1][op.key] = None
    reads: list[_Read] = []
    for qualified, (rel, keys) in by_table.items():
        requested = list(keys)
        cur = await _run(conn, stmt.read_rows(rel, requested))
        reads.append(_Read(qualified, rel, list(rel.pk_columns), requested, cur))
    return reads


async def _states(reads: list[_Read]) -> dict[RowId, CurrentRow]:
    """The merge state of each requested row, keyed by (table, requested key).

    The client's text of a key can differ from Postgres' (e.g. a uuid's case): requests that
    name the same row share one state, under the canonical key (Postgres' text of it).
    """
    out: dict[RowId, CurrentRow] = {}
    for read in reads:
        npk = len(read.pk)
        canonical_rows: dict[Key, CurrentRow] = {}
        for rec in await read.cursor.fetchall():
            canonical: Key = tuple(rec[1 : 1 + npk])
            shared = canonical_rows.get(canonical)
            if shared is None:
                shared = canonical_rows[canonical] = state_row(read.rel, read.pk, canonical, rec[1 + npk :])
            out[(read.qualified, read.requested[int(rec[0]) - 1])] = shared
    return out


async def _run(conn: psycopg.AsyncConnection[Any], query: stmt.Query) -> psycopg.AsyncCursor[Any]:
    return await conn.execute(query[0], query[1])


async def _execute(conn: psycopg.AsyncConnection[Any], batches: list[list[Action]]) -> None:
    for batch in batches:
        for query in stmt.batch(batch):
            await _run(conn, query)


async def _verify(
    conn: psycopg.AsyncConnection[Any], tx: ClientTransaction, policy: Policy, describe: Describe, checks: list[Check]
) -> None:
    """Raise PermissionDenied for the first operation its grants do not allow.

    Operations that need the same check (table, privilege, grants, which rows) share one query,
    composed once, that takes their rows as a parameter and returns the ones that fail.
    """
    groups: dict[tuple[Any, ...], list[Check]] = {}
    for c in checks:
        key = (c.op.relation, c.privilege, tuple(g.name for g in c.grants), c.before is not None, c.after is not None)
        groups.setdefault(key, []).append(c)
    failed: list[Check] = []
    for (rel, _privilege, _names, has_before, has_after), members in groups.items():
        before = stmt.BEFORE_ROW if has_before else None
        after = stmt.AFTER_ROW if has_after else None
        ok = policy.write_check(members[0].grants, rel, tx.user_id, tx.claims, before, after, describe)
        cur = await conn.execute(
            *stmt.failing_rows(rel, ok, [{"b": c.before or {}, "a": c.after or {}} for c in members])
        )
        failed.extend(members[int(r[0]) - 1] for r in await cur.fetchall())
    if failed:
        raise min(failed, key=lambda c: c.n).denied(tx)
