"""The Satellite session's vocabulary: its phases, the events a driver feeds it and the effects
it asks for (see :mod:`.session`). Plain frozen values, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass

from electricctl._auth.tokens import Identity
from electricctl._protocol import satellite_pb2 as pb
from electricctl._shapes.tree import Include


# -- phases --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Unauthenticated:
    """Connected; only ``authenticate`` is accepted."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    client_id: str
    identity: Identity
    writes_open: bool = False
    """The server has asked the client for its writes (``startReplication`` to the client)."""
    given: int = 0
    """The newest LSN the client has been given (before a ``stopReplication``)."""


@dataclass(frozen=True, slots=True)
class Replicating:
    """The server streams to the client: subscriptions and acks are accepted."""

    client_id: str
    identity: Identity
    writes_open: bool = False
    given: int = 0
    """The newest LSN the client has been given (an ack beyond it acknowledges nothing real)."""
    unacked: tuple[int, ...] = ()
    """LSNs of the transactions sent and not acknowledged yet: the window."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The session ended; every further event is ignored."""


State = Unauthenticated | Authenticated | Replicating | Closed


# -- events: what the driver feeds in ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes
    now: float
    """Wall-clock time (seconds), for token expiry."""


@dataclass(frozen=True, slots=True)
class ClientBound:
    """Outcome of :class:`BindClient`: the client id is this user's, and this connection's."""

    request_id: int
    client_id: str
    identity: Identity


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """Outcome of :class:`StartStream`: the engine streams from ``cursor``."""

    request_id: int
    cursor: int


@dataclass(frozen=True, slots=True)
class Subscribed:
    """Outcome of :class:`Subscribe`: accepted (no ``error`` and no ``problems``), or refused."""

    request_id: int
    subscription_id: str
    error: tuple[int, str] | None = None
    """A refusal of the whole subscription (a ``SatSubsError`` code and message)."""
    problems: tuple[tuple[str, int, str], ...] = ()
    """Refused shape requests: (request id, ``ShapeReqError`` code, message)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Outcome of any RPC effect: the RPC is answered with this error (``start``: a
    ``ReplicationError`` in the response rather than a ``SatErrorResp``)."""

    request_id: int
    method: str
    code: int
    message: str
    start: bool = False


@dataclass(frozen=True, slots=True)
class Delivered:
    """The driver sent the client something at ``lsn``; a transaction counts in the window."""

    lsn: int
    transaction: bool


@dataclass(frozen=True, slots=True)
class ClientStreamEnded:
    """The client did not start (or stopped) sending its writes."""


@dataclass(frozen=True, slots=True)
class AuthDeadline:
    """The time to authenticate has passed."""

    seconds: float


@dataclass(frozen=True, slots=True)
class TokenExpired:
    pass


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """Everything committed before the ``electricctl.caughtUp`` request has been sent."""

    request_id: int


Event = (
    Frame
    | ClientBound
    | StreamStarted
    | Subscribed
    | Refused
    | Delivered
    | ClientStreamEnded
    | AuthDeadline
    | TokenExpired
    | CaughtUp
)


# -- effects: what the driver must carry out --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BindClient:
    """Check the client id belongs to the user and is not in use; load its state. Answer with
    :class:`ClientBound` or :class:`Refused`."""

    request_id: int
    client_id: str
    identity: Identity


@dataclass(frozen=True, slots=True)
class IdentityChanged:
    """A first authentication or a renewal: the identity (and its expiry) count from now on."""

    identity: Identity
    first: bool


@dataclass(frozen=True, slots=True)
class StartStream:
    """Resume the subscriptions named (forget the others) and stream from ``lsn`` (None: from
    the log's head). Answer with :class:`StreamStarted` or :class:`Refused` (``start=True``)."""

    request_id: int
    lsn: int | None
    subscription_ids: tuple[str, ...]
    schema_version: str = ""
    """The newest migration the client has ("" if it did not say): one newer than the server's is refused."""


@dataclass(frozen=True, slots=True)
class AuthRefused:
    """Log it: a token was refused, and why."""

    reason: str


@dataclass(frozen=True, slots=True)
class BeginStreaming:
    """Start the engine's stream to the client (after the ``startReplication`` response is sent)."""


@dataclass(frozen=True, slots=True)
class StopStream:
    pass


@dataclass(frozen=True, slots=True)
class AskClientWrites:
    """Call ``startReplication`` on the client, so it sends its writes; :class:`ClientStreamEnded` if that fails."""


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Resolve and compile the shape requests; answer with :class:`Subscribed` or :class:`Refused`."""

    request_id: int
    subscription_id: str
    requests: tuple[tuple[str, str, str, tuple[Include, ...]], ...]
    """(request id, table name, where, include tree) per shape request."""


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    subscription_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Answer with :class:`CaughtUp` once everything committed in Postgres before now has been
    sent to the client (or :class:`Refused`); meanwhile the connection goes on."""

    request_id: int


@dataclass(frozen=True, slots=True)
class Acked:
    """The client acknowledged every transaction up to ``lsn``."""

    lsn: int


@dataclass(frozen=True, slots=True)
class ClientRelation:
    message: pb.SatRelation


@dataclass(frozen=True, slots=True)
class ClientTransaction:
    message: pb.SatOpLog
    size: int


@dataclass(frozen=True, slots=True)
class CallResponse:
    """The client answered one of the server's calls."""

    response: pb.SatRpcResponse


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


Effect = (
    BindClient
    | IdentityChanged
    | AuthRefused
    | StartStream
    | BeginStreaming
    | StopStream
    | AskClientWrites
    | Subscribe
    | Unsubscribe
    | CatchUp
    | Acked
    | ClientRelation
    | ClientTransaction
    | CallResponse
    | Close
)
