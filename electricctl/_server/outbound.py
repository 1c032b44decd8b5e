"""Turning captured transactions and snapshot rows into Satellite messages (pure).

Values arrive in Postgres' text output (DateStyle ISO, TimeZone UTC, bytea hex) and leave as the
0.12 client expects them (electric-legacy.md §1.2 item 6): bytea as raw bytes, timestamptz with a
``Z`` suffix; everything else unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._replication.model import Change, RelationDef, Row, Transaction

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


def row_transform(rel: RelationDef) -> Callable[[Row], Row]:
    """A function converting a row of ``rel`` from Postgres text to the wire form."""
    fns = [(i, _TRANSFORMS[c.type_name]) for i, c in enumerate(rel.columns) if c.type_name in _TRANSFORMS]
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


@dataclass(slots=True)
class Visibility:
    """A snapshot (from ``pg_current_snapshot()``): which transactions its data already holds.

    xids are compared as 32-bit values with wraparound, as pgoutput reports them.
    """

    xmin: int
    xmax: int
    xip: frozenset[int]
    bound_lsn: int
    """Transactions committed at or after this LSN are certainly newer than the snapshot."""

    @classmethod
    def parse(cls, text: str, bound_lsn: int) -> Visibility:
        xmin, xmax, xip = text.split(":")
        return cls(
            int(xmin) & 0xFFFFFFFF,
            int(xmax) & 0xFFFFFFFF,
            frozenset(int(x) & 0xFFFFFFFF for x in xip.split(",") if x),
            bound_lsn,
        )

    @staticmethod
    def _precedes(a: int, b: int) -> bool:
        return a != b and ((a - b) & 0xFFFFFFFF) >= 0x80000000

    def holds(self, tx: Transaction) -> bool:
        """Is ``tx`` already part of the snapshot's data?"""
        if tx.lsn >= self.bound_lsn:
            return False
        if self._precedes(tx.xid, self.xmin):
            return True
        if not self._precedes(tx.xid, self.xmax):
            return False
        return tx.xid not in self.xip

    def as_json(self) -> dict[str, object]:
        return {"xmin": self.xmin, "xmax": self.xmax, "xip": sorted(self.xip), "bound_lsn": self.bound_lsn}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Visibility:
        xip = d["xip"]
        assert isinstance(xip, list)
        return cls(int(str(d["xmin"])), int(str(d["xmax"])), frozenset(int(x) for x in xip), int(str(d["bound_lsn"])))


def change_op(ch: Change, tags: Sequence[str], convert: Callable[[Row], Row]) -> pb.SatTransOp:
    rel = ch.relation
    if ch.op == "I":
        assert ch.new is not None
        return pb.SatTransOp(
            insert=pb.SatOpInsert(relation_id=rel.relid, row_data=codec.encode_row(convert(ch.new)), tags=tags)
        )
    if ch.op == "U":
        assert ch.new is not None
        old = ch.old if ch.old is not None else ch.new
        return pb.SatTransOp(
            update=pb.SatOpUpdate(
                relation_id=rel.relid,
                row_data=codec.encode_row(convert(ch.new)),
                old_row_data=codec.encode_row(convert(old)),
                tags=tags,
            )
        )
    if ch.op == "G":
        assert ch.old is not None
        return gone_op(rel, tuple(ch.old[i] for i in rel.pk_indexes), convert)
    assert ch.op == "D" and ch.old is not None
    return pb.SatTransOp(
        delete=pb.SatOpDelete(relation_id=rel.relid, old_row_data=codec.encode_row(convert(ch.old)), tags=tags)
    )


def transaction_oplog(
    tx: Transaction, changes: Iterable[Change], convert: Callable[[RelationDef], Callable[[Row], Row]]
) -> pb.SatOpLog:
    """One SatOpLog for one transaction: begin, its (already filtered) changes, commit."""
    lsn = codec.encode_server_lsn(tx.lsn)
    tags = [tag(tx.origin, tx.commit_ts_ms)]
    ops = [
        pb.SatTransOp(
            begin=pb.SatOpBegin(
                commit_timestamp=tx.commit_ts_ms,
                lsn=lsn,
                origin=tx.origin or "",
                is_migration=False,
                transaction_id=tx.xid,
            )
        )
    ]
    ops.extend(change_op(ch, [] if ch.op in ("D", "G") else tags, convert(ch.relation)) for ch in changes)
    ops.append(pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=tx.commit_ts_ms, lsn=lsn, transaction_id=tx.xid)))
    return pb.SatOpLog(ops=ops)


def gone_op(rel: RelationDef, pk: Row, convert: Callable[[Row], Row] | None = None) -> pb.SatTransOp:
    """A GONE op carries the primary key values (other columns NULL)."""
    values: list[bytes | None] = [None] * len(rel.columns)
    for i, v in zip(rel.pk_indexes, pk, strict=True):
        values[i] = v
    row = tuple(values) if convert is None else convert(tuple(values))
    return pb.SatTransOp(gone=pb.SatOpGone(relation_id=rel.relid, pk_data=codec.encode_row(row)))
