"""One Satellite client connection: the driver of a sans-I/O :class:`~.session.Session`.

It reads frames, hands each to the session, sends the session's replies and carries out its
effects: binding the client id, the shape engine (subscriptions and the outbound stream), the
client's writes, timers. Three tasks per connection: the reader (this one); the engine's stream,
which reads the durable log from the client's position and sends what the client's shapes and
grants show through a :class:`~.satellite_sink.SatelliteSink`; and the writer task, which hands
the client's transactions, in order, to the server's one writer. The stream pulls from the log,
so a slow client only slows itself; one that stops reading is dropped after ``send_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import psycopg
from google.protobuf.message import Message
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from electricctl import _logctx as logctx
from electricctl._auth.tokens import Identity
from electricctl._engine.engine import AnyShape, ShapeEngine
from electricctl._engine.engine import Refused as EngineRefused
from electricctl._engine.trees import TreeShape
from electricctl._model.migrations import Migration
from electricctl._model.table import TableRef
from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._protocol.rpc import RpcCalls, RpcError
from electricctl._server import session as S
from electricctl._server.clients import ClientState
from electricctl._server.common import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_PROTOCOL_ERROR,
    ERR,
    NATIVE_HEADER,
    ProtocolViolation,
    first_line,
    log_once,
)
from electricctl._server.migrations_api import Unavailable as MigrationsUnavailable
from electricctl._server.satellite_sink import SatelliteSink
from electricctl._server.services import Services
from electricctl._server.writes import ClientWrites
from electricctl._shapes.tree import includes_from_json

log = logging.getLogger("electricctl.server")

START_ERR = S.START_ERR
SUBS_ERR = S.SUBS_ERR
SHAPE_ERR = S.SHAPE_ERR


RpcOutcome = S.ClientBound | S.StreamStarted | S.Subscribed | S.Refused


class Connection:
    def __init__(self, server: Services, ws: ServerConnection) -> None:
        self.server = server
        self.ws = ws
        options = server.options
        self.session = S.Session(
            S.SessionConfig(
                server.config.auth, server.server_id, options.unacked_window, options.start_client_replication
            )
        )
        self.phase: S.State = S.Unauthenticated()
        """Where the protocol is; changed only by the session's steps."""
        self.client_id: str | None = None
        self.identity: Identity | None = None
        self.state: ClientState | None = None
        """The client's state that outlives a connection (loaded when it authenticates)."""
        self._streamer: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self.peer = f"{ws.remote_address}"
        self.peer_host = str(ws.remote_address[0]) if ws.remote_address else "?"
        self._auth_deadline: asyncio.TimerHandle | None = None
        self._closing: asyncio.Future[None] | None = None
        self._last_saved = 0.0
        self._saving: asyncio.Future[None] | None = None
        self._rpc = RpcCalls(first_id=0)  # the server numbers its own calls from 0, the client from 1
        self._client_stream: asyncio.Task[None] | None = None
        headers = ws.request.headers if ws.request is not None else None
        self.native = headers is not None and NATIVE_HEADER in headers
        """Our own client: it understands a refusal sent as a top-level error that keeps the
        connection open. The npm client treats any top-level error as fatal, so it gets none."""
        self.writes = ClientWrites(server, peer=self.peer, native=self.native, send=self.send, fail=self._fail)
        """The client -> server direction: its transactions, queued for the server's writer."""
        self.sink = SatelliteSink(
            options,
            server.spool_dir,
            self.send_frame,
            self.ws.transport.abort,
            who=self.peer,
            has_room=lambda: self.session.has_room(self.phase),
            delivered=self._delivered,
            errors=server.metrics.error_sent,
        )
        """The server -> client direction as Satellite frames (relations, spool)."""
        self.engine: ShapeEngine | None = None
        """The client's shapes, served (made once it has authenticated)."""
        self._catching_up: set[asyncio.Task[None]] = set()
        """``electricctl.caughtUp`` requests being answered."""
        self.draining = False
        """The server is stopping gracefully: frames that arrive now are not acted on (a write
        is not acknowledged, so the client sends it again to wherever it reconnects)."""

    @property
    def replicating(self) -> bool:
        return isinstance(self.phase, S.Replicating)

    @property
    def client_stream_started(self) -> bool:
        """Has the server asked the client for its writes?"""
        return isinstance(self.phase, S.Authenticated | S.Replicating) and self.phase.writes_open

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.server.options.auth_timeout
        self._auth_deadline = loop.call_later(timeout, self._timer, S.AuthDeadline(timeout))
        try:
            async for frame in self.ws:
                if self.draining:
                    continue  # read only so that the close handshake completes
                if isinstance(frame, str):
                    raise ProtocolViolation(ERR.INVALID_REQUEST, "text frames are not part of the protocol")
                await self.feed(S.Frame(frame, time.time()))
        except ProtocolViolation as exc:
            log.info("client %s broke the protocol: %s", self.client_id or self.peer, exc)
            await self._fail(exc.code, str(exc))
        except ConnectionClosed:
            pass
        finally:
            await self.shutdown()

    def _timer(self, event: S.AuthDeadline | S.TokenExpired) -> None:
        if isinstance(event, S.AuthDeadline) and isinstance(self.phase, S.Unauthenticated):
            log.info("closing %s: it did not authenticate within %.0fs", self.peer, event.seconds)
        self._closing = asyncio.ensure_future(self.feed(event))

    def drop(self, code: int, reason: str) -> None:
        """Stop streaming to this client at once and close its connection with ``code``."""
        if self._streamer is not None:
            self._streamer.cancel()
        self.phase = S.Closed()
        self._closing = asyncio.ensure_future(self.close(code, reason))

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code``. Reading resumes first: websockets stops reading a socket whose
        frames nobody consumes (backpressure), and the client's answer to our close frame must
        still be read, or the close would wait out its timeout."""
        with contextlib.suppress(Exception):
            self.ws.transport.resume_reading()
        self.server.metrics.closed(code)
        await self.ws.close(code, reason)

    async def _fail(self, code: int, message: str, close_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        """Close the connection; the client gets an error frame first, except for a server-side
        failure sent to the npm client: it treats any error frame as fatal and would stop
        reconnecting, where a plain close (1011) makes it reconnect and resend."""
        self.phase = S.Closed()
        try:
            if close_code != CLOSE_INTERNAL_ERROR or self.native:
                await self.send(ERR(error_type=code, message=message))  # type: ignore[arg-type]
            await self.close(close_code, message[:120])
        except ConnectionClosed:
            pass

    async def drain(self, timeout: float) -> None:
        """The first part of a graceful stop: take no new requests or writes from this client,
        and apply (and acknowledge) the writes it has in flight. The stream to it goes on until
        it is closed (:meth:`close` with 1012)."""
        self.draining = True
        await self.writes.stop(timeout)

    async def shutdown(self) -> None:
        for task in list(self._catching_up):
            task.cancel()
        if self._auth_deadline is not None:
            self._auth_deadline.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        await self.writes.stop()
        if self._streamer is not None:
            self._streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._streamer  # its failure was already reported by stream()
        if self.engine is not None:
            self.engine.close()
        if self.client_id is not None and self.server.clients.get(self.client_id) is self:
            del self.server.clients[self.client_id]
            if self.state is not None:
                await self.server.store.save_async(self.state)

    async def send(self, msg: Message) -> None:
        frame = codec.encode(msg)
        self.server.metrics.sent(msg)  # errors, by code
        await self.send_frame(frame)

    async def send_frame(self, frame: bytes) -> None:
        try:
            await asyncio.wait_for(self.ws.send(frame), timeout=self.server.options.send_timeout)
        except TimeoutError:
            log.warning("dropping client %s: it stopped reading", self.client_id or self.peer)
            self.ws.transport.abort()
            raise ConnectionClosed(None, None) from None

    # -- the session's steps -------------------------------------------------------------------
    async def feed(self, event: S.Event) -> None:
        """Hand one event to the session; send its replies, carry out its effects."""
        step = self.session.handle(self.phase, event)
        self.phase = step.state
        for reply in step.replies:
            await self.send(reply)
        for effect in step.effects:
            await self._carry_out(effect)

    def _delivered(self, lsn: int, transaction: bool) -> None:
        self.phase = self.session.handle(self.phase, S.Delivered(lsn, transaction)).state

    async def _carry_out(self, effect: S.Effect) -> None:
        match effect:
            case S.BindClient() | S.StartStream() | S.Subscribe():
                await self.feed(await self._rpc_effect(effect))
            case S.IdentityChanged(identity, first):
                self._identity_changed(identity, first)
            case S.AuthRefused(reason):
                log.info("refused authentication from %s: %s", self.peer, reason)
            case S.BeginStreaming():
                assert self.engine is not None
                self._streamer = asyncio.create_task(self.stream(self.engine), name=f"stream {self.client_id}")
            case S.StopStream():
                if self._streamer is not None:
                    self._streamer.cancel()
                    self._streamer = None
            case S.AskClientWrites():
                self._client_stream = asyncio.create_task(self._start_client_stream())
            case S.Unsubscribe(ids):
                self._engine().unsubscribe(list(ids))
            case S.CatchUp(request_id):
                # the reader goes on meanwhile: the stream may need the client's acks to get there
                task = asyncio.create_task(self._catch_up(request_id))
                self._catching_up.add(task)
                task.add_done_callback(self._catching_up.discard)
            case S.Acked(lsn):
                self._acked(lsn)
            case S.ClientRelation(msg):
                self.writes.announce(msg)
            case S.ClientTransaction(msg, size):
                await self.writes.receive(msg, size)
            case S.CallResponse(response):
                if not self._rpc.resolve(response):
                    raise ProtocolViolation(ERR.INVALID_REQUEST, f"response to unknown request {response.request_id}")
            case S.Close(code, reason):
                if code == CLOSE_PROTOCOL_ERROR:
                    log.info("client %s broke the protocol: %s", self.client_id or self.peer, reason)
                with contextlib.suppress(ConnectionClosed):
                    await self.close(code, reason)

    async def _rpc_effect(self, effect: S.BindClient | S.StartStream | S.Subscribe) -> RpcOutcome:
        """Carry out an effect that answers an RPC; a failure is the RPC's error, not the connection's."""
        method = {S.BindClient: "authenticate", S.StartStream: "startReplication", S.Subscribe: "subscribe"}[
            type(effect)
        ]
        try:
            if isinstance(effect, S.BindClient):
                return await self._bind(effect)
            if isinstance(effect, S.StartStream):
                return await self._start(effect)
            return await self._subscribe(effect)
        except (ConnectionClosed, ProtocolViolation):
            raise
        except psycopg.Error as exc:
            log.warning("%s from client %s failed: Postgres: %s", method, self.client_id or self.peer, first_line(exc))
            return S.Refused(effect.request_id, method, ERR.INTERNAL, "the server could not reach its database; retry")
        except RecursionError:
            log.info("refused %s from %s: nested too deeply", method, self.client_id or self.peer)
            return S.Refused(effect.request_id, method, ERR.INVALID_REQUEST, "the request is nested too deeply")
        except Exception as exc:
            log_once(exc, f"{method} from client {self.client_id or self.peer} failed")
            return S.Refused(effect.request_id, method, ERR.INTERNAL, f"internal error in {method}")

    # -- effects ------------------------------------------------------------------------------
    async def _bind(self, effect: S.BindClient) -> S.ClientBound | S.Refused:
        client_id, identity = effect.client_id, effect.identity
        owner = await self.server.catalog.bind_client(client_id, identity.user_id)
        if owner != identity.user_id:
            log.warning(
                "refused client id %s to user %r from %s: it belongs to another user",
                client_id,
                identity.user_id,
                self.peer,
            )
            return S.Refused(
                effect.request_id,
                "authenticate",
                ERR.AUTH_FAILED,
                "this client id belongs to another user: each user's clients need ids of their own",
            )
        other = self.server.clients.get(client_id)
        if other is not None and other is not self:
            return S.Refused(
                effect.request_id, "authenticate", ERR.INVALID_REQUEST, "another connection uses this client id"
            )
        self.client_id = self.writes.client_id = self.sink.who = client_id
        self.server.clients[client_id] = self
        # the connection's log lines (and its stream's: tasks copy the context) say whose they are
        logctx.CLIENT.set(client_id)
        logctx.USER.set(identity.user_id)
        try:
            await self.server.store.claim(client_id)  # with instances sharing a log: it may come from another
        except Exception as exc:
            log.warning("cannot read the shared state of client %s (%s): using this instance's", client_id, exc)
        self.state = self.server.store.load(client_id)
        return S.ClientBound(effect.request_id, client_id, identity)

    def _identity_changed(self, identity: Identity, first: bool) -> None:
        self.identity = self.writes.identity = identity
        if self.engine is not None:  # a renewed token: its claims count from now on
            self.engine.identity = self.engine.projection.identity = identity
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if identity.expires_at is not None:
            delay = max(0.0, identity.expires_at - time.time())
            self._expiry = asyncio.get_running_loop().call_later(delay, self._timer, S.TokenExpired())
        if first:
            # lift the pre-auth limits: frames up to the full limit (websockets reads this before each frame)
            if self._auth_deadline is not None:
                self._auth_deadline.cancel()
                self._auth_deadline = None
            self.ws.protocol.max_message_size = self.server.options.max_frame_bytes
            self.server.peer_authenticated(self)

    def _engine(self) -> ShapeEngine:
        """The shape engine, made at the first authentication (it needs the identity and state)."""
        if self.engine is None:
            assert self.client_id is not None and self.identity is not None and self.state is not None
            self.engine = ShapeEngine(self.server, self.client_id, self.identity, self.state, self.sink)
            self.engine.max_tree_rows = self.server.options.max_tree_rows
        return self.engine

    async def _start(self, effect: S.StartStream) -> S.StreamStarted | S.Refused:
        def refuse(code: int, message: str) -> S.Refused:
            log.info("client %s cannot resume (%s): it must resync", self.client_id, message)
            return S.Refused(effect.request_id, "startReplication", code, message, start=True)

        state = self.state
        assert state is not None
        if effect.schema_version:
            newest = await self.server.catalog.newest_migration()
            if newest and effect.schema_version > newest:  # versions compare as text, as the client does
                return refuse(
                    START_ERR.UNKNOWN_SCHEMA_VSN,
                    f"this client's schema is at version {effect.schema_version}, newer than any migration this"
                    f" server has ({newest}); was the database restored from an older backup? Point the client"
                    " at the database its schema came from, or start it with a fresh local database",
                )
        engine = self._engine()
        logf = self.server.log
        schema: list[Migration] = []
        if effect.lsn is None:
            # a client starting afresh gets every migration after its schema version first. The
            # position is read before the migrations: one committed in between is in both, and
            # sent twice (a client skips a version it has), never in neither
            cursor = logf.last_lsn
            try:
                schema = await self.server.migrations(effect.schema_version)
            except MigrationsUnavailable as exc:
                return refuse(START_ERR.CODE_UNSPECIFIED, f"the server cannot read the schema migrations: {exc}")
        else:
            cursor = effect.lsn
            if cursor > logf.last_lsn:
                return refuse(START_ERR.INVALID_POSITION, "that LSN is ahead of the server's log")
            if not logf.covers(cursor):
                return refuse(START_ERR.BEHIND_WINDOW, "that LSN is older than the server's retention window; resync")
            if state.tree_pruned_lsn and cursor <= state.tree_pruned_lsn:
                # include-tree keys were forgotten after the client acknowledged a position past
                # this one: it lost what it acknowledged, and its tree rows cannot be reconciled
                return refuse(
                    START_ERR.BEHIND_WINDOW,
                    f"this client acknowledged a position after {cursor} and now resumes from it; its include"
                    " trees cannot be reconciled from there: resync",
                )
            missing = [s for s in effect.subscription_ids if s not in state.subscriptions]
            if missing:
                return refuse(START_ERR.SUBSCRIPTION_NOT_FOUND, f"unknown subscription {missing[0]}")
        # resume exactly the subscriptions the client still has; forget the others
        keep = set(effect.subscription_ids)
        for sub_id in list(state.subscriptions):
            if sub_id not in keep:
                del state.subscriptions[sub_id]
        outdated = False
        for sub in state.subscriptions.values():
            for r in sub.requests:
                shape = await engine.compile(
                    sub.id,
                    r["request_id"],
                    TableRef.parse(r["table"]),
                    r.get("where", ""),
                    includes_from_json(r.get("include")),
                    declared=r.get("shape"),
                )
                if isinstance(shape, str):
                    return refuse(START_ERR.SUBSCRIPTION_NOT_FOUND, f"cannot resume {sub.id}: {shape}")
                engine.register(shape)
                outdated = outdated or await engine.outdated(shape)
        # the pruned state is saved in the background: the response does not wait for an fsync (the
        # npm client gives startReplication 3 s), and saves of one client land in call order
        self._saving = asyncio.ensure_future(self.server.store.save_async(state))
        previous = state.access
        engine.start(cursor, schema)
        if previous and (outdated or previous != engine.access_now()):
            # its grants, roles or a shape of electric.yaml it holds changed while it was away:
            # moved from what it was last told it holds once it is at a snapshot point (rows it
            # may no longer read leave as GONE, rows it now may read arrive)
            engine.resumed(previous)
        elif outdated:
            engine.catalog_changed()
        return S.StreamStarted(effect.request_id, cursor)

    async def _subscribe(self, effect: S.Subscribe) -> S.Subscribed:
        sub_id = effect.subscription_id
        engine = self._engine()
        generation = engine.catalog_generation
        assert self.state is not None
        if sub_id in self.state.subscriptions or sub_id in engine.inflight:
            return S.Subscribed(
                effect.request_id,
                sub_id,
                (SUBS_ERR.SUBSCRIPTION_ID_ALREADY_EXISTS, f"subscription {sub_id} already exists"),
            )
        problems: list[tuple[str, int, str]] = []
        shapes: list[AnyShape] = []
        for request_id, tablename, where, includes in effect.requests:
            table, where, includes = await engine.resolve(tablename, where, includes)
            if isinstance(table, EngineRefused):
                problems.append((request_id, SHAPE_ERR.INVALID_INCLUDE_TREE, table.message))
                continue
            if table is None:
                problems.append(
                    (
                        request_id,
                        SHAPE_ERR.TABLE_NOT_FOUND,
                        f"no shape declared in electric.yaml and no electrified table is named {tablename!r}",
                    )
                )
                continue
            shape = await engine.compile(sub_id, request_id, table, where, includes)
            self._count_denial(engine, shape)
            if isinstance(shape, str):
                if shape.startswith("invalid include tree"):
                    code = SHAPE_ERR.INVALID_INCLUDE_TREE
                elif "not electrified" in shape:
                    code = SHAPE_ERR.TABLE_NOT_FOUND
                else:
                    code = SHAPE_ERR.INVALID_WHERE_CLAUSE
                problems.append((request_id, code, shape))
            else:
                shapes.append(shape)
        if problems:
            return S.Subscribed(effect.request_id, sub_id, None, tuple(problems))
        engine.subscribe(sub_id, shapes, generation)
        return S.Subscribed(effect.request_id, sub_id)

    def _count_denial(self, engine: ShapeEngine, shape: AnyShape | str) -> None:
        """Count a shape request the permissions refused (not declared while adhoc_shapes is deny),
        or serve empty (no grant lets the user read its table), for ``GET /metrics``."""
        if isinstance(shape, str):
            if "adhoc_shapes is deny" in shape:
                self.server.metrics.denied("subscribe")
            return
        rel = shape.root.relation if isinstance(shape, TreeShape) else shape.relation
        access = engine.projection.access.get(rel.qualified)
        if access is not None and access.denied:
            self.server.metrics.denied("read")

    async def _catch_up(self, request_id: int) -> None:
        """Answer ``electricctl.caughtUp`` once the client has been sent everything committed
        in Postgres before the request."""
        engine = self._engine()
        try:
            await self.server.caught_up()  # the log has every transaction committed before now
            await engine.sent_through(self.server.log.last_lsn)
            event: S.CaughtUp | S.Refused = S.CaughtUp(request_id)
        except (TimeoutError, psycopg.Error, OSError) as exc:
            event = S.Refused(request_id, codec.CAUGHT_UP, ERR.INTERNAL, f"the server could not catch up: {exc}")
        with contextlib.suppress(ConnectionClosed):
            await self.feed(event)

    def _acked(self, lsn: int) -> None:
        self.sink.ack()
        if self.engine is not None:
            self.engine.acked(lsn)
        if self.state is not None and lsn > self.state.acked_lsn:
            self.state.acked_lsn = lsn
            now = time.monotonic()
            if now - self._last_saved > 1.0:  # persisted at most once a second, and on disconnect
                self._last_saved = now
                self._saving = asyncio.ensure_future(self.server.store.save_async(self.state))

    async def call(self, method: str, body: Message, timeout: float = 30.0) -> Message:
        """Make an RPC call to the client and return its decoded response."""
        return await self._rpc.call(self.send, method, body, timeout)

    async def _start_client_stream(self) -> None:
        # the client -> server direction: the server asks the client to start sending its writes,
        # after the last transaction of it that Postgres has
        assert self.client_id is not None
        try:
            position = await self.server.writer.position(self.client_id)
            await self.call(
                "startReplication",
                pb.SatInStartReplicationReq(lsn=codec.encode_client_lsn(position) if position else b""),
            )
        except (RpcError, TimeoutError, ConnectionClosed, psycopg.Error) as exc:
            self.phase = self.session.handle(self.phase, S.ClientStreamEnded()).state
            log.info("client %s did not start its stream: %s", self.client_id, exc)

    def roles_may_have_changed(self) -> None:
        if self.engine is not None:
            self.engine.roles_may_have_changed()

    def catalog_changed(self) -> bool:
        """Grants, assignments or declared shapes were applied again: reassess what this client
        holds (True if it has a stream to reassess)."""
        if self.engine is None:
            return False
        self.engine.catalog_changed()
        return True

    async def stream(self, engine: ShapeEngine) -> None:
        try:
            await engine.run()
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream to client %s failed", self.client_id)
            await self._fail(ERR.INTERNAL, "internal error in the server's stream", CLOSE_INTERNAL_ERROR)
