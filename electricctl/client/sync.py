"""The sync client: keeps a local SQLite file in sync with an electricctl server, both ways.

    client = SyncClient("app.db", "ws://127.0.0.1:5133/ws", token)
    await client.start()
    sub = await client.subscribe("items", where="this.done = false")
    await client.synced(sub)
    # the app writes with plain SQL, from any connection or process; writes are synced

Sync runs in the background: it reconnects with backoff, resumes from the last position it stored,
and sends each local transaction exactly once (the server skips one it already has). The store
(:mod:`electricctl.client.store`) does the SQLite work and the merging; this module speaks the
protocol. Every network and database call happens on the event loop of the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._protocol.rpc import RpcCalls, RpcError, client_answer
from electricctl.client.store import LSN_KEY, Column, LocalTransaction, RemoteChange, Store, Table, to_local, to_wire
from electricctl.errors import AuthenticationFailed, EndpointNotFound, SubscriptionRefused, SyncError

log = logging.getLogger("electricctl.client")

NATIVE_HEADER = "X-Electricctl-Client"
SUBSCRIPTIONS_KEY = "electricctl.subscriptions"
CLIENT_ID_KEY = "clientId"
MAX_FRAME = 256 << 20
_RESET_CODES = {
    pb.SatInStartReplicationResp.ReplicationError.BEHIND_WINDOW,
    pb.SatInStartReplicationResp.ReplicationError.INVALID_POSITION,
    pb.SatInStartReplicationResp.ReplicationError.SUBSCRIPTION_NOT_FOUND,
}


@dataclass(slots=True)
class Subscription:
    id: str
    shapes: list[dict[str, str]]
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


@dataclass(slots=True)
class Status:
    connected: bool
    pending: int
    """Local writes not yet confirmed by the server (still in the oplog)."""
    lag_ms: float | None
    """How long the last server transaction took to arrive (apply time - commit time)."""
    server_lsn: str
    refused: int


@dataclass(slots=True)
class _Incoming:
    subscription: str | None = None
    changes: list[RemoteChange] = field(default_factory=list)
    lsn: str = ""


class SyncClient:
    def __init__(
        self,
        path: str,
        url: str,
        token: str,
        *,
        client_id: str | None = None,
        poll_interval: float = 0.02,
        on_refused: Callable[[str], None] | None = None,
        on_progress: Callable[[str, int], None] | None = None,
        on_change: Callable[[list[RemoteChange], str | None], None] | None = None,
    ) -> None:
        self.store = Store(path)
        self.url = url
        self.token = token
        stored = self.store.meta(CLIENT_ID_KEY)
        self.client_id = client_id or stored or str(uuid.uuid4())
        if stored != self.client_id:
            self.store.set_meta(CLIENT_ID_KEY, self.client_id)
        self.poll_interval = poll_interval
        self.on_refused = on_refused
        """Called with the server's reason when it refuses one of this client's transactions."""
        self.on_progress = on_progress
        """Called with (subscription id, rows received so far) while a subscription's initial data arrives."""
        self.on_change = on_change
        """Called after each server transaction is applied, with its changes and origin (for live queries)."""
        self.refused: list[str] = []
        self.subscriptions: dict[str, Subscription] = {}
        raw = self.store.meta(SUBSCRIPTIONS_KEY)
        for sub_id, shapes in (json.loads(raw) if raw else {}).items():
            sub = Subscription(sub_id, shapes)
            sub.synced.set()
            self.subscriptions[sub_id] = sub
        self.connected = asyncio.Event()
        self.failure: Exception | None = None
        """The last failure that was not just a lost connection (a change this client could not
        apply, say). The client keeps retrying; ``electricctl sync --once`` fails with it."""
        self.failed = asyncio.Event()
        """Set when :attr:`failure` is."""
        self._ws: ClientConnection | None = None
        self._rpc = RpcCalls(first_id=1)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._relations: dict[int, Table] = {}
        self._outbound: int | None = None
        """The client LSN after which to send (set when the server starts our stream)."""
        self._sent_relations: dict[str, int] = {}
        self._window = 30
        self._unacked = 0
        self._last_lsn = b""
        self._last_xid = 0
        self._incoming: _Incoming | None = None
        self._unsubs: list[RemoteChange] | None = None
        self._pending_unsubs: list[str] = []
        self._acking: asyncio.Future[None] | None = None
        self._lag_ms: float | None = None
        self._changed = asyncio.Event()
        self._wake_sender = asyncio.Event()

    # -- public API --------------------------------------------------------------------------
    async def start(self) -> None:
        """Start syncing in the background (it reconnects by itself until :meth:`stop`)."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"sync {self.client_id}")

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self.store.close()

    async def __aenter__(self) -> SyncClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def subscribe(self, shape: str, where: str | None = None) -> Subscription:
        """Subscribe to a table (with an optional where clause) or to a shape declared in electric.yaml.

        Connected, a refused request raises :class:`SyncError` at once. Offline, the subscription
        is requested when the connection comes up; :meth:`synced` then reports the outcome.
        """
        spec = {"table": shape, **({"where": where} if where else {})}
        for sub in self.subscriptions.values():
            if sub.shapes == [spec]:
                return sub
        sub = Subscription(str(uuid.uuid4()), [spec])
        self.subscriptions[sub.id] = sub
        if not self.connected.is_set():
            return sub
        try:
            await self._request_subscription(sub)
        except BaseException:
            self.subscriptions.pop(sub.id, None)
            raise
        return sub

    async def synced(self, sub: Subscription, timeout: float = 60) -> None:
        await asyncio.wait_for(sub.synced.wait(), timeout)
        if sub.error:
            raise SubscriptionRefused(sub.error)

    async def unsubscribe(self, sub: Subscription) -> None:
        await asyncio.wait_for(self.connected.wait(), 30)
        await self._call("unsubscribe", pb.SatUnsubsReq(subscription_ids=[sub.id]))
        self.subscriptions.pop(sub.id, None)
        self._save_subscriptions()

    async def flush(self, timeout: float = 30) -> None:
        """Wait until every local write so far is in Postgres and echoed back (the oplog is empty)."""
        deadline = time.monotonic() + timeout
        self._wake_sender.set()
        while self.store.has_unstamped() or self.store.pending_count():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.store.pending_count()} local writes are still pending")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.05)

    def notify(self) -> None:
        """Local writes were just made: send them now instead of at the next poll."""
        self._wake_sender.set()

    def status(self) -> Status:
        return Status(
            self.connected.is_set(),
            self.store.pending_count(),
            self._lag_ms,
            self.store.meta(LSN_KEY) or "",
            len(self.refused),
        )

    # -- connection ----------------------------------------------------------------------------
    async def _run(self) -> None:
        stamper = asyncio.create_task(self._stamp_loop())
        try:
            await self._connect_loop()
        finally:
            stamper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stamper

    async def _stamp_loop(self) -> None:
        """Offline too: local writes get their timestamps when they are made, not at reconnect."""
        while True:
            await asyncio.sleep(self.poll_interval)
            self._stamp()

    async def _connect_loop(self) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                await self._session()
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except (AuthenticationFailed, EndpointNotFound) as exc:
                # retried (a new token, the server fixed), but the caller learns it at once
                log.warning("%s; retrying in %.1fs", exc, delay)
                self.failure = exc
                self.failed.set()
            except (OSError, ConnectionClosed, InvalidHandshake, RpcError, TimeoutError, SyncError) as exc:
                log.info("sync connection lost (%s); reconnecting in %.1fs", exc, delay)
            except Exception as exc:
                log.warning("sync session failed (%s: %s); reconnecting", type(exc).__name__, exc)
                log.debug("the failure's traceback", exc_info=exc)
                self.failure = exc
                self.failed.set()
            finally:
                self.connected.clear()
                self._ws = None
            if self._stopping:
                return
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not a secret
            delay = min(delay * 2, 5.0)

    async def _session(self) -> None:
        try:
            ws_cm = await connect(
                self.url,
                subprotocols=["electric.0.12"],  # type: ignore[list-item]
                additional_headers={NATIVE_HEADER: "1"},
                compression=None,
                max_size=MAX_FRAME,
                open_timeout=10,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (404, 400, 426):
                body = bytes(exc.response.body or b"").decode(errors="replace").strip()
                hint = "the path is /ws" if status == 404 else body
                raise EndpointNotFound(f"no sync endpoint at {self.url} (HTTP {status}): {hint}") from None
            raise
        async with ws_cm as ws:
            await self._run_session(ws)

    async def _run_session(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._rpc = RpcCalls(first_id=1)
        self._sent_relations = {}
        self._outbound = None
        self._incoming = None
        reader = asyncio.create_task(self._read(ws))
        sender = asyncio.create_task(self._send_loop())
        try:
            try:
                await self._call("authenticate", pb.SatAuthReq(id=self.client_id, token=self.token))
            except RpcError as exc:
                raise AuthenticationFailed(f"authentication failed: {exc.error.message}") from None
            await self._start_replication()
            self.connected.set()
            for sub in list(self.subscriptions.values()):
                if not sub.synced.is_set() and sub.error is None:
                    try:
                        await self._request_subscription(sub)
                    except SyncError as exc:
                        # refused (say, the shape is no longer declared): the others carry on
                        log.warning("%s", exc)
                        self.subscriptions.pop(sub.id, None)
                        self._save_subscriptions()
            done, _ = await asyncio.wait({reader, sender}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in (reader, sender):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _start_replication(self) -> None:
        lsn = (self.store.meta(LSN_KEY) or "").encode()
        ids = list(self.subscriptions) if lsn else []
        resp = await self._call(
            "startReplication", pb.SatInStartReplicationReq(lsn=lsn, subscription_ids=ids, schema_version="")
        )
        assert isinstance(resp, pb.SatInStartReplicationResp)
        if resp.HasField("err"):
            if resp.err.code not in _RESET_CODES and lsn:
                raise SyncError(f"the server refused to resume: {resp.err.message}")
            # the server cannot resume us: forget synced rows (pending writes stay), start afresh
            log.warning("the server cannot resume this client (%s); syncing its shapes again", resp.err.message)
            tables = {s["table"] for sub in self.subscriptions.values() for s in sub.shapes}
            self.store.reset_tables(tables)
            self.store.set_meta(LSN_KEY, "")
            for sub in self.subscriptions.values():
                sub.synced.clear()
            resp = await self._call("startReplication", pb.SatInStartReplicationReq(lsn=b"", schema_version=""))
            assert isinstance(resp, pb.SatInStartReplicationResp)
            if resp.HasField("err"):
                raise SyncError(f"the server refused replication: {resp.err.message}")
        if resp.HasField("unacked_window_size") and resp.unacked_window_size:
            self._window = resp.unacked_window_size

    async def _request_subscription(self, sub: Subscription) -> None:
        req = pb.SatSubsReq(
            subscription_id=sub.id,
            shape_requests=[
                pb.SatShapeReq(
                    request_id=f"r{i}",
                    shape_definition=pb.SatShapeDef(
                        selects=[pb.SatShapeDef.Select(tablename=s["table"], where=s.get("where", ""))]
                    ),
                )
                for i, s in enumerate(sub.shapes)
            ],
        )
        resp = await self._call("subscribe", req)
        assert isinstance(resp, pb.SatSubsResp)
        if resp.HasField("err"):
            details = "; ".join(e.message for e in resp.err.shape_request_error) or resp.err.message
            sub.error = details
            sub.synced.set()
            raise SubscriptionRefused(f"subscription refused: {details}")

    async def _call(self, method: str, body: Message, timeout: float = 30) -> Message:
        ws = self._ws
        if ws is None:
            raise ConnectionClosed(None, None)

        async def send(msg: Message) -> None:
            await ws.send(codec.encode(msg))

        return await self._rpc.call(send, method, body, timeout)

    async def _send(self, msg: Message) -> None:
        if self._ws is None:
            raise ConnectionClosed(None, None)
        await self._ws.send(codec.encode(msg))

    # -- outbound: local writes ----------------------------------------------------------------
    async def _send_loop(self) -> None:
        while True:
            while self.store.has_unstamped():
                self.store.stamp(self.client_id)
            if self._outbound is not None:
                for tx in self.store.transactions_after(self._outbound):
                    await self._send_transaction(tx)
                    self._outbound = tx.lsn
            self._wake_sender.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_sender.wait(), self.poll_interval)

    async def _send_transaction(self, tx: LocalTransaction) -> None:
        ops = [pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=tx.timestamp, lsn=_client_lsn(tx.lsn)))]
        for e in tx.entries:
            table = self.store.tables[e.table]
            rel_id = await self._relation_id(table)
            if e.optype == "INSERT":
                ops.append(
                    pb.SatTransOp(
                        insert=pb.SatOpInsert(relation_id=rel_id, row_data=_row(table, e.new or {}), tags=e.clear_tags)
                    )
                )
            elif e.optype == "UPDATE":
                ops.append(
                    pb.SatTransOp(
                        update=pb.SatOpUpdate(
                            relation_id=rel_id,
                            row_data=_row(table, e.new or {}),
                            old_row_data=_row(table, e.old or {}),
                            tags=e.clear_tags,
                        )
                    )
                )
            elif e.optype == "DELETE":
                ops.append(
                    pb.SatTransOp(
                        delete=pb.SatOpDelete(
                            relation_id=rel_id, old_row_data=_row(table, e.old or {}), tags=e.clear_tags
                        )
                    )
                )
            else:
                ops.append(
                    pb.SatTransOp(
                        compensation=pb.SatOpCompensation(
                            relation_id=rel_id, pk_data=_row(table, e.new or {}), tags=e.clear_tags
                        )
                    )
                )
        ops.append(pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=tx.timestamp)))
        await self._send(pb.SatOpLog(ops=ops))

    async def _relation_id(self, table: Table) -> int:
        rel_id = self._sent_relations.get(table.name)
        if rel_id is None:
            rel_id = self._sent_relations[table.name] = len(self._sent_relations) + 1
            await self._send(
                pb.SatRelation(
                    schema_name="public",
                    table_type=pb.SatRelation.TABLE,
                    table_name=table.name,
                    relation_id=rel_id,
                    columns=[
                        pb.SatRelationColumn(
                            name=c.name, type=c.pg_type, primaryKey=c.primary_key, is_nullable=c.nullable
                        )
                        for c in table.columns
                    ],
                )
            )
        return rel_id

    # -- inbound -------------------------------------------------------------------------------
    async def _read(self, ws: ClientConnection) -> None:
        async for frame in ws:
            if isinstance(frame, str):
                raise SyncError("the server sent a text frame")
            await self._on(codec.decode(frame))
            self._changed.set()

    async def _on(self, msg: Message) -> None:
        if isinstance(msg, pb.SatRpcResponse):
            self._rpc.resolve(msg)
        elif isinstance(msg, pb.SatRpcRequest):
            await self._answer(msg)
        elif isinstance(msg, pb.SatRelation):
            table = Table(
                msg.table_name,
                tuple(Column(c.name, c.type, c.primaryKey, c.is_nullable) for c in msg.columns),
            )
            self._relations[msg.relation_id] = table
            self.store.ensure_table(table)
        elif isinstance(msg, pb.SatSubsDataBegin):
            self._incoming = _Incoming(msg.subscription_id, lsn=msg.lsn.decode())
        elif isinstance(msg, pb.SatSubsDataEnd):
            await self._subscription_delivered()
        elif isinstance(msg, pb.SatSubsDataError):
            sub = self.subscriptions.pop(msg.subscription_id, None)
            self._incoming = None
            if sub is not None:
                sub.error = msg.message or "the server could not deliver the subscription"
                sub.synced.set()
        elif isinstance(msg, pb.SatUnsubsDataBegin):
            self._unsubs = []
            self._pending_unsubs = list(msg.subscription_ids)
        elif isinstance(msg, pb.SatUnsubsDataEnd):
            changes, self._unsubs = self._unsubs or [], None
            self._stamp()
            self.store.apply_remote(changes, client_id=self.client_id, origin=None, timestamp=None, lsn=None)
            await self._send(pb.SatOpLogAck(lsn=self._last_lsn, gone_subscription_ids=self._pending_unsubs))
        elif isinstance(msg, pb.SatOpLog):
            await self._on_oplog(msg)
        elif isinstance(msg, pb.SatErrorResp):
            if msg.lsn:
                # one of our transactions was refused; its echo puts the rows back as the server has them
                self.refused.append(msg.message)
                log.warning("the server refused a local transaction: %s", msg.message)
                if self.on_refused is not None:
                    self.on_refused(msg.message)
            else:
                raise SyncError(f"server error: {pb.SatErrorResp.ErrorCode.Name(msg.error_type)} {msg.message}")

    async def _answer(self, req: pb.SatRpcRequest) -> None:
        response, lsn = client_answer(req)
        if lsn is None:
            self._outbound = None  # stopped: keep the writes until the server asks again
        else:
            self._outbound = int.from_bytes(lsn, "big")  # send what comes after this (empty: everything)
            self._wake_sender.set()
        await self._send(response)

    def _change(self, op: pb.SatTransOp) -> RemoteChange | None:
        kind = op.WhichOneof("op")
        if kind not in ("insert", "update", "delete", "gone"):
            return None
        body = getattr(op, kind)
        table = self._relations[body.relation_id]
        n = len(table.columns)
        if kind in ("insert", "update"):
            raw = codec.decode_row(body.row_data, n)
        elif kind == "delete":
            raw = codec.decode_row(body.old_row_data, n)
        else:
            raw = codec.decode_row(body.pk_data, n)
        values = {c.name: to_local(c, v) for c, v in zip(table.columns, raw, strict=True)}
        old = None
        if kind == "update":
            old_raw = codec.decode_row(body.old_row_data, n)
            old = {c.name: to_local(c, v) for c, v in zip(table.columns, old_raw, strict=True)}
        tags = list(body.tags) if kind != "gone" else []
        return RemoteChange(table.name, kind, values, old, tags)

    async def _on_oplog(self, msg: pb.SatOpLog) -> None:
        if self._incoming is not None:
            self._incoming.changes.extend(c for op in msg.ops if (c := self._change(op)) is not None)
            if self.on_progress is not None and self._incoming.subscription is not None:
                self.on_progress(self._incoming.subscription, len(self._incoming.changes))
            return
        if self._unsubs is not None:
            self._unsubs.extend(c for op in msg.ops if (c := self._change(op)) is not None)
            return
        begin = msg.ops[0].begin
        changes = [c for op in msg.ops[1:-1] if (c := self._change(op)) is not None]
        self._stamp()
        self.store.apply_remote(
            changes,
            client_id=self.client_id,
            origin=begin.origin or None,
            timestamp=begin.commit_timestamp,
            lsn=begin.lsn.decode(),
        )
        if self.on_change is not None:
            self.on_change(changes, begin.origin or None)
        self._lag_ms = max(0.0, time.time() * 1000 - begin.commit_timestamp)
        self._last_lsn = begin.lsn
        self._last_xid = begin.transaction_id
        self._unacked += 1
        if self._unacked >= max(1, int(self._window * 0.7)):
            await self._ack()
        else:
            asyncio.get_running_loop().call_later(0.2, self._ack_soon)

    def _ack_soon(self) -> None:
        if self._unacked and self._ws is not None and (self._acking is None or self._acking.done()):
            self._acking = asyncio.ensure_future(self._ack_quietly())

    async def _ack_quietly(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._ack()

    async def _ack(self, **extra: Any) -> None:
        self._unacked = 0
        await self._send(
            pb.SatOpLogAck(
                ack_timestamp=int(time.time() * 1000), lsn=self._last_lsn, transaction_id=self._last_xid, **extra
            )
        )

    async def _subscription_delivered(self) -> None:
        incoming, self._incoming = self._incoming, None
        if incoming is None or incoming.subscription is None:
            return
        self._stamp()
        self.store.apply_remote(
            incoming.changes, client_id=self.client_id, origin=None, timestamp=None, lsn=incoming.lsn or None
        )
        if incoming.lsn:
            self._last_lsn = incoming.lsn.encode()
        sub = self.subscriptions.get(incoming.subscription)
        if sub is not None:
            self._save_subscriptions()
            sub.synced.set()
        await self._send(pb.SatOpLogAck(lsn=self._last_lsn, subscription_ids=[incoming.subscription]))

    def _stamp(self) -> None:
        # local writes made so far become transactions before remote changes are merged with them
        while self.store.has_unstamped():
            self.store.stamp(self.client_id)
            self._wake_sender.set()

    def _save_subscriptions(self) -> None:
        self.store.set_meta(
            SUBSCRIPTIONS_KEY,
            json.dumps({s.id: s.shapes for s in self.subscriptions.values() if s.error is None}),
        )


def _client_lsn(rowid: int) -> bytes:
    return rowid.to_bytes(4 if rowid < 1 << 32 else 8, "big")


def _row(table: Table, values: dict[str, Any]) -> pb.SatOpRow:
    wire: Sequence[bytes | None] = [to_wire(c, values.get(c.name)) for c in table.columns]
    return codec.encode_row(wire)
