"""Everything ``electricctl serve`` can be told, in one immutable value (the CLI's flags map onto it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str = "127.0.0.1"
    """Address to listen on: loopback unless told otherwise."""
    port: int = 5133
    """0: any free port (the bound one is ``Server.bound_port``)."""
    data_dir: Path = Path(".electricctl")
    """The durable log, client state, the spool and the lock; one serve per data dir."""
    slot: str = "electricctl"
    retention_seconds: float = 7 * 86400
    """How long a client can stay away and still resume from the log."""
    fsync: bool = True
    """Testing only: off skips the log's fsyncs."""
    log_cache_bytes: int = 64 << 20
    """Memory for the newest log transactions (clients that keep up are served from it)."""
    db_wait: float = 10.0
    """At startup: how long to wait for a Postgres that is not up yet (a restart, or started
    alongside serve). One that refuses the credentials or lacks the database fails at once."""
    slot_wait: float = 15.0
    """At startup: how long to wait for a replication slot another process streams from (a
    previous serve's walsender lingers briefly) before stopping with the reason."""
    replication_work_mem: str | None = None
    """logical_decoding_work_mem for the walsender."""
    watch: bool = True
    """Hot reload: re-read the catalog as soon as ``apply`` commits (its ``pg_notify``) and
    reassess connected clients whose shapes or grants changed. Off: the catalog is read again
    within a few seconds for new requests, and connected clients keep what they were given."""
    watch_interval: float = 2.0
    """With ``watch``: how often to look for a new apply when no notification comes (a pooler
    that drops them, a lost connection)."""
    long_poll_seconds: float = 20.0
    """HTTP Shape API: how long a live request waits for a change (Electric's default; the client
    gives up on its own after 45 s)."""
    shape_log_bytes: int = 256 << 20
    """HTTP Shape API: a shape's log that grows past this is rotated (its clients refetch a fresh,
    compact snapshot) instead of being compacted in place."""
    drain_timeout: float = 10.0
    """On SIGTERM: how long the graceful drain may take before serve exits anyway."""
    log_url: str | None = None
    """``nats://HOST:PORT[/STREAM]``: keep the transaction log on NATS JetStream, shared by every
    serve started with the same URL and slot (one of them, the leader, reads the slot). None: the
    file log under ``data_dir``, for one serve."""
    log_replicas: int = 1
    """With ``log_url``: JetStream replicas of the stream and buckets (3 on a NATS cluster)."""
    lease_seconds: float = 6.0
    """With ``log_url``: the leader lease's lifetime. A leader that dies is replaced this long
    after its last renewal at the latest (a graceful stop hands over at once)."""

    # -- clients ------------------------------------------------------------------------------
    max_tree_rows: int = 1_000_000
    """Rows one client's include trees may hold in all: the server keeps each one's key in memory
    (~200 bytes), so a subscription that would take more is refused with the reason."""
    unacked_window: int = 300
    """Transactions a client may leave unacknowledged before the server waits for it. Electric's
    default is 30; at 30 a client catching up on 100-row transactions waits for its own acks
    (catch-up measured 56k rows/s against 70k at 300). The window bounds no server memory: the
    server reads from its log, and the websocket's write buffer bounds what is in flight."""
    send_timeout: float = 30.0
    """A client that has not read a frame for this long is dropped."""
    min_send_rate: int = 16 << 10
    """Bytes per second a client must at least read subscription data at (after send_timeout)."""
    start_client_replication: bool = True
    """Ask clients for their writes (off: a read-only server)."""
    max_transaction_ops: int = 100_000
    """Client transactions with more operations are refused (with a clear error)."""
    max_frame_bytes: int = 64 << 20
    """Largest WebSocket frame accepted from an authenticated client; a larger one closes it (1009)."""
    preauth_frame_bytes: int = 64 << 10
    """Largest frame accepted before the client has authenticated (an auth request is tiny)."""
    auth_timeout: float = 10.0
    """A connection that has not authenticated within this many seconds is closed (1008)."""
    max_pending_per_peer: int = 64
    """Connections from one address that have not authenticated yet; more are refused (429)."""
    max_connections_per_peer: int = 4096
    """Open connections from one address (a proxy counts as one); more are refused (429)."""
    max_inflight_transactions: int = 16
    max_inflight_bytes: int = 8 << 20
    """Per connection: client transactions received and not yet applied, in count and in frame
    bytes. At the bound the server stops reading that socket until the writer catches up."""

    # -- snapshots ----------------------------------------------------------------------------
    snapshot_connections: int = 4
    """Pooled Postgres connections for subscription snapshots."""
    snapshots_per_user: int | None = None
    """Snapshots one user may hold at once (None: half the pool)."""
