"""One Satellite client connection: RPC handling, the outbound stream with its subscriptions, and
the client's writes.

Three tasks per connection: the reader answers RPCs and acks and decodes the client's
transactions as frames arrive; the streamer reads the durable log from the client's position,
filters each transaction to what the client's shapes and grants show, and delivers subscription
data (and changes of what the client may read) at a consistent point between two transactions;
the writer task hands the client's transactions, in order, to the server's one writer. The
streamer pulls from the log, so a slow client only slows itself: it never holds more than one
frame in memory, and one that stops reading is dropped after ``send_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from google.protobuf.message import DecodeError, Message
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from electricctl._auth.tokens import AuthError, Identity, InvalidIdentity, verify
from electricctl._config.model import TableRef
from electricctl._perms.policy import ReadAccess, RoleState, read_access, read_roles
from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._protocol.rpc import RpcCalls, RpcError
from electricctl._replication.model import Change, RelationDef, Transaction
from electricctl._server import outbound
from electricctl._server.clients import ClientState, SubscriptionRecord
from electricctl._server.common import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_JWT_EXPIRED,
    CLOSE_POLICY,
    CLOSE_PROTOCOL_ERROR,
    ERR,
    NATIVE_HEADER,
    ProtocolViolation,
    first_line,
    log_once,
)
from electricctl._server.inbound import encode_client_lsn
from electricctl._server.services import Services
from electricctl._server.snapshot import Snapshot
from electricctl._server.spool import Spool
from electricctl._server.writes import ClientWrites
from electricctl._shapes.compile import CompiledWhere, ShapeError, all_true, compile_where
from electricctl._shapes.routing import Shape, TableShapes, any_of, route_transaction, snapshot_filter

log = logging.getLogger("electricctl.server")
audit = logging.getLogger("electricctl.audit")
"""One JSON line per denied client transaction."""

START_ERR = pb.SatInStartReplicationResp.ReplicationError
SUBS_ERR = pb.SatSubsResp.SatSubsError
SHAPE_ERR = pb.SatSubsResp.SatSubsError.ShapeReqError

LIVE_QUEUE_LIMIT = 10_000


@dataclass(slots=True)
class _Subscribe:
    subscription_id: str
    shapes: list[Shape]


@dataclass(slots=True)
class _Unsubscribe:
    subscription_ids: list[str]


@dataclass(frozen=True, slots=True)
class _Refused:
    """A shape request refused before it is compiled: the error code and the reason."""

    code: int
    message: str


@dataclass(slots=True)
class _Reassess:
    """The assignment tables changed: the client's roles, and so what it may read, may have too."""


MAX_CLIENT_ID = 128


def _valid_client_id(value: str) -> bool:
    return 0 < len(value) <= MAX_CLIENT_ID and value.isprintable()


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) <= 128


class Connection:
    def __init__(self, server: Services, ws: ServerConnection) -> None:
        self.server = server
        self.ws = ws
        self.client_id: str | None = None
        self.identity: Identity | None = None
        self.state: ClientState | None = None
        self.replicating = False
        self.cursor = 0
        self.wake = asyncio.Event()
        self.acked = asyncio.Event()
        self.control: deque[_Subscribe | _Unsubscribe | _Reassess] = deque()
        self.shapes: dict[str, TableShapes] = {}
        """The client's shapes, by table (``schema.name``)."""
        self.live = False
        self.relevant: deque[int] = deque()
        """Live mode: LSNs of logged transactions the router found may concern this client."""
        self.sent_relations: dict[int, RelationDef] = {}
        self.unacked: deque[int] = deque()
        self._streamer: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._converters: dict[RelationDef, Any] = {}
        self.peer = f"{ws.remote_address}"
        self.peer_host = str(ws.remote_address[0]) if ws.remote_address else "?"
        self._auth_deadline: asyncio.TimerHandle | None = None
        self._closing: asyncio.Future[None] | None = None
        self._spool: Spool | None = None
        """While the streamer holds a snapshot: where what it sends goes first."""
        self._last_saved = 0.0
        self._saving: asyncio.Future[None] | None = None
        self._rpc = RpcCalls(first_id=0)  # the server numbers its own calls from 0, the client from 1
        self.client_stream_started = False
        self._client_stream: asyncio.Task[None] | None = None
        self._inflight: set[str] = set()
        """Subscriptions requested and not yet recorded (delivered or failed)."""
        self.roles: RoleState | None = None
        """The user's roles (from the assignment tables), when grants are enforced."""
        self.read_access: dict[str, ReadAccess] = {}
        """By table: the rows and columns this client may read."""
        headers = ws.request.headers if ws.request is not None else None
        self.native = headers is not None and NATIVE_HEADER in headers
        """Our own client: it understands a refusal sent as a top-level error that keeps the
        connection open. The npm client treats any top-level error as fatal, so it gets none."""
        self.writes = ClientWrites(server, peer=self.peer, native=self.native, send=self.send, fail=self._fail)
        """The client -> server direction: its transactions, queued for the server's writer."""

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._auth_deadline = loop.call_later(self.server.options.auth_timeout, self._on_auth_timeout)
        try:
            async for frame in self.ws:
                if isinstance(frame, str):
                    raise ProtocolViolation(ERR.INVALID_REQUEST, "text frames are not part of the protocol")
                await self.on_frame(frame)
        except ProtocolViolation as exc:
            log.info("client %s broke the protocol: %s", self.client_id or self.peer, exc)
            await self._fail(exc.code, str(exc))
        except ConnectionClosed:
            pass
        finally:
            await self.shutdown()

    def _on_auth_timeout(self) -> None:
        if self.identity is None:
            log.info("closing %s: it did not authenticate within %.0fs", self.peer, self.server.options.auth_timeout)
            self._closing = asyncio.ensure_future(
                self.close(CLOSE_POLICY, f"authenticate within {self.server.options.auth_timeout:.0f}s of connecting")
            )

    def drop(self, code: int, reason: str) -> None:
        """Stop streaming to this client at once and close its connection with ``code``."""
        if self._streamer is not None:
            self._streamer.cancel()
        self._closing = asyncio.ensure_future(self.close(code, reason))

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code``. Reading resumes first: websockets stops reading a socket whose
        frames nobody consumes (backpressure), and the client's answer to our close frame must
        still be read, or the close would wait out its timeout."""
        with contextlib.suppress(Exception):
            self.ws.transport.resume_reading()
        await self.ws.close(code, reason)

    def _authenticated(self) -> None:
        """The first successful authentication: lift the pre-auth limits."""
        if self._auth_deadline is not None:
            self._auth_deadline.cancel()
            self._auth_deadline = None
        # frames up to the full limit from now on (websockets reads this before each frame)
        self.ws.protocol.max_message_size = self.server.options.max_frame_bytes
        self.server.peer_authenticated(self)

    async def _fail(self, code: int, message: str, close_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        """Close the connection; the client gets an error frame first, except for a server-side
        failure sent to the npm client: it treats any error frame as fatal and would stop
        reconnecting, where a plain close (1011) makes it reconnect and resend."""
        try:
            if close_code != CLOSE_INTERNAL_ERROR or self.native:
                await self.send(ERR(error_type=code, message=message))  # type: ignore[arg-type]
            await self.close(close_code, message[:120])
        except ConnectionClosed:
            pass

    async def shutdown(self) -> None:
        if self._auth_deadline is not None:
            self._auth_deadline.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        await self.writes.stop()
        if self._streamer is not None:
            self._streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._streamer  # its failure was already reported by stream()
        self.server.router.remove_connection(self)
        self.server.scanning.discard(self)
        if self.client_id is not None and self.server.clients.get(self.client_id) is self:
            del self.server.clients[self.client_id]
            if self.state is not None:
                await self.server.store.save_async(self.state)

    async def _emit(self, msg: Message) -> None:
        """Send on the streamer's path: into the spool while a snapshot is held, else to the socket."""
        if self._spool is not None:
            await self._spool.add(codec.encode(msg))
        else:
            await self.send(msg)

    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[Snapshot]:
        """A snapshot held only as long as Postgres takes: what the streamer sends meanwhile goes
        through a spool (see :mod:`.spool`), from which a sender task takes it to the client at
        the client's pace, within a delivery deadline. The snapshot's transaction ends when the
        reading is done, however slowly the client reads. A user holds a few snapshots at most."""
        assert self.identity is not None
        snap = await self.server.snapshots.take(owner=self.identity.user_id)
        spool = self._spool = Spool(self.server.spool_dir)
        sender = asyncio.create_task(self._send_spooled(spool), name=f"spool {self.client_id}")
        try:
            try:
                yield snap
            finally:
                self._spool = None
                await snap.close()
                await spool.finish()
            await sender
        except (asyncio.CancelledError, ConnectionClosed):
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            raise
        except BaseException:
            # what was spooled went out as the stream's position moved: let it be sent, then fail
            await asyncio.gather(sender, return_exceptions=True)
            raise
        finally:
            spool.close()

    async def _send_spooled(self, spool: Spool) -> None:
        """Send the spool as it fills; a client that reads slower than ``--min-send-rate`` (after
        the first ``--send-timeout`` seconds) is dropped, so nobody holds server resources forever."""
        server = self.server
        started = time.monotonic()
        try:
            async for frame in spool.frames():
                if (
                    time.monotonic()
                    > started + server.options.send_timeout + spool.bytes / server.options.min_send_rate
                ):
                    log.warning(
                        "dropping client %s: it read %d bytes of subscription data slower than %d bytes/s",
                        self.client_id or self.peer,
                        spool.bytes,
                        server.options.min_send_rate,
                    )
                    self.ws.transport.abort()
                    raise ConnectionClosed(None, None)
                await self.send_frame(frame)
        except BaseException as exc:
            spool.failed = exc if isinstance(exc, ConnectionClosed) else ConnectionClosed(None, None)
            raise

    async def send(self, msg: Message) -> None:
        await self.send_frame(codec.encode(msg))

    async def send_frame(self, frame: bytes) -> None:
        try:
            await asyncio.wait_for(self.ws.send(frame), timeout=self.server.options.send_timeout)
        except TimeoutError:
            log.warning("dropping client %s: it stopped reading", self.client_id or self.peer)
            self.ws.transport.abort()
            raise ConnectionClosed(None, None) from None

    # -- inbound -----------------------------------------------------------------------------
    async def on_frame(self, frame: bytes) -> None:
        try:
            msg = codec.decode(frame)
        except codec.FrameError as exc:
            raise ProtocolViolation(ERR.INVALID_REQUEST, str(exc)) from exc
        if isinstance(msg, pb.SatRpcRequest):
            await self.on_rpc(msg)
        elif isinstance(msg, pb.SatRpcResponse):
            if not self._rpc.resolve(msg):
                raise ProtocolViolation(ERR.INVALID_REQUEST, f"response to unknown request {msg.request_id}")
        elif isinstance(msg, pb.SatOpLogAck):
            self.on_ack(msg)
        elif isinstance(msg, pb.SatOpLog | pb.SatRelation):
            if self.identity is None:
                raise ProtocolViolation(ERR.AUTH_REQUIRED, "authenticate first")
            if not self.client_stream_started:
                raise ProtocolViolation(
                    ERR.INVALID_REQUEST, "client writes are refused: the server has not started the client's stream"
                )
            if isinstance(msg, pb.SatRelation):
                self.writes.announce(msg)
            else:
                await self.writes.receive(msg, len(frame))
        else:
            raise ProtocolViolation(ERR.INVALID_REQUEST, f"unexpected {type(msg).__name__} from a client")

    async def on_rpc(self, req: pb.SatRpcRequest) -> None:
        method = req.method
        if method not in codec.RPC_METHODS:
            await self.respond_error(req, ERR.INVALID_REQUEST, f"unknown method {method!r}")
            return
        if self.identity is None and method != "authenticate":
            await self.respond_error(req, ERR.AUTH_REQUIRED, "authenticate first")
            return
        request_cls = codec.RPC_METHODS[method][0]
        body = request_cls()
        try:
            body.ParseFromString(req.message)
        except DecodeError:
            await self.respond_error(req, ERR.INVALID_REQUEST, f"malformed {request_cls.__name__}")
            return
        handler = getattr(self, f"rpc_{method}")
        try:
            response = await handler(body)
        except (ConnectionClosed, ProtocolViolation):
            raise
        except psycopg.Error as exc:
            log.warning("%s from client %s failed: Postgres: %s", method, self.client_id or self.peer, first_line(exc))
            response = ERR(error_type=ERR.INTERNAL, message="the server could not reach its database; retry")
        except RecursionError:
            log.info("refused %s from %s: nested too deeply", method, self.client_id or self.peer)
            response = ERR(error_type=ERR.INVALID_REQUEST, message="the request is nested too deeply")
        except Exception as exc:
            log_once(exc, f"{method} from client {self.client_id or self.peer} failed")
            response = ERR(error_type=ERR.INTERNAL, message=f"internal error in {method}")
        if isinstance(response, ERR):
            await self.send(pb.SatRpcResponse(method=method, request_id=req.request_id, error=response))
        else:
            await self.send(
                pb.SatRpcResponse(method=method, request_id=req.request_id, message=response.SerializeToString())
            )

    async def call(self, method: str, body: Message, timeout: float = 30.0) -> Message:
        """Make an RPC call to the client and return its decoded response."""
        return await self._rpc.call(self.send, method, body, timeout)

    async def _start_client_stream(self) -> None:
        # the client -> server direction: the server asks the client to start sending its writes,
        # after the last transaction of it that Postgres has
        assert self.client_id is not None
        try:
            position = await self.server.writer.position(self.client_id)
            self.client_stream_started = True
            await self.call(
                "startReplication", pb.SatInStartReplicationReq(lsn=encode_client_lsn(position) if position else b"")
            )
        except (RpcError, TimeoutError, ConnectionClosed, psycopg.Error) as exc:
            self.client_stream_started = False
            log.info("client %s did not start its stream: %s", self.client_id, exc)

    async def respond_error(self, req: pb.SatRpcRequest, code: int, message: str) -> None:
        await self.send(
            pb.SatRpcResponse(
                method=req.method,
                request_id=req.request_id,
                error=ERR(error_type=code, message=message),  # type: ignore[arg-type]
            )
        )

    async def rpc_authenticate(self, req: pb.SatAuthReq) -> Message:
        if not req.id or not req.token:
            return ERR(error_type=ERR.INVALID_REQUEST, message="both id and token are required")
        if not _valid_client_id(req.id):
            return ERR(
                error_type=ERR.INVALID_REQUEST,
                message=f"a client id is 1 to {MAX_CLIENT_ID} printable characters (a UUID, say)",
            )
        try:
            identity = verify(req.token, self.server.config.auth)
        except InvalidIdentity as exc:
            log.info("refused authentication from %s: %s", self.peer, exc)
            return ERR(error_type=ERR.AUTH_FAILED, message=str(exc))
        except AuthError as exc:
            log.info("refused authentication from %s: %s", self.peer, exc)
            return ERR(error_type=ERR.AUTH_REQUIRED, message=str(exc))
        if self.identity is None:
            owner = await self.server.catalog.bind_client(req.id, identity.user_id)
            if owner != identity.user_id:
                log.warning(
                    "refused client id %s to user %r from %s: it belongs to another user",
                    req.id,
                    identity.user_id,
                    self.peer,
                )
                return ERR(
                    error_type=ERR.AUTH_FAILED,
                    message="this client id belongs to another user: each user's clients need ids of their own",
                )
        if self.identity is not None:
            # a renewal: same client, same user
            if req.id != self.client_id or identity.user_id != self.identity.user_id:
                return ERR(error_type=ERR.AUTH_FAILED, message="a renewed token must keep the client id and sub")
        else:
            other = self.server.clients.get(req.id)
            if other is not None and other is not self:
                return ERR(error_type=ERR.INVALID_REQUEST, message="another connection uses this client id")
            self.client_id = self.writes.client_id = req.id
            self.server.clients[req.id] = self
            self.state = self.server.store.load(req.id)
        first = self.identity is None
        self.identity = self.writes.identity = identity
        self._schedule_expiry(identity)
        if first:
            self._authenticated()
        return pb.SatAuthResp(id=self.server.server_id)

    def _schedule_expiry(self, identity: Identity) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if identity.expires_at is None:
            return
        delay = max(0.0, identity.expires_at - time.time())
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(
            delay, lambda: asyncio.ensure_future(self.close(CLOSE_JWT_EXPIRED, "JWT-expired"))
        )

    async def rpc_startReplication(self, req: pb.SatInStartReplicationReq) -> Message:
        if self.replicating:
            return ERR(error_type=ERR.INVALID_REQUEST, message="replication is already started")
        state = self.state
        assert state is not None
        window = self.server.options.unacked_window
        if not req.lsn:
            if req.subscription_ids:
                return _start_error(START_ERR.INVALID_POSITION, "subscriptions can only resume from an LSN")
            cursor = self.server.log.last_lsn
        else:
            try:
                cursor = codec.decode_server_lsn(req.lsn)
            except (ValueError, UnicodeDecodeError):
                return _start_error(START_ERR.MALFORMED_LSN, f"malformed LSN {req.lsn[:40]!r}")
            if cursor > self.server.log.last_lsn:
                return _start_error(START_ERR.INVALID_POSITION, "that LSN is ahead of the server's log")
            if not self.server.log.covers(cursor):
                return _start_error(
                    START_ERR.BEHIND_WINDOW, "that LSN is older than the server's retention window; resync"
                )
            missing = [s for s in req.subscription_ids if s not in state.subscriptions]
            if missing:
                return _start_error(START_ERR.SUBSCRIPTION_NOT_FOUND, f"unknown subscription {missing[0]}")
        # resume exactly the subscriptions the client still has; forget the others
        keep = set(req.subscription_ids)
        for sub_id in list(state.subscriptions):
            if sub_id not in keep:
                del state.subscriptions[sub_id]
        for sub in state.subscriptions.values():
            for r in sub.requests:
                shape = await self._shape(sub.id, r["request_id"], TableRef.parse(r["table"]), r.get("where", ""))
                if isinstance(shape, str):
                    return _start_error(START_ERR.SUBSCRIPTION_NOT_FOUND, f"cannot resume {sub.id}: {shape}")
                self._register(shape)
        await self.server.store.save_async(state)
        self.cursor = cursor
        self.replicating = True
        self.server.scanning.add(self)
        self._streamer = asyncio.create_task(self.stream(), name=f"stream {self.client_id}")
        if self.server.options.start_client_replication and not self.client_stream_started:
            self._client_stream = asyncio.create_task(self._start_client_stream())
        return pb.SatInStartReplicationResp(unacked_window_size=window)

    async def rpc_stopReplication(self, req: pb.SatInStopReplicationReq) -> Message:
        if self._streamer is not None:
            self._streamer.cancel()
            self._streamer = None
        self.replicating = False
        return pb.SatInStopReplicationResp()

    async def rpc_subscribe(self, req: pb.SatSubsReq) -> Message:
        sub_id = req.subscription_id
        state = self.state
        assert state is not None

        def error(code: int, message: str, shape_errors: Sequence[Any] = ()) -> pb.SatSubsResp:
            return pb.SatSubsResp(
                subscription_id=sub_id,
                err=SUBS_ERR(code=code, message=message, shape_request_error=list(shape_errors)),  # type: ignore[arg-type]
            )

        if not _is_uuid(sub_id):
            return ERR(error_type=ERR.INVALID_REQUEST, message="subscription_id must be a UUID")
        if not self.replicating:
            return ERR(error_type=ERR.INVALID_REQUEST, message="start replication before subscribing")
        if sub_id in state.subscriptions or sub_id in self._inflight:
            return error(SUBS_ERR.SUBSCRIPTION_ID_ALREADY_EXISTS, f"subscription {sub_id} already exists")
        if not req.shape_requests:
            return ERR(error_type=ERR.INVALID_REQUEST, message="a subscription needs at least one shape request")
        ids = [r.request_id for r in req.shape_requests]
        if len(set(ids)) != len(ids) or not all(ids):
            return ERR(error_type=ERR.INVALID_REQUEST, message="shape request ids must be unique and non-empty")
        problems = []
        shapes: list[Shape] = []
        for r in req.shape_requests:
            selects = r.shape_definition.selects
            if not selects:
                problems.append(
                    SHAPE_ERR(code=SHAPE_ERR.EMPTY_SHAPE_DEFINITION, message="no select", request_id=r.request_id)
                )
                continue
            if len(selects) > 1:
                problems.append(
                    SHAPE_ERR(
                        code=SHAPE_ERR.DUPLICATE_TABLE_IN_SHAPE_DEFINITION,
                        message="one select per shape request",
                        request_id=r.request_id,
                    )
                )
                continue
            sel = selects[0]
            if sel.include:
                problems.append(
                    SHAPE_ERR(
                        code=SHAPE_ERR.INVALID_INCLUDE_TREE,
                        message="include trees are not supported yet",
                        request_id=r.request_id,
                    )
                )
                continue
            table, where = await self._resolve(sel.tablename, sel.where)
            if isinstance(table, _Refused):
                problems.append(
                    SHAPE_ERR(code=table.code, message=table.message, request_id=r.request_id)  # type: ignore[arg-type]
                )
                continue
            shape = (
                await self._shape(sub_id, r.request_id, table, where)
                if table
                else f"{sel.tablename!r} is not electrified"
            )
            if isinstance(shape, str):
                code = (
                    SHAPE_ERR.TABLE_NOT_FOUND
                    if table is None or "not electrified" in shape
                    else SHAPE_ERR.INVALID_WHERE_CLAUSE
                )
                problems.append(SHAPE_ERR(code=code, message=shape, request_id=r.request_id))
                continue
            shapes.append(shape)
        if problems:
            return error(SUBS_ERR.SHAPE_REQUEST_ERROR, "some shape requests are invalid", problems)
        self.control.append(_Subscribe(sub_id, shapes))
        self._inflight.add(sub_id)
        self.wake.set()
        return pb.SatSubsResp(subscription_id=sub_id)

    async def _resolve(self, tablename: str, where: str) -> tuple[TableRef | _Refused | None, str]:
        """A request names a table (with an optional where), or a shape declared in electric.yaml."""
        table = TableRef.parse(tablename)
        if table in await self.server.catalog.electrified_tables():
            return table, where
        rules = await self.server.catalog.shape_rules()
        declared = rules.declared.get(tablename)
        if declared is not None and not where.strip():
            if declared.get("include"):
                # serving the root table alone would look like success and silently miss the rest
                return _Refused(
                    SHAPE_ERR.INVALID_INCLUDE_TREE,
                    f"shape {tablename!r} has an include tree, which this server does not serve yet;"
                    " subscribe to its tables one by one instead",
                ), where
            return TableRef.parse(declared["table"]), declared.get("where") or ""
        return None, where

    async def _shape(self, sub_id: str, request_id: str, table: TableRef, where: str) -> Shape | str:
        """Compile one shape request, or say why it is refused."""
        if table not in await self.server.catalog.electrified_tables():
            return f"table {table} is not electrified"
        rules = await self.server.catalog.shape_rules()
        if rules.adhoc != "allow" and rules.find(table, where) is None:
            return (
                f"shape ({table}{' where ' + where if where.strip() else ''}) is not declared in electric.yaml, "
                "and adhoc_shapes is deny"
            )
        rel = await self.server.catalog.describe(table)
        if rel is None:
            return f"table {table} does not exist"
        compiled = None
        # a client gets only the rows its grants let it read, whatever the shape asks for
        access = await self._access(rel)
        if where.strip():
            assert self.identity is not None
            try:
                compiled = compile_where(where, rel, self.identity.claims, readable=access.filterable(rel))
            except ShapeError as exc:
                at = f" at position {exc.offset + 1}" if exc.offset is not None else ""
                return f"invalid where clause{at}: {exc.message}"
        if access.rows is not None:
            compiled = access.rows if compiled is None else all_true([compiled, access.rows])
        return Shape(sub_id, request_id, table, rel, compiled, where)

    async def rpc_unsubscribe(self, req: pb.SatUnsubsReq) -> Message:
        state = self.state
        assert state is not None
        known = [s for s in req.subscription_ids if s in state.subscriptions]
        if known:
            self.control.append(_Unsubscribe(known))
            self.wake.set()
        return pb.SatUnsubsResp()

    def on_ack(self, ack: pb.SatOpLogAck) -> None:
        if self.identity is None:
            raise ProtocolViolation(ERR.AUTH_REQUIRED, "authenticate first")
        try:
            lsn = codec.decode_server_lsn(ack.lsn) if ack.lsn else 0
        except (ValueError, UnicodeDecodeError):
            raise ProtocolViolation(ERR.INVALID_REQUEST, "malformed LSN in SatOpLogAck") from None
        if lsn > self.cursor:
            raise ProtocolViolation(ERR.INVALID_REQUEST, "Acknowledged unknown txn")
        while self.unacked and self.unacked[0] <= lsn:
            self.unacked.popleft()
        if self.state is not None and lsn > self.state.acked_lsn:
            self.state.acked_lsn = lsn
            now = time.monotonic()
            if now - self._last_saved > 1.0:  # persisted at most once a second, and on disconnect
                self._last_saved = now
                self._saving = asyncio.ensure_future(self.server.store.save_async(self.state))
        self.acked.set()

    # -- outbound ----------------------------------------------------------------------------
    def _converter(self, rel: RelationDef) -> Any:
        """Postgres text -> wire values for ``rel``, keeping only the columns this client may read."""
        conv = self._converters.get(rel)
        if conv is None:
            transform = outbound.row_transform(rel)
            keep = self._visible(rel)
            access = self.read_access.get(rel.qualified)
            visible = access.masked(rel) if access is not None else None
            if visible is not None:
                names = [c.name for c in rel.columns]
                indexes = keep if keep is not None else tuple(range(len(names)))

                def conv(row: Any, t: Any = transform, k: tuple[int, ...] = indexes, v: Any = visible) -> Any:
                    shown = v(row)  # None: every column
                    wire = t(row)
                    return tuple(wire[i] if shown is None or names[i] in shown else None for i in k)

            elif keep is None:
                conv = transform
            else:
                conv = lambda row, t=transform, k=keep: tuple(t(row)[i] for i in k)  # noqa: E731
            self._converters[rel] = conv
        return conv

    def _visible(self, rel: RelationDef) -> tuple[int, ...] | None:
        """Indexes of the columns of ``rel`` this client may read (None: all of them)."""
        access = self.read_access.get(rel.qualified)
        if access is None or access.columns is None:
            return None
        return tuple(i for i, c in enumerate(rel.columns) if c.name in access.columns)

    async def _send_relation(self, rel: RelationDef) -> None:
        if self.sent_relations.get(rel.relid) != rel:
            keep = self._visible(rel)
            shown = (
                rel
                if keep is None
                else RelationDef(rel.relid, rel.schema, rel.name, tuple(rel.columns[i] for i in keep))
            )
            await self._emit(outbound.relation_message(shown))
            self.sent_relations[rel.relid] = rel

    async def _access(self, rel: RelationDef) -> ReadAccess:
        """What this client may read of ``rel`` (its grants and roles as they are now)."""
        policy, relations = await self.server.catalog.policy()
        if not policy.enforced:
            return ReadAccess(None, None)
        if self.roles is None:
            self.roles = await self.server.catalog.role_state(policy, relations, self.identity)
        assert self.identity is not None
        access = read_access(policy, rel, self.identity.user_id, self.identity.claims, self.roles)
        known = self.read_access.get(rel.qualified)
        # the converters mask by the grants' filters: rebuilt whenever they are recomputed
        self._converters = {r: c for r, c in self._converters.items() if r.qualified != rel.qualified}
        if known is None or known.columns != access.columns:
            self.sent_relations = {k: r for k, r in self.sent_relations.items() if r.qualified != rel.qualified}
        self.read_access[rel.qualified] = access
        return access

    async def stream(self) -> None:
        try:
            await self._stream()
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream to client %s failed", self.client_id)
            await self._fail(ERR.INTERNAL, "internal error in the server's stream", CLOSE_INTERNAL_ERROR)

    async def _stream(self) -> None:
        while True:
            while self.control:
                item = self.control.popleft()
                self._leave_live()
                if isinstance(item, _Subscribe):
                    try:
                        await self._deliver(item)
                        self._inflight.discard(item.subscription_id)
                    except (psycopg.Error, TimeoutError, OSError) as exc:
                        # the client learns this subscription failed; the connection carries on
                        log.warning("could not deliver subscription %s: %s", item.subscription_id, exc)
                        self._inflight.discard(item.subscription_id)
                        await self.send(
                            pb.SatSubsDataError(
                                code=pb.SatSubsDataError.SHAPE_DELIVERY_ERROR,
                                message=f"the server could not read the data: {exc}",
                                subscription_id=item.subscription_id,
                            )
                        )
                elif isinstance(item, _Reassess):
                    await self._reassess()
                else:
                    await self._unsubscribe(item)
            if len(self.unacked) >= self.server.options.unacked_window:
                self.acked.clear()
                await self.acked.wait()
                continue
            self.wake.clear()
            txns = self._next_transactions()
            if not txns:
                await self.wake.wait()
                continue
            for tx in txns:
                if self.control or len(self.unacked) >= self.server.options.unacked_window:
                    break
                if self.live:
                    self.relevant.popleft()
                self.cursor = max(self.cursor, tx.lsn)
                await self._send_transaction(tx)

    async def _send_transaction(self, tx: Transaction) -> None:
        changes = route_transaction(self.shapes, tx)
        if tx.origin is not None and tx.origin == self.client_id:
            # the client's own transaction always goes back to it (it clears its oplog with it),
            # with rows it wrote that none of its shapes hold as GONE: it must not keep them
            changes = await self._own_echo(tx, changes)
        elif not changes:
            return
        for ch in changes:
            await self._send_relation(ch.relation)
        await self._emit(outbound.transaction_oplog(tx, changes, self._converter))
        self.unacked.append(tx.lsn)
        self.server.stats["transactions_sent"] += 1

    async def _own_echo(self, tx: Transaction, routed: list[Change]) -> list[Change]:
        held = {outbound.change_key(ch.relation, ch.new) for ch in routed if ch.new is not None}
        extra: list[Change] = []
        for ch in tx.changes:
            if ch.op in ("I", "U") and ch.new is not None:
                key = outbound.change_key(ch.relation, ch.new)
                if key not in held:
                    # unchanged by the merge (the client's write lost), or outside its shapes
                    held.add(key)
                    shapes = self.shapes.get(ch.relation.qualified)
                    if shapes and any(s.matches(ch.new) for s in shapes.candidates(ch)):
                        extra.append(Change("U", ch.relation, ch.new, ch.new))
                    else:
                        extra.append(Change("G", ch.relation, None, ch.new))
        if tx.write is not None:
            for name in tx.write.gone:
                if name in held:
                    continue
                qualified, *pk_values = name.split("\0")
                rel = await self.server.catalog.describe(TableRef.parse(qualified))
                if rel is None or len(pk_values) != len(rel.pk_indexes):
                    continue
                row: list[bytes | None] = [None] * len(rel.columns)
                for i, v in zip(rel.pk_indexes, pk_values, strict=True):
                    row[i] = v.encode()
                extra.append(Change("G", rel, None, tuple(row)))
        return [*routed, *extra]

    async def _catch_up_to(self, snap: Snapshot) -> list[Transaction]:
        """Stream every logged transaction the snapshot holds, so the client is at its point.

        Transactions before the snapshot's bound that it does not hold (they committed while it was
        being taken) are returned, to be sent after the subscription change.
        """
        vis = snap.visibility
        await self.server.caught_up()
        deferred: list[Transaction] = []
        while True:
            txns = [t for t in self.server.log.read_after(self.cursor, 500) if t.lsn < vis.bound_lsn]
            if not txns:
                return deferred
            for tx in txns:
                self.cursor = tx.lsn
                if vis.holds(tx):
                    await self._send_transaction(tx)
                else:
                    deferred.append(tx)

    def _next_transactions(self) -> list[Transaction]:
        """The next transactions to look at.

        Catching up, that is every logged transaction after the cursor. Once caught up the
        connection goes live: the router then queues only the transactions that may concern it,
        and everything in between is skipped without being read.
        """
        logf = self.server.log
        if self.live:
            if len(self.relevant) > LIVE_QUEUE_LIMIT:
                self._leave_live()  # a slow client: read from the log instead of queueing
            else:
                out = []
                for lsn in list(self.relevant)[:100]:
                    found = logf.read_after(lsn - 1, 1)
                    if not found or found[0].lsn != lsn:  # pragma: no cover - the log always has it
                        self._leave_live()
                        return []
                    out.append(found[0])
                if not out:
                    self.cursor = max(self.cursor, self.server.live_head)
                return out
        txns = logf.read_after(self.cursor, 100)
        if not txns and self.cursor >= logf.last_lsn:
            self.live = True  # nothing may await between this check and the next published batch
            self.server.scanning.discard(self)
        return txns

    def _leave_live(self) -> None:
        self.live = False
        self.relevant.clear()
        self.server.scanning.add(self)

    def _register(self, shape: Shape) -> None:
        self.shapes.setdefault(str(shape.table), TableShapes()).add(shape)
        self.server.router.add(self, str(shape.table), shape)

    async def _deliver(self, sub: _Subscribe) -> None:
        state = self.state
        assert state is not None
        async with self._snapshot() as snap:
            deferred = await self._catch_up_to(snap)
            for shape in sub.shapes:
                await self._send_relation(shape.relation)
            lsn = codec.encode_server_lsn(self.cursor)
            await self._emit(pb.SatSubsDataBegin(subscription_id=sub.subscription_id, lsn=lsn))
            delivered: dict[str, TableShapes] = {}
            for shape in sub.shapes:
                rel = shape.relation
                convert = self._converter(rel)
                # rows the client already holds through another shape are not sent again
                table = str(shape.table)
                existing = self.shapes.get(table)
                mine = delivered.setdefault(table, TableShapes())
                held = [s.where for s in (*(existing.overlapping(shape) if existing else ()), *mine.overlapping(shape))]
                await self._emit(pb.SatShapeDataBegin(request_id=shape.request_id, uuid=str(uuid.uuid4())))
                async for rows in snap.rows(rel, snapshot_filter(shape.where, held), tags=True):
                    await self._emit(outbound.inserts(rel, rows, convert))
                await self._emit(pb.SatShapeDataEnd())
                mine.add(shape)
            await self._emit(pb.SatSubsDataEnd())
        self.server.stats["subscription_deliveries"] += 1
        for shape in sub.shapes:
            self._register(shape)
        for tx in deferred:
            await self._send_transaction(tx)
        state.subscriptions[sub.subscription_id] = SubscriptionRecord(
            sub.subscription_id,
            [{"request_id": s.request_id, "table": str(s.table), "where": s.where_text} for s in sub.shapes],
            self.cursor,
        )
        await self.server.store.save_async(state)

    def roles_may_have_changed(self) -> None:
        if self.roles is not None and not any(isinstance(c, _Reassess) for c in self.control):
            self.control.append(_Reassess())
            self.wake.set()

    async def _reassess(self) -> None:
        """Apply a change of the client's roles at a consistent point: rows it may no longer read
        leave as GONE, rows it now may read arrive as inserts, in one transaction."""
        policy, relations = await self.server.catalog.policy()
        async with self._snapshot() as snap:
            deferred = await self._catch_up_to(snap)
            roles = await read_roles(snap.conn, policy, relations, self.identity)
            if roles == self.roles:
                changes: list[pb.SatTransOp] = []
            else:
                self.roles = roles
                changes = await self._reshape(snap)
            if changes:
                log_ = pb.SatOpLog()
                ts = int(time.time() * 1000)
                lsn = codec.encode_server_lsn(self.cursor)
                log_.ops.add().begin.CopyFrom(pb.SatOpBegin(commit_timestamp=ts, lsn=lsn))
                log_.ops.extend(changes)
                log_.ops.add().commit.CopyFrom(pb.SatOpCommit(commit_timestamp=ts, lsn=lsn))
                await self._emit(log_)
                self.unacked.append(self.cursor)
        for tx in deferred:
            await self._send_transaction(tx)

    async def _reshape(self, snap: Snapshot) -> list[pb.SatTransOp]:
        """Recompile every shape with the new roles; the rows that move, as ops (inserts, GONE)."""
        state = self.state
        assert state is not None
        ops: list[pb.SatTransOp] = []
        for table, shapes in list(self.shapes.items()):
            old = list(shapes.all)
            rel = old[0].relation
            old_access = self.read_access.pop(table, None)
            new: list[Shape] = []
            for s in old:
                shape = await self._shape(s.subscription_id, s.request_id, s.table, s.where_text)
                if isinstance(shape, Shape):
                    new.append(shape)
            for s in old:
                self.server.router.remove(self, table, s)
                shapes.remove(s)
            for s in new:
                self._register(s)
            old_where = any_of([s.where for s in old])
            new_where = any_of([s.where for s in new])
            await self._send_relation(rel)
            convert = self._converter(rel)
            async for rows in snap.rows(rel, snapshot_filter(old_where, [new_where])):
                ops.extend(outbound.gone_op(rel, tuple(row[i] for i in rel.pk_indexes), convert) for row in rows)
            # rows that move in; every row it holds if the columns it may read changed (they carry them)
            new_access = self.read_access.get(table)
            widened = (old_access.columns if old_access else None) != (new_access.columns if new_access else None)
            held: list[CompiledWhere | None] = [] if widened else [old_where]
            async for rows in snap.rows(rel, snapshot_filter(new_where, held), tags=True):
                ops.extend(outbound.inserts(rel, rows, convert).ops)
        return ops

    async def _unsubscribe(self, unsub: _Unsubscribe) -> None:
        state = self.state
        assert state is not None
        async with self._snapshot() as snap:
            deferred = await self._catch_up_to(snap)
            leaving: dict[str, list[Shape]] = {}
            for sub_id in unsub.subscription_ids:
                if state.subscriptions.pop(sub_id, None) is None:
                    continue
                for table, shapes in list(self.shapes.items()):
                    gone = [s for s in shapes.all if s.subscription_id == sub_id]
                    for shape in gone:
                        self.server.router.remove(self, table, shape)
                        shapes.remove(shape)
                    if gone:
                        leaving.setdefault(table, []).extend(gone)
                    if not shapes:
                        del self.shapes[table]
            await self._emit(
                pb.SatUnsubsDataBegin(subscription_ids=unsub.subscription_ids, lsn=codec.encode_server_lsn(self.cursor))
            )
            # the client is at the snapshot's point: it holds exactly the rows its shapes match there
            for table, removed in sorted(leaving.items()):
                rel = removed[0].relation
                await self._send_relation(rel)
                convert = self._converter(rel)
                left = self.shapes.get(table)
                remaining = [s.where for s in left.all] if left else []
                where = snapshot_filter(any_of([s.where for s in removed]), remaining)
                async for rows in snap.rows(rel, where):
                    pks = [tuple(row[i] for i in rel.pk_indexes) for row in rows]
                    await self._emit(pb.SatOpLog(ops=[outbound.gone_op(rel, pk, convert) for pk in pks]))
            await self._emit(pb.SatUnsubsDataEnd())
        for tx in deferred:
            await self._send_transaction(tx)
        await self.server.store.save_async(state)


def _start_error(code: int, message: str) -> pb.SatInStartReplicationResp:
    return pb.SatInStartReplicationResp(err=START_ERR(code=code, message=message))  # type: ignore[arg-type]
