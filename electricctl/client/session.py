"""The client side of the Satellite protocol as pure steps: no network, no database, no clock of its own.

:class:`ClientSession` decides what the client sends and what it must do, and
:class:`~electricctl.client.sync.SyncClient` (the driver) does it: the driver feeds every message
it receives to :meth:`ClientSession.receive` and carries out the returned effects in order
(sending frames, applying changes to the store, waking the sender, arming the ack timer).

The decisions made here:

* after authenticating, ``startReplication`` from the stored position (with the subscription ids
  when resuming); a refusal with BEHIND_WINDOW, INVALID_POSITION or SUBSCRIPTION_NOT_FOUND (or any
  refusal of a fresh start) means: forget the synced rows and start afresh, once;
* subscription data (begin, rows, end or error) is applied part by part as it arrives, in one
  local transaction that its end commits (then acked) and an error abandons; so is the data of
  an unsubscribe (GONE rows);
* each server transaction is applied, then acked once 70% of the server's window is unacked, or
  0.2 s after the first unacked one; while a backlog streams in, as soon as it is written;
* an error reply naming a transaction is a refused local transaction (its echo puts the rows
  back); any other error ends the connection;
* the server's ``startReplication`` call tells from which local position to send.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import Message

from electricctl._protocol import satellite_pb2 as pb
from electricctl._protocol.rpc import client_answer
from electricctl.client.oplog import LocalTransaction
from electricctl.client.schema import Table
from electricctl.client.values import RemoteChange, RowBatch
from electricctl.client.wire import (
    Shape,
    decode_changes,
    decode_data,
    decode_transaction,
    relation_message,
    subscription_request,
    table_from_migration,
    table_from_relation,
    transaction_oplog,
)
from electricctl.errors import SyncError

ACK_FRACTION = 0.7
"""Ack once this fraction of the server's unacked window is used..."""
ACK_DELAY = 0.2
"""...or this many seconds after the first unacked transaction."""
EAGER_ACK_FRACTION = 1 / 3
"""While this fraction of the window is unacked, each run of written transactions is acked at once."""
DEFAULT_WINDOW = 30

_ERR = pb.SatInStartReplicationResp.ReplicationError
RESET_CODES = frozenset({_ERR.BEHIND_WINDOW, _ERR.INVALID_POSITION, _ERR.SUBSCRIPTION_NOT_FOUND})
_ROW_OPS = frozenset({"insert", "update", "delete", "gone"})


# -- effects: what the driver is to do, in order ------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    """Send this message."""

    message: Message


@dataclass(frozen=True, slots=True)
class Resolve:
    """Hand this response to the RPC call waiting for it."""

    response: pb.SatRpcResponse


@dataclass(frozen=True, slots=True)
class EnsureTable:
    """Create the table locally (and its triggers) if it is not there as described."""

    table: Table


@dataclass(frozen=True, slots=True)
class Migrate:
    """Apply a schema migration (create the tables, or add the columns) and record its version."""

    version: str
    tables: tuple[Table, ...]
    """Each affected table as it is after the migration (every column)."""
    statements: tuple[str, ...] = ()
    """Statements for the local database alone (electric.yaml's ``sqlite`` section), run as they are."""


@dataclass(frozen=True, slots=True)
class Apply:
    """Apply these server operations in one local transaction (stamping pending local writes first).

    The operations stay as they came: the driver decodes them (:meth:`changes`) off the event loop,
    on the thread that writes them.
    """

    ops: Sequence[pb.SatTransOp]
    relations: Mapping[int, Table]
    """The relations as they were when the operations arrived (a later relation message does not change it)."""
    origin: str | None
    timestamp: int | None
    lsn: str | None
    """The server position to store with them (None: keep the stored one)."""
    transaction: bool
    """A live server transaction (report it to ``on_change``), not subscription data."""
    hold: bool = False
    """Part of subscription data that is still arriving: leave the local transaction open for the
    rest; the part without ``hold`` commits it (a subscription's rows land together, or not at all)."""

    def changes(self) -> list[RemoteChange]:
        """The row changes the operations carry (begin, commit and migrations carry none)."""
        return decode_changes(self.ops, self.relations)

    def decode(self) -> tuple[list[RowBatch], list[RemoteChange]]:
        """The rows to write in bulk, and the changes to merge one by one: subscription data's
        inserts are written in bulk, and so is a transaction that only inserts into one table."""
        if self.transaction:
            return decode_transaction(self.ops, self.relations)
        return decode_data(self.ops, self.relations)


@dataclass(frozen=True, slots=True)
class Abandon:
    """Roll back the local transaction held open for subscription data: not all of it will come."""


@dataclass(frozen=True, slots=True)
class Delivered:
    """A subscription's initial data is applied: it is synced (and to be remembered)."""

    subscription_id: str


@dataclass(frozen=True, slots=True)
class DeliveryFailed:
    """The server could not deliver a subscription's data; it is dropped."""

    subscription_id: str
    message: str


@dataclass(frozen=True, slots=True)
class Progress:
    """Rows of a subscription's initial data received so far."""

    subscription_id: str
    rows: int


@dataclass(frozen=True, slots=True)
class Refused:
    """The server refused one of this client's transactions (its echo reverts the rows)."""

    message: str


@dataclass(frozen=True, slots=True)
class WakeSender:
    """The position to send from changed: look for local transactions to send now."""


@dataclass(frozen=True, slots=True)
class AckLater:
    """Call :meth:`ClientSession.ack_due` after ``delay`` seconds."""

    delay: float


Effect = (
    Send
    | Resolve
    | EnsureTable
    | Migrate
    | Apply
    | Abandon
    | Delivered
    | DeliveryFailed
    | Progress
    | Refused
    | WakeSender
    | AckLater
)


class Start(enum.Enum):
    """What to do with the answer to ``startReplication``."""

    STARTED = "started"
    RESET = "reset"
    """Forget the synced rows of every subscription, then ask again from scratch (no position)."""


@dataclass(slots=True)
class _Batch:
    """Subscription or unsubscribe data being received (its rows are applied part by part)."""

    subscription: str | None = None
    lsn: str = ""
    gone: list[str] = field(default_factory=list)
    rows: int = 0
    started: bool = False
    """A part was handed to the driver: the local transaction it opened is to be committed or abandoned."""


class ClientSession:
    """The protocol state of one client, across its connections (:meth:`connection_made` starts one)."""

    def __init__(self, client_id: str, *, clock: Callable[[], float] = time.time) -> None:
        self.client_id = client_id
        self._clock = clock
        self.window = DEFAULT_WINDOW
        """How many server transactions may be unacked (the server says, in startReplication's reply)."""
        self.outbound: int | None = None
        """The local position after which to send (None: the server has not asked, or has stopped)."""
        self.last_lsn = b""
        self.last_xid = 0
        self._unacked: deque[tuple[bytes, int]] = deque()
        """Live transactions received and not yet acked: (LSN, xid), in order."""
        self._ack_armed = False
        self._relations: Mapping[int, Table] = {}
        """Replaced, never changed in place: an :class:`Apply` keeps the one its operations need."""
        self._sent_relations: dict[tuple[str, tuple[str, ...]], int] = {}
        self._incoming: _Batch | None = None
        self._unsubs: _Batch | None = None
        self._start_lsn = ""
        self._start_retried = False

    def connection_made(self) -> None:
        """A new connection: what the last one had sent or half received is forgotten."""
        self._sent_relations = {}
        self.outbound = None
        self._incoming = None
        self._unsubs = None
        self._ack_armed = False
        self._start_retried = False

    # -- handshake -------------------------------------------------------------------------------
    def auth_request(self, token: str) -> pb.SatAuthReq:
        return pb.SatAuthReq(id=self.client_id, token=token)

    def start_request(
        self, lsn: str, subscription_ids: Sequence[str], schema_version: str = ""
    ) -> pb.SatInStartReplicationReq:
        """Resume from ``lsn`` with the subscriptions held there, or start afresh if there is none.

        Starting afresh, the client says which schema version it has: the server sends every
        migration after it first. Resuming, it does not (as the npm client): the migrations after
        ``lsn`` come in the stream, in their place.
        """
        self._start_lsn = lsn
        if lsn:
            return pb.SatInStartReplicationReq(lsn=lsn.encode(), subscription_ids=list(subscription_ids))
        return pb.SatInStartReplicationReq(schema_version=schema_version)

    def started(self, resp: pb.SatInStartReplicationResp) -> Start:
        """The answer to :meth:`start_request`. Raises :class:`SyncError` if the server will not start us."""
        if resp.HasField("err"):
            if self._start_retried:
                raise SyncError(f"the server refused replication: {resp.err.message}")
            if resp.err.code not in RESET_CODES and self._start_lsn:
                raise SyncError(f"the server refused to resume: {resp.err.message}")
            self._start_retried = True
            return Start.RESET
        if resp.HasField("unacked_window_size") and resp.unacked_window_size:
            self.window = resp.unacked_window_size
        return Start.STARTED

    def subscription_requests(self, pending: Mapping[str, Sequence[Shape]]) -> list[pb.SatSubsReq]:
        """Requests for the subscriptions made while offline (or not yet delivered), once started."""
        return [subscription_request(sub_id, shapes) for sub_id, shapes in pending.items()]

    # -- inbound ---------------------------------------------------------------------------------
    def receive(self, msg: Message) -> list[Effect]:
        """What to do about one message from the server. Raises :class:`SyncError` for a fatal error."""
        if isinstance(msg, pb.SatRpcResponse):
            return [Resolve(msg)]
        if isinstance(msg, pb.SatRpcRequest):
            response, lsn = client_answer(msg)
            if lsn is None:
                self.outbound = None  # stopped: keep the writes until the server asks again
                return [Send(response)]
            self.outbound = int.from_bytes(lsn, "big")  # send what comes after this (empty: everything)
            return [Send(response), WakeSender()]
        if isinstance(msg, pb.SatRelation):
            table = table_from_relation(msg)
            self._relations = {**self._relations, msg.relation_id: table}
            return [EnsureTable(table)]
        if isinstance(msg, pb.SatSubsDataBegin):
            self._incoming = _Batch(msg.subscription_id, lsn=msg.lsn.decode())
            return []
        if isinstance(msg, pb.SatSubsDataEnd):
            return self._subscription_delivered()
        if isinstance(msg, pb.SatSubsDataError):
            incoming, self._incoming = self._incoming, None
            failed = DeliveryFailed(msg.subscription_id, msg.message or "the server could not deliver the subscription")
            return [Abandon(), failed] if incoming is not None and incoming.started else [failed]
        if isinstance(msg, pb.SatUnsubsDataBegin):
            self._unsubs = _Batch(gone=list(msg.subscription_ids))
            return []
        if isinstance(msg, pb.SatUnsubsDataEnd):
            batch, self._unsubs = self._unsubs or _Batch(), None
            ack = pb.SatOpLogAck(lsn=self.last_lsn, gone_subscription_ids=batch.gone)
            return [Apply((), self._relations, None, None, None, transaction=False), Send(ack)]
        if isinstance(msg, pb.SatOpLog):
            return self._oplog(msg)
        if isinstance(msg, pb.SatErrorResp):
            if msg.lsn:
                return [Refused(msg.message)]
            raise SyncError(f"server error: {pb.SatErrorResp.ErrorCode.Name(msg.error_type)} {msg.message}")
        return []

    def _oplog(self, msg: pb.SatOpLog) -> list[Effect]:
        if msg.ops and msg.ops[0].HasField("additional_begin"):
            # rows a transaction brought into an include tree (Electric's move-in), read by the
            # server once we were at its point: written like subscription data, then acked
            ref = msg.ops[0].additional_begin.ref
            data = [op for op in msg.ops[1:] if not op.HasField("additional_commit")]
            ack = pb.SatOpLogAck(lsn=self.last_lsn, additional_data_source_ids=[ref])
            return [Apply(data, self._relations, None, None, None, transaction=False), Send(ack)]
        batch = self._incoming if self._incoming is not None else self._unsubs
        if batch is not None:
            batch.started = True
            part = Apply(msg.ops, self._relations, None, None, None, transaction=False, hold=True)
            if batch.subscription is None:
                return [part]
            batch.rows += len(msg.ops)
            return [part, Progress(batch.subscription, batch.rows)]
        begin = msg.ops[0].begin
        out: list[Effect] = []
        migrations = [op.migrate for op in msg.ops if op.HasField("migrate")]
        if migrations:
            tables: list[Table] = []
            statements: list[str] = []
            for m in migrations:
                if m.HasField("table") and m.table.name:
                    tables.append(table_from_migration(m.table))
                else:  # a statement for the local database alone (electric.yaml's sqlite section)
                    statements.extend(st.sql for st in m.stmts if st.sql.strip())
            out.append(Migrate(migrations[0].version, tuple(tables), tuple(statements)))
        ops = msg.ops[1:-1]
        rows = not migrations or any(op.WhichOneof("op") in _ROW_OPS for op in ops)
        out.append(Apply(ops, self._relations, begin.origin or None, begin.commit_timestamp, begin.lsn.decode(), rows))
        self.last_lsn = begin.lsn
        self.last_xid = begin.transaction_id
        self._unacked.append((begin.lsn, begin.transaction_id))
        if self.unacked >= max(1, int(self.window * ACK_FRACTION)):
            out.append(Send(self._ack()))
        elif not self._ack_armed:
            self._ack_armed = True
            out.append(AckLater(ACK_DELAY))
        return out

    def _subscription_delivered(self) -> list[Effect]:
        incoming, self._incoming = self._incoming, None
        if incoming is None or incoming.subscription is None:
            return []
        if incoming.lsn:
            self.last_lsn = incoming.lsn.encode()
        return [
            Apply((), self._relations, None, None, incoming.lsn or None, transaction=False),
            Delivered(incoming.subscription),
            Send(pb.SatOpLogAck(lsn=self.last_lsn, subscription_ids=[incoming.subscription])),
        ]

    @property
    def unacked(self) -> int:
        """Live transactions received and not yet acked."""
        return len(self._unacked)

    def ack_due(self) -> list[Effect]:
        """The ack timer fired: ack what is still unacked."""
        self._ack_armed = False
        return [Send(self._ack())] if self.unacked else []

    def applied(self, lsn: str) -> list[Effect]:
        """The driver has written the live transactions up to ``lsn``.

        While a backlog streams in (a third of the server's window or more is unacked), they are
        acked at once: the server, which stops at a full window, keeps sending while the client
        writes. A client that keeps up acks as the npm client does (70% of the window, or after
        the delay), without an ack per transaction.
        """
        if self.unacked < max(1, int(self.window * EAGER_ACK_FRACTION)):
            return []
        upto = int(lsn)
        done: tuple[bytes, int] | None = None
        while self._unacked and int(self._unacked[0][0]) <= upto:
            done = self._unacked.popleft()
        if done is None:
            return []
        return [Send(pb.SatOpLogAck(ack_timestamp=int(self._clock() * 1000), lsn=done[0], transaction_id=done[1]))]

    def _ack(self) -> pb.SatOpLogAck:
        self._unacked.clear()
        return pb.SatOpLogAck(ack_timestamp=int(self._clock() * 1000), lsn=self.last_lsn, transaction_id=self.last_xid)

    # -- outbound --------------------------------------------------------------------------------
    def outgoing(self, tx: LocalTransaction, tables: Mapping[str, Table]) -> list[Message]:
        """The messages that send ``tx``: the relations not yet sent on this connection, then the
        transaction. The position to send from moves past it."""
        out: list[Message] = []

        def relation_id(table: Table) -> int:
            # one relation id per table and set of columns: a table that gained a column (a migration)
            # is announced again, and writes made before it still go under the narrower relation
            key = (table.name, tuple(c.name for c in table.columns))
            rel_id = self._sent_relations.get(key)
            if rel_id is None:
                rel_id = self._sent_relations[key] = len(self._sent_relations) + 1
                out.append(relation_message(table, rel_id))
            return rel_id

        oplog = transaction_oplog(tx, tables, relation_id)
        out.append(oplog)
        self.outbound = tx.lsn
        return out
