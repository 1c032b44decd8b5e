"""One connection's writes, client to server: relations announced, transactions decoded and queued
with backpressure, then handed in order to the server's one writer; each is acknowledged or
refused on its own.

Backpressure: while the transactions in flight (queued or being applied) are at the bound, in
count or in frame bytes, the connection stops reading its socket (:meth:`ClientWrites.receive`
waits). The client's TCP window then fills and its sends block; other connections do not notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message
from websockets.exceptions import ConnectionClosed

from electricctl._auth.tokens import Identity
from electricctl._model.client import ClientRelation, ClientTransaction, InvalidTransaction, PermissionDenied
from electricctl._model.rows import RelationDef
from electricctl._model.table import TableRef
from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.common import CLOSE_INTERNAL_ERROR, ERR, ProtocolViolation, log_once
from electricctl._server.inbound import MalformedTransaction, decode_transaction, relation_from
from electricctl._server.services import Services

audit = logging.getLogger("electricctl.audit")
"""One JSON line per denied client transaction."""

_STOP: Any = object()

Send = Callable[[Message], Awaitable[None]]
Fail = Callable[[int, str, int], Awaitable[None]]


class ClientWrites:
    def __init__(self, services: Services, *, peer: str, native: bool, send: Send, fail: Fail) -> None:
        self.services = services
        self.peer = peer
        self.native = native
        """Our own client gets refusals as top-level errors; the npm client treats any as fatal."""
        self._send = send
        self._fail = fail
        self.relations: dict[int, ClientRelation] = {}
        """Relations the client announced for its writes, by the client's relation id."""
        self._queue: asyncio.Queue[tuple[ClientTransaction | InvalidTransaction, int]] = asyncio.Queue()
        self._count = 0
        self._bytes = 0
        """Transactions queued or being applied, and their frames' bytes (bounded)."""
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.client_id: str | None = None
        self.identity: Identity | None = None

    def announce(self, msg: pb.SatRelation) -> None:
        self.relations[msg.relation_id] = relation_from(msg)

    async def receive(self, msg: pb.SatOpLog, size: int) -> None:
        """Decode one client transaction and queue it; waits (so the socket is not read) while
        the connection's transactions in flight are at the bound."""
        assert self.client_id is not None
        await self._wait_for_room(size)
        catalog = self.services.catalog
        relations: dict[ClientRelation, RelationDef | None] = {}
        for rel in self.relations.values():
            table = TableRef(rel.schema, rel.table)
            if table in await catalog.electrified_tables():
                known = await catalog.describe(table)
                if known is not None and not set(rel.columns) <= {c.name for c in known.columns}:
                    known = await catalog.describe(table, fresh=True)  # a column added since it was cached
                relations[rel] = known
        try:
            tx: ClientTransaction | InvalidTransaction = decode_transaction(
                self.client_id,
                msg,
                self.relations,
                relations.get,
                max_ops=self.services.options.max_transaction_ops,
            )
        except MalformedTransaction as exc:
            raise ProtocolViolation(ERR.INVALID_REQUEST, str(exc)) from exc
        except InvalidTransaction as exc:
            tx = exc
        if self._task is None:
            self._task = asyncio.create_task(self._apply_all(), name=f"writes {self.client_id}")
        self._count += 1
        self._bytes += size
        self._queue.put_nowait((tx, size))

    async def stop(self, timeout: float = 10) -> None:
        """Apply what was received (the client was told nothing yet; it saves a resend), then stop."""
        if self._task is None:
            return
        self._queue.put_nowait((_STOP, 0))
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        self._task.cancel()

    async def _wait_for_room(self, size: int) -> None:
        options = self.services.options
        while self._count and (
            self._count >= options.max_inflight_transactions or self._bytes + size > options.max_inflight_bytes
        ):
            self._room.clear()
            await self._room.wait()

    async def _apply_all(self) -> None:
        """Apply the client's transactions in order; refusals are per transaction."""
        while True:
            item, size = await self._queue.get()
            if item is _STOP:
                return
            try:
                failed = await self._apply_one(item)
            finally:
                self._count -= 1
                self._bytes -= size
                self._room.set()
            if failed:
                return

    async def _apply_one(self, item: ClientTransaction | InvalidTransaction) -> bool:
        """Apply or refuse one transaction; True if the connection failed because of it."""
        writer = self.services.writer
        denied: PermissionDenied | None = None
        outcome, seconds = "failed", None  # for GET /metrics
        try:
            if isinstance(item, InvalidTransaction):
                outcome = "invalid"
                if item.transaction is None:
                    return False
                tx, problem = item.transaction, str(item)
            else:
                tx, problem = item, None
                if self.identity is not None:
                    tx.user_id, tx.claims = self.identity.user_id, self.identity.claims
                policy, relations = await self.services.catalog.policy()
                started = time.perf_counter()
                try:
                    outcome = "applied" if await writer.apply(tx, policy, relations.get) else "duplicate"
                except InvalidTransaction as exc:
                    problem = str(exc)
                    denied = exc if isinstance(exc, PermissionDenied) else None
                    outcome = "refused" if denied is None else "denied"
                finally:
                    seconds = time.perf_counter() - started
            if problem is not None:
                if denied is not None:
                    self._audit(tx, denied, problem)
                await writer.refuse(tx, problem)
                if self.native:
                    code = ERR.PERMISSION_DENIED if denied is not None else ERR.INVALID_REQUEST
                    await self._send(ERR(error_type=code, lsn=codec.encode_client_lsn(tx.lsn), message=problem))
            else:
                await self._send(pb.SatOpLogAck(ack_timestamp=tx.commit_ts_ms, lsn=codec.encode_client_lsn(tx.lsn)))
        except ConnectionClosed:
            return False  # applied all the same; the client learns it from the echo
        except Exception as exc:
            log_once(exc, f"could not apply a transaction of client {self.client_id}")
            # nothing was recorded: the client sends it again when it reconnects
            await self._fail(
                ERR.INTERNAL, "the server could not apply a transaction; reconnect to retry", CLOSE_INTERNAL_ERROR
            )
            return True
        finally:
            self.services.metrics.write_done(outcome, seconds)
            if outcome == "denied":
                self.services.metrics.denied("write")
        return False

    def _audit(self, tx: ClientTransaction, denied: PermissionDenied, problem: str) -> None:
        audit.warning(
            "%s",
            json.dumps(
                {
                    "event": "permission_denied",
                    "client_id": tx.client_id,
                    "user_id": tx.user_id,
                    "peer": self.peer,
                    "client_lsn": tx.lsn,
                    "table": denied.table,
                    "operation": denied.operation,
                    "message": problem,
                }
            ),
        )
