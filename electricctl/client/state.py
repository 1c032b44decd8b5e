"""What a sync client holds between its parts: its settings, subscriptions, progress, and the store thread.

:class:`ClientState` is shared by :class:`~electricctl.client.sync.SyncClient` (the public API)
and :class:`~electricctl.client.link.Link` (the connection it drives). The SQLite file is opened
lazily, on a dedicated thread that runs every store call (:meth:`ClientState.io`), so the event
loop never waits for SQLite and the store's one connection is never used by two threads at once.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from electricctl.client.store import LSN_KEY, Store
from electricctl.client.values import RemoteChange
from electricctl.client.worker import StoreThread
from electricctl.errors import ConnectionLost, SyncError

SUBSCRIPTIONS_KEY = "electricctl.subscriptions"
CLIENT_ID_KEY = "clientId"

TokenSource = str | Callable[[], str | Awaitable[str]]
"""A token, or a function (sync or async) returning a fresh one; it is called at each (re)connect."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(slots=True)
class Subscription:
    """A subscription: its shapes, and whether its initial data is in the local file yet."""

    id: str
    shapes: list[dict[str, Any]]
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    connected: bool
    pending: int
    """Local writes not yet confirmed by the server (still in the oplog)."""
    lag_ms: float | None
    """How long the last server transaction took to arrive (apply time - commit time)."""
    server_lsn: str
    refused: int


class ClientState:
    def __init__(
        self,
        path: str,
        url: str,
        token: TokenSource,
        client_id: str | None,
        poll_interval: float,
        on_refused: Callable[[str], None] | None,
        on_progress: Callable[[str, int], None] | None,
        on_change: Callable[[list[RemoteChange], str | None], None] | None,
    ) -> None:
        self.path = path
        self.url = url
        self.token = token
        self.client_id = client_id
        self.poll_interval = poll_interval
        self.on_refused = on_refused
        self.on_progress = on_progress
        self.on_change = on_change
        self.on_migrate: Callable[[str, list[str]], None] | None = None
        self.on_tables: Callable[[frozenset[str]], None] | None = None
        """Called (on the event loop) after the server's changes are written, with the tables they
        touched: transactions, subscription and additional data, migrations (live queries)."""
        self.failure: Exception | None = None
        self.failed = asyncio.Event()
        self.refused: list[str] = []
        self.subscriptions: dict[str, Subscription] = {}
        self.connected = asyncio.Event()
        self.stopping = False
        self.store: Store | None = None
        self.thread: StoreThread | None = None
        self.opening = asyncio.Lock()
        self.pending = 0
        self.server_lsn = ""
        self.lag_ms: float | None = None
        self.changed = asyncio.Event()
        """Set after each message from the server is handled (flush waits on it)."""
        self.wake_sender = asyncio.Event()
        """Set when there may be local transactions to send."""
        self.poll_now = asyncio.Event()
        """Set by notify(): look for other connections' writes now, whatever data_version says."""

    def fail(self, failure: Exception) -> None:
        self.failure = failure
        self.failed.set()

    async def open(self) -> Store:
        """The store, opened on its thread if it is not yet (settling the client id on the way)."""
        async with self.opening:
            if self.store is not None:
                return self.store
            thread = StoreThread()
            try:
                opened = await thread.call(_open_store, self.path, self.client_id)
            except sqlite3.Error as exc:
                thread.shutdown()
                raise SyncError(f"cannot open {self.path}: {exc}") from None
            except BaseException:
                thread.shutdown()
                raise
            self.store, self.thread = opened.store, thread
            self.client_id, self.server_lsn, self.pending = opened.client_id, opened.lsn, opened.pending
            for sub_id, shapes in opened.subscriptions.items():
                if sub_id not in self.subscriptions:
                    sub = self.subscriptions[sub_id] = Subscription(sub_id, shapes)
                    sub.synced.set()
            return opened.store

    async def close(self) -> None:
        """Close the store (after the calls already queued on its thread) and end the thread."""
        async with self.opening:
            store, thread = self.store, self.thread
            self.store = self.thread = None
            if store is not None and thread is not None:
                thread.poll_with(None)
                await thread.call(store.close)
            if thread is not None:
                thread.shutdown()

    async def io(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn`` on the store thread."""
        if self.thread is None:
            raise ConnectionLost("the client is stopped (its file is closed)")
        return await self.thread.call(fn, *args, **kwargs)

    def held(self) -> list[str]:
        """The subscriptions whose rows this client holds (their data was delivered and applied)."""
        return [sub.id for sub in self.subscriptions.values() if sub.synced.is_set() and sub.error is None]

    async def save_subscriptions(self, delivered: str | None = None) -> None:
        """Record the subscriptions held, and ``delivered`` (whose data was just applied): not the
        ones still waiting for their data, which a restart would otherwise take as held."""
        if self.store is None:
            return
        saved = json.dumps(
            {
                sub.id: sub.shapes
                for sub in self.subscriptions.values()
                if sub.error is None and (sub.synced.is_set() or sub.id == delivered)
            }
        )
        await self.io(self.store.set_meta, SUBSCRIPTIONS_KEY, saved)


@dataclass(frozen=True, slots=True)
class _Opened:
    store: Store
    client_id: str
    subscriptions: dict[str, list[dict[str, str]]]
    lsn: str
    pending: int


def _open_store(path: str, client_id: str | None) -> _Opened:
    """On the store thread: open the file, settle the client id, read what the file remembers."""
    store = Store(path)
    try:
        stored = store.meta(CLIENT_ID_KEY)
        client_id = client_id or stored or str(uuid.uuid4())
        if stored != client_id:
            store.set_meta(CLIENT_ID_KEY, client_id)
        raw = store.meta(SUBSCRIPTIONS_KEY)
        subs = json.loads(raw) if raw else {}
        return _Opened(store, client_id, subs, store.meta(LSN_KEY) or "", store.pending_count())
    except BaseException:
        store.close()
        raise
