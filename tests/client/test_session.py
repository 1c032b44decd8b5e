"""The client's protocol decisions (ClientSession) and its wire conversions, without network or Postgres."""

from __future__ import annotations

import pytest

from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl.client import session as s
from electricctl.client.oplog import LocalTransaction, OplogEntry
from electricctl.client.schema import Column, Table
from electricctl.client.wire import (
    client_lsn,
    decode_change,
    encode_row,
    relation_message,
    subscription_refusal,
    table_from_relation,
    transaction_oplog,
)
from electricctl.errors import SyncError

ITEMS = Table(
    "items",
    (
        Column("id", "text", True, False),
        Column("n", "int8", False, True),
        Column("flag", "bool", False, True),
        Column("data", "bytea", False, True),
        Column("price", "float8", False, True),
    ),
)
ERR = pb.SatInStartReplicationResp.ReplicationError


def new_session(window: int = 10) -> s.ClientSession:
    session = s.ClientSession("me", clock=lambda: 1000.0)
    session.connection_made()
    session.start_request("", [])
    assert session.started(pb.SatInStartReplicationResp(unacked_window_size=window)) is s.Start.STARTED
    assert session.receive(relation_message(ITEMS, 7)) == [s.EnsureTable(ITEMS)]
    return session


def insert(key: str, n: int) -> pb.SatTransOp:
    return pb.SatTransOp(insert=pb.SatOpInsert(relation_id=7, row_data=encode_row(ITEMS, {"id": key, "n": n})))


def transaction(lsn: bytes, xid: int, *ops: pb.SatTransOp, origin: str = "") -> pb.SatOpLog:
    begin = pb.SatOpBegin(commit_timestamp=5, lsn=lsn, transaction_id=xid, origin=origin)
    return pb.SatOpLog(ops=[pb.SatTransOp(begin=begin), *ops, pb.SatTransOp(commit=pb.SatOpCommit())])


def test_start_resumes_with_the_subscriptions_and_resets_when_the_server_cannot_resume() -> None:
    session = s.ClientSession("me")
    session.connection_made()
    req = session.start_request("0/42", ["sub-1"])
    assert req.lsn == b"0/42" and list(req.subscription_ids) == ["sub-1"]
    for code in (ERR.BEHIND_WINDOW, ERR.INVALID_POSITION, ERR.SUBSCRIPTION_NOT_FOUND):
        session.connection_made()
        session.start_request("0/42", ["sub-1"])
        refused = pb.SatInStartReplicationResp(err=ERR(code=code, message="gone"))
        assert session.started(refused) is s.Start.RESET
        fresh = session.start_request("", [])
        assert fresh.lsn == b"" and not fresh.subscription_ids
        assert session.started(pb.SatInStartReplicationResp(unacked_window_size=12)) is s.Start.STARTED
        assert session.window == 12
    # any other refusal of a resume is an error; a fresh start is retried once, then an error
    session.connection_made()
    session.start_request("0/42", [])
    with pytest.raises(SyncError, match="refused to resume: nope"):
        session.started(pb.SatInStartReplicationResp(err=ERR(code=ERR.CODE_UNSPECIFIED, message="nope")))
    session.connection_made()
    session.start_request("", [])
    assert session.started(pb.SatInStartReplicationResp(err=ERR(code=ERR.MALFORMED_LSN))) is s.Start.RESET
    session.start_request("", [])
    with pytest.raises(SyncError, match="refused replication"):
        session.started(pb.SatInStartReplicationResp(err=ERR(code=ERR.MALFORMED_LSN)))


def test_subscription_data_is_applied_part_by_part_in_one_local_transaction_then_acked() -> None:
    session = new_session()
    assert session.receive(pb.SatSubsDataBegin(subscription_id="sub", lsn=b"0/9")) == []
    first, progress = session.receive(pb.SatOpLog(ops=[insert("a", 1), insert("b", 2)]))
    # each part as it arrives, the local transaction held open for the rest
    assert isinstance(first, s.Apply) and first.hold and not first.transaction and first.lsn is None
    assert [c.values["id"] for c in first.changes()] == ["a", "b"]
    assert progress == s.Progress("sub", 2)
    second, progress = session.receive(pb.SatOpLog(ops=[insert("c", 3)]))
    assert isinstance(second, s.Apply) and second.hold and [c.values["id"] for c in second.changes()] == ["c"]
    assert progress == s.Progress("sub", 3)
    # the end commits it, with the subscription's position; then it is synced, then acked
    effects = session.receive(pb.SatSubsDataEnd())
    end, delivered, ack = effects
    assert isinstance(end, s.Apply) and end.lsn == "0/9" and not end.hold and not end.transaction
    assert end.changes() == []
    assert delivered == s.Delivered("sub")
    assert isinstance(ack, s.Send) and ack.message == pb.SatOpLogAck(lsn=b"0/9", subscription_ids=["sub"])
    # an error instead of the data: nothing was applied, so there is nothing to abandon
    session.receive(pb.SatSubsDataBegin(subscription_id="bad"))
    assert session.receive(pb.SatSubsDataError(subscription_id="bad", message="no")) == [s.DeliveryFailed("bad", "no")]
    # an error after some rows: the held local transaction is abandoned
    session.receive(pb.SatSubsDataBegin(subscription_id="half"))
    session.receive(pb.SatOpLog(ops=[insert("d", 4)]))
    failed = session.receive(pb.SatSubsDataError(subscription_id="half", message="cut"))
    assert failed == [s.Abandon(), s.DeliveryFailed("half", "cut")]


def test_a_backlog_is_acked_as_it_is_written_a_client_that_keeps_up_is_not() -> None:
    session = new_session(window=30)  # eager acks from 10 unacked; the usual one at 21
    for i in range(1, 4):
        session.receive(transaction(str(i).encode(), i, insert("a", i)))
    assert session.applied("3") == []  # keeping up: no ack per transaction (the timer acks)
    for i in range(4, 16):
        session.receive(transaction(str(i).encode(), i, insert("a", i)))
    # 15 received, the driver wrote up to 12: acked at once, up to what is written, never beyond
    (ack,) = session.applied("12")
    assert isinstance(ack, s.Send) and ack.message == pb.SatOpLogAck(
        ack_timestamp=1_000_000, lsn=b"12", transaction_id=12
    )
    assert session.unacked == 3
    assert session.applied("12") == []  # nothing more written
    for i in range(16, 26):
        session.receive(transaction(str(i).encode(), i, insert("a", i)))
    (ack,) = session.applied("25")
    assert isinstance(ack, s.Send) and ack.message.lsn == b"25"  # type: ignore[attr-defined]
    assert session.unacked == 0 and session.ack_due() == []


def test_a_part_keeps_the_relations_it_arrived_under() -> None:
    session = new_session()
    session.receive(pb.SatSubsDataBegin(subscription_id="sub", lsn=b"0/9"))
    part = session.receive(pb.SatOpLog(ops=[insert("a", 1)]))[0]
    wider = relation_message(Table("items", (*ITEMS.columns, Column("qty", "int4", False, True))), 7)
    session.receive(wider)  # the same relation id, now with another column
    assert isinstance(part, s.Apply) and [list(c.values) for c in part.changes()] == [
        ["id", "n", "flag", "data", "price"]
    ]


def test_unsubscribe_data_removes_rows_then_acks_the_gone_subscriptions() -> None:
    session = new_session()
    assert session.receive(pb.SatUnsubsDataBegin(subscription_ids=["old"])) == []
    gone = pb.SatTransOp(gone=pb.SatOpGone(relation_id=7, pk_data=encode_row(ITEMS, {"id": "a"})))
    (part,) = session.receive(pb.SatOpLog(ops=[gone]))
    assert (
        isinstance(part, s.Apply)
        and part.hold
        and [(c.kind, c.values["id"]) for c in part.changes()] == [("gone", "a")]
    )
    end, ack = session.receive(pb.SatUnsubsDataEnd())
    assert isinstance(end, s.Apply) and not end.hold and end.changes() == []
    assert isinstance(ack, s.Send) and list(ack.message.gone_subscription_ids) == ["old"]  # type: ignore[attr-defined]


def test_additional_data_is_written_like_subscription_data_and_acked_by_its_reference() -> None:
    session = new_session()
    moved_in = transaction(b"9", 3, insert("p", 1))
    moved_in.ops[0].begin.additional_data_ref = 4
    session.receive(moved_in)
    data = pb.SatOpLog(
        ops=[
            pb.SatTransOp(additional_begin=pb.SatOpAdditionalBegin(ref=4)),
            insert("child-1", 2),
            insert("child-2", 3),
            pb.SatTransOp(additional_commit=pb.SatOpAdditionalCommit(ref=4)),
        ]
    )
    apply, ack = session.receive(data)
    assert isinstance(apply, s.Apply) and not apply.transaction and not apply.hold
    assert [c.values["id"] for c in apply.changes()] == ["child-1", "child-2"]
    assert isinstance(ack, s.Send)
    assert list(ack.message.additional_data_source_ids) == [4] and ack.message.lsn == b"9"  # type: ignore[attr-defined]


def test_transactions_are_acked_at_70_percent_of_the_window_or_after_a_delay() -> None:
    session = new_session(window=10)  # ack every 7 transactions
    first = session.receive(transaction(b"1", 1, insert("a", 1), origin="other"))
    apply = first[0]
    assert isinstance(apply, s.Apply) and apply.transaction and apply.origin == "other" and apply.lsn == "1"
    assert first[1:] == [s.AckLater(0.2)]
    for i in range(2, 7):
        assert len(session.receive(transaction(str(i).encode(), i, insert("a", i)))) == 1  # no ack, timer armed
    seventh = session.receive(transaction(b"7", 7, insert("a", 7)))
    ack = seventh[-1]
    assert isinstance(ack, s.Send)
    assert ack.message == pb.SatOpLogAck(ack_timestamp=1_000_000, lsn=b"7", transaction_id=7)
    assert session.ack_due() == []  # the timer finds nothing left to ack
    assert session.receive(transaction(b"8", 8))[1:] == [s.AckLater(0.2)]
    assert session.ack_due() == [s.Send(pb.SatOpLogAck(ack_timestamp=1_000_000, lsn=b"8", transaction_id=8))]


def test_refused_transactions_and_server_errors() -> None:
    session = new_session()
    assert session.receive(pb.SatErrorResp(lsn=b"\x00\x00\x00\x05", message="denied")) == [s.Refused("denied")]
    with pytest.raises(SyncError, match="server error"):
        session.receive(pb.SatErrorResp(error_type=pb.SatErrorResp.INTERNAL, message="boom"))


def test_the_server_says_where_to_send_from_and_relations_are_sent_once_per_connection() -> None:
    session = new_session()
    assert session.outbound is None
    start = pb.SatInStartReplicationReq(lsn=client_lsn(3))
    req = pb.SatRpcRequest(method="startReplication", request_id=0, message=start.SerializeToString())
    reply, wake = session.receive(req)
    assert isinstance(reply, s.Send) and wake == s.WakeSender() and session.outbound == 3
    entry = OplogEntry(4, "items", "INSERT", '{"id":"x"}', {"id": "x", "n": 1}, None, 77, ["1@me"])
    tx = LocalTransaction(77, [entry])
    first = session.outgoing(tx, {"items": ITEMS})
    assert [type(m).__name__ for m in first] == ["SatRelation", "SatOpLog"] and session.outbound == 4
    assert [type(m).__name__ for m in session.outgoing(tx, {"items": ITEMS})] == ["SatOpLog"]
    session.connection_made()  # a new connection: the server knows no relation of ours yet
    assert session.outbound is None
    assert [type(m).__name__ for m in session.outgoing(tx, {"items": ITEMS})] == ["SatRelation", "SatOpLog"]
    # a column added since (a migration): a write that knows it goes under a new, wider relation;
    # a write made before it still goes under the one without it
    session.connection_made()
    session.receive(req)
    wider = Table("items", (*ITEMS.columns, Column("qty", "int4", False, True)))
    row = {"id": "x", "n": 1, "flag": 1, "data": None, "price": None}
    before = OplogEntry(5, "items", "INSERT", '{"id":"x"}', row, None, 78, [])
    after = OplogEntry(6, "items", "INSERT", '{"id":"y"}', {**row, "id": "y", "qty": 3}, None, 78, [])
    out = session.outgoing(LocalTransaction(78, [before, after]), {"items": wider})
    assert [type(m).__name__ for m in out] == ["SatRelation", "SatRelation", "SatOpLog"]
    narrow, wide, oplog = out
    assert isinstance(narrow, pb.SatRelation) and isinstance(wide, pb.SatRelation) and isinstance(oplog, pb.SatOpLog)
    assert [c.name for c in narrow.columns] == [c.name for c in ITEMS.columns]
    assert [c.name for c in wide.columns] == [c.name for c in wider.columns]
    assert [op.insert.relation_id for op in oplog.ops[1:-1]] == [narrow.relation_id, wide.relation_id]
    stop = pb.SatRpcRequest(method="stopReplication", request_id=1, message=b"")
    assert len(session.receive(stop)) == 1 and session.outbound is None


def test_wire_round_trips_values_and_builds_one_oplog_per_transaction() -> None:
    assert table_from_relation(relation_message(ITEMS, 1)) == ITEMS
    row = {"id": "k", "n": 2**40, "flag": 1, "data": b"\x00\xff", "price": 1.5}
    op = pb.SatTransOp(update=pb.SatOpUpdate(relation_id=1, row_data=encode_row(ITEMS, row), old_row_data=encode_row(ITEMS, {"id": "k"}), tags=["t"]))  # fmt: skip
    change = decode_change(op, {1: ITEMS})
    assert change is not None and change.kind == "update" and change.values == row and change.tags == ["t"]
    assert change.old == {"id": "k", "n": None, "flag": None, "data": None, "price": None}
    assert codec.decode_row(encode_row(ITEMS, row), 5)[2] == b"t"  # bool as Postgres' text form
    assert decode_change(pb.SatTransOp(commit=pb.SatOpCommit()), {}) is None
    entries = [
        OplogEntry(1, "items", "INSERT", "k", row, None, 9, []),
        OplogEntry(2, "items", "UPDATE", "k", row, row, 9, ["a"]),
        OplogEntry(3, "items", "DELETE", "k", None, row, 9, []),
        OplogEntry(2**33, "items", "COMPENSATION", "k", {"id": "k"}, None, 9, []),
    ]
    oplog = transaction_oplog(LocalTransaction(9, entries), {"items": ITEMS}, lambda t: 5)
    kinds = [o.WhichOneof("op") for o in oplog.ops]
    assert kinds == ["begin", "insert", "update", "delete", "compensation", "commit"]
    assert oplog.ops[0].begin.lsn == (2**33).to_bytes(8, "big") and client_lsn(4) == b"\x00\x00\x00\x04"
    refused = pb.SatSubsResp(err=pb.SatSubsResp.SatSubsError(message="whole", shape_request_error=[]))
    assert subscription_refusal(refused) == "whole" and subscription_refusal(pb.SatSubsResp()) is None


def test_schema_version_is_sent_when_starting_afresh_and_not_when_resuming() -> None:
    session = s.ClientSession("me")
    session.connection_made()
    fresh = session.start_request("", ["ignored"], "20261130000000000")
    assert fresh.schema_version == "20261130000000000" and not fresh.lsn and not fresh.subscription_ids
    resumed = session.start_request("AAAB", ["sub"], "20261130000000000")
    assert resumed.schema_version == "" and resumed.lsn == b"AAAB" and list(resumed.subscription_ids) == ["sub"]


def test_a_migration_transaction_is_applied_before_its_position_is_stored() -> None:
    session = new_session()
    table = pb.SatOpMigrate.Table(
        name="items",
        columns=[
            pb.SatOpMigrate.Column(name="id", sqlite_type="TEXT", pg_type=pb.SatOpMigrate.PgColumnType(name="text")),
            pb.SatOpMigrate.Column(
                name="qty", sqlite_type="INTEGER", pg_type=pb.SatOpMigrate.PgColumnType(name="int4")
            ),
        ],
        pks=["id"],
    )
    migrate = pb.SatOpMigrate(
        version="20261130000000001",
        stmts=[
            pb.SatOpMigrate.Stmt(
                type=pb.SatOpMigrate.ALTER_ADD_COLUMN, sql='ALTER TABLE "items" ADD COLUMN "qty" INTEGER;\n'
            )
        ],
        table=table,
    )
    lsn = codec.encode_server_lsn(42)
    msg = pb.SatOpLog(
        ops=[
            pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=5, lsn=lsn, is_migration=True)),
            pb.SatTransOp(migrate=migrate),
            pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=5, lsn=lsn)),
        ]
    )
    effects = session.receive(msg)
    assert effects[0] == s.Migrate(
        "20261130000000001",
        (Table("items", (Column("id", "text", True, False), Column("qty", "int4", False, True))),),
    )
    apply = effects[1]
    assert isinstance(apply, s.Apply)
    # no rows, not reported to on_change as a transaction, but its position is stored after it
    assert apply.changes() == [] and apply.transaction is False and apply.lsn == lsn.decode()
