"""``POST /v1/transactions``: writes over HTTP, which Electric's HTTP API lacks.

The body is what TanStack DB's ``transaction.mutations`` holds, with each mutation's table added::

    {"mutations": [{"type": "insert" | "update" | "delete", "table": "items",
                    "modified": {...}, "original": {...}}]}

It becomes one client transaction through the same checks, grants and writer as a Satellite
client's, applied as one Postgres transaction, or refused whole: 400 for bad input, 403 for a
permission denial (naming the table, operation and rule). The answer carries the Postgres txid,
which the shape stream shows in ``headers.txids`` (TanStack DB's ``awaitTxId``).

An HTTP writer holds no tags: each operation observes the row as it is (a delete deletes, an
update is last-writer-wins per column), as a write made in Postgres would.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from electricctl._auth.tokens import Identity
from electricctl._model import arrays
from electricctl._model.client import ClientOp, ClientTransaction, InvalidTransaction, PermissionDenied, Values
from electricctl._model.rows import RelationDef
from electricctl._model.table import TableRef
from electricctl._server.front import HttpRequest, HttpResponse, json_response
from electricctl._server.inbound import check_text
from electricctl._server.shape_api.http import cors_headers, error, identity_of, preflight, unavailable

audit = logging.getLogger("electricctl.audit")
CLIENT_ID = "http-writes"
"""The client id HTTP writes are recorded under (their idempotency position, their origin)."""
KINDS = ("insert", "update", "delete")


class BadMutation(ValueError):
    pass


def to_text(value: Any, type_name: str, where: str) -> str | None:
    """A JSON value as TanStack DB holds it, in Postgres' text form for a column of ``type_name``."""
    if value is None:
        return None
    element = arrays.element_type(type_name)
    if element is not None:
        if not isinstance(value, list):
            raise BadMutation(f"{where}: an array column takes a JSON array")
        try:
            return arrays.json_to_pg(json.dumps(value), element)
        except ValueError as exc:
            raise BadMutation(f"{where}: {exc}") from None
    if type_name in ("json", "jsonb"):
        text = value if isinstance(value, str) else json.dumps(value)
    elif isinstance(value, bool):
        text = "t" if value else "f"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BadMutation(f"{where}: {value} is not a number JSON can carry")
        text = repr(value)
    elif isinstance(value, str):
        text = value
        if type_name == "bool" and value in ("true", "false"):
            text = value[0]
    else:
        raise BadMutation(f"{where}: a {type_name} column does not take a JSON {type(value).__name__}")
    problem = check_text(type_name, text)
    if problem is not None:
        raise BadMutation(f"{where}: {problem}")
    return text


def _values(doc: Any, rel: RelationDef, where: str, name: str) -> Values:
    if not isinstance(doc, dict):
        raise BadMutation(f"{where}: {name} must be an object of column values")
    columns = {c.name: c for c in rel.columns}
    out: Values = {}
    for col, value in doc.items():
        c = columns.get(col)
        if c is None:
            raise BadMutation(f"{where}: {rel.qualified} has no column {col!r}")
        out[col] = to_text(value, c.type_name, f"{where}: column {col}")
    return out


def _key(values: Values, rel: RelationDef, where: str) -> tuple[str, ...]:
    key = []
    for name in rel.pk_columns:
        v = values.get(name)
        if v is None:
            raise BadMutation(f"{where}: the primary key column {name} is missing")
        key.append(v)
    return tuple(key)


class HttpWrites:
    def __init__(self, server: Any) -> None:
        self.server = server
        self._last_lsn = 0

    def _next_lsn(self) -> int:
        # increasing across requests and restarts (the writer applies them in this order: its
        # lock is first come, first served), so the idempotency position never skips one
        self._last_lsn = max(self._last_lsn + 1, time.time_ns() // 1000)
        return self._last_lsn

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if request.method == "OPTIONS":
            return preflight(request)
        if request.method != "POST":
            return error(request, 405, f"{request.method} is not allowed on /v1/transactions; POST a JSON body")
        identity = identity_of(request, self.server)
        if isinstance(identity, HttpResponse):
            return identity
        if self.server.draining:
            return unavailable(request, "the server is restarting")
        try:
            tx = await self._transaction(request, identity)
        except BadMutation as exc:
            self.server.metrics.write_done("invalid")
            return error(request, 400, str(exc))
        policy, relations = await self.server.catalog.policy()
        started = time.perf_counter()
        try:
            await self.server.writer.apply(tx, policy, relations.get)
        except PermissionDenied as exc:
            self.server.metrics.write_done("denied", time.perf_counter() - started)
            self.server.metrics.denied("write")
            self._audit(request, tx, exc)
            body = {"message": str(exc), "table": exc.table, "operation": exc.operation}
            return json_response(403, body, [*cors_headers(request), ("cache-control", "no-store")])
        except InvalidTransaction as exc:
            self.server.metrics.write_done("refused", time.perf_counter() - started)
            return error(request, 400, str(exc))
        self.server.metrics.write_done("applied", time.perf_counter() - started)
        return json_response(200, {"txid": tx.xid}, [*cors_headers(request), ("cache-control", "no-store")])

    async def _transaction(self, request: HttpRequest, identity: Identity) -> ClientTransaction:
        try:
            doc = json.loads(request.body or b"null")
        except ValueError as exc:
            raise BadMutation(f"the body is not JSON: {exc}") from None
        mutations = doc.get("mutations") if isinstance(doc, dict) else None
        if not isinstance(mutations, list) or not mutations:
            raise BadMutation('the body must be {"mutations": [...]} with at least one mutation')
        limit = self.server.options.max_transaction_ops
        if len(mutations) > limit:
            raise BadMutation(f"{len(mutations)} mutations is more than this server takes at once ({limit})")
        tx = ClientTransaction(CLIENT_ID, self._next_lsn(), int(time.time() * 1000))
        tx.user_id, tx.claims, tx.report_xid = identity.user_id, identity.claims, True
        catalog = self.server.catalog
        electrified = await catalog.electrified_tables()
        for n, m in enumerate(mutations, start=1):
            if not isinstance(m, dict):
                raise BadMutation(f"mutation {n} is not an object")
            kind = m.get("type")
            if kind not in KINDS:
                raise BadMutation(f"mutation {n}: type must be one of {', '.join(KINDS)}")
            name = m.get("table")
            if not isinstance(name, str) or not name:
                raise BadMutation(f"mutation {n}: table is missing")
            try:
                table = TableRef.parse(name)
            except ValueError as exc:
                raise BadMutation(f"mutation {n}: invalid table name: {exc}") from None
            rel = await catalog.describe(table) if table in electrified else None
            if rel is None:
                raise BadMutation(f"mutation {n}: {name} is not an electrified table")
            where = f"mutation {n} ({kind} on {table})"
            modified = _values(m.get("modified") or {}, rel, where, "modified")
            original = _values(m.get("original") or {}, rel, where, "original") if m.get("original") else None
            if kind == "insert":
                values, old = modified, None
            elif kind == "update":
                if original is None:
                    raise BadMutation(f"{where}: an update needs original (the row as the client had it)")
                key = {c: modified.get(c, original.get(c)) for c in rel.pk_columns}
                if any(modified.get(c, key[c]) != original.get(c, key[c]) for c in rel.pk_columns):
                    raise BadMutation(f"{where}: primary keys are immutable; delete the row and insert a new one")
                values, old = {**modified, **key}, original
            else:
                source = original or modified
                values = {c: source.get(c) for c in rel.pk_columns}
                old = source
            tx.ops.append(ClientOp(kind, rel, _key(values, rel, where), values, old, (), observe_current=True))
        return tx

    def _audit(self, request: HttpRequest, tx: ClientTransaction, denied: PermissionDenied) -> None:
        audit.warning(
            "%s",
            json.dumps(
                {
                    "event": "permission_denied",
                    "client_id": tx.client_id,
                    "user_id": tx.user_id,
                    "peer": request.peer,
                    "client_lsn": tx.lsn,
                    "table": denied.table,
                    "operation": denied.operation,
                    "message": str(denied),
                }
            ),
        )
