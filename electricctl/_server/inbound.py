"""Client transactions as they arrive: SatRelation and SatOpLog frames checked and decoded (pure).

A client announces each table it writes with a SatRelation (its own relation id, the column names
it knows) and then sends each local transaction as one SatOpLog: begin, operations, commit. This
module turns those frames into :class:`ClientTransaction` objects, checked against the server's
own view of each table, or refuses them with :class:`InvalidTransaction`, which names the client,
the transaction and the operation, and says what is wrong. No I/O: the writer applies the result.

Checks (../shared/reference/electric-legacy.md §1.2 items 4-6 and §4): the relation is known and electrified, its
columns exist and include the primary key; every row has one value per column and a null mask of
the right length; NOT NULL columns get a value (except compensations, which carry only the key);
values parse for simple types (booleans, integers, floats, uuids, json; Postgres checks the rest
when the row is written); an update keeps its primary key; the transaction fits the size bound.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from electricctl._model import arrays
from electricctl._model.client import (
    ClientOp,
    ClientRelation,
    ClientTransaction,
    InvalidTransaction,
    Values,
)
from electricctl._model.rows import RelationDef
from electricctl._protocol import satellite_pb2 as pb


class MalformedTransaction(ValueError):
    """A SatOpLog that is not a transaction at all: a protocol violation."""


def client_lsn(raw: bytes) -> int:
    """Client LSNs are big-endian unsigned integers (4 bytes for the 0.12 client's oplog rowid)."""
    if not raw:
        return 0
    if len(raw) > 8:
        raise MalformedTransaction(f"malformed client LSN ({len(raw)} bytes; at most 8)")
    return int.from_bytes(raw, "big")


def relation_from(msg: pb.SatRelation) -> ClientRelation:
    return ClientRelation(msg.schema_name or "public", msg.table_name, tuple(c.name for c in msg.columns))


# -- value checks ------------------------------------------------------------------------------

_INT_RANGE = {"int2": 1 << 15, "int4": 1 << 31, "int8": 1 << 63}


def _check_bool(v: str) -> str | None:
    return None if v in ("t", "f") else "a boolean is 't' or 'f'"


def _check_int(name: str) -> Callable[[str], str | None]:
    bound = _INT_RANGE[name]

    def check(v: str) -> str | None:
        try:
            n = int(v)
        except ValueError:
            return f"not an integer: {v[:40]!r}"
        return None if -bound <= n < bound else f"{v} is out of range for {name}"

    return check


def _check_float(name: str) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        try:
            f = float(v)
        except ValueError:
            return f"not a number: {v[:40]!r}"
        if name == "float4" and math.isfinite(f) and abs(f) > 3.4028235e38:
            return f"{v} is out of range for float4"
        return None

    return check


def _check_uuid(v: str) -> str | None:
    try:
        uuid.UUID(v)
    except ValueError:
        return f"not a uuid: {v[:40]!r}"
    return None


def _check_json(v: str) -> str | None:
    try:
        json.loads(v)
    except ValueError as exc:
        return f"not JSON: {exc}"
    return None


_CHECKS: Mapping[str, Callable[[str], str | None]] = {
    "bool": _check_bool,
    **{n: _check_int(n) for n in _INT_RANGE},
    "float4": _check_float("float4"),
    "float8": _check_float("float8"),
    "uuid": _check_uuid,
    "json": _check_json,
    "jsonb": _check_json,
}


def check_text(type_name: str, text: str) -> str | None:
    """What is wrong with ``text`` as a value of ``type_name`` (None: nothing this server checks)."""
    check = _CHECKS.get(type_name)
    return check(text) if check is not None else None


def _decode_row(
    row: pb.SatOpRow, rel: ClientRelation, server: RelationDef, what: str, *, key_only: bool = False
) -> Values:
    n = len(rel.columns)
    if len(row.values) != n:
        raise InvalidTransaction(f"{what}: the row has {len(row.values)} values for {n} columns")
    mask = row.nulls_bitmask
    if len(mask) != (n + 7) // 8:
        raise InvalidTransaction(f"{what}: the null bitmask has {len(mask)} bytes for {n} columns")
    columns = {c.name: c for c in server.columns}
    out: Values = {}
    for i, (name, raw) in enumerate(zip(rel.columns, row.values, strict=True)):
        col = columns[name]
        if mask[i >> 3] & (0x80 >> (i & 7)):
            if not col.nullable and not (key_only and not col.primary_key):
                raise InvalidTransaction(f"{what}: column {name} is NOT NULL but the value is null")
            out[name] = None
            continue
        if col.type_name == "bytea":
            out[name] = "\\x" + bytes(raw).hex()  # bytea travels raw; Postgres' text form is hex
            continue
        try:
            text = bytes(raw).decode()
        except UnicodeDecodeError:
            raise InvalidTransaction(f"{what}: column {name}: the value is not UTF-8") from None
        element = arrays.element_type(col.type_name)
        if element is not None:
            # clients hold arrays as JSON; Postgres' array input is what the rest of the server keeps
            try:
                text = arrays.json_to_pg(text, element)
            except ValueError as exc:
                raise InvalidTransaction(f"{what}: column {name} ({element}[]): {exc}") from None
        check = _CHECKS.get(col.type_name)
        problem = check(text) if check is not None else None
        if problem is not None:
            raise InvalidTransaction(f"{what}: column {name} ({col.type_name}): {problem}")
        out[name] = text
    return out


def _key(values: Values, server: RelationDef, what: str) -> tuple[str, ...]:
    key = []
    for i in server.pk_indexes:
        name = server.columns[i].name
        v = values.get(name)
        if v is None:
            raise InvalidTransaction(f"{what}: primary key column {name} is missing or null")
        key.append(v)
    return tuple(key)


def decode_transaction(
    client_id: str,
    log: pb.SatOpLog,
    relations: Mapping[int, ClientRelation],
    server_relation: Callable[[ClientRelation], RelationDef | None],
    *,
    max_ops: int,
) -> ClientTransaction:
    """Decode one client transaction (one SatOpLog from begin to commit)."""
    ops = log.ops
    if len(ops) < 2 or ops[0].WhichOneof("op") != "begin" or ops[-1].WhichOneof("op") != "commit":
        raise MalformedTransaction(f"client {client_id}: a transaction is one SatOpLog from begin to commit")
    begin = ops[0].begin
    tx = ClientTransaction(client_id, client_lsn(begin.lsn), begin.commit_timestamp)
    try:
        _decode_ops(tx, ops, relations, server_relation, max_ops)
    except InvalidTransaction as exc:
        exc.transaction = tx
        raise
    return tx


def _decode_ops(
    tx: ClientTransaction,
    ops: Any,
    relations: Mapping[int, ClientRelation],
    server_relation: Callable[[ClientRelation], RelationDef | None],
    max_ops: int,
) -> None:
    if len(ops) - 2 > max_ops:
        raise InvalidTransaction(
            f"{tx.describe()}: {len(ops) - 2} operations is more than this server accepts in one transaction "
            f"({max_ops}); split it into smaller transactions"
        )
    for n, op in enumerate(ops[1:-1], start=1):
        kind = op.WhichOneof("op")
        if kind not in ("insert", "update", "delete", "compensation"):
            raise InvalidTransaction(f"{tx.describe()}: operation {n}: a client cannot send {kind!r}")
        body = getattr(op, kind)
        rel = relations.get(body.relation_id)
        if rel is None:
            raise InvalidTransaction(
                f"{tx.describe()}: operation {n}: unknown relation {body.relation_id} (no SatRelation was sent for it)"
            )
        what = f"{tx.describe()}: operation {n} ({kind} on {rel.schema}.{rel.table})"
        server = server_relation(rel)
        if server is None:
            raise InvalidTransaction(f"{what}: {rel.schema}.{rel.table} is not an electrified table")
        known = {c.name for c in server.columns}
        unknown = [c for c in rel.columns if c not in known]
        if unknown:
            raise InvalidTransaction(f"{what}: unknown column(s) {', '.join(unknown)}")
        missing = [c for c in server.pk_columns if c not in rel.columns]
        if missing:
            raise InvalidTransaction(f"{what}: the relation lacks primary key column(s) {', '.join(missing)}")
        old: Values | None = None
        if kind == "insert":
            values = _decode_row(body.row_data, rel, server, what)
        elif kind == "update":
            values = _decode_row(body.row_data, rel, server, what)
            old = _decode_row(body.old_row_data, rel, server, what + " old row")
            if _key(old, server, what) != _key(values, server, what):
                raise InvalidTransaction(f"{what}: primary keys are immutable; delete the row and insert a new one")
        elif kind == "delete":
            old = _decode_row(body.old_row_data, rel, server, what, key_only=True)
            values = {server.columns[i].name: old.get(server.columns[i].name) for i in server.pk_indexes}
        else:
            values = _decode_row(body.pk_data, rel, server, what, key_only=True)
        for t in body.tags:
            if "@" not in t or not t.rpartition("@")[2].isdigit():
                raise InvalidTransaction(f"{what}: malformed tag {t[:60]!r}")
        tx.ops.append(ClientOp(kind, server, _key(values, server, what), values, old, tuple(body.tags)))
