"""``GET /metrics``: the sync service in Prometheus' text format, through ``prometheus_client``.

Each :class:`~electricctl._server.app.Server` has its own :class:`ServeMetrics` and registry (several
servers run in one test process; the library's global registry is never used). Two kinds of metric:

- gauges and counters the server keeps anyway (``Server.stats``, ``Writer.stats``, the log, the
  snapshot pool, the connections) are read when scraped, by :class:`_ServerCollector`: nothing
  is added to the paths that stream rows;
- what only an event knows (latencies, errors and close codes sent, denials, write outcomes) is
  counted as it happens, once per transaction or request, never per row.

Replication lag needs Postgres' WAL position: it is read at scrape time, at most once a second,
on a connection of its own with a short timeout (see :class:`_Lag`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from electricctl import __version__
from electricctl._model.rows import Transaction
from electricctl._model.wire import DISPLAY_OPTIONS
from electricctl._protocol import satellite_pb2 as pb
from electricctl._replication import lsn as lsnmod

if TYPE_CHECKING:
    from electricctl._log.base import TransactionLog
    from electricctl._replication.source import ReplicationSource
    from electricctl._server.connection import Connection
    from electricctl._server.snapshot import SnapshotPool
    from electricctl._server.writer import Writer

CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds, from a millisecond (a write applied on a local Postgres) to a minute (a stalled stream)."""

WRITE_OUTCOMES = ("applied", "duplicate", "refused", "invalid", "denied", "failed")
"""What became of a client transaction (``electricctl_client_transactions_total{outcome}``):
applied; duplicate (applied before: the client sent it again); refused (Postgres refused the
data, a constraint say); invalid (it could not be decoded into the table's values); denied (the
grants do not allow it); failed (the server could not apply it: the connection is closed and
the client sends it again)."""

DENIAL_PATHS = ("write", "subscribe", "read")
"""Where permissions said no (``electricctl_permission_denials_total{path}``): write, a client
transaction the grants refuse; subscribe, a shape request refused because it is not declared in
electric.yaml while ``adhoc_shapes`` is deny; read, a shape request on a table none of the user's
grants lets it read (served empty)."""

LAG_REFRESH = 1.0
"""Seconds Postgres' WAL position is cached for (a scrape every second costs one query a second)."""
LAG_TIMEOUT = 1.0
"""Seconds a scrape waits for Postgres' WAL position before using the last it had."""


class EventMetrics:
    """What is counted as it happens. Every method is O(1), called once per transaction or request."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.commit_to_send = Histogram(
            "electricctl_commit_to_send_seconds",
            "Seconds from a transaction's commit in Postgres (its commit timestamp, Postgres' clock) to its"
            " being sent to a client that is live (streaming the newest transactions; a client catching up"
            " from the log is not counted); once per transaction and client",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.write_apply = Histogram(
            "electricctl_client_write_apply_seconds",
            "Seconds the server's writer took to merge and commit (or refuse) one client transaction in"
            " Postgres, waiting for the one writer included",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.writes = Counter(
            "electricctl_client_transactions",
            "Client transactions received, by outcome: " + ", ".join(WRITE_OUTCOMES),
            ["outcome"],
            registry=registry,
        )
        self.denials = Counter(
            "electricctl_permission_denials",
            "Requests the permissions refused, by path: write (a client transaction the grants refuse),"
            " subscribe (a shape not declared while adhoc_shapes is deny), read (a shape on a table the"
            " user may not read: served empty)",
            ["path"],
            registry=registry,
        )
        self.errors = Counter(
            "electricctl_errors_sent",
            "Satellite errors sent to clients, by RPC method (none: a top-level SatErrorResp;"
            " subscriptionData: a SatSubsDataError) and protocol error code",
            ["method", "code"],
            registry=registry,
        )
        self.closes = Counter(
            "electricctl_connections_closed",
            "Client connections the server closed, by WebSocket close code (1007 protocol error,"
            " 1008 policy, 1011 internal error, 1012 service restart, 4000 JWT expired)",
            ["code"],
            registry=registry,
        )
        for outcome in WRITE_OUTCOMES:
            self.writes.labels(outcome)
        for path in DENIAL_PATHS:
            self.denials.labels(path)
        self.rows_sent = 0
        self.transactions_logged = 0
        self.last_logged: tuple[int, float] | None = None
        """The newest transaction logged: its commit timestamp (ms, Postgres' clock) and when it was logged."""

    # -- the stream ------------------------------------------------------------------------------
    def logged(self, written: Sequence[Transaction]) -> None:
        """A batch of transactions is in the durable log."""
        if written:
            self.transactions_logged += len(written)
            self.last_logged = (written[-1].commit_ts_ms, time.time())

    def transaction_sent(self, commit_ts_ms: int, rows: int, live: bool) -> None:
        """A transaction with ``rows`` changes went to a client (``live``: as it was logged)."""
        self.rows_sent += rows
        if live:
            self.commit_to_send.observe(max(0.0, time.time() - commit_ts_ms / 1000))

    # -- client writes ---------------------------------------------------------------------------
    def write_done(self, outcome: str, seconds: float | None = None) -> None:
        self.writes.labels(outcome).inc()
        if seconds is not None:
            self.write_apply.observe(seconds)

    def denied(self, path: str) -> None:
        self.denials.labels(path).inc()

    # -- what connections are told ---------------------------------------------------------------
    def sent(self, msg: Message) -> None:
        """A message went to a client: count the errors it carries."""
        if isinstance(msg, pb.SatErrorResp):
            self.error_sent("none", pb.SatErrorResp.ErrorCode.Name(msg.error_type))
        elif isinstance(msg, pb.SatRpcResponse):
            for code in _rpc_errors(msg):
                self.error_sent(msg.method, code)

    def error_sent(self, method: str, code: str) -> None:
        self.errors.labels(method, code).inc()

    def closed(self, code: int) -> None:
        self.closes.labels(str(code)).inc()


def _rpc_errors(msg: pb.SatRpcResponse) -> Iterator[str]:
    """The error codes an RPC response carries: its own error, or (startReplication, subscribe)
    the error inside its body."""
    if msg.HasField("error"):
        yield pb.SatErrorResp.ErrorCode.Name(msg.error.error_type)
    elif msg.method == "startReplication":
        start = pb.SatInStartReplicationResp.FromString(msg.message)
        if start.HasField("err"):
            yield pb.SatInStartReplicationResp.ReplicationError.Code.Name(start.err.code)
    elif msg.method == "subscribe":
        subs = pb.SatSubsResp.FromString(msg.message)
        if subs.HasField("err"):
            shape_errors = subs.err.shape_request_error
            if shape_errors:
                for e in shape_errors:
                    yield pb.SatSubsResp.SatSubsError.ShapeReqError.Code.Name(e.code)
            else:
                yield pb.SatSubsResp.SatSubsError.Code.Name(subs.err.code)


class Observed(Protocol):
    """What the collector reads of the server (``Server`` satisfies it)."""

    @property
    def connections(self) -> AbstractSet[Connection]: ...

    @property
    def clients(self) -> Mapping[str, Any]: ...

    @property
    def scanning(self) -> AbstractSet[Any]: ...

    @property
    def stats(self) -> Mapping[str, int]: ...

    @property
    def writer(self) -> Writer: ...

    @property
    def log(self) -> TransactionLog: ...

    @property
    def snapshots(self) -> SnapshotPool: ...

    @property
    def source(self) -> ReplicationSource: ...

    @property
    def replication_ok(self) -> bool: ...

    @property
    def role(self) -> str: ...

    def instance_status(self) -> dict[str, Any]: ...

    @property
    def server_id(self) -> str: ...

    @property
    def draining(self) -> bool: ...

    @property
    def shapes(self) -> Any: ...


class _Lag:
    """Replication lag, in bytes and seconds.

    Bytes: Postgres' current WAL position (``pg_current_wal_lsn()``, read at most once a second)
    minus the position serve has durably logged and confirmed to the slot. WAL that publishes
    nothing (another database's, a checkpoint's) is confirmed when the walsender's keepalive says
    it was decoded, so an idle server may show a few kB for some seconds.

    Seconds: 0 when serve has caught up (no lag in bytes); while it is behind, how old the newest
    transaction it has logged since it fell behind is (now minus its commit timestamp: serve is
    catching up a backlog), or, when it has logged none since, how long it has been behind (the
    stream is stalled, or the WAL is not yet known to publish nothing).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.wal_lsn = 0
        self._read_at = float("-inf")
        self.behind_since: float | None = None
        self.error: str | None = None

    async def refresh(self, fallback: int) -> None:
        """Read Postgres' WAL position unless it was read within the last second; when it cannot be
        read (in time), use ``fallback`` (the newest WAL end the walsender reported)."""
        now = time.monotonic()
        if now - self._read_at < LAG_REFRESH:
            return
        self._read_at = now
        try:
            async with asyncio.timeout(LAG_TIMEOUT):
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self.url,
                        autocommit=True,
                        application_name="electricctl-metrics",
                        options=DISPLAY_OPTIONS,
                        connect_timeout=2,
                    )
                cur = await self._conn.execute("SELECT pg_current_wal_lsn()::text")
                row = await cur.fetchone()
            assert row is not None
            self.wal_lsn = lsnmod.parse(row[0])
            self.error = None
        except (psycopg.Error, TimeoutError, OSError) as exc:
            # a query cut short leaves the connection in an unknown state: start again next time
            self.error = f"{type(exc).__name__}: {str(exc).strip() or 'no answer'}"
            await self.close()
            self.wal_lsn = max(self.wal_lsn, fallback)

    def measure(self, flushed: int, last_logged: tuple[int, float] | None) -> tuple[int, float]:
        """(bytes, seconds) behind, given the confirmed position and the newest logged transaction."""
        lag_bytes = max(0, self.wal_lsn - flushed)
        now = time.time()
        if lag_bytes == 0:
            self.behind_since = None
            return 0, 0.0
        if self.behind_since is None:
            self.behind_since = now
        if last_logged is not None and last_logged[1] >= self.behind_since:
            return lag_bytes, max(0.0, now - last_logged[0] / 1000)
        return lag_bytes, now - self.behind_since

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()


class ServeMetrics(EventMetrics):
    """One server's metrics: its registry, what is counted as it happens, and (once :meth:`watch`
    is called) what is read from the server when scraped."""

    def __init__(self, url: str) -> None:
        # no ``*_created`` series beside every counter and histogram (they double the page for
        # nothing Prometheus' text format uses); the library's switch is process-wide
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        super().__init__(self.registry)
        self.lag = _Lag(url)
        self._server: Observed | None = None

    def watch(self, server: Observed) -> None:
        self._server = server
        self.registry.register(_ServerCollector(server, self))

    async def exposition(self) -> bytes:
        """The page ``GET /metrics`` answers (Prometheus text format)."""
        if self._server is not None:
            await self.lag.refresh(self._server.source.received_lsn)
        return generate_latest(self.registry)

    async def close(self) -> None:
        await self.lag.close()


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class _ServerCollector:
    """Gauges and counters read from the server at scrape time."""

    def __init__(self, server: Observed, metrics: ServeMetrics) -> None:
        self.server = server
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        server, metrics = self.server, self.metrics
        info = GaugeMetricFamily(
            "electricctl_build_info", "This serve: its version and server id", labels=["version", "server_id"]
        )
        info.add_metric([__version__, server.server_id], 1)
        yield info
        # -- clients --------------------------------------------------------------------------------
        subscriptions = shapes = 0
        for conn in list(server.connections):
            if conn.state is not None:
                subscriptions += len(conn.state.subscriptions)
            engine = conn.engine
            if engine is not None:
                shapes += sum(len(s.all) for s in engine.shapes.values()) + len(engine.tree_shapes)
        yield _gauge(
            "electricctl_connections", "Open WebSocket connections (authenticated or not)", len(server.connections)
        )
        yield _gauge(
            "electricctl_clients", "Connected clients that have authenticated (one per client id)", len(server.clients)
        )
        yield _gauge(
            "electricctl_clients_catching_up",
            "Connected clients reading the log from their position (not live yet)",
            len(server.scanning),
        )
        yield _gauge("electricctl_subscriptions", "Subscriptions of the connected clients", subscriptions)
        yield _gauge(
            "electricctl_shapes", "Shapes (flat shapes and include trees) the connected clients are served", shapes
        )
        # -- replication ----------------------------------------------------------------------------
        lag_bytes, lag_seconds = metrics.lag.measure(server.source.flushed_lsn, metrics.last_logged)
        yield _gauge(
            "electricctl_replication_up", "1 while the replication stream runs", 1 if server.replication_ok else 0
        )
        yield _gauge(
            "electricctl_leader",
            "1 while this instance reads the replication slot (always, with the file log; with a shared log, the leader)",
            1 if server.role in ("single", "leader") else 0,
        )
        yield _gauge(
            "electricctl_shared_log_lag_messages",
            "With a shared JetStream log: messages of the stream this instance's mirror has not taken in yet",
            int(server.instance_status()["lag_messages"]),
        )
        yield _gauge(
            "electricctl_replication_lag_bytes",
            "WAL bytes Postgres has written past what serve has logged and confirmed (pg_current_wal_lsn(),"
            " read at most once a second, minus the confirmed flush LSN; WAL that publishes nothing is"
            " confirmed at the walsender's keepalives)",
            lag_bytes,
        )
        yield _gauge(
            "electricctl_replication_lag_seconds",
            "0 when caught up (no lag in bytes); while behind, now minus the commit timestamp of the newest"
            " transaction logged since serve fell behind, or the time since it fell behind when it has logged"
            " none since (a stalled stream)",
            lag_seconds,
        )
        yield _gauge(
            "electricctl_replication_confirmed_lsn",
            "The WAL position serve has logged and confirmed to its slot",
            server.source.flushed_lsn,
        )
        yield _gauge(
            "electricctl_postgres_wal_lsn", "Postgres' current WAL position, as last read", metrics.lag.wal_lsn
        )
        yield _counter(
            "electricctl_replication_restarts_total",
            "Times the replication stream failed and was started again",
            server.stats.get("replication_restarts", 0),
        )
        yield _counter(
            "electricctl_transactions_logged_total",
            "Transactions from Postgres written to the durable log",
            metrics.transactions_logged,
        )
        # -- out to clients -------------------------------------------------------------------------
        yield _counter(
            "electricctl_transactions_sent_total",
            "Transactions sent to clients (a transaction sent to three clients counts three)",
            server.stats.get("transactions_sent", 0),
        )
        yield _counter(
            "electricctl_rows_sent_total",
            "Row changes sent to clients in transactions (not counting subscriptions' initial data)",
            metrics.rows_sent,
        )
        yield _counter(
            "electricctl_migrations_sent_total",
            "Schema migration transactions sent to clients",
            server.stats.get("migrations_sent", 0),
        )
        yield _counter(
            "electricctl_subscriptions_delivered_total",
            "Subscriptions whose initial data was delivered",
            server.stats.get("subscription_deliveries", 0),
        )
        # -- in from clients ------------------------------------------------------------------------
        writer_stats = server.writer.stats
        yield _counter(
            "electricctl_client_operations_total",
            "Row operations of the client transactions applied",
            writer_stats.get("client_operations", 0),
        )
        yield _counter(
            "electricctl_client_write_retries_total",
            "Times the writer ran a client transaction again after a serialization failure or deadlock",
            writer_stats.get("retries", 0),
        )
        # -- operations ---------------------------------------------------------------------------------
        yield _counter(
            "electricctl_catalog_reloads_total",
            "Times an apply was seen (its notification, or the poll) and the catalog read again",
            server.stats.get("catalog_reloads", 0),
        )
        yield _gauge("electricctl_draining", "1 while a graceful stop (SIGTERM) is under way", int(server.draining))
        logs = [i for i in server.shapes.instances.values() if i.rotated is None]
        yield _gauge("electricctl_http_shape_logs", "Shape logs served over the HTTP Shape API", len(logs))
        yield _gauge(
            "electricctl_http_shape_log_bytes",
            "Bytes of the HTTP Shape API's shape logs (their messages)",
            sum(i.log.bytes for i in logs),
        )
        # -- the log and the snapshot pool ------------------------------------------------------------
        log = server.log
        yield _gauge("electricctl_log_size_bytes", "Bytes of the durable log's segments on disk", log.size_bytes)
        yield _gauge(
            "electricctl_log_horizon_lsn",
            "The log's horizon: a client positioned before it must resync (pruned or never streamed)",
            log.horizon,
        )
        yield _gauge("electricctl_log_last_lsn", "Commit LSN of the newest transaction in the log", log.last_lsn)
        pool = server.snapshots
        yield _gauge("electricctl_snapshot_pool_size", "Snapshots that may be open at once", pool.size)
        yield _gauge(
            "electricctl_snapshots_in_use",
            "Snapshots open now (subscriptions and grant changes being served)",
            pool.in_use,
        )
        yield _gauge(
            "electricctl_snapshots_waiting", "Requests waiting for a snapshot (the pool is full)", pool.waiting
        )
