"""``electricctl serve``: one asyncio process that reads logical replication into the durable log
and serves Satellite clients over WebSocket at ``/ws`` (with ``GET /health`` beside it).

The network lives here and in :mod:`connection`; everything it calls below is pure or a thin
adapter (replication source, log, snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import logging
import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve

from electricctl._config.model import ElectricConfig
from electricctl._engine.engine import ShapeEngine
from electricctl._log.base import TransactionLog
from electricctl._log.filelog import FileLog, LogWriteError
from electricctl._log.jetstream import JetStreamLog, LeadershipLost, LogUnavailable, NatsTarget
from electricctl._model.migrations import Migration
from electricctl._model.rows import Transaction
from electricctl._model.table import TableRef
from electricctl._model.wire import MARKER_PREFIX
from electricctl._perms.read import path_tables
from electricctl._replication import lsn as lsnmod
from electricctl._replication.source import PermanentReplicationError, ReplicationSource, SlotInUse
from electricctl._server import migrations_api
from electricctl._server.catalog_cache import CatalogCache
from electricctl._server.clients import ClientStore
from electricctl._server.common import CLOSE_SERVICE_RESTART, first_line
from electricctl._server.connection import Connection
from electricctl._server.front import Front, HttpRequest, HttpResponse, WebSocketSettings, json_response
from electricctl._server.gate import Gate
from electricctl._server.leader import LeaderLease, Registry
from electricctl._server.metrics import ServeMetrics
from electricctl._server.options import ServeOptions
from electricctl._server.process import ServeError as ServeError
from electricctl._server.process import lock_data_dir, prepare_dirs
from electricctl._server.process import tune_malloc as tune_malloc
from electricctl._server.reload import CatalogWatcher
from electricctl._server.sdnotify import notify
from electricctl._server.shape_api.http import ShapeApi
from electricctl._server.shape_api.manager import ShapeManager
from electricctl._server.shape_api.writes import HttpWrites
from electricctl._server.shared_state import SharedStates
from electricctl._server.snapshot import SnapshotPool
from electricctl._server.writer import Writer
from electricctl._shapes.router import Router
from electricctl._sql import catalog as catalog_sql

log = logging.getLogger("electricctl.server")

_NOT_UP_YET = re.compile(
    r"Connection refused|starting up|shutting down|in recovery mode|not yet accepting connections"
    r"|timeout expired|No such file or directory|Cannot assign requested address",
    re.IGNORECASE,
)
"""A failed connection to a Postgres that may just not be up yet (libpq's and Postgres' messages:
they come without an SQLSTATE, so the text is all there is). Anything else (a refused password,
a missing database or role, pg_hba) fails at once."""


@dataclass(frozen=True, slots=True)
class StreamGap:
    log_last_lsn: int
    """The newest transaction the log held when the slot was found missing."""
    resumed_at: int
    """Where the new slot starts: clients positioned before it must resync."""
    detected_at: float

    def as_json(self) -> dict[str, Any]:
        return {
            "log_last_lsn": lsnmod.format(self.log_last_lsn),
            "resumed_at_lsn": lsnmod.format(self.resumed_at),
            "detected_at": datetime.datetime.fromtimestamp(self.detected_at, datetime.UTC).isoformat(),
        }


async def _either(a: asyncio.Event, b: asyncio.Event, then: asyncio.Event) -> None:
    """Set ``then`` once ``a`` or ``b`` is set."""
    waits = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        then.set()
    finally:
        for w in waits:
            w.cancel()


class Server:
    """The sync service: replication into the durable log, Satellite over WebSocket out of it."""

    def __init__(self, config: ElectricConfig, url: str, options: ServeOptions | None = None) -> None:
        self.config = config
        self.url = url
        self.options = options = options or ServeOptions()
        self.data_dir = Path(options.data_dir)
        self.slot = options.slot
        self.metrics = ServeMetrics(url)
        """``GET /metrics`` (its own registry: several servers may run in one process)."""
        self.gate = Gate(options, self.health, self.migrations, self.metrics.exposition)
        """HTTP answers and per-address connection limits, before a WebSocket is accepted."""
        self.writer = Writer(url)
        self.catalog = CatalogCache(url)
        self.server_id = ""
        """This server's id (kept in the data dir); read when :meth:`run` starts."""
        self._lock_fd: int | None = None
        self.log: TransactionLog
        if options.log_url is not None:
            self.log = JetStreamLog(
                NatsTarget.parse(options.log_url),
                self.data_dir / "log",
                retention_seconds=options.retention_seconds,
                cache_bytes=options.log_cache_bytes,
                replicas=options.log_replicas,
            )
        else:
            self.log = FileLog(
                self.data_dir / "log",
                retention_seconds=options.retention_seconds,
                fsync=options.fsync,
                cache_bytes=options.log_cache_bytes,
            )
        self.role = "single" if not self.log.shared else "follower"
        """single (the file log), or with a shared log: leader (it reads the slot) or follower."""
        self.lease: LeaderLease | None = None
        self.registry: Registry | None = None
        self.peers: list[dict[str, Any]] = []
        """With a shared log: every instance's status as last read from the registry (``/health``)."""
        self.store = ClientStore(self.data_dir / "clients")
        self.snapshots = SnapshotPool(url, options.snapshot_connections, options.snapshots_per_user)
        self.spool_dir = self.data_dir / "spool"
        """Where subscription data waits, past a few MB, to be sent to a client."""
        self.source = ReplicationSource(url, options.slot, work_mem=options.replication_work_mem)
        self.clients: dict[str, Connection] = {}
        self.connections: set[Connection] = set()
        self.router = Router()
        self.scanning: set[ShapeEngine] = set()
        """Clients catching up from the log (not live): woken on every new batch."""
        self.live_head = 0
        self.replication_ok = False
        self.replication_error: str | None = None
        self.last_gap: StreamGap | None = None
        """The last time the slot was found missing and created again (reported in /health)."""
        self.log_error: str | None = None
        """Why the last write to the log failed, until a write succeeds (``/health`` is 503 meanwhile)."""
        self.draining = False
        """A graceful stop is under way (:meth:`_drain`)."""
        self.front: Front | None = None
        """The listening socket's protocol factory (WebSocket and plain HTTP), once serving."""
        self._markers: dict[bytes, asyncio.Future[None]] = {}
        self.source.on_marker = self._on_marker
        self.log.on_published = self._deliver
        self.log.on_gap = self._gap_in_log
        if isinstance(self.log, JetStreamLog):
            # a marker counts once this instance's mirror has it (the leader's included)
            self.source.on_marker = self._relay_marker
            self.log.on_marker = self._on_marker
        self._ws: WsServer | None = None
        self.bound_port = options.port
        self.metrics.watch(self)
        self.stats: dict[str, int] = {
            "subscription_deliveries": 0,
            "transactions_sent": 0,
            "migrations_sent": 0,
            "replication_restarts": 0,
            "trees_over_budget": 0,
            "catalog_reloads": 0,
        }
        self.shapes = ShapeManager(self, self.data_dir / "shapes")
        """Shapes served over Electric's HTTP Shape API (``/v1/shape``)."""
        self.shape_api = ShapeApi(self, self.shapes)
        self.http_writes = HttpWrites(self)
        self.watcher = CatalogWatcher(url, self._catalog_applied, options.watch_interval)
        self._fingerprint: tuple[object, ...] = ()
        """What clients' shapes depend on in the catalog, as last read (see CatalogCache.fingerprint)."""
        self._unapplied_check: asyncio.Future[None] | None = None

    def _prepare_data_dir(self) -> None:
        """Lock the data dir for this process (one serve per data dir) and create what it holds."""
        self._lock_fd, self.server_id = lock_data_dir(self.data_dir)
        try:
            prepare_dirs(self.data_dir, self.store.directory, self.spool_dir)
        except ServeError:
            self._release_data_dir()
            raise

    def _release_data_dir(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- replication -------------------------------------------------------------------------
    async def _consume(self, batch: Sequence[Transaction]) -> None:
        """A batch from the slot: stored in the log (delivered by :meth:`_deliver` once readable),
        then the slot is confirmed past it."""
        try:
            await self.log.store(batch)
        except (LogWriteError, LogUnavailable) as exc:
            # nothing of the batch is confirmed to Postgres: the stream restarts (with backoff)
            # and Postgres sends it again
            self.log_error = str(exc)
            raise
        if self.log_error is not None:
            log.info("the transaction log is writable again")
            self.log_error = None
        self.source.confirm(batch[-1].end_lsn)

    def _deliver(self, written: list[Transaction]) -> None:
        """Transactions just made readable in the log (the log's ``on_published``, on the loop):
        tell the catalog of schema changes and wake every client they may concern."""
        migrated = {TableRef(m.schema, m.table) for tx in written for m in tx.migrations}
        if migrated:
            self.catalog.schema_changed(migrated)
        # route with no await since the log published them: a connection that is live has seen
        # every transaction before live_head, and the router queues each later one that may concern it
        self.shapes.on_transactions(written)
        for tx in written:
            woken = self.router.candidates(tx.changes)
            if tx.migrations:
                # a schema change reaches every client, whatever its shapes (and every HTTP shape log)
                woken = {*woken, *(c.engine for c in self.connections if c.engine is not None), *self.shapes.engines()}
            if tx.origin is not None:
                # a client's own transaction is echoed to it whatever its shapes
                origin = self.clients.get(tx.origin)
                if origin is not None and origin.engine is not None and origin.engine not in woken:
                    woken = {*woken, origin.engine}
            for engine in woken:
                assert isinstance(engine, ShapeEngine)
                if engine.live:
                    engine.relevant.append(tx.lsn)
                    engine.wake.set()
        policy = self.catalog.cached_policy
        if policy is not None and policy.enforced:
            assigned = {str(a.table) for a in policy.assignments} | path_tables(policy)
            if any(ch.relation.qualified in assigned for tx in written for ch in tx.changes):
                for conn in self.connections:
                    conn.roles_may_have_changed()
                self.shapes.roles_may_have_changed()
        if written:
            self.live_head = written[-1].lsn
            self.metrics.logged(written)
        for engine in self.scanning:
            engine.wake.set()

    async def caught_up(self, timeout: float = 30.0) -> None:
        """Wait until every transaction committed before now is in the log.

        Emits a marker into the WAL and waits for the replication stream to deliver it: that is
        exact and immediate, where waiting for the slot's position would depend on keepalives.
        """
        token = uuid.uuid4().bytes
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._markers[token] = fut
        try:
            # transactional: its commit flushes the WAL, so the walsender sends it at once (a
            # non-transactional message waits for the WAL writer, up to wal_writer_delay)
            await self.catalog.rows("SELECT pg_logical_emit_message(true, %s, %s::bytea)", [MARKER_PREFIX, token])
            await asyncio.wait_for(fut, timeout)
        finally:
            self._markers.pop(token, None)

    def _relay_marker(self, token: bytes) -> None:
        """The leader read a caught-up marker from the slot: append it to the shared log after what
        was stored before it, so every instance hears of it once its mirror has all of that."""
        assert isinstance(self.log, JetStreamLog)
        task = asyncio.get_running_loop().create_task(self.log.store_marker(token))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a lost marker times its waiter out

    def _gap_in_log(self, lsn: int) -> None:
        """The shared log says the stream resumed at ``lsn`` with a gap before it (the leader made
        the slot again): every client is sent away; those positioned before it resync when they
        come back, the others resume."""
        log.error(
            "the shared log has a gap before %s: %d connected clients reconnect",
            lsnmod.format(lsn),
            len(self.connections),
        )
        for conn in list(self.connections):
            conn.drop(CLOSE_SERVICE_RESTART, "the server's stream has a gap: reconnect to resync")

    def _on_marker(self, token: bytes) -> None:
        fut = self._markers.get(token)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _replicate(self, stop: asyncio.Event) -> None:
        """Stream from the slot until ``stop``; on failure, report not-ready and retry with backoff."""
        delay = 0.5
        started = time.monotonic()
        streamed = False
        while not stop.is_set():
            try:
                gap = await asyncio.to_thread(self._prepare_slot)
                if gap is not None:
                    await self._on_gap(gap)
                await asyncio.to_thread(self.source.start, 0)  # connecting blocks: not on the event loop
                self.replication_ok = True
                self.replication_error = None
                streamed = True
                delay = 0.5
                await self.source.run(self._consume, stop)
            except SlotInUse as exc:
                if not streamed and not self.log.shared and time.monotonic() - started > self.options.slot_wait:
                    # never got the slot since starting: most likely two serves share its name
                    self.replication_ok = False
                    self.replication_error = str(exc)
                    log.error("%s", exc)
                    raise ServeError(str(exc)) from None
                self.replication_ok = False
                self.replication_error = str(exc)
                log.warning("replication stopped (%s); retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 5.0)
            except LeadershipLost:
                raise
            except PermanentReplicationError as exc:
                # retrying cannot help: stop serve with the reason (/health says it meanwhile)
                self.replication_ok = False
                self.replication_error = str(exc)
                log.error("%s", exc)
                raise ServeError(str(exc)) from None
            except Exception as exc:
                self.replication_ok = False
                self.replication_error = f"{type(exc).__name__}: {exc}"
                self.stats["replication_restarts"] += 1
                log.warning("replication stopped (%s); retrying in %.1fs", self.replication_error, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 10.0)
            finally:
                self.source.close()
        self.replication_ok = False

    async def _lead(self, stop: asyncio.Event) -> None:
        """Read the slot: always with the file log; with a shared log, whenever this instance holds
        the leader lease (else follow, and try for the lease every half second)."""
        if not isinstance(self.log, JetStreamLog):
            await self._replicate(stop)
            return
        assert self.lease is not None
        while not stop.is_set():
            try:
                epoch = await self.lease.try_acquire()
            except Exception as exc:
                log.warning("cannot reach the leader lease (%s)", exc)
                epoch = None
            if epoch is None:
                self.role = "follower"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                continue
            self.role = "leader"
            log.info("this instance leads (epoch %d): it reads slot %s", epoch, self.slot)
            lost = asyncio.Event()
            until = asyncio.Event()
            keeper = asyncio.create_task(self.lease.keep(lost), name="lease")

            relayer = asyncio.create_task(_either(stop, lost, until))
            try:
                await self.log.take_over(epoch, timeout=max(30.0, self.options.lease_seconds * 5))
                await self._evict_previous_leader()
                await self._replicate(until)
            except LeadershipLost as exc:
                log.error("%s", exc)
            except ServeError:
                raise  # retrying cannot help (the reason is logged): serve stops
            except Exception as exc:  # NATS failed under us: let another instance (or this one, later) lead
                log.warning("could not lead (%s: %s): letting the lease go", type(exc).__name__, exc)
            finally:
                keeper.cancel()
                relayer.cancel()
                await asyncio.gather(keeper, relayer, return_exceptions=True)
                self.log.step_down()
                self.replication_ok = False
                if not lost.is_set():
                    await self.lease.release()  # hand over now, not when the lease expires
                self.role = "follower"
            if not stop.is_set():
                # stepped down without being stopped: give the others a moment to take over
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    async def _evict_previous_leader(self) -> None:
        """A leader that lost its lease while paused may still hold the slot's walsender: this one
        holds the lease now (and the stream fences the old one), so end that session."""
        try:
            rows = await self.catalog.rows(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = %s AND active_pid IS NOT NULL",
                [self.slot],
            )
        except psycopg.Error as exc:  # not allowed to signal it: wait for wal_sender_timeout instead
            log.warning("could not end the previous leader's replication session: %s", first_line(exc))
            return
        if rows:
            log.warning("ended the previous leader's replication session on slot %s", self.slot)

    async def _announce(self) -> None:
        """With a shared log: this instance's status in the registry, refreshed until cancelled."""
        assert self.registry is not None
        while True:
            with contextlib.suppress(Exception):
                await self.registry.put(self.server_id, self.instance_status())
                self.peers = await self.registry.all()
            await asyncio.sleep(max(0.5, self.options.lease_seconds / 3))

    def instance_status(self) -> dict[str, Any]:
        lag = 0
        if isinstance(self.log, JetStreamLog):
            lag = max(0, self.log.stream_last_seq - self.log.mirror_seq)
        return {
            "id": self.server_id,
            "address": f"{self.options.host}:{self.bound_port}",
            "role": self.role,
            "clients": len(self.connections),
            "log_last_lsn": lsnmod.format(self.log.last_lsn),
            "lag_messages": lag,
            "pid": os.getpid(),
        }

    def _prepare_slot(self) -> StreamGap | None:
        """Create the slot if it is missing; if a log existed before it, the stream has a gap."""
        created = self.source.ensure_slot()
        if created:
            if not self.log.has_horizon and self.log.last_lsn == 0:
                self.log.set_horizon(0)  # the log starts with the slot: nothing is missing
                return None
            # The slot was dropped (by hand, or by max_slot_wal_keep_size) after this log began:
            # what was committed between the last transaction logged and the new slot's start
            # was never decoded for us. Clients from before must resync.
            gap = StreamGap(self.log.last_lsn, self.source.confirmed_position(), time.time())
            self.log.mark_gap(gap.resumed_at)
            return gap
        if not self.log.has_horizon and self.log.last_lsn == 0:
            # a new log on an old slot: what the slot confirmed before is not in this log
            self.log.mark_gap(self.source.confirmed_position())
        return None

    async def _on_gap(self, gap: StreamGap) -> None:
        """Report a gap (log, /health, the catalog for `status`) and send every connected client
        away: when it reconnects its position is before the gap, and it is told to resync."""
        self.last_gap = gap
        log.error(
            "replication slot %s was missing and has been created again: changes committed between %s and %s"
            " were not streamed; %d connected clients are sent to resync",
            self.slot,
            lsnmod.format(gap.log_last_lsn),
            lsnmod.format(gap.resumed_at),
            len(self.connections),
        )
        try:
            await self.catalog.rows(
                "INSERT INTO electric.stream_gaps (slot_name, log_last_lsn, resumed_at_lsn)"
                " VALUES (%s, %s::pg_lsn, %s::pg_lsn)",
                [self.slot, lsnmod.format(gap.log_last_lsn), lsnmod.format(gap.resumed_at)],
            )
        except psycopg.Error as exc:
            log.warning("could not record the gap in electric.stream_gaps: %s", exc)
        for conn in list(self.connections):
            conn.drop(CLOSE_SERVICE_RESTART, "the server's stream has a gap: reconnect to resync")

    # -- http and websockets -----------------------------------------------------------------
    async def migrations(self, after: str) -> list[Migration]:
        """The migrations recorded after version ``after`` ("" for all), for ``/api/migrations``."""
        try:
            return await migrations_api.load(self.catalog.rows, after)
        except psycopg.Error as exc:
            raise migrations_api.Unavailable(str(exc).strip()) from None

    def health(self) -> tuple[int, dict[str, Any]]:
        following = getattr(self.log, "following_error", None)
        problems = [p for p in (self.log_error, self.store.error) if p is not None]
        if following is not None:
            problems.insert(0, f"following the shared log: {following}")
        if self.role == "follower":
            # a follower serves from its mirror of the shared log: it needs that, not the slot
            ready = not problems and self.bound_port != 0
        else:
            if not self.replication_ok and self.replication_error is not None and self.log_error is None:
                problems.insert(0, f"replication: {self.replication_error}")
            ready = self.replication_ok and not problems
        status = "ok" if ready else "error" if problems else "starting"
        body = {
            "status": status,
            "ready": ready,
            "reasons": problems,
            "replication": {
                "slot": self.slot,
                "flushed_lsn": self.source.flushed_lsn,
                "log_last_lsn": self.log.last_lsn,
                "error": self.replication_error,
            },
            "log": {"error": self.log_error},
            "stream_gap": None if self.last_gap is None else self.last_gap.as_json(),
            "warnings": []
            if self.last_gap is None
            else [
                f"replication slot {self.slot} was missing and was created again at"
                f" {self.last_gap.as_json()['detected_at']}: changes committed while it was missing were"
                " not streamed, and clients from before were sent to resync"
            ],
            "client_state": {"error": self.store.error},
            "clients": len(self.connections),
            "role": self.role,
            "instance": self.server_id,
        }
        if isinstance(self.log, JetStreamLog):
            body["shared_log"] = {
                "stream": self.log.target.redacted(),
                "epoch": self.log.epoch or None,
                "mirror_seq": self.log.mirror_seq,
                "stream_last_seq": self.log.stream_last_seq,
                "error": following,
            }
            body["instances"] = self.peers
        return (200 if ready else 503), body

    async def _handle(self, ws: ServerConnection) -> None:
        conn = Connection(self, ws)
        self.connections.add(conn)
        self.gate.opened(conn.peer_host)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            self.gate.closed(conn.peer_host, authenticated=conn.identity is not None)

    def peer_authenticated(self, conn: Connection) -> None:
        self.gate.authenticated(conn.peer_host)

    def _warn_unapplied(self, reread: bool = False) -> None:
        """serve follows what is applied, not the file: say so when the file has changes that are
        not applied (a read-only plan; a failure to plan is only logged). ``reread``: compare the
        file as it is on disk now (at a catalog reload)."""
        from electricctl._apply import applier
        from electricctl._config.loader import load_file
        from electricctl.cli.summaries import counts

        try:
            config = self.config
            if reread and config.file and Path(config.file).is_file():
                config = load_file(config.file, database_url=self.url)
            the_plan, _ = applier.load_plan(config, self.url)
        except Exception as exc:
            log.debug("could not compare %s with the database: %s", self.config.file, exc)
            return
        if not the_plan.empty:
            n = counts(the_plan)
            log.warning(
                "%s has changes that are not applied (%d to create, %d to update, %d to delete): serve follows"
                " what is applied; run `electricctl apply`",
                self.config.file,
                n["create"],
                n["update"],
                n["delete"],
            )

    async def check_catalog(self) -> None:
        """Refuse to start against a database whose electricctl catalog is missing or older than
        this version. A Postgres that is not up yet is waited for, up to ``options.db_wait``."""
        deadline = time.monotonic() + self.options.db_wait
        waiting = False
        while True:
            try:
                conn = await self.catalog.connection()
                cur = await conn.execute("SELECT max(version) FROM electric.catalog_migrations")
                row = await cur.fetchone()
                break
            except psycopg.OperationalError as exc:
                await self.catalog.close()
                first = first_line(exc)
                if _NOT_UP_YET.search(str(exc)) and time.monotonic() < deadline:
                    if not waiting:
                        log.warning(
                            "waiting up to %.0fs for Postgres, which is not up yet (%s)", self.options.db_wait, first
                        )
                        waiting = True
                    await asyncio.sleep(0.5)
                    continue
                raise ServeError(
                    f"cannot connect to the database ({first})"
                    + (f" within {self.options.db_wait:.0f}s" if waiting else "")
                    + ": check --database-url (or database.url, $DATABASE_URL) and that Postgres is running and reachable"
                ) from None
            except psycopg.errors.UndefinedTable:
                raise ServeError("the database has no electricctl catalog: run `electricctl apply` first") from None
        version = int(row[0]) if row and row[0] is not None else 0
        if version < catalog_sql.LATEST:
            raise ServeError(
                f"the database's electricctl catalog is version {version}, this server needs {catalog_sql.LATEST}:"
                " run `electricctl apply` (it upgrades the catalog)"
            )

    async def run(self, stop: asyncio.Event, started: asyncio.Event | None = None) -> None:
        self._prepare_data_dir()
        try:
            await self._run(stop, started)
        finally:
            self._release_data_dir()

    async def _run(self, stop: asyncio.Event, started: asyncio.Event | None) -> None:
        await self.check_catalog()
        await asyncio.to_thread(self._warn_unapplied)
        # what the catalog is now: an apply after this is a change to reassess clients for
        self.watcher.generation = await self.catalog.generation()
        self._fingerprint = await self.catalog.fingerprint()
        policy, _ = await self.catalog.policy()
        if not policy.enforced:
            log.warning(
                "electric.yaml declares no grants: every authenticated client may read and write every"
                " electrified table (as in Electric 0.12); declare grants to enforce permissions"
            )
        try:
            self.log.open()
        except OSError as exc:
            raise ServeError(
                f"cannot open the transaction log in {self.data_dir / 'log'}: {exc.strerror or exc}"
            ) from None
        try:
            await self.log.connect(timeout=self.options.db_wait)
        except LogUnavailable as exc:
            raise ServeError(str(exc)) from None
        announcer: asyncio.Task[None] | None = None
        if isinstance(self.log, JetStreamLog):
            assert self.log.js is not None
            ttl = self.options.lease_seconds
            me = {"id": self.server_id, "address": f"{self.options.host}:{self.options.port}", "pid": os.getpid()}
            self.lease = LeaderLease(
                self.log.js, self.log.target.stream, me, ttl, self.options.log_replicas, self.log.target.servers
            )
            self.registry = Registry(self.log.js, self.log.target.stream, ttl * 3, self.options.log_replicas)
            self.store.shared = SharedStates(
                self.log.js,
                self.log.target.stream,
                self.server_id,
                self.options.retention_seconds,
                self.options.log_replicas,
            )
        await self.shapes.restore()
        stop_replication = asyncio.Event()
        replication = asyncio.create_task(self._lead(stop_replication), name="replication")
        # websockets' server, for its connection handler (handshake, process_request, ours) and its
        # bookkeeping; the listening socket is ours (front.py): it serves plain HTTP too
        ws_server = serve(self._handle, process_request=self.gate.process_request, compression=None)
        self.front = front = Front(
            self._http,
            ws_server,
            WebSocketSettings(
                self.gate.select_subprotocol,
                max_size=self.options.preauth_frame_bytes,  # raised per connection once it has authenticated
                max_queue=4,  # frames websockets buffers per connection before it stops reading
                ping_interval=20,
                ping_timeout=20,
            ),
            max_body=self.options.max_frame_bytes,
            max_http_per_peer=self.options.max_connections_per_peer,
        )
        loop = asyncio.get_running_loop()

        async def listen() -> asyncio.Server:
            return await loop.create_server(front.protocol, self.options.host, self.options.port)

        ws_server.create_server = listen
        try:
            await ws_server
        except OSError as exc:
            stop_replication.set()
            replication.cancel()
            await asyncio.gather(replication, return_exceptions=True)
            raise ServeError(
                f"cannot listen on {self.options.host}:{self.options.port}: {exc.strerror or exc}"
                + (" (another process uses that port; pick another --port)" if exc.errno == errno.EADDRINUSE else "")
            ) from None
        async with ws_server:
            self._ws = ws_server
            self.bound_port = next(iter(ws_server.sockets)).getsockname()[1]
            if started is not None:
                started.set()
            log.info("serving Satellite on ws://%s:%d/ws", self.options.host, self.bound_port)
            pruner = asyncio.create_task(self._maintain(), name="maintenance")
            if self.registry is not None:
                announcer = asyncio.create_task(self._announce(), name="announce")
            stop_watch = asyncio.Event()
            watcher = (
                asyncio.create_task(self.watcher.run(stop_watch), name="catalog-watch") if self.options.watch else None
            )
            stopper = asyncio.create_task(stop.wait())
            notify(f"READY=1\nSTATUS=serving on {self.options.host}:{self.bound_port}")
            done, _ = await asyncio.wait({replication, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if replication not in done:
                try:
                    await asyncio.wait_for(
                        self._drain(ws_server, stop_replication, replication), self.options.drain_timeout
                    )
                except TimeoutError:
                    log.warning(
                        "the drain did not finish within %.0fs: closing %d connections now",
                        self.options.drain_timeout,
                        len(self.connections),
                    )
                    for conn in list(self.connections):
                        conn.ws.transport.abort()
            pruner.cancel()
            if announcer is not None:
                announcer.cancel()
                if self.registry is not None:
                    await self.registry.remove(self.server_id)
            stop_watch.set()
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            ws_server.close()
            for conn in list(self.connections):
                await conn.shutdown()
            stop_replication.set()
            if replication in done and replication.exception() is not None:
                stopper.cancel()
                raise replication.exception()  # type: ignore[misc]
            await replication
        await self.shapes.close()
        await self.store.drain()  # client state saved by connections that just closed
        await self.catalog.close()
        await self.writer.close()
        await self.snapshots.close()
        await self.metrics.close()
        await self.log.aclose()
        self.log.close()

    async def _drain(self, ws: WsServer, stop_replication: asyncio.Event, replication: asyncio.Task[None]) -> None:
        """A graceful stop (SIGTERM), in order: accept no new connections; apply the writes clients
        have in flight (and acknowledge them); let the log take in everything committed until now
        (those writes' echoes included), confirm it to the slot and stop replication; then close
        every client with 1012 (service restart), so it reconnects at once, here after a restart
        or to another server, and resumes where it was without a resync."""
        self.draining = True
        notify("STOPPING=1")
        ws.close(close_connections=False)
        if self.front is not None:
            self.front.close_idle()
        for inst in list(self.shapes.instances.values()):
            inst.log.wake()  # long polls answer now (their clients poll again, elsewhere)
        conns = list(self.connections)
        log.info("draining %d connections (up to %.0fs)", len(conns), self.options.drain_timeout)
        await asyncio.gather(*(c.drain(self.options.drain_timeout) for c in conns), return_exceptions=True)
        if self.replication_ok or self.role == "follower":
            try:
                # a follower hears of the marker through the shared log, once its leader relays it
                await self.caught_up(timeout=self.options.drain_timeout / (1 if self.replication_ok else 3))
            except (TimeoutError, psycopg.Error) as exc:
                log.warning("could not wait for the log to catch up before stopping: %s", exc)
        stop_replication.set()
        with contextlib.suppress(Exception):
            await asyncio.shield(replication)  # it sends the slot its last confirmed position as it stops
        await asyncio.gather(
            *(c.close(CLOSE_SERVICE_RESTART, "the server is restarting: reconnect") for c in conns),
            return_exceptions=True,
        )
        log.info("drained: log at %s, slot confirmed", lsnmod.format(self.log.last_lsn))

    async def _http(self, request: HttpRequest) -> HttpResponse:
        """A plain HTTP request on the serve port (not a WebSocket upgrade)."""
        if request.path == "/v1/shape":
            return await self.shape_api.handle(request)
        if request.path == "/v1/transactions":
            return await self.http_writes.handle(request)
        if request.path == "/v1/health":  # Electric's (its integration tests poll it)
            ready = self.health()[0] == 200
            return json_response(200 if ready else 503, {"status": "active" if ready else "starting"})
        answer = await self.gate.http(request)
        if answer is not None:
            return answer
        return HttpResponse(
            404, b"not found: the Satellite endpoint is /ws\n", [("content-type", "text/plain; charset=utf-8")]
        )

    async def _catalog_applied(self, generation: int) -> None:
        """``apply`` committed (its notification, or the poll, says so): read the catalog again and,
        if what shapes depend on changed, reassess every connected client at once: rows a grant or
        shape no longer gives leave as GONE, rows it now gives arrive, without a reconnect."""
        self.catalog.invalidate()
        fingerprint = await self.catalog.fingerprint()
        changed = fingerprint != self._fingerprint
        self._fingerprint = fingerprint
        self.stats["catalog_reloads"] += 1
        reassessed = sum(conn.catalog_changed() for conn in list(self.connections)) if changed else 0
        if changed:
            await self.shapes.catalog_changed()
        log.info(
            "catalog reloaded (apply #%d): %s",
            generation,
            f"shapes or grants changed, {reassessed} connected clients reassessed"
            if changed
            else "nothing clients depend on changed",
        )
        # the file may have moved on again since (or this apply came from another file)
        self._unapplied_check = asyncio.ensure_future(asyncio.to_thread(self._warn_unapplied, reread=True))

    async def _maintain(self) -> None:
        """Every second: write client state whose save failed; every minute: prune the log."""
        ticks = 0
        while True:
            await asyncio.sleep(1)
            ticks += 1
            if self.store.error is not None:
                await self.store.retry_failed()
            if ticks % 60 == 0:
                await self.shapes.expire()
                try:
                    dropped = self.log.prune()
                except (OSError, LogWriteError) as exc:
                    log.warning("could not prune the log: %s", exc)
                    continue
                if dropped:
                    log.info("dropped %d log segments past the retention window", dropped)
