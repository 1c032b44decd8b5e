"""A pure decoder for the pgoutput logical replication protocol (versions 1 and 2).

Values stay as the bytes of Postgres' text output: they are forwarded to clients as they are, and
decoding them to Python types would cost more than the protocol itself (../shared/reference/measured-limits.md §2).
Message layouts: PostgreSQL docs, "Logical Replication Message Formats".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TypeAlias

# Postgres timestamps count microseconds from 2000-01-01
PG_EPOCH_US = 946_684_800_000_000

Value: TypeAlias = bytes | None


class Unchanged:
    """An unchanged TOASTed value: the update did not touch it and pgoutput did not resend it."""

    _instance: Unchanged | None = None

    def __new__(cls) -> Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = Unchanged()
TupleValue: TypeAlias = bytes | Unchanged | None


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_ts_us: int
    """Microseconds since the Unix epoch."""
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    name: str
    type_oid: int
    type_modifier: int
    key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    relid: int
    schema: str
    name: str
    replica_identity: str
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    schema: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relid: int
    new: tuple[TupleValue, ...]


@dataclass(frozen=True, slots=True)
class Update:
    relid: int
    old: tuple[TupleValue, ...] | None
    """Old values (all columns with REPLICA IDENTITY FULL), or None when the key did not change."""
    new: tuple[TupleValue, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    relid: int
    old: tuple[TupleValue, ...]


@dataclass(frozen=True, slots=True)
class Truncate:
    relids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    xid: int
    subxid: int


Message: TypeAlias = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeInfo
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)


class DecodeError(ValueError):
    pass


_U8 = struct.Struct("!B")
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_I64 = struct.Struct("!q")


def _cstr(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(0, pos)
    return buf[pos:end].decode(), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[tuple[TupleValue, ...], int]:
    (n,) = _I16.unpack_from(buf, pos)
    pos += 2
    out: list[TupleValue] = []
    for _ in range(n):
        kind = buf[pos]
        pos += 1
        if kind == 0x74 or kind == 0x62:  # 't' text, 'b' binary
            (length,) = _I32.unpack_from(buf, pos)
            pos += 4
            out.append(buf[pos : pos + length])
            pos += length
        elif kind == 0x6E:  # 'n'
            out.append(None)
        elif kind == 0x75:  # 'u'
            out.append(UNCHANGED)
        else:
            raise DecodeError(f"unknown tuple value kind {chr(kind)!r}")
    return tuple(out), pos


def decode(buf: bytes, *, streaming: bool = False) -> Message:
    """Decode one pgoutput message. ``streaming``: inside a stream block, messages carry an xid."""
    try:
        return _decode(buf, streaming)
    except (struct.error, IndexError, ValueError) as exc:
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(f"truncated or malformed pgoutput message {buf[:1]!r}: {exc}") from exc


def _decode(buf: bytes, streaming: bool) -> Message:
    tag = buf[0]
    pos = 1
    # in streamed transactions, data messages carry the (sub)transaction xid first
    if streaming and tag in b"RYIUDTM":
        pos += 4
    if tag == 0x42:  # 'B'
        final_lsn, ts, xid = struct.unpack_from("!QqI", buf, pos)
        return Begin(final_lsn, ts + PG_EPOCH_US, xid)
    if tag == 0x43:  # 'C'
        flags, commit_lsn, end_lsn, ts = struct.unpack_from("!BQQq", buf, pos)
        return Commit(flags, commit_lsn, end_lsn, ts + PG_EPOCH_US)
    if tag == 0x49:  # 'I'
        (relid,) = _U32.unpack_from(buf, pos)
        if buf[pos + 4] != 0x4E:
            raise DecodeError("Insert without a new tuple")
        new, _ = _tuple(buf, pos + 5)
        return Insert(relid, new)
    if tag == 0x55:  # 'U'
        (relid,) = _U32.unpack_from(buf, pos)
        pos += 4
        old = None
        if buf[pos] in (0x4B, 0x4F):  # 'K' key, 'O' old
            old, pos = _tuple(buf, pos + 1)
        if buf[pos] != 0x4E:
            raise DecodeError("Update without a new tuple")
        new, _ = _tuple(buf, pos + 1)
        return Update(relid, old, new)
    if tag == 0x44:  # 'D'
        (relid,) = _U32.unpack_from(buf, pos)
        old, _ = _tuple(buf, pos + 5)
        return Delete(relid, old)
    if tag == 0x52:  # 'R'
        (relid,) = _U32.unpack_from(buf, pos)
        schema, pos = _cstr(buf, pos + 4)
        name, pos = _cstr(buf, pos)
        replident = chr(buf[pos])
        (ncols,) = _I16.unpack_from(buf, pos + 1)
        pos += 3
        cols = []
        for _ in range(ncols):
            flags = buf[pos]
            colname, pos = _cstr(buf, pos + 1)
            type_oid, typmod = struct.unpack_from("!Ii", buf, pos)
            pos += 8
            cols.append(RelationColumn(colname, type_oid, typmod, bool(flags & 1)))
        return Relation(relid, schema, name, replident, tuple(cols))
    if tag == 0x59:  # 'Y'
        (oid,) = _U32.unpack_from(buf, pos)
        schema, pos = _cstr(buf, pos + 4)
        name, pos = _cstr(buf, pos)
        return TypeInfo(oid, schema, name)
    if tag == 0x4F:  # 'O'
        (lsn,) = _U64.unpack_from(buf, pos)
        name, _ = _cstr(buf, pos + 8)
        return Origin(lsn, name)
    if tag == 0x54:  # 'T'
        nrel, options = struct.unpack_from("!iB", buf, pos)
        relids = struct.unpack_from(f"!{nrel}I", buf, pos + 5)
        return Truncate(tuple(relids), bool(options & 1), bool(options & 2))
    if tag == 0x4D:  # 'M'
        flags, lsn = struct.unpack_from("!BQ", buf, pos)
        prefix, pos = _cstr(buf, pos + 9)
        (length,) = _U32.unpack_from(buf, pos)
        return LogicalMessage(bool(flags & 1), lsn, prefix, buf[pos + 4 : pos + 4 + length])
    if tag == 0x53:  # 'S'
        xid, first = struct.unpack_from("!IB", buf, pos)
        return StreamStart(xid, first == 1)
    if tag == 0x45:  # 'E'
        return StreamStop()
    if tag == 0x63:  # 'c'
        xid, flags, commit_lsn, end_lsn, ts = struct.unpack_from("!IBQQq", buf, pos)
        return StreamCommit(xid, flags, commit_lsn, end_lsn, ts + PG_EPOCH_US)
    if tag == 0x41:  # 'A'
        xid, subxid = struct.unpack_from("!II", buf, pos)
        return StreamAbort(xid, subxid)
    raise DecodeError(f"unknown pgoutput message type {chr(tag)!r}")
