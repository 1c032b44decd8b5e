"""The connection a sync client drives: connect, authenticate, replicate, and carry out the session's effects.

:class:`Link` does the I/O for :class:`~electricctl.client.session.ClientSession`: it owns the
WebSocket and the RPC calls on it, feeds every frame to the session and performs the effects it
returns (store work on the store thread, frames on the socket). It reconnects with backoff until
stopped: quickly after a lost connection, ever more slowly (up to 5 minutes) while the server
refuses the token; a token function is called again at each attempt. The app's writes are found
by :class:`~electricctl.client.outbox.Outbox`; frames are read ahead of the store thread, and runs
of server transactions are written in one SQLite transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time

from google.protobuf.message import Message
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

import electricctl.client.session as s
from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._protocol.rpc import RpcCalls, RpcError
from electricctl.client.outbox import Outbox
from electricctl.client.state import ClientState, Subscription
from electricctl.client.store import LSN_KEY, SCHEMA_VERSION_KEY, Poll, RemoteTransaction
from electricctl.client.values import RemoteChange
from electricctl.client.wire import subscription_refusal, subscription_request
from electricctl.errors import (
    AuthenticationFailed,
    ConnectionLost,
    EndpointNotFound,
    SubscriptionRefused,
    SyncError,
    Timeout,
)

log = logging.getLogger("electricctl.client")

NATIVE_HEADER = "X-Electricctl-Client"
MAX_FRAME = 256 << 20
RETRY_MAX = 5.0
"""Longest wait between reconnects after a lost connection."""
PIPELINE_FRAMES = 64
"""Frames read ahead of the store thread (and the most applied in one SQLite transaction)."""
ACK_RETRY = 0.05
"""Seconds before a due ack is queued again, when the queue of frames is full."""
AUTH_RETRY_MAX = 300.0
"""Longest wait between reconnects while the server refuses the token (it keeps growing to this)."""


_EffectQueue = asyncio.Queue[list[s.Effect] | None]
"""The session's effects, frame by frame, on their way from the reader to the performer (None: the end)."""


class Link:
    """The background work of one started client: polling the file, and the connection."""

    def __init__(self, st: ClientState) -> None:
        self.st = st
        self._session: s.ClientSession | None = None
        self._ws: ClientConnection | None = None
        self._rpc = RpcCalls(first_id=1)
        self._ack_timer: asyncio.TimerHandle | None = None
        self._outbox: Outbox | None = None
        self._effects: _EffectQueue | None = None
        self._uncommitted: set[str] = set()
        """Tables subscription data wrote in the local transaction still held open (reported to
        ``on_tables`` when it commits: before, other connections cannot see the rows)."""

    async def close(self) -> None:
        """Close the connection (the task running :meth:`run` is then cancelled by the caller)."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    async def run(self) -> None:
        assert self.st.client_id is not None
        self._session = s.ClientSession(self.st.client_id)
        self._outbox = Outbox(self.st, self._session)
        poller = asyncio.create_task(self._outbox.run())
        try:
            await self._connect_loop()
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    async def _connect_loop(self) -> None:
        delay = 0.1
        while not self.st.stopping:
            limit = RETRY_MAX
            try:
                await self._connect()
            except asyncio.CancelledError:
                raise
            except (AuthenticationFailed, EndpointNotFound) as exc:
                # retried (a new token, the server fixed), but the caller learns it at once
                limit, delay = AUTH_RETRY_MAX, max(delay, 1.0)
                log.warning("%s; retrying in about %.1fs", exc, delay)
                self.st.fail(exc)
            except (OSError, ConnectionClosed, InvalidHandshake, SyncError) as exc:
                log.info("sync connection lost (%s); reconnecting in about %.1fs", exc, delay)
            except Exception as exc:
                log.warning("sync session failed (%s: %s); reconnecting", type(exc).__name__, exc)
                log.debug("the failure's traceback", exc_info=exc)
                self.st.fail(exc)
            finally:
                was_connected = self.st.connected.is_set()
                self.st.connected.clear()
                self._ws = None
            if self.st.stopping:
                return
            if was_connected:
                delay = 0.1  # it worked for a while: the next attempt is quick again
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not a secret
            delay = min(delay * 2, limit)

    async def _fresh_token(self) -> str:
        if isinstance(self.st.token, str):
            return self.st.token
        token = self.st.token()
        if inspect.isawaitable(token):
            token = await token
        if not isinstance(token, str):
            raise AuthenticationFailed(f"the token function returned {type(token).__name__}, not a token")
        return token

    async def _connect(self) -> None:
        token = await self._fresh_token()
        try:
            ws_cm = await connect(
                self.st.url,
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
                raise EndpointNotFound(f"no sync endpoint at {self.st.url} (HTTP {status}): {hint}") from None
            raise
        async with ws_cm as ws:
            await self._run_session(ws, token)

    async def _run_session(self, ws: ClientConnection, token: str) -> None:
        assert self._session is not None
        self._ws = ws
        self._rpc = rpc = RpcCalls(first_id=1)
        self._session.connection_made()
        self._effects = queue = _EffectQueue(PIPELINE_FRAMES + 1)
        reader = asyncio.create_task(self._read(ws, self._rpc, queue))
        performer = asyncio.create_task(self._perform_queued(queue))
        sender = asyncio.create_task(self._send_loop())
        tasks = (reader, performer, sender)
        try:
            try:
                await self.call("authenticate", self._session.auth_request(token))
            except RpcError as exc:
                raise AuthenticationFailed(f"authentication failed: {exc.error.message}") from None
            await self._start_replication()
            self.st.connected.set()
            await self._request_pending_subscriptions()
            waiting: set[asyncio.Task[None]] = set(tasks)
            while True:  # the reader ends first when the server closes; the performer, once it applied the rest
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
                if sender in done or performer in done:
                    break
        finally:
            self._effects = None
            rpc.fail_all(self._lost_error)
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.st.store is not None:
                # subscription data cut off with the connection: none of it stays
                with contextlib.suppress(Exception):
                    await self.st.io(self.st.store.abandon)
                self._uncommitted.clear()

    async def _start_replication(self) -> None:
        session, store = self._session, self.st.store
        assert session is not None and store is not None
        lsn = await self.st.io(store.meta, LSN_KEY) or ""
        version = await self.st.io(store.meta, SCHEMA_VERSION_KEY) or ""
        # resume only what this client holds: a subscription still waiting for its data is asked
        # for again (the server may have sent all of it before the connection broke)
        req = session.start_request(lsn, self.st.held(), version)
        while True:
            resp = await self._call_replication(req)
            if session.started(resp) is s.Start.STARTED:
                return
            # the server cannot resume us: forget synced rows (pending writes stay), start afresh
            log.warning("the server cannot resume this client (%s); syncing its shapes again", resp.err.message)
            tables = {shape["table"] for sub in self.st.subscriptions.values() for shape in sub.shapes}
            await self.st.io(store.reset_tables, tables)
            self.st.server_lsn = ""
            for sub in self.st.subscriptions.values():
                sub.synced.clear()
            req = session.start_request("", [], version)

    async def _call_replication(self, req: pb.SatInStartReplicationReq) -> pb.SatInStartReplicationResp:
        try:
            resp = await self.call("startReplication", req)
        except RpcError as exc:
            raise SyncError(f"the server refused replication: {exc.error.message}") from None
        assert isinstance(resp, pb.SatInStartReplicationResp)
        return resp

    async def _request_pending_subscriptions(self) -> None:
        for sub in list(self.st.subscriptions.values()):
            if not sub.synced.is_set() and sub.error is None:
                try:
                    await self.request_subscription(sub)
                except SubscriptionRefused as exc:
                    # refused (say, the shape is no longer declared): the others carry on
                    log.warning("%s", exc)
                    self.st.subscriptions.pop(sub.id, None)
                    await self.st.save_subscriptions()

    async def request_subscription(self, sub: Subscription) -> None:
        try:
            resp = await self.call("subscribe", subscription_request(sub.id, sub.shapes))
        except RpcError as exc:
            raise SubscriptionRefused(f"subscription refused: {exc.error.message}") from None
        assert isinstance(resp, pb.SatSubsResp)
        details = subscription_refusal(resp)
        if details is not None:
            sub.error = details
            sub.synced.set()
            raise SubscriptionRefused(f"subscription refused: {details}")

    async def call(self, method: str, body: Message, timeout: float = 30) -> Message:
        """An RPC call on the current connection; :class:`ConnectionLost` if it is gone or goes."""
        ws = self._ws
        if ws is None:
            raise ConnectionLost(f"not connected to {self.st.url}")

        async def send(msg: Message) -> None:
            await ws.send(codec.encode(msg))

        try:
            return await self._rpc.call(send, method, body, timeout)
        except ConnectionClosed as exc:
            raise ConnectionLost(f"the connection to {self.st.url} was lost during {method}: {exc}") from None
        except TimeoutError:
            raise Timeout(f"the server did not answer {method} within {timeout:g}s") from None

    def _lost_error(self) -> ConnectionLost:
        return ConnectionLost(f"the connection to {self.st.url} was lost before the server answered")

    async def _send(self, msg: Message) -> None:
        if self._ws is None:
            raise ConnectionLost(f"not connected to {self.st.url}")
        await self._ws.send(codec.encode(msg))

    # -- outbound: local writes ------------------------------------------------------------------
    async def _send_loop(self) -> None:
        session, store = self._session, self.st.store
        assert session is not None and store is not None
        while True:
            self.st.wake_sender.clear()
            ready = self._outbox.take() if self._outbox is not None else None
            after = session.outbound
            if after is not None:
                if ready is not None and ready.after <= after:
                    txs = [tx for tx in ready.transactions if tx.lsn > after]  # read by the poll, on the thread
                else:
                    txs = await self.st.io(store.transactions_after, after)
                for tx in txs:
                    if session.outbound is None:
                        break  # the server stopped our stream meanwhile
                    for msg in session.outgoing(tx, store.tables):
                        await self._send(msg)
            await self.st.wake_sender.wait()

    # -- inbound ---------------------------------------------------------------------------------
    async def _read(self, ws: ClientConnection, rpc: RpcCalls, queue: _EffectQueue) -> None:
        """Read frames and queue the session's effects for :meth:`_perform_queued`, in order.

        The reader only parses frames and steps the session; the rows are decoded and written on
        the store thread meanwhile, so reading the next frames overlaps writing the last ones. The
        queue is bounded: a client that cannot keep up stops reading, and the server waits. When
        the server closes the connection, None is queued last: what it sent is applied first.
        """
        assert self._session is not None
        try:
            async for frame in ws:
                if isinstance(frame, str):
                    raise SyncError("the server sent a text frame")
                await queue.put(self._session.receive(codec.decode(frame)))
            await queue.put(None)
        finally:
            rpc.fail_all(self._lost_error)  # calls waiting for an answer learn at once

    async def _perform_queued(self, queue: _EffectQueue) -> None:
        while True:
            first = await queue.get()
            if first is None:
                return
            effects = list(first)
            taken = 1
            # what else has arrived meanwhile goes too: consecutive transactions are applied together
            while taken < PIPELINE_FRAMES and not queue.empty():
                more = queue.get_nowait()
                if more is None:
                    queue.put_nowait(None)  # the end: after these
                    break
                effects.extend(more)
                taken += 1
            await self._perform(effects)
            self.st.changed.set()

    async def _perform(self, effects: list[s.Effect]) -> None:
        """Carry out ``effects`` in order; runs of applies are written in one call (see :func:`_apply_runs`)."""
        store = self.st.store
        assert store is not None
        window = self._session.window if self._session is not None else s.DEFAULT_WINDOW
        for item in _apply_runs(effects, max(1, int(window * s.EAGER_ACK_FRACTION))):
            if isinstance(item, list):
                await self._apply(item)
                continue
            eff = item
            if isinstance(eff, s.Send):
                await self._send(eff.message)
            elif isinstance(eff, s.Resolve):
                self._rpc.resolve(eff.response)
            elif isinstance(eff, s.EnsureTable):
                await self.st.io(store.ensure_table, eff.table)
            elif isinstance(eff, s.Migrate):
                await self.st.io(store.migrate, eff.version, eff.tables, eff.statements)
                if self.st.on_migrate is not None:
                    self.st.on_migrate(eff.version, [t.name for t in eff.tables])
                if self.st.on_tables is not None:
                    self.st.on_tables(frozenset(t.name for t in eff.tables))
            elif isinstance(eff, s.Abandon):
                await self.st.io(store.abandon)
                self._uncommitted.clear()
                self.st.wake_sender.set()
            elif isinstance(eff, s.Delivered):
                delivered = self.st.subscriptions.get(eff.subscription_id)
                if delivered is not None:
                    await self.st.save_subscriptions(delivered.id)
                    delivered.synced.set()
            elif isinstance(eff, s.DeliveryFailed):
                failed = self.st.subscriptions.pop(eff.subscription_id, None)
                if failed is not None:
                    failed.error = eff.message
                    failed.synced.set()
            elif isinstance(eff, s.Progress):
                if self.st.on_progress is not None:
                    self.st.on_progress(eff.subscription_id, eff.rows)
            elif isinstance(eff, s.Refused):
                # one of our transactions was refused; its echo puts the rows back as the server has them
                self.st.refused.append(eff.message)
                if self.st.on_refused is not None:
                    self.st.on_refused(eff.message)
                else:  # nobody handles it: say it once here (electricctl sync prints its own line)
                    log.warning("the server refused a local transaction: %s", eff.message)
            elif isinstance(eff, s.WakeSender):
                self.st.wake_sender.set()
            elif isinstance(eff, s.AckLater):
                self._ack_timer = asyncio.get_running_loop().call_later(eff.delay, self._ack_due)

    async def _apply(self, run: list[s.Apply]) -> None:
        """Decode and write a run of applies on the store thread, in one SQLite transaction."""
        store, client_id = self.st.store, self.st.client_id
        assert store is not None and client_id is not None
        hold = run[-1].hold

        def on_thread() -> tuple[Poll | None, bool, list[list[RemoteChange]]]:
            decoded: list[list[RemoteChange]] = []
            txs: list[RemoteTransaction] = []
            report = self.st.on_change is not None
            watch = self.st.on_tables is not None
            for a in run:
                rows, changes = a.decode()
                if watch:
                    touched.update(b.table.name for b in rows)
                    touched.update(c.table for c in changes)
                txs.append(RemoteTransaction(changes, a.origin, a.timestamp, a.lsn, rows))
                if report and a.transaction and rows:  # only then: a dict per row costs
                    changes = changes + [ch for batch in rows for ch in batch.changes()]
                decoded.append(changes)
            held = store.holding  # subscription data was open before this run
            return store.apply_transactions(txs, client_id=client_id, hold=hold), held, decoded

        touched: set[str] = set()
        found, held, decoded = await self.st.io(on_thread)
        self._uncommitted |= touched
        if not hold:  # committed: what it wrote is visible to the app's connections now
            if self.st.on_tables is not None and self._uncommitted:
                self.st.on_tables(frozenset(self._uncommitted))
            self._uncommitted = set()
        if found is not None:
            self.st.pending = found.pending
            if found.stamped or held:
                self.st.wake_sender.set()  # after subscription data, what the sender skipped meanwhile too
        last = run[-1]
        if last.transaction and last.lsn and self._session is not None:
            for ack in self._session.applied(last.lsn):
                if isinstance(ack, s.Send):
                    await self._send(ack.message)
        for eff, changes in zip(run, decoded, strict=True):
            if eff.lsn is not None:
                self.st.server_lsn = eff.lsn
            if eff.transaction:
                if eff.timestamp is not None:
                    self.st.lag_ms = max(0.0, time.time() * 1000 - eff.timestamp)
                if self.st.on_change is not None:
                    self.st.on_change(changes, eff.origin)

    def _ack_due(self) -> None:
        """The ack timer fired: ack what has arrived, once all of it is applied (it queues behind)."""
        self._ack_timer = None
        if self._session is None or self._ws is None or self._effects is None:
            return
        if self._effects.full():  # try again shortly: the ack must not be lost (the server may be waiting for it)
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_RETRY, self._ack_due)
            return
        effects = self._session.ack_due()
        if effects:
            self._effects.put_nowait(effects)


def _apply_runs(effects: list[s.Effect], max_transactions: int = 1 << 30) -> list[s.Effect | list[s.Apply]]:
    """``effects`` with each run of applies of one kind (live transactions, or subscription data)
    gathered into a list, to be written in one SQLite transaction.

    Acks, ack timers and progress reports inside a run move after it: an ack is sent only once
    what it acknowledges is written. Any other effect ends the run, and keeps its place. A run of
    live transactions holds at most ``max_transactions``: the driver acks after each run, and the
    server, whose window of unacked transactions is small, sends the next ones meanwhile.
    """
    out: list[s.Effect | list[s.Apply]] = []
    run: list[s.Apply] = []
    deferred: list[s.Effect] = []
    for eff in effects:
        if isinstance(eff, s.Apply):
            full = eff.transaction and len(run) >= max_transactions
            if run and (run[-1].transaction != eff.transaction or full):
                out.append(run)
                out.extend(deferred)
                run, deferred = [], []
            run.append(eff)
        elif run and isinstance(eff, s.Send | s.AckLater | s.Progress):
            deferred.append(eff)
        else:
            if run:
                out.append(run)
                out.extend(deferred)
                run, deferred = [], []
            out.append(eff)
    if run:
        out.append(run)
        out.extend(deferred)
    return out
