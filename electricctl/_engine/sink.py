"""Where the shape engine's output goes: one implementation per protocol.

Everything the engine emits is already projected (the relation lists only the columns the client
may read; hidden values are NULL), in the order the client must apply it. Subscription data rows
end with one extra value: the row's tags as stored (JSON), or None for a row from before the
table was electrified.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from electricctl._model.migrations import Migration
from electricctl._model.rows import Change, RelationDef, Row, Transaction
from electricctl._shapes.visibility import Visibility


class Sink(Protocol):
    def has_room(self) -> bool:
        """May another transaction be sent now (flow control: the unacked window)?"""
        ...

    async def ready(self) -> None:
        """Return when another transaction may be sent (flow control: the unacked window)."""
        ...

    def buffered(self) -> AbstractAsyncContextManager[None]:
        """While a snapshot is held: what is emitted inside goes to a buffer that is sent after
        the snapshot has ended, so the snapshot's transaction ends at Postgres' speed."""
        ...

    async def transaction(self, tx: Transaction, changes: Sequence[Change], additional_ref: int = 0) -> None:
        """One logged transaction, filtered to the client's shapes (its own may carry GONE).
        ``additional_ref``: rows this transaction brought into a tree follow as that additional data."""
        ...

    async def additional_data(self, ref: int, rows: Sequence[tuple[RelationDef, Row]]) -> None:
        """Rows a transaction brought in (sent with ``additional_ref=ref``), read at a snapshot
        once the client is at its point; each row ends with its tags."""
        ...

    async def migration(self, lsn: int, timestamp_ms: int, xid: int, migrations: Sequence[Migration]) -> None:
        """Schema changes (all of one version) as a transaction of their own at ``lsn``: the client
        applies them before any data that follows."""
        ...

    def snapshot_taken(self, visibility: Visibility) -> None:
        """The snapshot a subscription's data is read from (Electric's HTTP API sends its xmin, xmax
        and xip list as ``snapshot-end``); nothing to do for Satellite."""
        ...

    async def subscription_begin(self, subscription_id: str, lsn: int, relations: Sequence[RelationDef]) -> None: ...

    async def shape_begin(self, request_id: str) -> None: ...

    async def shape_rows(self, rel: RelationDef, rows: Sequence[Row]) -> None: ...

    async def shape_end(self) -> None: ...

    async def subscription_end(self) -> None: ...

    async def subscription_failed(self, subscription_id: str, message: str) -> None: ...

    async def unsubscribe_begin(self, subscription_ids: Sequence[str], lsn: int) -> None: ...

    async def gone(self, rel: RelationDef, keys: Sequence[Row]) -> None:
        """Rows the client must drop, by primary key (values in ``rel``'s key order)."""
        ...

    async def unsubscribe_end(self) -> None: ...

    async def moved(
        self, lsn: int, gone: Sequence[tuple[RelationDef, Row]], rows: Sequence[tuple[RelationDef, Row]]
    ) -> None:
        """What the client may read changed (its roles did): rows that leave, by key, and rows
        that arrive (or arrive again with more columns), as one transaction at ``lsn``."""
        ...
