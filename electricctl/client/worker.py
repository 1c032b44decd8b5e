"""The store thread: every SQLite call of a client runs here, and so does the cheap poll for outside writes.

A client's SQLite connection is used by this one thread only. Calls from the event loop are queued
(:meth:`StoreThread.call`). Between calls, the thread runs the poller every ``interval`` seconds by
itself, so an idle client costs one ``PRAGMA data_version`` per tick and no trip through the event
loop; the loop hears from it only when another connection has committed something.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

log = logging.getLogger("electricctl.client")

_P = ParamSpec("_P")
_T = TypeVar("_T")

_Job = tuple["concurrent.futures.Future[object]", Callable[[], object]]
_WAKE = "wake"
"""Queued to make the thread look at its poller again (it may have been waiting without a timeout)."""
_POLL = "poll"
"""Queued to make the thread run its poller now (something was written)."""


class StoreThread:
    """One daemon thread running queued calls, and a poller between them."""

    def __init__(self, name: str = "electricctl-sqlite") -> None:
        self._jobs: queue.SimpleQueue[_Job | str | None] = queue.SimpleQueue()
        self._poller: Callable[[], None] | None = None
        self._interval = 0.02
        self._poll_queued = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._jobs.put((future, fn))  # type: ignore[arg-type]
        return future

    async def call(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn(*args, **kwargs)`` on the thread and wait for its result."""
        return await asyncio.wrap_future(self.submit(functools.partial(fn, *args, **kwargs)))

    def poll_with(self, poller: Callable[[], None] | None, interval: float = 0.02) -> None:
        """Run ``poller`` on the thread every ``interval`` seconds while it has no call to run (None: stop)."""
        self._interval = interval
        self._poller = poller
        self._jobs.put(_WAKE)

    def poll_soon(self) -> None:
        """Run the poller as soon as the thread is free (thread-safe; cheap to call often: calls
        made before the thread gets to it make one poll)."""
        if not self._poll_queued:
            self._poll_queued = True
            self._jobs.put(_POLL)

    def shutdown(self) -> None:
        """End the thread after the calls already queued."""
        self._poller = None
        self._jobs.put(None)

    def _run(self) -> None:
        next_poll = time.monotonic() + self._interval
        while True:
            poller = self._poller
            if poller is None:
                job = self._jobs.get()
            else:
                now = time.monotonic()
                if now >= next_poll:
                    self._poll(poller)
                    next_poll = time.monotonic() + self._interval
                    continue
                try:
                    job = self._jobs.get(timeout=next_poll - now)
                except queue.Empty:
                    continue
            if job is None:
                return
            if isinstance(job, str):
                if job == _POLL:
                    self._poll_queued = False  # a write after this point queues another poll
                    next_poll = 0.0
                else:
                    next_poll = time.monotonic() + self._interval
                continue
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # handed to the caller, as an executor would
                future.set_exception(exc)
            else:
                future.set_result(result)

    @staticmethod
    def _poll(poller: Callable[[], None]) -> None:
        try:
            poller()
        except Exception:  # a poll that fails is tried again at the next tick; the calls report errors
            log.debug("polling the client's file failed", exc_info=True)
