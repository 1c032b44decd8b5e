"""When a Postgres connection is lost (a restart, a failover, a network blip), serve reconnects
and runs the work again, with backoff, for a while, instead of failing the client's request.

Only work that is safe to run twice goes through here: reads, and the writer's transactions
(each checks the client's position first, so one that did commit is skipped the second time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import psycopg
from psycopg import errors

log = logging.getLogger("electricctl.server")

RECONNECT_FOR = 30.0
"""Seconds to keep reconnecting before the error reaches the client."""


def connection_lost(exc: BaseException, conn: psycopg.AsyncConnection[Any] | None) -> bool:
    """Is ``exc`` a lost connection (or a failed attempt to make one), as opposed to an error
    in the work itself?"""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    if conn is None or conn.broken or conn.closed:
        return True
    return isinstance(exc, errors.AdminShutdown | errors.CannotConnectNow | errors.CrashShutdown)


class Backoff:
    """Waits between reconnection attempts: 0.1 s doubling to 2 s, for :data:`RECONNECT_FOR` in all."""

    def __init__(self, what: str, total: float = RECONNECT_FOR) -> None:
        self.what = what
        self.total = total
        self._deadline: float | None = None
        self._delay = 0.1

    async def recover(self, exc: psycopg.OperationalError, conn: psycopg.AsyncConnection[Any] | None) -> None:
        """After ``exc`` on ``conn`` (None: connecting failed): re-raise it unless the connection
        was lost; else close ``conn`` and wait before the next attempt (the caller reconnects)."""
        if not connection_lost(exc, conn):
            raise exc
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
        await self.wait(exc)

    async def wait(self, exc: BaseException) -> None:
        """Sleep before the next attempt, or re-raise ``exc`` once the time is up."""
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self.total
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.info("%s lost its Postgres connection (%s); reconnecting", self.what, first)
        if now >= self._deadline:
            raise exc
        await asyncio.sleep(min(self._delay, self._deadline - now))
        self._delay = min(self._delay * 2, 2.0)
