"""Finding the writes an app commits to the file, and reading them for sending.

Offline too: local writes get their timestamps when they are made, not at reconnect. An app's
commit is noticed three ways: inotify reports the file's writes as they happen (where it can:
:mod:`~electricctl.client.watch`), the store thread polls ``PRAGMA data_version`` by itself between
its calls (no trip through the event loop while nothing happens), and :meth:`SyncClient.notify`
asks at once. Whichever it is, the store thread stamps the writes and reads the transactions to
send in the same step, and only then hands them to the loop (:meth:`Outbox.take`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from electricctl.client.oplog import LocalTransaction
from electricctl.client.session import ClientSession
from electricctl.client.state import ClientState
from electricctl.client.store import Poll
from electricctl.client.watch import FileWatch

WATCH_FOLLOWUPS = (0.002, 0.01, 0.05)
"""After a reported write, look again this many seconds later (its commit may become visible late)."""
WATCHED_POLL_INTERVAL = 0.5
"""Seconds between polls when inotify reports the file's writes (the poll only catches what it cannot see)."""


@dataclass(frozen=True, slots=True)
class Ready:
    """Local transactions a poll read for sending, on the store thread."""

    after: int
    """``session.outbound`` when they were read: they are every one after it."""
    transactions: list[LocalTransaction]


@dataclass(frozen=True, slots=True)
class _Collected:
    poll: Poll
    ready: Ready | None
    """None when the poll stamped nothing, or the server has not asked for writes."""


class Outbox:
    """The app's writes, stamped into transactions as they are committed, ready for the sender."""

    def __init__(self, st: ClientState, session: ClientSession) -> None:
        self.st = st
        self.session = session
        self._ready: Ready | None = None

    def take(self) -> Ready | None:
        """What the last poll read for sending (once)."""
        ready, self._ready = self._ready, None
        return ready

    async def run(self) -> None:
        """Watch and poll until cancelled; this task itself runs only the forced polls (the first
        one, and :meth:`SyncClient.notify`)."""
        thread, store = self.st.thread, self.st.store
        assert thread is not None and store is not None
        loop = asyncio.get_running_loop()

        def poll_on_thread() -> None:
            found = self._collect(force=False)
            if found is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(self._polled, found)

        watch = FileWatch.open(store.path)
        interval = self.st.poll_interval
        if watch is not None:
            # told of writes as they happen: the poll is only a safety net (a network file system)
            interval = max(interval, WATCHED_POLL_INTERVAL)
            followups: list[asyncio.TimerHandle] = []

            def written() -> None:
                if not watch.written():
                    return
                thread.poll_soon()
                # the commit may not be visible yet when its last write is reported (the WAL index
                # is updated after the fsync, through shared memory, which inotify does not see):
                # look again a little later, unless looks are already due
                if not any(not h.cancelled() and h.when() > loop.time() for h in followups):
                    followups[:] = [loop.call_later(delay, thread.poll_soon) for delay in WATCH_FOLLOWUPS]

            loop.add_reader(watch.fileno(), written)
        try:
            self._polled(await self.st.io(self._collect, force=True))
            thread.poll_with(poll_on_thread, interval)
            while True:
                await self.st.poll_now.wait()
                self.st.poll_now.clear()
                self._polled(await self.st.io(self._collect, force=True))
        finally:
            thread.poll_with(None)
            if watch is not None:
                loop.remove_reader(watch.fileno())
                watch.close()

    def _collect(self, *, force: bool) -> _Collected | None:
        """On the store thread: stamp other connections' writes and read the transactions to send."""
        store, client_id = self.st.store, self.st.client_id
        assert store is not None and client_id is not None
        found = store.poll(client_id, force=force)
        if found is None:
            return None
        after = self.session.outbound  # read once: the loop may move it on meanwhile
        if not found.stamped or after is None:
            return _Collected(found, None)
        return _Collected(found, Ready(after, store.transactions_after(after)))

    def _polled(self, collected: _Collected | None) -> None:
        if collected is None:
            return
        self.st.pending = collected.poll.pending
        if collected.poll.tables and self.st.on_tables is not None:
            self.st.on_tables(collected.poll.tables)  # local writes, by any connection (live queries)
        if collected.poll.stamped:
            if collected.ready is not None:
                self._ready = collected.ready
            self.st.wake_sender.set()
