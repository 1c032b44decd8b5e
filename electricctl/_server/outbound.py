"""Turning captured transactions and snapshot rows into Satellite messages (pure).

Values arrive in Postgres' text output (DateStyle ISO, TimeZone UTC, bytea hex) and leave as the
0.12 client expects them (../shared/reference/electric-legacy.md §1.2 item 6): bytea as raw bytes, timestamptz with a
``Z`` suffix, arrays as JSON (``electricctl._model.arrays``); everything else unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from electricctl._model import arrays
from electricctl._model.migrations import Migration
from electricctl._model.rows import Change, RelationDef, Row, Transaction, change_key
from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.satellite_migrations import migrate_op

logger = logging.getLogger("electricctl.server")

Transform = Callable[[bytes], bytes]


def _bytea(value: bytes) -> bytes:
    if value.startswith(b"\\x"):
        return bytes.fromhex(value[2:].decode())
    return value


def _timestamptz(value: bytes) -> bytes:
    # 'YYYY-MM-DD HH:MM:SS[.ffffff]+00' -> '...Z' (the server session runs in UTC)
    if value.endswith(b"+00"):
        return value[:-3] + b"Z"
    return value


_TRANSFORMS: dict[str, Transform] = {"bytea": _bytea, "timestamptz": _timestamptz}


def _array(element: str) -> Transform:
    def convert(value: bytes) -> bytes:
        text = value.decode()
        try:
            return arrays.pg_to_json(text, element).encode()
        except (ValueError, IndexError):
            # a lower bound other than 1 ('[0:2]={...}') has no JSON form: the client gets the text
            return json.dumps(text, ensure_ascii=False).encode()

    return convert


def _transform(type_name: str) -> Transform | None:
    element = arrays.element_type(type_name)
    return _array(element) if element is not None else _TRANSFORMS.get(type_name)


def row_transform(rel: RelationDef) -> Callable[[Row], Row]:
    """A function converting a row of ``rel`` from Postgres text to the wire form (arrays as JSON)."""
    fns = [(i, fn) for i, c in enumerate(rel.columns) if (fn := _transform(c.type_name)) is not None]
    if not fns:
        return lambda row: row

    def convert(row: Row) -> Row:
        out = list(row)
        for i, fn in fns:
            v = out[i]
            if v is not None:
                out[i] = fn(v)
        return tuple(out)

    return convert


def relation_message(rel: RelationDef) -> pb.SatRelation:
    return pb.SatRelation(
        schema_name=rel.schema,
        table_type=pb.SatRelation.TABLE,
        table_name=rel.name,
        relation_id=rel.relid,
        columns=[
            pb.SatRelationColumn(name=c.name, type=c.type_name, primaryKey=c.primary_key, is_nullable=c.nullable)
            for c in rel.columns
        ],
    )


def tag(origin: str | None, commit_ts_ms: int) -> str:
    """Legacy tag format ``origin@commit_ts_ms``; writes made in Postgres have an empty origin."""
    return f"{origin or ''}@{commit_ts_ms}"


def add_change(ops: Any, ch: Change, tags: Sequence[str], convert: Callable[[Row], Row]) -> None:
    """Append ``ch`` to a SatOpLog's ops, filling messages in place."""
    rel = ch.relation
    if ch.op == "I":
        assert ch.new is not None
        body = ops.add().insert
        codec.fill_row(body.row_data, convert(ch.new))
    elif ch.op == "U":
        assert ch.new is not None
        body = ops.add().update
        codec.fill_row(body.row_data, convert(ch.new))
        codec.fill_row(body.old_row_data, convert(ch.old if ch.old is not None else ch.new))
    elif ch.op == "G":
        assert ch.old is not None
        gone = ops.add().gone
        gone.relation_id = rel.relid
        codec.fill_row(gone.pk_data, _pk_only(rel, ch.old, convert))
        return
    else:
        assert ch.op == "D" and ch.old is not None
        body = ops.add().delete
        codec.fill_row(body.old_row_data, convert(ch.old))
    body.relation_id = rel.relid
    body.tags.extend(tags)


def transaction_oplog(
    tx: Transaction,
    changes: Iterable[Change],
    convert: Callable[[RelationDef], Callable[[Row], Row]],
    additional_ref: int = 0,
) -> pb.SatOpLog:
    """One SatOpLog for one transaction: begin, its (already filtered) changes, commit."""
    lsn = codec.encode_server_lsn(tx.lsn)
    ts = tx.timestamp_ms
    tags = (tag(tx.origin, ts),)
    row_tags = tx.write.row_tags if tx.write is not None else None
    log = pb.SatOpLog()
    ops = log.ops
    begin = ops.add().begin
    begin.commit_timestamp = ts
    begin.lsn = lsn
    begin.origin = tx.origin or ""
    begin.transaction_id = tx.xid
    begin.additional_data_ref = additional_ref
    for ch in changes:
        if ch.op in ("D", "G"):
            add_change(ops, ch, (), convert(ch.relation))
        elif row_tags is not None:
            assert ch.new is not None
            add_change(ops, ch, row_tags.get(change_key(ch.relation, ch.new), tags), convert(ch.relation))
        else:
            add_change(ops, ch, tags, convert(ch.relation))
    commit = ops.add().commit
    commit.commit_timestamp = ts
    commit.lsn = lsn
    commit.additional_data_ref = additional_ref
    commit.transaction_id = tx.xid
    return log


def migration_oplog(lsn: int, timestamp_ms: int, xid: int, migrations: Iterable[Migration]) -> pb.SatOpLog:
    """One migration transaction (``is_migration``): begin, a ``SatOpMigrate`` per migration, commit."""
    wire_lsn = codec.encode_server_lsn(lsn)
    log = pb.SatOpLog()
    begin = log.ops.add().begin
    begin.commit_timestamp, begin.lsn, begin.transaction_id, begin.is_migration = timestamp_ms, wire_lsn, xid, True
    for m in migrations:
        try:
            op = migrate_op(m)
        except ValueError as exc:  # pragma: no cover - the catalog records only operations we know
            logger.warning("not sending a migration: %s", exc)
            continue
        log.ops.add().migrate.CopyFrom(op)
    commit = log.ops.add().commit
    commit.commit_timestamp, commit.lsn, commit.transaction_id = timestamp_ms, wire_lsn, xid
    return log


def snapshot_tags(raw: bytes | None) -> list[str]:
    """A snapshot row's tags, from its shadow entry's ``row_tags`` (JSON ``[[ts, origin], ...]``).

    A row with no shadow entry predates electrification: it carries the Postgres tag ``@0``.
    """
    if raw is None:
        return ["@0"]
    return [tag(origin, ts) for ts, origin in json.loads(raw)]


def _pk_only(rel: RelationDef, row: Row, convert: Callable[[Row], Row]) -> Row:
    values: list[bytes | None] = [None] * len(rel.columns)
    for i in rel.pk_indexes:
        values[i] = row[i]
    return convert(tuple(values))


def gone_op(rel: RelationDef, pk: Row, convert: Callable[[Row], Row] | None = None) -> pb.SatTransOp:
    """A GONE op carries the primary key values (other columns NULL)."""
    values: list[bytes | None] = [None] * len(rel.columns)
    for i, v in zip(rel.pk_indexes, pk, strict=True):
        values[i] = v
    row = tuple(values) if convert is None else convert(tuple(values))
    return pb.SatTransOp(gone=pb.SatOpGone(relation_id=rel.relid, pk_data=codec.encode_row(row)))


def inserts(rel: RelationDef, rows: Sequence[Row], convert: Any) -> pb.SatOpLog:
    """Subscription data: inserts of snapshot rows, each row ending with its shadow ``row_tags``."""
    log = pb.SatOpLog()
    ops = log.ops
    for row in rows:
        insert = ops.add().insert
        insert.relation_id = rel.relid
        codec.fill_row(insert.row_data, convert(row[:-1]))
        insert.tags.extend(snapshot_tags(row[-1]))
    return log
