"""A small asyncio Satellite client: speaks the protocol the way electric-sql 0.12 does.

It keeps an in-memory replica (table -> primary key -> row) of what the server sends, acks as the
npm client does, can send hand-made transactions, and exposes every received message: the tests
use it to poke the server. The client library is :class:`electricctl.client.SyncClient`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._protocol.rpc import RpcCalls, RpcError, client_answer

__all__ = ["MAX_FRAME", "ReceivedTx", "Relation", "RpcError", "SatelliteClient"]

MAX_FRAME = 256 << 20


@dataclass
class Relation:
    id: int
    schema: str
    table: str
    columns: list[tuple[str, str, bool]]

    def pk(self, values: Sequence[bytes | None]) -> tuple[bytes | None, ...]:
        return tuple(v for v, c in zip(values, self.columns, strict=True) if c[2])


@dataclass
class ReceivedTx:
    lsn: bytes
    xid: int
    commit_ts: int
    origin: str
    ops: list[pb.SatTransOp]


@dataclass
class SatelliteClient:
    url: str
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    subprotocol: str = "electric.0.12"
    ws: ClientConnection | None = None
    relations: dict[int, Relation] = field(default_factory=dict)
    rows: dict[str, dict[tuple[bytes | None, ...], dict[str, bytes | None]]] = field(default_factory=dict)
    transactions: list[ReceivedTx] = field(default_factory=list)
    additional_data: list[int] = field(default_factory=list)
    """References of the additional data received (rows a transaction brought into a tree)."""
    migrations: list[ReceivedTx] = field(default_factory=list)
    """Migration transactions (``SatOpMigrate`` ops), kept apart from the data in ``transactions``."""
    messages: list[Message] = field(default_factory=list)
    last_lsn: bytes = b""
    subscriptions_done: dict[str, bytes] = field(default_factory=dict)
    window: int = 30
    auto_ack: bool = True
    _rpc: RpcCalls = field(default_factory=lambda: RpcCalls(first_id=1))
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _in_subs: str | None = None
    _in_unsubs: bool = False
    _unacked: int = 0
    _last_xid: int = 0
    closed_with: tuple[int, str] | None = None
    outbound_lsn: bytes | None = None
    """Set when the server has asked this client to stream its writes (from this client LSN)."""
    errors: list[pb.SatErrorResp] = field(default_factory=list)
    """Top-level errors the server sent (refused transactions, for a native client)."""
    headers: dict[str, str] = field(default_factory=dict)
    _sent_relations: set[int] = field(default_factory=set)

    async def connect(self) -> SatelliteClient:
        # one transaction is one frame, however large (the npm client's ws accepts up to 100 MiB)
        self.ws = await connect(
            self.url,
            subprotocols=[self.subprotocol],  # type: ignore[list-item]
            compression=None,
            max_size=MAX_FRAME,
            additional_headers=self.headers or None,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def send(self, msg: Message) -> None:
        assert self.ws is not None
        await self.ws.send(codec.encode(msg))

    async def rpc(self, method: str, body: Message, timeout: float = 10) -> Message:
        return await self._rpc.call(self.send, method, body, timeout)

    async def authenticate(self, token: str) -> pb.SatAuthResp:
        resp = await self.rpc("authenticate", pb.SatAuthReq(id=self.client_id, token=token))
        assert isinstance(resp, pb.SatAuthResp)
        return resp

    async def start(
        self, lsn: bytes = b"", subscription_ids: Sequence[str] = (), schema_version: str = "1"
    ) -> pb.SatInStartReplicationResp:
        resp = await self.rpc(
            "startReplication",
            pb.SatInStartReplicationReq(
                lsn=lsn, subscription_ids=list(subscription_ids), schema_version=schema_version
            ),
        )
        assert isinstance(resp, pb.SatInStartReplicationResp)
        if resp.HasField("unacked_window_size"):
            self.window = resp.unacked_window_size
        return resp

    async def resume(
        self, token: str, subscription_ids: Sequence[str], lsn: bytes | None = None, url: str | None = None
    ) -> tuple[SatelliteClient, pb.SatInStartReplicationResp]:
        """A new connection of this (closed) client: same id, same rows, authenticated once the
        server has let the old connection go, and started from ``lsn`` (the last one it got)."""
        again = SatelliteClient(url or self.url, client_id=self.client_id)
        again.rows = self.rows
        await again.connect()
        for _ in range(50):
            try:
                await again.authenticate(token)
                break
            except RpcError as exc:
                if "another connection uses this client id" not in str(exc):
                    raise
                await asyncio.sleep(0.1)
        return again, await again.start(lsn=self.last_lsn if lsn is None else lsn, subscription_ids=subscription_ids)

    async def subscribe(
        self, *tables: str, subscription_id: str | None = None, wait: bool = True, timeout: float = 20
    ) -> str:
        sub_id = subscription_id or str(uuid.uuid4())
        req = pb.SatSubsReq(
            subscription_id=sub_id,
            shape_requests=[
                pb.SatShapeReq(
                    request_id=f"r{i}", shape_definition=pb.SatShapeDef(selects=[pb.SatShapeDef.Select(tablename=t)])
                )
                for i, t in enumerate(tables)
            ],
        )
        resp = await self.rpc("subscribe", req)
        assert isinstance(resp, pb.SatSubsResp)
        if resp.HasField("err"):
            raise RpcError(pb.SatErrorResp(error_type=pb.SatErrorResp.INVALID_REQUEST, message=str(resp.err)))
        if wait:
            await self.wait_for(lambda: sub_id in self.subscriptions_done, timeout)
        return sub_id

    async def unsubscribe(self, *ids: str) -> None:
        await self.rpc("unsubscribe", pb.SatUnsubsReq(subscription_ids=list(ids)))

    async def wait_for(self, predicate: Any, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("condition not met in time")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def ack(self) -> None:
        await self.send(
            pb.SatOpLogAck(ack_timestamp=int(time.time() * 1000), lsn=self.last_lsn, transaction_id=self._last_xid)
        )
        self._unacked = 0

    async def send_transaction(
        self, relation: pb.SatRelation, ops: Sequence[pb.SatTransOp], lsn: int, commit_ts: int | None = None
    ) -> int:
        """Send one client transaction (announcing ``relation`` first, once); returns its timestamp."""
        if relation.relation_id not in self._sent_relations:
            await self.send(relation)
            self._sent_relations.add(relation.relation_id)
        ts = commit_ts if commit_ts is not None else int(time.time() * 1000)
        begin = pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=ts, lsn=lsn.to_bytes(4, "big")))
        commit = pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=ts))
        await self.send(pb.SatOpLog(ops=[begin, *ops, commit]))
        return ts

    async def _answer(self, req: pb.SatRpcRequest) -> None:
        response, lsn = client_answer(req)
        self.outbound_lsn = lsn
        await self.send(response)

    def table(self, name: str) -> dict[tuple[bytes | None, ...], dict[str, bytes | None]]:
        return self.rows.setdefault(name, {})

    # -- receiving ---------------------------------------------------------------------------
    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for frame in self.ws:
                assert isinstance(frame, bytes)
                msg = codec.decode(frame)
                self.messages.append(msg)
                await self._on(msg)
                self._changed.set()
        except ConnectionClosed:
            pass  # the close code and reason are kept in closed_with
        finally:
            if self.ws.close_code is not None:
                self.closed_with = (self.ws.close_code, self.ws.close_reason or "")
            self._changed.set()

    def _apply(self, op: pb.SatTransOp) -> None:
        kind = op.WhichOneof("op")
        body = getattr(op, kind)
        rel = self.relations[body.relation_id]
        names = [c[0] for c in rel.columns]
        rows = self.table(rel.table)
        if kind in ("insert", "update"):
            values = codec.decode_row(body.row_data, len(names))
            rows[rel.pk(values)] = dict(zip(names, values, strict=True))
        elif kind == "delete":
            values = codec.decode_row(body.old_row_data, len(names))
            rows.pop(rel.pk(values), None)
        elif kind == "gone":
            values = codec.decode_row(body.pk_data, len(names))
            rows.pop(rel.pk(values), None)

    async def _on(self, msg: Message) -> None:
        if isinstance(msg, pb.SatRpcResponse):
            self._rpc.resolve(msg)
        elif isinstance(msg, pb.SatRpcRequest):
            await self._answer(msg)
        elif isinstance(msg, pb.SatErrorResp):
            self.errors.append(msg)
        elif isinstance(msg, pb.SatRelation):
            self.relations[msg.relation_id] = Relation(
                msg.relation_id, msg.schema_name, msg.table_name, [(c.name, c.type, c.primaryKey) for c in msg.columns]
            )
        elif isinstance(msg, pb.SatSubsDataBegin):
            self._in_subs = msg.subscription_id
        elif isinstance(msg, pb.SatSubsDataError):
            self._in_subs = None  # what arrived of it is not kept by a real client either
        elif isinstance(msg, pb.SatSubsDataEnd):
            assert self._in_subs is not None
            self.subscriptions_done[self._in_subs] = b""
            self._in_subs = None
        elif isinstance(msg, pb.SatUnsubsDataBegin):
            self._in_unsubs = True
        elif isinstance(msg, pb.SatUnsubsDataEnd):
            self._in_unsubs = False
        elif isinstance(msg, pb.SatOpLog):
            if self._in_subs is not None or self._in_unsubs:
                for op in msg.ops:
                    self._apply(op)
                return
            if msg.ops and msg.ops[0].WhichOneof("op") == "additional_begin":
                for op in msg.ops[1:-1]:
                    self._apply(op)
                self.additional_data.append(msg.ops[0].additional_begin.ref)
                return
            begin = msg.ops[0].begin
            tx = ReceivedTx(begin.lsn, begin.transaction_id, begin.commit_timestamp, begin.origin, list(msg.ops))
            if any(op.HasField("migrate") for op in msg.ops):
                self.migrations.append(tx)
            else:
                for op in msg.ops[1:-1]:
                    self._apply(op)
                self.transactions.append(tx)
            self.last_lsn = begin.lsn
            self._last_xid = begin.transaction_id
            self._unacked += 1
            if self.auto_ack and self._unacked >= int(self.window * 0.7):
                await self.ack()
