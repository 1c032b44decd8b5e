"""The Satellite session's state machine, step by step: no network, no Postgres, no event loop.

Each test feeds frames (and the outcomes of effects) to :class:`Session.handle` and checks the
phase it reaches, the frames it answers with and the effects it asks the driver for.
"""

from __future__ import annotations

import time
import uuid

import pytest
from google.protobuf.message import Message

from electricctl._auth.tokens import mint
from electricctl._config.model import AuthConfig, JwtConfig
from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._server import session as S
from electricctl._server.common import CLOSE_JWT_EXPIRED, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR

AUTH = AuthConfig("secure", JwtConfig(alg="HS256", key="k" * 32))
ERR = pb.SatErrorResp
SESSION = S.Session(S.SessionConfig(AUTH, server_id="server-1", window=3))
NOW = time.time()


def frame(msg: Message) -> S.Frame:
    return S.Frame(codec.encode(msg), NOW)


def rpc(method: str, body: Message, request_id: int = 1) -> S.Frame:
    return frame(pb.SatRpcRequest(method=method, request_id=request_id, message=body.SerializeToString()))


def response_body(step: S.Step, cls: type[Message]) -> Message:
    """The one reply of ``step``, an RPC response, decoded as ``cls`` (it must not be an error)."""
    (reply,) = step.replies
    assert isinstance(reply, pb.SatRpcResponse) and not reply.HasField("error"), reply
    body = cls()
    body.ParseFromString(reply.message)
    return body


def rpc_error(step: S.Step) -> pb.SatErrorResp:
    (reply,) = step.replies
    assert isinstance(reply, pb.SatRpcResponse) and reply.HasField("error"), reply
    return reply.error


def is_violation(step: S.Step, message: str) -> bool:
    """The session closes with 1007 after an error frame that says ``message``."""
    (reply,) = step.replies
    return (
        isinstance(step.state, S.Closed)
        and isinstance(reply, pb.SatErrorResp)
        and message in reply.message
        and step.effects == [S.Close(CLOSE_PROTOCOL_ERROR, reply.message[:120])]
    )


def authenticated(client_id: str = "client-1") -> S.Authenticated:
    token = mint(AUTH, "alice")
    step = SESSION.handle(S.Unauthenticated(), rpc("authenticate", pb.SatAuthReq(id=client_id, token=token)))
    assert isinstance(step.state, S.Unauthenticated) and not step.replies
    (bind,) = step.effects
    assert isinstance(bind, S.BindClient) and bind.client_id == client_id and bind.identity.user_id == "alice"
    step = SESSION.handle(step.state, S.ClientBound(bind.request_id, bind.client_id, bind.identity))
    assert isinstance(step.state, S.Authenticated)
    assert response_body(step, pb.SatAuthResp).id == "server-1"  # type: ignore[attr-defined]
    assert step.effects == [S.IdentityChanged(bind.identity, first=True)]
    return step.state


def replicating(cursor: int = 100) -> S.Replicating:
    step = SESSION.handle(authenticated(), rpc("startReplication", pb.SatInStartReplicationReq(), request_id=2))
    assert step.effects == [S.StartStream(2, None, ())]
    step = SESSION.handle(step.state, S.StreamStarted(2, cursor))
    assert isinstance(step.state, S.Replicating) and step.state.writes_open and step.state.given == cursor
    assert response_body(step, pb.SatInStartReplicationResp).unacked_window_size == 3  # type: ignore[attr-defined]
    # the stream begins only after the response is sent; then the server asks for the client's writes
    assert step.effects == [S.BeginStreaming(), S.AskClientWrites()]
    return step.state


def subscribe_req(sub_id: str, *selects: pb.SatShapeDef.Select, request_id: str = "r1") -> pb.SatSubsReq:
    shape = pb.SatShapeReq(request_id=request_id, shape_definition=pb.SatShapeDef(selects=list(selects)))
    return pb.SatSubsReq(subscription_id=sub_id, shape_requests=[shape])


# -- before authentication ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("startReplication", pb.SatInStartReplicationReq()),
        ("stopReplication", pb.SatInStopReplicationReq()),
        ("subscribe", subscribe_req(str(uuid.uuid4()), pb.SatShapeDef.Select(tablename="items"))),
        ("unsubscribe", pb.SatUnsubsReq(subscription_ids=["x"])),
    ],
)
def test_every_request_but_authenticate_needs_authentication_first(method: str, body: Message) -> None:
    step = SESSION.handle(S.Unauthenticated(), rpc(method, body))
    assert isinstance(step.state, S.Unauthenticated) and not step.effects
    err = rpc_error(step)
    assert err.error_type == ERR.AUTH_REQUIRED and "authenticate first" in err.message


@pytest.mark.parametrize(
    "msg",
    [
        pb.SatOpLogAck(lsn=b"1"),
        pb.SatOpLog(ops=[]),
        pb.SatRelation(schema_name="public", table_name="items", relation_id=1),
    ],
)
def test_acks_and_writes_before_authentication_break_the_protocol(msg: Message) -> None:
    assert is_violation(SESSION.handle(S.Unauthenticated(), frame(msg)), "authenticate first")


@pytest.mark.parametrize(
    ("token", "code", "reason"),
    [
        ("garbage", ERR.AUTH_FAILED, ""),
        (mint(AuthConfig("secure", JwtConfig(alg="HS256", key="x" * 32)), "alice"), ERR.AUTH_FAILED, "signature"),
        (mint(AUTH, "alice", ttl_seconds=-10), ERR.AUTH_FAILED, "expired"),
    ],
)
def test_a_refused_token_is_answered_with_the_reason_and_logged(token: str, code: int, reason: str) -> None:
    step = SESSION.handle(S.Unauthenticated(), rpc("authenticate", pb.SatAuthReq(id="c", token=token)))
    assert isinstance(step.state, S.Unauthenticated)
    err = rpc_error(step)
    assert err.error_type in (code, ERR.AUTH_REQUIRED) and reason in err.message.lower()
    assert step.effects == [S.AuthRefused(err.message)]


@pytest.mark.parametrize("client_id", ["", "x" * 129, "tab\there"])
def test_a_client_id_must_be_short_and_printable(client_id: str) -> None:
    step = SESSION.handle(S.Unauthenticated(), rpc("authenticate", pb.SatAuthReq(id=client_id, token=mint(AUTH, "a"))))
    assert rpc_error(step).error_type == ERR.INVALID_REQUEST and not step.effects


def test_a_refused_binding_leaves_the_session_unauthenticated() -> None:
    step = SESSION.handle(S.Unauthenticated(), S.Refused(1, "authenticate", ERR.AUTH_FAILED, "belongs to another user"))
    assert isinstance(step.state, S.Unauthenticated)
    assert rpc_error(step).message == "belongs to another user"


def test_the_auth_deadline_closes_only_an_unauthenticated_session() -> None:
    step = SESSION.handle(S.Unauthenticated(), S.AuthDeadline(10))
    assert isinstance(step.state, S.Closed) and step.effects == [
        S.Close(CLOSE_POLICY, "authenticate within 10s of connecting")
    ]
    state = authenticated()
    assert SESSION.handle(state, S.AuthDeadline(10)) == S.Step(state)


# -- authenticated ------------------------------------------------------------------------------------
def test_a_renewed_token_keeps_the_client_and_user() -> None:
    state = authenticated()
    renewal = mint(AUTH, "alice", claims={"role": "x"})
    step = SESSION.handle(state, rpc("authenticate", pb.SatAuthReq(id="client-1", token=renewal), request_id=5))
    assert isinstance(step.state, S.Authenticated) and step.state.identity.claims.get("role") == "x"
    assert response_body(step, pb.SatAuthResp).id == "server-1"  # type: ignore[attr-defined]
    assert step.effects == [S.IdentityChanged(step.state.identity, first=False)]
    for client_id, user in [("client-2", "alice"), ("client-1", "bob")]:
        step = SESSION.handle(state, rpc("authenticate", pb.SatAuthReq(id=client_id, token=mint(AUTH, user))))
        assert step.state is state and "keep the client id and sub" in rpc_error(step).message


def test_subscribing_before_replication_is_refused() -> None:
    step = SESSION.handle(
        authenticated(), rpc("subscribe", subscribe_req(str(uuid.uuid4()), pb.SatShapeDef.Select(tablename="t")))
    )
    assert "start replication before subscribing" in rpc_error(step).message and not step.effects


def test_start_replication_with_a_malformed_lsn_or_subscriptions_without_one() -> None:
    state = authenticated()
    step = SESSION.handle(state, rpc("startReplication", pb.SatInStartReplicationReq(lsn=b"12ab")))
    body = response_body(step, pb.SatInStartReplicationResp)
    assert body.err.code == S.START_ERR.MALFORMED_LSN and step.state is state  # type: ignore[attr-defined]
    step = SESSION.handle(state, rpc("startReplication", pb.SatInStartReplicationReq(subscription_ids=["s"])))
    body = response_body(step, pb.SatInStartReplicationResp)
    assert body.err.code == S.START_ERR.INVALID_POSITION and not step.effects  # type: ignore[attr-defined]
    step = SESSION.handle(
        state, rpc("startReplication", pb.SatInStartReplicationReq(lsn=b"42", subscription_ids=["s"]))
    )
    assert step.effects == [S.StartStream(1, 42, ("s",))]
    # the client's schema version travels with the request, for the driver to compare
    versioned = pb.SatInStartReplicationReq(lsn=b"42", subscription_ids=["s"], schema_version="20240101000000")
    assert SESSION.handle(state, rpc("startReplication", versioned)).effects == [
        S.StartStream(1, 42, ("s",), "20240101000000")
    ]
    # the driver found the position behind the log's window: the session stays authenticated
    step = SESSION.handle(step.state, S.Refused(1, "startReplication", S.START_ERR.BEHIND_WINDOW, "resync", start=True))
    assert isinstance(step.state, S.Authenticated)
    body = response_body(step, pb.SatInStartReplicationResp)
    assert body.err.code == S.START_ERR.BEHIND_WINDOW  # type: ignore[attr-defined]


def test_writes_are_refused_until_the_server_asks_for_them() -> None:
    step = SESSION.handle(authenticated(), frame(pb.SatOpLog(ops=[])))
    assert is_violation(step, "the server has not started the client's stream")


# -- replicating ---------------------------------------------------------------------------------------
def test_a_second_start_replication_is_refused_and_changes_nothing() -> None:
    state = replicating()
    step = SESSION.handle(state, rpc("startReplication", pb.SatInStartReplicationReq(), request_id=9))
    assert step.state is state and not step.effects
    assert rpc_error(step).message == "replication is already started"


def test_the_unacked_window_and_acks() -> None:
    state: S.State = replicating(cursor=100)
    assert SESSION.has_room(state)
    for lsn in (110, 120, 130):
        state = SESSION.handle(state, S.Delivered(lsn, transaction=True)).state
    state = SESSION.handle(state, S.Delivered(140, transaction=False)).state  # a subscription's point
    assert isinstance(state, S.Replicating) and state.unacked == (110, 120, 130) and state.given == 140
    assert not SESSION.has_room(state)
    step = SESSION.handle(state, frame(pb.SatOpLogAck(lsn=b"120")))
    assert isinstance(step.state, S.Replicating) and step.state.unacked == (130,) and step.effects == [S.Acked(120)]
    assert SESSION.has_room(step.state)
    step = SESSION.handle(step.state, frame(pb.SatOpLogAck(lsn=b"140")))
    assert isinstance(step.state, S.Replicating) and step.state.unacked == ()


def test_an_ack_of_an_unknown_lsn_breaks_the_protocol() -> None:
    state = SESSION.handle(replicating(cursor=100), S.Delivered(110, transaction=True)).state
    assert is_violation(SESSION.handle(state, frame(pb.SatOpLogAck(lsn=b"111"))), "Acknowledged unknown txn")
    assert is_violation(SESSION.handle(state, frame(pb.SatOpLogAck(lsn=b"1x"))), "malformed LSN")
    # an ack of the start position (nothing new) is fine
    assert SESSION.handle(state, frame(pb.SatOpLogAck(lsn=b"100"))).effects == [S.Acked(100)]


def test_subscribe_validation_and_outcomes() -> None:
    state = replicating()
    sub = str(uuid.uuid4())
    select = pb.SatShapeDef.Select(tablename="items", where="id > 1")
    step = SESSION.handle(state, rpc("subscribe", subscribe_req("not-a-uuid", select)))
    assert "must be a UUID" in rpc_error(step).message
    step = SESSION.handle(state, rpc("subscribe", pb.SatSubsReq(subscription_id=sub)))
    assert "at least one shape request" in rpc_error(step).message
    step = SESSION.handle(state, rpc("subscribe", subscribe_req(sub, select, request_id="")))
    assert "unique and non-empty" in rpc_error(step).message
    # structural problems of a shape request are answered without the engine
    with_include = pb.SatShapeDef.Select(tablename="items", include=[pb.SatShapeDef.Relation(foreign_key=["a"])])
    for selects, code in [
        ((), S.SHAPE_ERR.EMPTY_SHAPE_DEFINITION),
        ((select, select), S.SHAPE_ERR.DUPLICATE_TABLE_IN_SHAPE_DEFINITION),
        ((with_include,), S.SHAPE_ERR.INVALID_INCLUDE_TREE),
    ]:
        step = SESSION.handle(state, rpc("subscribe", subscribe_req(sub, *selects)))
        body = response_body(step, pb.SatSubsResp)
        assert body.err.shape_request_error[0].code == code and not step.effects  # type: ignore[attr-defined]
    step = SESSION.handle(state, rpc("subscribe", subscribe_req(sub, select), request_id=7))
    assert step.effects == [S.Subscribe(7, sub, (("r1", "items", "id > 1", ()),))] and not step.replies
    accepted = SESSION.handle(state, S.Subscribed(7, sub))
    assert response_body(accepted, pb.SatSubsResp).subscription_id == sub  # type: ignore[attr-defined]
    refused = SESSION.handle(state, S.Subscribed(7, sub, None, (("r1", S.SHAPE_ERR.INVALID_WHERE_CLAUSE, "bad"),)))
    err = response_body(refused, pb.SatSubsResp).err  # type: ignore[attr-defined]
    assert err.code == S.SUBS_ERR.SHAPE_REQUEST_ERROR and err.shape_request_error[0].request_id == "r1"


def test_stop_replication_returns_to_authenticated_and_keeps_acks_valid() -> None:
    state = SESSION.handle(replicating(cursor=100), S.Delivered(110, transaction=True)).state
    step = SESSION.handle(state, rpc("stopReplication", pb.SatInStopReplicationReq()))
    assert isinstance(step.state, S.Authenticated) and step.effects == [S.StopStream()]
    # an ack that crossed the stop is still an ack of something sent
    assert SESSION.handle(step.state, frame(pb.SatOpLogAck(lsn=b"110"))).state == step.state
    # and replication may start again
    again = SESSION.handle(step.state, rpc("startReplication", pb.SatInStartReplicationReq(lsn=b"110")))
    assert again.effects == [S.StartStream(1, 110, ())]


def test_client_writes_once_asked_and_after_the_client_stream_ended() -> None:
    state = replicating()
    rel = pb.SatRelation(schema_name="public", table_name="items", relation_id=1)
    assert SESSION.handle(state, frame(rel)).effects == [S.ClientRelation(rel)]
    oplog = frame(pb.SatOpLog(ops=[]))
    assert SESSION.handle(state, oplog).effects == [S.ClientTransaction(pb.SatOpLog(ops=[]), len(oplog.data))]
    ended = SESSION.handle(state, S.ClientStreamEnded()).state
    assert is_violation(SESSION.handle(ended, oplog), "has not started the client's stream")


# -- anywhere ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", ["unauthenticated", "authenticated", "replicating"])
def test_garbage_unknown_methods_and_server_messages(phase: str) -> None:
    state: S.State = {"unauthenticated": S.Unauthenticated, "authenticated": authenticated, "replicating": replicating}[
        phase
    ]()
    assert is_violation(SESSION.handle(state, S.Frame(b"\x63garbage", NOW)), "")
    step = SESSION.handle(state, rpc("dropDatabase", pb.SatAuthReq()))
    assert step.state is state and "unknown method" in rpc_error(step).message
    step = SESSION.handle(state, frame(pb.SatSubsDataEnd()))
    assert is_violation(step, "unexpected SatSubsDataEnd from a client")
    malformed = S.Frame(codec.encode(pb.SatRpcRequest(method="authenticate", request_id=1, message=b"\xff\xff")), NOW)
    assert "malformed SatAuthReq" in rpc_error(SESSION.handle(state, malformed)).message
    response = pb.SatRpcResponse(method="startReplication", request_id=0)
    assert SESSION.handle(state, frame(response)).effects == [S.CallResponse(response)]


def test_an_expired_token_closes_and_a_closed_session_ignores_everything() -> None:
    step = SESSION.handle(replicating(), S.TokenExpired())
    assert isinstance(step.state, S.Closed) and step.effects == [S.Close(CLOSE_JWT_EXPIRED, "JWT-expired")]
    for event in [frame(pb.SatOpLogAck(lsn=b"1")), S.Delivered(5, True), S.StreamStarted(1, 5), S.AuthDeadline(1)]:
        assert SESSION.handle(step.state, event) == S.Step(step.state)


def test_caught_up_is_asked_of_the_driver_once_replicating_and_answered_when_it_says() -> None:
    from electricctl._protocol import codec

    step = SESSION.handle(authenticated(), rpc(codec.CAUGHT_UP, pb.ElectricctlCaughtUpReq(), request_id=4))
    assert "start replication first" in rpc_error(step).message and not step.effects
    state = replicating()
    step = SESSION.handle(state, rpc(codec.CAUGHT_UP, pb.ElectricctlCaughtUpReq(), request_id=5))
    assert step.effects == [S.CatchUp(5)] and not step.replies and step.state == state
    step = SESSION.handle(state, S.CaughtUp(5))
    (reply,) = step.replies
    assert isinstance(reply, pb.SatRpcResponse) and reply.method == codec.CAUGHT_UP and reply.request_id == 5
    assert response_body(step, pb.ElectricctlCaughtUpResp) == pb.ElectricctlCaughtUpResp()
