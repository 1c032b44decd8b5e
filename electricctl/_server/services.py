"""What a client connection needs from the server, and nothing more: the one narrow interface
between :mod:`.connection` (and its parts) and :mod:`.app`, so neither imports the other."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from electricctl._config.model import ElectricConfig
from electricctl._log.base import TransactionLog
from electricctl._model.migrations import Migration
from electricctl._server.catalog_cache import CatalogCache
from electricctl._server.clients import ClientStore
from electricctl._server.metrics import ServeMetrics
from electricctl._server.options import ServeOptions
from electricctl._server.snapshot import SnapshotPool
from electricctl._server.writer import Writer
from electricctl._shapes.router import Router


class Services(Protocol):
    config: ElectricConfig
    options: ServeOptions
    catalog: CatalogCache
    log: TransactionLog
    """The durable log the stream is read from."""
    router: Router
    """Which connections a logged transaction may concern (by their shapes)."""
    snapshots: SnapshotPool
    writer: Writer
    """The one writer of client transactions into Postgres."""
    store: ClientStore
    """Client state that outlives a connection (subscriptions, acknowledged position)."""
    clients: dict[str, Any]
    """Connected clients by client id (one connection per id)."""
    scanning: set[Any]
    """Connections catching up from the log: woken on every new batch."""
    stats: dict[str, int]
    metrics: ServeMetrics
    """What ``GET /metrics`` counts as it happens (write outcomes, errors sent, latencies)."""
    server_id: str
    spool_dir: Path
    live_head: int
    """LSN of the newest transaction routed to live connections."""

    async def caught_up(self, timeout: float = 30.0) -> None:
        """Return once every transaction committed before the call is in the log."""
        ...

    async def migrations(self, after: str) -> list[Migration]:
        """The migrations recorded after version ``after`` ("" for all), oldest first; raises
        :class:`~electricctl._server.migrations_api.Unavailable` when Postgres cannot be read."""
        ...

    def peer_authenticated(self, conn: Any) -> None:
        """A connection from ``conn.peer_host`` authenticated: it no longer counts as pending."""
        ...
