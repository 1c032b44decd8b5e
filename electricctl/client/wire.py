"""Protobuf <-> local changes: the Satellite messages the client reads and writes, built and decoded.

Pure functions over :mod:`electricctl._protocol.satellite_pb2` messages: relations to local tables
and back, server operations to :class:`~electricctl.client.values.RemoteChange`, a local
transaction to one ``SatOpLog``, and subscription requests. No I/O and no state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl.client.oplog import LocalTransaction, OplogEntry
from electricctl.client.schema import Column, Table
from electricctl.client.values import LocalValue, RemoteChange, RowBatch, Wire, converter, to_wire

Shape = Mapping[str, Any]
"""``{"table": ..., "where"?: ..., "include"?: [{"table", "foreign_key"?, "where"?, "include"?}]}``"""
"""One shape of a subscription: ``{"table": name}`` and optionally ``"where"``."""


def table_from_relation(msg: pb.SatRelation) -> Table:
    return Table(msg.table_name, tuple(Column(c.name, c.type, c.primaryKey, c.is_nullable) for c in msg.columns))


def table_from_migration(msg: pb.SatOpMigrate.Table) -> Table:
    """A migrated table as ``SatOpMigrate`` describes it: every column, with its Postgres type.

    The message does not say which columns are NOT NULL, so only the key is: the local table
    accepts what the server sends, and Postgres keeps its own constraints on writes.
    """
    pks = set(msg.pks)
    return Table(msg.name, tuple(Column(c.name, c.pg_type.name, c.name in pks, c.name not in pks) for c in msg.columns))


def relation_message(table: Table, relation_id: int) -> pb.SatRelation:
    return pb.SatRelation(
        schema_name="public",
        table_type=pb.SatRelation.TABLE,
        table_name=table.name,
        relation_id=relation_id,
        columns=[
            pb.SatRelationColumn(name=c.name, type=c.pg_type, primaryKey=c.primary_key, is_nullable=c.nullable)
            for c in table.columns
        ],
    )


def encode_row(table: Table, values: Mapping[str, Any]) -> pb.SatOpRow:
    wire: Sequence[Wire] = [to_wire(c, values.get(c.name)) for c in table.columns]
    return codec.encode_row(wire)


class RowDecoder:
    """Decodes a table's Satellite rows to local values: the columns' converters are looked up
    once, and a row with no NULL (the common case) skips the bitmask."""

    __slots__ = ("_converters", "_count", "_names")

    def __init__(self, table: Table) -> None:
        self._names = [c.name for c in table.columns]
        self._converters = [converter(c) for c in table.columns]
        self._count = len(table.columns)

    def __call__(self, row: pb.SatOpRow) -> dict[str, Any]:
        return dict(zip(self._names, self.values(row), strict=True))

    def values(self, row: pb.SatOpRow) -> list[LocalValue]:
        """The row's values in column order."""
        values = row.values
        if len(values) != self._count:
            raise codec.FrameError(f"row has {len(values)} values for {self._count} columns")
        mask = row.nulls_bitmask
        if not any(mask):
            return [conv(v) for conv, v in zip(self._converters, values, strict=True)]
        out: list[LocalValue] = []
        for i, (conv, v) in enumerate(zip(self._converters, values, strict=True)):
            byte = i >> 3
            null = byte < len(mask) and mask[byte] & (0x80 >> (i & 7))
            out.append(None if null else conv(v))
        return out


def decode_change(
    op: pb.SatTransOp, relations: Mapping[int, Table], decoders: dict[int, RowDecoder] | None = None
) -> RemoteChange | None:
    """The change an operation carries (None for begin, commit and other non-row operations).

    ``decoders`` caches a :class:`RowDecoder` per relation across the operations of a batch.
    Raises KeyError for a relation the server has not described.
    """
    kind = op.WhichOneof("op")
    if kind == "insert":
        body = op.insert
        table, decode = _decoder(relations, decoders, body.relation_id)
        return RemoteChange(table.name, kind, decode(body.row_data), None, list(body.tags))
    if kind == "update":
        upd = op.update
        table, decode = _decoder(relations, decoders, upd.relation_id)
        return RemoteChange(table.name, kind, decode(upd.row_data), decode(upd.old_row_data), list(upd.tags))
    if kind == "delete":
        dlt = op.delete
        table, decode = _decoder(relations, decoders, dlt.relation_id)
        return RemoteChange(table.name, kind, decode(dlt.old_row_data), None, list(dlt.tags))
    if kind == "gone":
        table, decode = _decoder(relations, decoders, op.gone.relation_id)
        return RemoteChange(table.name, kind, decode(op.gone.pk_data), None, [])
    return None


def _decoder(
    relations: Mapping[int, Table], decoders: dict[int, RowDecoder] | None, relation_id: int
) -> tuple[Table, RowDecoder]:
    table = relations[relation_id]
    if decoders is None:
        return table, RowDecoder(table)
    decode = decoders.get(relation_id)
    if decode is None:
        decode = decoders[relation_id] = RowDecoder(table)
    return table, decode


def decode_changes(ops: Iterable[pb.SatTransOp], relations: Mapping[int, Table]) -> list[RemoteChange]:
    decoders: dict[int, RowDecoder] = {}
    return [c for op in ops if (c := decode_change(op, relations, decoders)) is not None]


def decode_transaction(
    ops: Sequence[pb.SatTransOp], relations: Mapping[int, Table]
) -> tuple[list[RowBatch], list[RemoteChange]]:
    """A live transaction: one :class:`RowBatch` when it only inserts into one table (its rows are
    written in bulk, in order), otherwise its changes."""
    relation_id: int | None = None
    for op in ops:
        if not op.HasField("insert") or (relation_id is not None and op.insert.relation_id != relation_id):
            return [], decode_changes(ops, relations)
        relation_id = op.insert.relation_id
    return decode_data(ops, relations)


def decode_data(
    ops: Iterable[pb.SatTransOp], relations: Mapping[int, Table]
) -> tuple[list[RowBatch], list[RemoteChange]]:
    """Subscription or unsubscribe data: its inserts as one :class:`RowBatch` per relation, and any
    other row operation (GONE) as changes. (Inserts of a row are never mixed with its removal in
    one part of data.)"""
    decoders: dict[int, RowDecoder] = {}
    batches: dict[int, tuple[RowBatch, Callable[[pb.SatOpRow], list[LocalValue]]]] = {}
    changes: list[RemoteChange] = []
    for op in ops:
        if op.HasField("insert"):
            body = op.insert
            entry = batches.get(body.relation_id)
            if entry is None:
                table, decode = _decoder(relations, decoders, body.relation_id)
                entry = batches[body.relation_id] = (RowBatch(table, [], []), decode.values)
            batch, values = entry
            batch.rows.append(values(body.row_data))
            batch.tags.append(list(body.tags))
        elif (change := decode_change(op, relations, decoders)) is not None:
            changes.append(change)
    return [batch for batch, _ in batches.values()], changes


client_lsn = codec.encode_client_lsn
"""A client transaction's position as the server stores it: the last oplog rowid."""


def _entry_op(table: Table, relation_id: int, e: OplogEntry) -> pb.SatTransOp:
    if e.optype == "INSERT":
        row = encode_row(table, e.new or {})
        return pb.SatTransOp(insert=pb.SatOpInsert(relation_id=relation_id, row_data=row, tags=e.clear_tags))
    if e.optype == "UPDATE":
        return pb.SatTransOp(
            update=pb.SatOpUpdate(
                relation_id=relation_id,
                row_data=encode_row(table, e.new or {}),
                old_row_data=encode_row(table, e.old or {}),
                tags=e.clear_tags,
            )
        )
    if e.optype == "DELETE":
        row = encode_row(table, e.old or {})
        return pb.SatTransOp(delete=pb.SatOpDelete(relation_id=relation_id, old_row_data=row, tags=e.clear_tags))
    row = encode_row(table, e.new or {})
    return pb.SatTransOp(compensation=pb.SatOpCompensation(relation_id=relation_id, pk_data=row, tags=e.clear_tags))


def written_columns(table: Table, e: OplogEntry) -> Table:
    """``table`` narrowed to the columns the write knew: a write made before a column was added
    locally (a migration) is sent under a relation without it, so Postgres keeps that column's
    value, or gives an inserted row its default, instead of taking a NULL the app never wrote."""
    if e.optype == "COMPENSATION":
        return table
    row = e.old if e.optype == "DELETE" else e.new
    if not row or all(c.name in row for c in table.columns):
        return table
    if e.optype == "UPDATE" and e.old is not None:
        row = {k: v for k, v in row.items() if k in e.old}
    if not all(c in row for c in table.pk):
        return table
    return Table(table.name, tuple(c for c in table.columns if c.name in row))


def transaction_oplog(
    tx: LocalTransaction, tables: Mapping[str, Table], relation_id: Callable[[Table], int]
) -> pb.SatOpLog:
    """One local transaction as the ``SatOpLog`` that carries it (begin, one op per write, commit).

    ``relation_id`` gives the id a table is sent under (the caller sends its relation first).
    """
    ops = [pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=tx.timestamp, lsn=client_lsn(tx.lsn)))]
    for e in tx.entries:
        table = written_columns(tables[e.table], e)
        ops.append(_entry_op(table, relation_id(table), e))
    ops.append(pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=tx.timestamp)))
    return pb.SatOpLog(ops=ops)


def subscription_request(subscription_id: str, shapes: Sequence[Shape]) -> pb.SatSubsReq:
    return pb.SatSubsReq(
        subscription_id=subscription_id,
        shape_requests=[
            pb.SatShapeReq(
                request_id=f"r{i}",
                shape_definition=pb.SatShapeDef(selects=[_select(s)]),
            )
            for i, s in enumerate(shapes)
        ],
    )


def _select(shape: Shape) -> pb.SatShapeDef.Select:
    return pb.SatShapeDef.Select(
        tablename=shape["table"],
        where=shape.get("where", ""),
        include=[
            pb.SatShapeDef.Relation(foreign_key=list(i.get("foreign_key", ())), select=_select(i))
            for i in shape.get("include", ())
        ],
    )


def include_spec(include: Any) -> list[dict[str, Any]]:
    """An include tree as the subscription records it, from either form an app may write:

    - like the npm client: ``{"issues": {"where": ..., "include": {"comments": True}}}``;
    - as a list: ``[{"table": "issues", "foreign_key": ["project_id"], "where": ..., "include": [...]}]``.
    """
    if include is None:
        return []
    if isinstance(include, Mapping):
        items: list[dict[str, Any]] = []
        for table, spec in include.items():
            if spec is True or spec is None:
                items.append({"table": str(table)})
            elif isinstance(spec, Mapping):
                items.append({"table": str(table), **{k: v for k, v in spec.items() if k != "include"}})
                if spec.get("include"):
                    items[-1]["include"] = include_spec(spec["include"])
            else:
                raise ValueError(f"include of {table!r}: expected True or a mapping, not {spec!r}")
        return [_clean(i) for i in items]
    return [_clean(dict(i)) for i in include]


def _clean(item: dict[str, Any]) -> dict[str, Any]:
    unknown = set(item) - {"table", "foreign_key", "where", "include"}
    if unknown or "table" not in item:
        raise ValueError(f"an include takes table, foreign_key, where and include; got {sorted(item)}")
    out: dict[str, Any] = {"table": str(item["table"])}
    if item.get("foreign_key"):
        fk = item["foreign_key"]
        out["foreign_key"] = [fk] if isinstance(fk, str) else [str(c) for c in fk]
    if item.get("where"):
        out["where"] = str(item["where"])
    if item.get("include"):
        out["include"] = include_spec(item["include"])
    return out


def subscription_refusal(resp: pb.SatSubsResp) -> str | None:
    """The server's reason for refusing a subscription, or None if it accepted it."""
    if not resp.HasField("err"):
        return None
    return "; ".join(e.message for e in resp.err.shape_request_error) or resp.err.message
