"""What the shape engine needs from the server, as Protocols: the catalog cache, the durable log,
the router, snapshots and the client-state store. The engine imports nothing of the server; the
server's parts satisfy these structurally (see :class:`~electricctl._server.services.Services`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import psycopg
from psycopg import sql

from electricctl._auth.tokens import Identity
from electricctl._catalog.observed import ForeignKey
from electricctl._engine.state import ClientState
from electricctl._log.base import TransactionLog
from electricctl._model.rows import RelationDef, Row
from electricctl._model.table import TableRef
from electricctl._perms.policy import Policy
from electricctl._perms.read import RoleState
from electricctl._shapes.declared import ShapeRules
from electricctl._shapes.router import Router
from electricctl._shapes.visibility import Visibility


class Catalog(Protocol):
    """The applied rules and the tables' shapes, cached (a few queries per minute at most)."""

    async def electrified_tables(self) -> set[TableRef]: ...

    async def describe(self, table: TableRef) -> RelationDef | None: ...

    async def policy(self) -> tuple[Policy, dict[TableRef, RelationDef]]: ...

    async def role_state(
        self, policy: Policy, relations: dict[TableRef, RelationDef], identity: Identity | None
    ) -> RoleState: ...

    async def shape_rules(self) -> ShapeRules: ...

    async def foreign_keys(self) -> list[ForeignKey]:
        """Foreign keys between electrified tables (what include trees may follow)."""
        ...


class Snapshot(Protocol):
    """A consistent read of Postgres, at a point the log can be joined at."""

    @property
    def conn(self) -> psycopg.AsyncConnection[Any]: ...

    @property
    def visibility(self) -> Visibility: ...

    def rows(
        self,
        rel: RelationDef,
        where: sql.Composable | None = None,
        batch: int = 1000,
        *,
        tags: bool = False,
        order_by: sql.Composable | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> AsyncIterator[Sequence[Row]]: ...

    async def close(self) -> None: ...


class Snapshots(Protocol):
    async def take(self, owner: str | None = None) -> Snapshot: ...


class StateStore(Protocol):
    async def save_async(self, state: ClientState) -> None: ...

    async def append_tree_keys(
        self, client_id: str, epoch: int, keys: dict[str, set[tuple[bytes | None, ...]]]
    ) -> None:
        """Make keys a client's trees are about to give it durable (before they are sent)."""
        ...


class StreamMetrics(Protocol):
    def transaction_sent(self, commit_ts_ms: int, rows: int, live: bool) -> None:
        """A transaction with ``rows`` changes went to the client (``live``: as it was logged)."""
        ...


class EngineServices(Protocol):
    @property
    def catalog(self) -> Catalog: ...

    @property
    def log(self) -> TransactionLog: ...

    @property
    def router(self) -> Router: ...

    @property
    def snapshots(self) -> Snapshots: ...

    @property
    def store(self) -> StateStore: ...

    @property
    def scanning(self) -> set[Any]:
        """Engines catching up from the log: woken on every new batch."""
        ...

    @property
    def stats(self) -> dict[str, int]: ...

    @property
    def metrics(self) -> StreamMetrics:
        """Counted per transaction sent (``GET /metrics``)."""
        ...

    @property
    def live_head(self) -> int:
        """LSN of the newest transaction routed to live engines."""
        ...

    async def caught_up(self, timeout: float = 30.0) -> None:
        """Return once every transaction committed before the call is in the log."""
        ...
