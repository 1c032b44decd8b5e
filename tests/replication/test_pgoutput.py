"""The pgoutput decoder on hand-built messages, and the transaction builder."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from electricctl._model.rows import Column, RelationDef
from electricctl._model.wire import ORIGIN_PREFIX
from electricctl._replication import lsn
from electricctl._replication import pgoutput as po
from electricctl._replication.txbuilder import TxBuilder


def tup(*values: bytes | str | None) -> bytes:
    out = struct.pack("!h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v == "u":
            out += b"u"
        else:
            assert isinstance(v, bytes)
            out += b"t" + struct.pack("!i", len(v)) + v
    return out


REL = (
    b"R"
    + struct.pack("!I", 7)
    + b"public\0items\0"
    + b"f"
    + struct.pack("!h", 2)
    + (b"\x01id\0" + struct.pack("!Ii", 25, -1) + b"\x00big\0" + struct.pack("!Ii", 25, -1))
)


def test_lsn_text() -> None:
    assert lsn.parse("16/B374D848") == 0x16B374D848
    assert lsn.format(0x16B374D848) == "16/B374D848"
    with pytest.raises(ValueError):
        lsn.parse("nope")


def test_decode_each_message_type() -> None:
    begin = po.decode(b"B" + struct.pack("!QqI", 100, 1_000_000, 42))
    assert begin == po.Begin(100, 1_000_000 + po.PG_EPOCH_US, 42)
    rel = po.decode(REL)
    assert isinstance(rel, po.Relation) and rel.schema == "public" and rel.replica_identity == "f"
    assert [(c.name, c.type_oid, c.key) for c in rel.columns] == [("id", 25, True), ("big", 25, False)]
    assert po.decode(b"I" + struct.pack("!I", 7) + b"N" + tup(b"a", None)) == po.Insert(7, (b"a", None))
    upd = po.decode(b"U" + struct.pack("!I", 7) + b"O" + tup(b"a", b"x") + b"N" + tup(b"a", "u"))
    assert upd == po.Update(7, (b"a", b"x"), (b"a", po.UNCHANGED))
    assert po.decode(b"D" + struct.pack("!I", 7) + b"O" + tup(b"a", b"x")) == po.Delete(7, (b"a", b"x"))
    assert po.decode(b"T" + struct.pack("!iBII", 2, 1, 7, 8)) == po.Truncate((7, 8), True, False)
    msg = po.decode(b"M" + struct.pack("!BQ", 1, 5) + b"electric.origin\0" + struct.pack("!I", 3) + b"abc")
    assert msg == po.LogicalMessage(True, 5, "electric.origin", b"abc")
    commit = po.decode(b"C" + struct.pack("!BQQq", 0, 200, 250, 5))
    assert commit == po.Commit(0, 200, 250, 5 + po.PG_EPOCH_US)
    assert po.decode(b"S" + struct.pack("!IB", 9, 1)) == po.StreamStart(9, True)
    assert po.decode(b"A" + struct.pack("!II", 9, 10)) == po.StreamAbort(9, 10)


def test_builder_resolves_toast_and_origin() -> None:
    def resolve(rel: po.Relation) -> RelationDef:
        return RelationDef(
            rel.relid, rel.schema, rel.name, tuple(Column(c.name, c.type_oid, "text", c.key, True) for c in rel.columns)
        )

    b = TxBuilder(resolve)
    assert b.feed(po.decode(b"B" + struct.pack("!QqI", 100, 1000, 42))) is None
    b.feed(po.decode(REL))
    b.feed(po.decode(b"M" + struct.pack("!BQ", 1, 5) + ORIGIN_PREFIX.encode() + b"\0" + struct.pack("!I", 2) + b"c1"))
    b.feed(po.decode(b"U" + struct.pack("!I", 7) + b"O" + tup(b"a", b"huge") + b"N" + tup(b"a", "u")))
    tx = b.feed(po.decode(b"C" + struct.pack("!BQQq", 0, 200, 250, 3_000_000)))
    assert tx is not None and tx.lsn == 200 and tx.end_lsn == 250 and tx.xid == 42 and tx.origin == "c1"
    (change,) = tx.changes
    assert change.op == "U" and change.new == (b"a", b"huge")  # unchanged TOAST filled from the old row


@settings(max_examples=1000, deadline=None)
@given(st.binary(min_size=1, max_size=80))
def test_decoder_rejects_garbage_cleanly(buf: bytes) -> None:
    try:
        po.decode(buf)
    except po.DecodeError:
        pass


def _resolve(rel: po.Relation) -> RelationDef:
    return RelationDef(
        rel.relid, rel.schema, rel.name, tuple(Column(c.name, c.type_oid, "text", c.key, True) for c in rel.columns)
    )


def _streamed(tag: bytes, xid: int, body: bytes) -> po.Message:
    return po.decode(tag + struct.pack("!I", xid) + body, streaming=True)


def test_streamed_transactions_and_subtransaction_aborts() -> None:
    b = TxBuilder(_resolve)
    ins = lambda key: b"N" + tup(key, None)  # noqa: E731
    b.feed(po.decode(b"S" + struct.pack("!IB", 10, 1)))
    assert b.in_stream_block and b.open_transactions
    b.feed(_streamed(b"R", 10, REL[1:]), 10)
    b.feed(_streamed(b"I", 10, struct.pack("!I", 7) + ins(b"kept")), 10)
    b.feed(_streamed(b"I", 11, struct.pack("!I", 7) + ins(b"rolled-back")), 11)
    b.feed(po.decode(b"E"))
    assert not b.in_stream_block and b.open_transactions
    b.feed(po.decode(b"S" + struct.pack("!IB", 10, 0)))
    b.feed(_streamed(b"I", 12, struct.pack("!I", 7) + ins(b"savepoint-kept")), 12)
    b.feed(po.decode(b"E"))
    assert b.feed(po.decode(b"A" + struct.pack("!II", 10, 11))) is None  # ROLLBACK TO SAVEPOINT
    tx = b.feed(po.decode(b"c" + struct.pack("!IBQQq", 10, 0, 500, 550, 7_000_000)))
    assert tx is not None and tx.xid == 10 and tx.lsn == 500
    assert [c.new[0] for c in tx.changes if c.new] == [b"kept", b"savepoint-kept"]
    assert not b.open_transactions

    b.feed(po.decode(b"S" + struct.pack("!IB", 20, 1)))
    b.feed(_streamed(b"I", 20, struct.pack("!I", 7) + ins(b"gone")), 20)
    b.feed(po.decode(b"E"))
    b.feed(po.decode(b"A" + struct.pack("!II", 20, 20)))  # the whole transaction rolled back
    assert not b.open_transactions
