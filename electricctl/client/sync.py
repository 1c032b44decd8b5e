"""The sync client: keeps a local SQLite file in sync with an electricctl server, both ways.

    client = SyncClient("app.db", "ws://127.0.0.1:5133/ws", token)  # or a function returning one
    await client.start()
    sub = await client.subscribe("items", where="this.done = false")
    await client.synced(sub)
    # the app writes with plain SQL, from any connection or process; writes are synced

Sync runs in the background: it reconnects with backoff, resumes from the last position it stored,
and sends each local transaction exactly once (the server skips one it already has).

:class:`SyncClient` is the public API. The work is done by its parts: the protocol's decisions by
:class:`~electricctl.client.session.ClientSession` (pure), the I/O by
:class:`~electricctl.client.link.Link` (the connection) and the SQLite work by
:class:`~electricctl.client.store.Store`. The network runs on the caller's event loop; every
SQLite call runs on one dedicated thread (one connection, calls serialised), never on the loop.
Other connections' commits are noticed as they happen: inotify reports writes to the file
(:mod:`~electricctl.client.watch`), and the store thread checks ``PRAGMA data_version``; where
inotify is not available it checks every ``poll_interval`` by itself (an idle client costs no
event-loop wakeups). :meth:`SyncClient.notify` sends at once. The constructor does no I/O.

Errors a caller sees are electricctl's: :class:`~electricctl.errors.ConnectionLost`,
:class:`~electricctl.errors.Timeout`, :class:`~electricctl.errors.SubscriptionRefused`,
:class:`~electricctl.errors.AuthenticationFailed` (all :class:`~electricctl.errors.SyncError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._protocol.rpc import RpcError
from electricctl.client.link import Link
from electricctl.client.schema import SCHEMA_VERSION_KEY, Table
from electricctl.client.state import ClientState, Status, Subscription, TokenSource
from electricctl.client.values import RemoteChange
from electricctl.client.wire import include_spec
from electricctl.errors import ConnectionLost, SubscriptionRefused, SyncError, Timeout

__all__ = ["Status", "Subscription", "SyncClient", "TokenSource"]


class SyncClient:
    """Keeps the SQLite file at ``path`` in sync with the server at ``url``.

    ``token`` is a token or a function (sync or async) returning a fresh one, called at each
    (re)connect. The constructor does no I/O: the file is opened by :meth:`start` (or by the first
    call that needs it) and closed by :meth:`stop`; a stopped client can be started again.
    ``on_refused`` is called with the server's reason when it refuses one of this client's
    transactions, ``on_progress`` with (subscription id, rows so far) while a subscription's
    initial data arrives, ``on_change`` after each server transaction is applied, with its changes
    and origin (for live queries), ``on_migrate`` after a schema migration is applied, with its
    version and the tables it created or widened (an app may re-read its schema then). Callbacks
    run on the event loop.
    """

    def __init__(
        self,
        path: str,
        url: str,
        token: TokenSource,
        *,
        client_id: str | None = None,
        poll_interval: float = 0.02,
        on_refused: Callable[[str], None] | None = None,
        on_progress: Callable[[str, int], None] | None = None,
        on_change: Callable[[list[RemoteChange], str | None], None] | None = None,
        on_migrate: Callable[[str, list[str]], None] | None = None,
    ) -> None:
        self._st = ClientState(path, url, token, client_id, poll_interval, on_refused, on_progress, on_change)
        self._st.on_migrate = on_migrate
        self._link: Link | None = None
        self._task: asyncio.Task[None] | None = None

    # -- read-only state -------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._st.path

    @property
    def url(self) -> str:
        return self._st.url

    @property
    def client_id(self) -> str | None:
        """This client's id: the one given, else the file's (None until the file is opened)."""
        return self._st.client_id

    @property
    def connected(self) -> bool:
        """Connected, authenticated and replicating."""
        return self._st.connected.is_set()

    @property
    def refused(self) -> list[str]:
        """The server's reasons for the local transactions it refused, oldest first (a copy)."""
        return list(self._st.refused)

    @property
    def subscriptions(self) -> Mapping[str, Subscription]:
        """The subscriptions by id (a read-only view)."""
        return MappingProxyType(self._st.subscriptions)

    @property
    def failure(self) -> Exception | None:
        """The last failure that was not just a lost connection (a refused token, a change this
        client could not apply). The client keeps retrying; ``electricctl sync --once`` fails with it."""
        return self._st.failure

    @property
    def failed(self) -> asyncio.Event:
        """Set when :attr:`failure` is (wait on it; do not set it)."""
        return self._st.failed

    # -- public API ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the file and start syncing in the background (it reconnects by itself until :meth:`stop`)."""
        if self._task is not None:
            return
        await self._st.open()
        self._st.stopping = False
        self._st.failure = None
        self._st.failed.clear()
        self._link = Link(self._st)
        self._task = asyncio.create_task(self._link.run(), name=f"sync {self._st.client_id}")

    async def stop(self) -> None:
        """Stop syncing and close the file (:meth:`start` opens it again)."""
        self._st.stopping = True
        if self._link is not None:
            await self._link.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self._link = None
        self._st.connected.clear()
        await self._st.close()

    async def __aenter__(self) -> SyncClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_connected(self, timeout: float = 30) -> None:
        """Wait until the client is connected; :class:`Timeout` if it is not within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._st.connected.wait(), timeout)
        except TimeoutError:
            raise Timeout(f"not connected to {self.url} within {timeout:g}s") from None

    async def subscribe(self, shape: str, where: str | None = None, include: Any = None) -> Subscription:
        """Subscribe to a table (with an optional where clause and include tree) or to a shape
        declared in electric.yaml.

        ``include`` follows foreign keys from the table, either way, as the npm client writes it
        (``{"issues": {"include": {"comments": True}}}``) or as a list of
        ``{"table", "foreign_key", "where", "include"}``: the rows arrive with their parents in one
        local transaction, and rows move in and out with them.

        Connected, a refused request raises :class:`SubscriptionRefused` at once. Offline, the
        subscription is requested when the connection comes up; :meth:`synced` then reports the outcome.
        """
        await self._st.open()
        spec: dict[str, Any] = {"table": shape, **({"where": where} if where else {})}
        tree = include_spec(include)
        if tree:
            spec["include"] = tree
        for sub in self._st.subscriptions.values():
            if sub.shapes == [spec]:
                return sub
        sub = Subscription(str(uuid.uuid4()), [spec])
        self._st.subscriptions[sub.id] = sub
        if not self._st.connected.is_set() or self._link is None:
            return sub
        try:
            await self._link.request_subscription(sub)
        except BaseException:
            self._st.subscriptions.pop(sub.id, None)
            raise
        return sub

    async def synced(self, sub: Subscription, timeout: float = 60) -> None:
        """Wait until ``sub``'s initial data is in the file: :class:`Timeout` if it is not within
        ``timeout`` seconds, :class:`SubscriptionRefused` if the server would not deliver it."""
        try:
            await asyncio.wait_for(sub.synced.wait(), timeout)
        except TimeoutError:
            raise Timeout(f"subscription {sub.id} was not synced within {timeout:g}s") from None
        if sub.error:
            raise SubscriptionRefused(sub.error)

    async def unsubscribe(self, sub: Subscription, timeout: float = 30) -> None:
        """Unsubscribe (the server then removes the rows no other subscription holds).

        Needs the connection: :class:`ConnectionLost` if there is none within ``timeout`` seconds
        (or it drops before the server answers), :class:`Timeout` if the server does not answer.
        """
        try:
            await asyncio.wait_for(self._st.connected.wait(), timeout)
        except TimeoutError:
            raise ConnectionLost(f"not connected to {self.url} (waited {timeout:g}s) to unsubscribe") from None
        if self._link is None:
            raise ConnectionLost("the client is stopped")
        try:
            await self._link.call("unsubscribe", pb.SatUnsubsReq(subscription_ids=[sub.id]), timeout)
        except RpcError as exc:
            raise SyncError(f"unsubscribe refused: {exc.error.message}") from None
        self._st.subscriptions.pop(sub.id, None)
        await self._st.save_subscriptions()

    async def apply_schema(self, migrations: Sequence[tuple[str, Sequence[Table], Sequence[str]]]) -> None:
        """Bring the file's schema up to these migrations (version, tables whole, local-only
        statements), as a generated client bundles them, before the client first connects: it
        then asks the server only for later ones. Versions the file has are skipped."""
        store = await self._st.open()
        have = await self._st.io(store.meta, SCHEMA_VERSION_KEY) or ""
        for version, tables, statements in migrations:
            if version > have:
                await self._st.io(store.migrate, version, tables, statements)

    def on_tables(self, callback: Callable[[frozenset[str]], None] | None) -> None:
        """Call ``callback`` (on the event loop) after the server's changes are written, with the
        tables they touched (transactions, subscription data, migrations): for live queries."""
        self._st.on_tables = callback

    async def caught_up(self, timeout: float = 60) -> None:
        """Wait until the file has everything Postgres had committed when this was called, for the
        client's subscriptions: what changed while the client was away included (a resumed client
        gets it after it connects). A connection lost meanwhile is waited out (the client
        reconnects by itself). :class:`Timeout` if that takes more than ``timeout`` seconds,
        :class:`SyncError` if the server cannot tell (it lacks ``electricctl.caughtUp``: a legacy
        Electric service)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(self._st.connected.wait(), max(0.0, left))
            except TimeoutError:
                raise Timeout(f"not connected to {self.url} within {timeout:g}s") from None
            if self._link is None:
                raise ConnectionLost("the client is stopped")
            try:
                # answered after every frame the server sent before it; frames are applied in
                # order, and the answer is handed over only once those before it are written
                await self._link.call(codec.CAUGHT_UP, pb.ElectricctlCaughtUpReq(), max(0.1, left))
                return
            except RpcError as exc:
                raise SyncError(
                    f"the server cannot tell whether this client is caught up: {exc.error.message}"
                ) from None
            except ConnectionLost:
                if self._st.failure is not None:
                    raise
                await asyncio.sleep(0.05)  # reconnecting: ask again on the next connection

    async def flush(self, timeout: float = 30) -> None:
        """Wait until every local write so far is in Postgres and echoed back (the oplog is empty);
        :class:`Timeout` if that takes longer than ``timeout`` seconds."""
        store = await self._st.open()
        deadline = time.monotonic() + timeout
        self.notify()
        while pending := await self._st.io(store.pending_count):
            self._st.pending = pending
            if time.monotonic() > deadline:
                raise Timeout(f"{pending} local writes are still pending after {timeout:g}s")
            self._st.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._st.changed.wait(), 0.05)
        self._st.pending = 0

    def notify(self) -> None:
        """Local writes were just made: send them now instead of at the next poll."""
        self._st.poll_now.set()
        self._st.wake_sender.set()

    def status(self) -> Status:
        """Connection and progress, from what the client last saw (no I/O)."""
        st = self._st
        return Status(st.connected.is_set(), st.pending, st.lag_ms, st.server_lsn, len(st.refused))
