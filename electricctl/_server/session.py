"""The Satellite protocol session, with no I/O: what a connection may do in each phase, decided
as a pure step.

:meth:`Session.handle` takes the session's state and one event (a frame from the client, the
outcome of an effect, a deadline) and returns the next state, the frames to send, and the effects
the driver (:class:`~electricctl._server.connection.Connection`) must carry out. Effects that
need the database or the shape engine report back with an outcome event, which is handled like a
frame. The driver handles one event at a time, so an RPC's outcome arrives before the next frame.

The phases, events and effects are types (:mod:`.session_types`): :class:`Unauthenticated`, :class:`Authenticated`, :class:`Replicating`
(the server streams to the client), and :class:`Closed`. The model is h11's, and Electric's
``Electric.Satellite.Protocol`` (../shared/reference/electric-legacy.md §1).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from google.protobuf.message import DecodeError, Message

from electricctl._auth.tokens import AuthError, InvalidIdentity, verify
from electricctl._config.model import AuthConfig
from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.common import CLOSE_JWT_EXPIRED, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR, ERR
from electricctl._server.session_types import (
    Acked as Acked,
)
from electricctl._server.session_types import (
    AskClientWrites as AskClientWrites,
)
from electricctl._server.session_types import (
    AuthDeadline as AuthDeadline,
)
from electricctl._server.session_types import (
    Authenticated as Authenticated,
)
from electricctl._server.session_types import (
    AuthRefused as AuthRefused,
)
from electricctl._server.session_types import (
    BeginStreaming as BeginStreaming,
)
from electricctl._server.session_types import (
    BindClient as BindClient,
)
from electricctl._server.session_types import (
    CallResponse as CallResponse,
)
from electricctl._server.session_types import (
    CatchUp as CatchUp,
)
from electricctl._server.session_types import (
    CaughtUp as CaughtUp,
)
from electricctl._server.session_types import (
    ClientBound as ClientBound,
)
from electricctl._server.session_types import (
    ClientRelation as ClientRelation,
)
from electricctl._server.session_types import (
    ClientStreamEnded as ClientStreamEnded,
)
from electricctl._server.session_types import (
    ClientTransaction as ClientTransaction,
)
from electricctl._server.session_types import (
    Close as Close,
)
from electricctl._server.session_types import (
    Closed as Closed,
)
from electricctl._server.session_types import (
    Delivered as Delivered,
)
from electricctl._server.session_types import (
    Effect as Effect,
)
from electricctl._server.session_types import (
    Event as Event,
)
from electricctl._server.session_types import (
    Frame as Frame,
)
from electricctl._server.session_types import (
    IdentityChanged as IdentityChanged,
)
from electricctl._server.session_types import (
    Refused as Refused,
)
from electricctl._server.session_types import (
    Replicating as Replicating,
)
from electricctl._server.session_types import (
    StartStream as StartStream,
)
from electricctl._server.session_types import (
    State as State,
)
from electricctl._server.session_types import (
    StopStream as StopStream,
)
from electricctl._server.session_types import (
    StreamStarted as StreamStarted,
)
from electricctl._server.session_types import (
    Subscribe as Subscribe,
)
from electricctl._server.session_types import (
    Subscribed as Subscribed,
)
from electricctl._server.session_types import (
    TokenExpired as TokenExpired,
)
from electricctl._server.session_types import (
    Unauthenticated as Unauthenticated,
)
from electricctl._server.session_types import (
    Unsubscribe as Unsubscribe,
)
from electricctl._shapes.tree import MAX_DEPTH, Include

START_ERR = pb.SatInStartReplicationResp.ReplicationError
SUBS_ERR = pb.SatSubsResp.SatSubsError
SHAPE_ERR = pb.SatSubsResp.SatSubsError.ShapeReqError

MAX_CLIENT_ID = 128


@dataclass(slots=True)
class Step:
    state: State
    replies: list[Message] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    auth: AuthConfig
    server_id: str
    window: int
    """Transactions a client may leave unacknowledged."""
    ask_client_writes: bool = True


def valid_client_id(value: str) -> bool:
    return 0 < len(value) <= MAX_CLIENT_ID and value.isprintable()


def _include(rel: pb.SatShapeDef.Relation, depth: int) -> Include:
    """One level of a requested include tree (its depth bounded: the message is untrusted)."""
    if depth > MAX_DEPTH:
        raise ValueError(f"the include tree is deeper than {MAX_DEPTH} levels")
    select = rel.select
    if not select.tablename:
        raise ValueError("an include names no table")
    return Include(
        select.tablename,
        tuple(rel.foreign_key),
        select.where,
        tuple(_include(r, depth + 1) for r in select.include),
    )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) <= 128


def _response(method: str, request_id: int, body: Message) -> pb.SatRpcResponse:
    return pb.SatRpcResponse(method=method, request_id=request_id, message=body.SerializeToString())


def _error(method: str, request_id: int, code: int, message: str) -> pb.SatRpcResponse:
    return pb.SatRpcResponse(method=method, request_id=request_id, error=ERR(error_type=code, message=message))  # type: ignore[arg-type]


def _start_error(request_id: int, code: int, message: str) -> pb.SatRpcResponse:
    body = pb.SatInStartReplicationResp(err=START_ERR(code=code, message=message))  # type: ignore[arg-type]
    return _response("startReplication", request_id, body)


class Session:
    """The rules of the protocol for one connection; stateless itself (the state is passed in)."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config

    # -- the step ----------------------------------------------------------------------------
    def handle(self, state: State, event: Event) -> Step:
        if isinstance(state, Closed):
            return Step(state)
        if isinstance(event, Frame):
            return self._frame(state, event)
        if isinstance(event, Delivered):
            if not isinstance(state, Replicating):
                return Step(state)
            unacked = (*state.unacked, event.lsn) if event.transaction else state.unacked
            return Step(replace(state, given=max(state.given, event.lsn), unacked=unacked))
        if isinstance(event, AuthDeadline):
            if isinstance(state, Unauthenticated):
                return Step(
                    Closed(), [], [Close(CLOSE_POLICY, f"authenticate within {event.seconds:.0f}s of connecting")]
                )
            return Step(state)
        if isinstance(event, TokenExpired):
            return Step(Closed(), [], [Close(CLOSE_JWT_EXPIRED, "JWT-expired")])
        if isinstance(event, ClientStreamEnded):
            if isinstance(state, Authenticated | Replicating):
                return Step(replace(state, writes_open=False))
            return Step(state)
        return self._outcome(state, event)

    def has_room(self, state: State) -> bool:
        """May another transaction be sent (the unacked window)?"""
        return not isinstance(state, Replicating) or len(state.unacked) < self.config.window

    # -- frames ------------------------------------------------------------------------------
    def violation(self, code: int, message: str) -> Step:
        """The client broke the protocol: an error frame, then the connection closes (1007)."""
        return Step(Closed(), [ERR(error_type=code, message=message)], [Close(CLOSE_PROTOCOL_ERROR, message[:120])])  # type: ignore[arg-type]

    def _frame(self, state: State, frame: Frame) -> Step:
        try:
            msg = codec.decode(frame.data)
        except codec.FrameError as exc:
            return self.violation(ERR.INVALID_REQUEST, str(exc))
        if isinstance(msg, pb.SatRpcRequest):
            return self._rpc(state, msg, frame.now)
        if isinstance(msg, pb.SatRpcResponse):
            return Step(state, [], [CallResponse(msg)])
        if isinstance(msg, pb.SatOpLogAck):
            return self._ack(state, msg)
        if isinstance(msg, pb.SatOpLog | pb.SatRelation):
            if isinstance(state, Unauthenticated):
                return self.violation(ERR.AUTH_REQUIRED, "authenticate first")
            assert isinstance(state, Authenticated | Replicating)
            if not state.writes_open:
                return self.violation(
                    ERR.INVALID_REQUEST, "client writes are refused: the server has not started the client's stream"
                )
            if isinstance(msg, pb.SatRelation):
                return Step(state, [], [ClientRelation(msg)])
            return Step(state, [], [ClientTransaction(msg, len(frame.data))])
        return self.violation(ERR.INVALID_REQUEST, f"unexpected {type(msg).__name__} from a client")

    def _ack(self, state: State, ack: pb.SatOpLogAck) -> Step:
        if isinstance(state, Unauthenticated):
            return self.violation(ERR.AUTH_REQUIRED, "authenticate first")
        try:
            lsn = codec.decode_server_lsn(ack.lsn) if ack.lsn else 0
        except (ValueError, UnicodeDecodeError):
            return self.violation(ERR.INVALID_REQUEST, "malformed LSN in SatOpLogAck")
        assert isinstance(state, Authenticated | Replicating)
        if lsn > state.given:
            return self.violation(ERR.INVALID_REQUEST, "Acknowledged unknown txn")
        if not isinstance(state, Replicating):
            return Step(state)
        unacked = tuple(x for x in state.unacked if x > lsn)
        return Step(replace(state, unacked=unacked), [], [Acked(lsn)])

    # -- RPC requests ----------------------------------------------------------------------------
    def _rpc(self, state: State, req: pb.SatRpcRequest, now: float) -> Step:
        method, rid = req.method, req.request_id
        if method not in codec.RPC_METHODS:
            return Step(state, [_error(method, rid, ERR.INVALID_REQUEST, f"unknown method {method!r}")])
        if isinstance(state, Unauthenticated) and method != "authenticate":
            return Step(state, [_error(method, rid, ERR.AUTH_REQUIRED, "authenticate first")])
        request_cls = codec.RPC_METHODS[method][0]
        body = request_cls()
        try:
            body.ParseFromString(req.message)
        except DecodeError:
            return Step(state, [_error(method, rid, ERR.INVALID_REQUEST, f"malformed {request_cls.__name__}")])
        except RecursionError:
            return Step(state, [_error(method, rid, ERR.INVALID_REQUEST, "the request is nested too deeply")])
        if isinstance(body, pb.SatAuthReq):
            return self._authenticate(state, rid, body, now)
        assert isinstance(state, Authenticated | Replicating)
        if isinstance(body, pb.SatInStartReplicationReq):
            return self._start(state, rid, body)
        if isinstance(body, pb.SatInStopReplicationReq):
            effects: list[Effect] = [StopStream()] if isinstance(state, Replicating) else []
            after = Authenticated(state.client_id, state.identity, state.writes_open, state.given)
            return Step(after, [_response(method, rid, pb.SatInStopReplicationResp())], effects)
        if isinstance(body, pb.SatSubsReq):
            return self._subscribe(state, rid, body)
        if isinstance(body, pb.ElectricctlCaughtUpReq):
            if not isinstance(state, Replicating):
                return Step(state, [_error(method, rid, ERR.INVALID_REQUEST, "start replication first")])
            return Step(state, [], [CatchUp(rid)])
        assert isinstance(body, pb.SatUnsubsReq)
        return Step(state, [_response(method, rid, pb.SatUnsubsResp())], [Unsubscribe(tuple(body.subscription_ids))])

    def _authenticate(self, state: State, rid: int, req: pb.SatAuthReq, now: float) -> Step:
        def refuse(code: int, message: str) -> Step:
            return Step(state, [_error("authenticate", rid, code, message)])

        if not req.id or not req.token:
            return refuse(ERR.INVALID_REQUEST, "both id and token are required")
        if not valid_client_id(req.id):
            return refuse(
                ERR.INVALID_REQUEST, f"a client id is 1 to {MAX_CLIENT_ID} printable characters (a UUID, say)"
            )
        try:
            identity = verify(req.token, self.config.auth, now=now)
        except AuthError as exc:
            code = ERR.AUTH_FAILED if isinstance(exc, InvalidIdentity) else ERR.AUTH_REQUIRED
            return Step(state, [_error("authenticate", rid, code, str(exc))], [AuthRefused(str(exc))])
        if isinstance(state, Unauthenticated):
            return Step(state, [], [BindClient(rid, req.id, identity)])
        assert isinstance(state, Authenticated | Replicating)
        # a renewal: same client, same user
        if req.id != state.client_id or identity.user_id != state.identity.user_id:
            return refuse(ERR.AUTH_FAILED, "a renewed token must keep the client id and sub")
        return Step(
            replace(state, identity=identity),
            [_response("authenticate", rid, pb.SatAuthResp(id=self.config.server_id))],
            [IdentityChanged(identity, first=False)],
        )

    def _start(self, state: Authenticated | Replicating, rid: int, req: pb.SatInStartReplicationReq) -> Step:
        if isinstance(state, Replicating):
            return Step(state, [_error("startReplication", rid, ERR.INVALID_REQUEST, "replication is already started")])
        if not req.lsn:
            if req.subscription_ids:
                return Step(
                    state, [_start_error(rid, START_ERR.INVALID_POSITION, "subscriptions can only resume from an LSN")]
                )
            lsn = None
        else:
            try:
                lsn = codec.decode_server_lsn(req.lsn)
            except (ValueError, UnicodeDecodeError):
                return Step(state, [_start_error(rid, START_ERR.MALFORMED_LSN, f"malformed LSN {req.lsn[:40]!r}")])
        version = req.schema_version if req.HasField("schema_version") else ""
        return Step(state, [], [StartStream(rid, lsn, tuple(req.subscription_ids), version)])

    def _subscribe(self, state: Authenticated | Replicating, rid: int, req: pb.SatSubsReq) -> Step:
        sub_id = req.subscription_id

        def refuse(message: str) -> Step:
            return Step(state, [_error("subscribe", rid, ERR.INVALID_REQUEST, message)])

        if not _is_uuid(sub_id):
            return refuse("subscription_id must be a UUID")
        if not isinstance(state, Replicating):
            return refuse("start replication before subscribing")
        if not req.shape_requests:
            return refuse("a subscription needs at least one shape request")
        ids = [r.request_id for r in req.shape_requests]
        if len(set(ids)) != len(ids) or not all(ids):
            return refuse("shape request ids must be unique and non-empty")
        problems: list[tuple[str, int, str]] = []
        requests: list[tuple[str, str, str, tuple[Include, ...]]] = []
        for r in req.shape_requests:
            selects = r.shape_definition.selects
            if not selects:
                problems.append((r.request_id, SHAPE_ERR.EMPTY_SHAPE_DEFINITION, "no select"))
            elif len(selects) > 1:
                problems.append(
                    (r.request_id, SHAPE_ERR.DUPLICATE_TABLE_IN_SHAPE_DEFINITION, "one select per shape request")
                )
            else:
                try:
                    includes = tuple(_include(rel, 1) for rel in selects[0].include)
                except ValueError as exc:
                    problems.append((r.request_id, SHAPE_ERR.INVALID_INCLUDE_TREE, str(exc)))
                    continue
                requests.append((r.request_id, selects[0].tablename, selects[0].where, includes))
        if problems:
            return Step(state, [_subs_response(rid, Subscribed(rid, sub_id, None, tuple(problems)))])
        return Step(state, [], [Subscribe(rid, sub_id, tuple(requests))])

    # -- outcomes of effects ---------------------------------------------------------------------
    def _outcome(self, state: State, event: ClientBound | StreamStarted | Subscribed | Refused | CaughtUp) -> Step:
        if isinstance(event, CaughtUp):
            return Step(state, [_response(codec.CAUGHT_UP, event.request_id, pb.ElectricctlCaughtUpResp())])
        if isinstance(event, Refused):
            if event.start:
                return Step(state, [_start_error(event.request_id, event.code, event.message)])
            return Step(state, [_error(event.method, event.request_id, event.code, event.message)])
        if isinstance(event, ClientBound):
            if not isinstance(state, Unauthenticated):
                raise AssertionError(f"ClientBound in {type(state).__name__}")
            return Step(
                Authenticated(event.client_id, event.identity),
                [_response("authenticate", event.request_id, pb.SatAuthResp(id=self.config.server_id))],
                [IdentityChanged(event.identity, first=True)],
            )
        if isinstance(event, StreamStarted):
            if not isinstance(state, Authenticated):
                raise AssertionError(f"StreamStarted in {type(state).__name__}")
            after = Replicating(state.client_id, state.identity, state.writes_open, max(state.given, event.cursor))
            reply = _response(
                "startReplication",
                event.request_id,
                pb.SatInStartReplicationResp(unacked_window_size=self.config.window),
            )
            effects: list[Effect] = [BeginStreaming()]
            if self.config.ask_client_writes and not state.writes_open:
                after = replace(after, writes_open=True)
                effects.append(AskClientWrites())
            return Step(after, [reply], effects)
        return Step(state, [_subs_response(event.request_id, event)])


def _subs_response(rid: int, outcome: Subscribed) -> pb.SatRpcResponse:
    sub_id = outcome.subscription_id
    if outcome.error is None and not outcome.problems:
        return _response("subscribe", rid, pb.SatSubsResp(subscription_id=sub_id))
    code, message = outcome.error or (SUBS_ERR.SHAPE_REQUEST_ERROR, "some shape requests are invalid")
    shape_errors: Sequence[pb.SatSubsResp.SatSubsError.ShapeReqError] = [
        SHAPE_ERR(code=c, message=m, request_id=r)  # type: ignore[arg-type]
        for r, c, m in outcome.problems
    ]
    err = SUBS_ERR(code=code, message=message, shape_request_error=list(shape_errors))  # type: ignore[arg-type]
    return _response("subscribe", rid, pb.SatSubsResp(subscription_id=sub_id, err=err))
