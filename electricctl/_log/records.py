"""Binary encoding of log records: relation definitions and transactions (pure).

A record is ``[u32 length][u32 crc32 of payload][payload]``; the payload's first byte is its kind.
Transactions refer to relations by relid; the relation record is written before the first
transaction that uses a (new or changed) definition, so a reader rebuilds them in order.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from electricctl._model.migrations import Migration
from electricctl._model.rows import Change, ClientWrite, Column, RelationDef, Row, Transaction, canonical

HEADER = struct.Struct("!II")
KIND_RELATION = 0x52  # 'R'
KIND_TRANSACTION = 0x54  # 'T'
KIND_TAGGED_TRANSACTION = 0x55  # 'U': a client's transaction: followed by its ClientWrite (JSON)
_MIGRATIONS_TRAILER = b"M"  # after a transaction: its schema migrations (u32 length, JSON array)

_TX = struct.Struct("!BQQqQI")
_STR = struct.Struct("!H")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")


class CorruptRecord(ValueError):
    pass


def _put_str(out: bytearray, text: str) -> None:
    raw = text.encode()
    out += _STR.pack(len(raw))
    out += raw


def _get_str(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = _STR.unpack_from(buf, pos)
    pos += 2
    return buf[pos : pos + n].decode(), pos + n


def _put_row(out: bytearray, row: Row | None) -> None:
    if row is None:
        out += _I32.pack(-1)
        return
    out += _I32.pack(len(row))
    for v in row:
        if v is None:
            out += _I32.pack(-1)
        else:
            out += _I32.pack(len(v))
            out += v


def _get_row(buf: bytes, pos: int) -> tuple[Row | None, int]:
    (n,) = _I32.unpack_from(buf, pos)
    pos += 4
    if n < 0:
        return None, pos
    values: list[bytes | None] = []
    for _ in range(n):
        (length,) = _I32.unpack_from(buf, pos)
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(bytes(buf[pos : pos + length]))
            pos += length
    return tuple(values), pos


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def encode_relation(rel: RelationDef) -> bytes:
    out = bytearray((KIND_RELATION,))
    out += _U32.pack(rel.relid)
    _put_str(out, rel.schema)
    _put_str(out, rel.name)
    out += _STR.pack(len(rel.columns))
    for c in rel.columns:
        _put_str(out, c.name)
        _put_str(out, c.type_name)
        out += struct.pack("!IBB", c.type_oid, c.primary_key, c.nullable)
    return bytes(out)


def encode_transaction(tx: Transaction) -> bytes:
    out = bytearray()
    kind = KIND_TRANSACTION if tx.write is None else KIND_TAGGED_TRANSACTION
    out += _TX.pack(kind, tx.lsn, tx.end_lsn, tx.commit_ts_ms, tx.xid, len(tx.changes))
    _put_str(out, tx.origin or "")
    for ch in tx.changes:
        out += ch.op.encode()
        out += _U32.pack(ch.relation.relid)
        _put_row(out, ch.new)
        _put_row(out, ch.old)
    if tx.write is not None:
        raw = tx.write.to_json().encode()
        out += _U32.pack(len(raw))
        out += raw
    if tx.migrations:
        # an optional trailer (logs written before migrations existed simply end before it)
        raw = ("[" + ",".join(m.to_json() for m in tx.migrations) + "]").encode()
        out += _MIGRATIONS_TRAILER
        out += _U32.pack(len(raw))
        out += raw
    return bytes(out)


def decode(payload: bytes, relations: dict[int, RelationDef]) -> RelationDef | Transaction:
    """Decode one payload; relation records are also added to ``relations``."""
    kind = payload[0]
    if kind == KIND_RELATION:
        (relid,) = _U32.unpack_from(payload, 1)
        schema, pos = _get_str(payload, 5)
        name, pos = _get_str(payload, pos)
        (ncols,) = _STR.unpack_from(payload, pos)
        pos += 2
        cols = []
        for _ in range(ncols):
            cname, pos = _get_str(payload, pos)
            tname, pos = _get_str(payload, pos)
            oid, pk, nullable = struct.unpack_from("!IBB", payload, pos)
            pos += 6
            cols.append(Column(cname, oid, tname, bool(pk), bool(nullable)))
        rel = canonical(RelationDef(relid, schema, name, tuple(cols)))
        relations[relid] = rel
        return rel
    if kind in (KIND_TRANSACTION, KIND_TAGGED_TRANSACTION):
        _, lsn, end_lsn, ts, xid, n = _TX.unpack_from(payload, 0)
        origin, pos = _get_str(payload, _TX.size)
        changes = []
        for _ in range(n):
            op = chr(payload[pos])
            (relid,) = _U32.unpack_from(payload, pos + 1)
            new, pos = _get_row(payload, pos + 5)
            old, pos = _get_row(payload, pos)
            changes.append(Change(op, relations[relid], new, old))
        write = None
        if kind == KIND_TAGGED_TRANSACTION:
            (size,) = _U32.unpack_from(payload, pos)
            write = ClientWrite.from_json(payload[pos + 4 : pos + 4 + size])
            pos += 4 + size
        migrations: tuple[Migration, ...] = ()
        if payload[pos : pos + 1] == _MIGRATIONS_TRAILER:
            (size,) = _U32.unpack_from(payload, pos + 1)
            raw = payload[pos + 5 : pos + 5 + size]
            migrations = tuple(Migration.from_dict(m) for m in json.loads(raw))
        return Transaction(lsn, end_lsn, xid, ts, origin or None, tuple(changes), write, migrations)
    raise CorruptRecord(f"unknown record kind {kind}")


def iter_file(path: Path, start: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """:func:`iter_records` over a file, read as it goes (a file that shrinks meanwhile just ends)."""
    with open(path, "rb", buffering=1 << 20) as fh:
        fh.seek(start)
        pos = start
        while True:
            head = fh.read(HEADER.size)
            if len(head) < HEADER.size:
                return
            length, crc = HEADER.unpack(head)
            payload = fh.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                return
            yield pos, pos + HEADER.size + length, payload
            pos += HEADER.size + length


def iter_records(buf: bytes | memoryview, start: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(offset, next_offset, payload)`` for each intact record; stop at the first torn one."""
    pos = start
    end = len(buf)
    while pos + HEADER.size <= end:
        length, crc = HEADER.unpack_from(buf, pos)
        body_start = pos + HEADER.size
        if body_start + length > end:
            return
        payload = bytes(buf[body_start : body_start + length])
        if zlib.crc32(payload) != crc:
            return
        yield pos, body_start + length, payload
        pos = body_start + length
