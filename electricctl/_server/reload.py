"""Hot reload: ``serve`` follows ``apply`` as it commits.

``apply`` notifies on :data:`~electricctl._sql.names.CATALOG_CHANNEL` in its transaction, so the
notification arrives when (and only if) it commits. This watcher LISTENs on its own connection and,
as a fallback (a pooler that drops notifications, a lost connection), polls the newest apply every
``interval`` seconds. Either way it calls ``on_change`` once per new apply generation; what the
server does with it (re-read the catalog, reassess connected clients) is the server's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import sql

from electricctl._model.wire import DISPLAY_OPTIONS
from electricctl._server.common import first_line
from electricctl._sql import names

log = logging.getLogger("electricctl.server")

_GENERATION = "SELECT coalesce(max(id), 0) FROM electric.applied_configs"


class CatalogWatcher:
    def __init__(self, url: str, on_change: Callable[[int], Awaitable[None]], interval: float = 2.0) -> None:
        self.url = url
        self.on_change = on_change
        self.interval = interval
        self.generation: int | None = None
        """The newest apply seen (None until the first read)."""
        self.listening = False
        """Whether notifications are being received (else only the poll runs)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until ``stop``; a lost connection is reconnected with backoff (polling meanwhile
        is pointless: it needs the same database)."""
        delay = 0.5
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    application_name="electricctl-reload",
                    options=DISPLAY_OPTIONS,
                    connect_timeout=10,
                ) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(names.CATALOG_CHANNEL)))
                    self.listening = True
                    delay = 0.5
                    await self._watch(conn, stop)
            except psycopg.Error as exc:
                log.warning("catalog watch lost its connection (%s); retrying in %.1fs", first_line(exc), delay)
            except Exception:
                # a bug here must not end hot reload for good: said, and retried
                log.exception("catalog watch failed; retrying in %.1fs", delay)
            finally:
                self.listening = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 10.0)

    async def _watch(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
        await self._check(conn)  # an apply made while this connection was down
        while not stop.is_set():
            # returns at the first notification, or after `interval` with none: then poll
            async for _ in conn.notifies(timeout=self.interval, stop_after=1):
                pass
            await self._check(conn)

    async def _check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await conn.execute(_GENERATION)
        row = await cur.fetchone()
        generation = int(row[0]) if row else 0
        if self.generation is None:
            self.generation = generation  # nothing to compare with: the server reads it as it starts
            return
        if generation != self.generation:
            seen, self.generation = self.generation, generation
            try:
                await self.on_change(generation)
            except psycopg.Error as exc:
                # tried again at the next notification or poll
                self.generation = seen
                log.warning("could not reload the catalog: %s", first_line(exc))
