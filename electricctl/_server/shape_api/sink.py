"""The shape engine's output for the HTTP Shape API: messages appended to one shape's log.

The engine is the one the Satellite protocol uses (snapshot point, stream, where clauses, include
trees, grants and their live reassessment); this sink only writes what it emits as Electric's
messages, at Electric's offsets. A schema change of a table the shape reads, or a failure to
deliver it, rotates the shape (its clients get 409 and refetch).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from electricctl._model.migrations import Migration
from electricctl._model.rows import Change, RelationDef, Row, Transaction
from electricctl._server.shape_api import messages
from electricctl._server.shape_api.offsets import Offset
from electricctl._server.shape_api.shapelog import ShapeLog
from electricctl._shapes.visibility import Visibility


class LogSink:
    def __init__(
        self,
        log: ShapeLog,
        projection: messages.Projection,
        tables: Callable[[], set[str]],
        rotate: Callable[[str], None],
        *,
        snapshot: bool = True,
        max_bytes: int = 256 << 20,
    ) -> None:
        self.log = log
        self.projection = projection
        self.tables = tables
        """The tables the shape reads (``schema.name``), as it is compiled now."""
        self.rotate = rotate
        """Called with the reason when the shape's log cannot go on (its clients must refetch)."""
        self.snapshot = snapshot
        """False for ``log=changes_only``: the initial rows are not kept."""
        self.max_bytes = max_bytes
        """A log past this is rotated: its clients refetch a snapshot, smaller than the history."""
        self._rows = 0
        self._visibility: Visibility | None = None

    # -- flow control: appending to a log never waits -------------------------------------------
    def has_room(self) -> bool:
        return True

    async def ready(self) -> None:
        return None

    @contextlib.asynccontextmanager
    async def buffered(self) -> AsyncIterator[None]:
        yield

    # -- the stream ------------------------------------------------------------------------------
    async def transaction(self, tx: Transaction, changes: Sequence[Change], additional_ref: int = 0) -> None:
        op = self.log.next_op(tx.lsn)
        items: list[tuple[Offset, bytes]] = []
        live = [ch for ch in changes if ch.op != "T"]
        for n, ch in enumerate(live):
            msg = self.projection.change(ch, tx.lsn, op, tx.xid, n == len(live) - 1)
            if msg is not None:
                items.append((Offset(tx.lsn, op), msg))
                op += 2
        self.log.append(items)
        if tx.lsn > self.log.last_lsn:
            self.log.last_lsn = tx.lsn
        if self.log.bytes > self.max_bytes:
            self.rotate(f"its log passed {self.max_bytes >> 20} MiB")

    async def additional_data(self, ref: int, rows: Sequence[tuple[RelationDef, Row]]) -> None:
        await self.moved(max(self.log.last_lsn, 1), [], rows)

    async def migration(self, lsn: int, timestamp_ms: int, xid: int, migrations: Sequence[Migration]) -> None:
        touched = {f"{m.schema}.{m.table}" for m in migrations} & self.tables()
        if touched:
            self.rotate(f"the schema of {', '.join(sorted(touched))} changed")

    async def moved(
        self, lsn: int, gone: Sequence[tuple[RelationDef, Row]], rows: Sequence[tuple[RelationDef, Row]]
    ) -> None:
        lsn = max(lsn, self.log.last_lsn, 1)
        op = self.log.next_op(lsn)
        items: list[tuple[Offset, bytes]] = []
        for rel, key in gone:
            items.append((Offset(lsn, op), self.projection.moved_row(rel, key, False, lsn, op)))
            op += 2
        for rel, row in rows:
            items.append((Offset(lsn, op), self.projection.moved_row(rel, row, True, lsn, op)))
            op += 2
        self.log.append(items)
        self.log.last_lsn = max(self.log.last_lsn, lsn)

    # -- the initial data ------------------------------------------------------------------------
    def snapshot_taken(self, visibility: Visibility) -> None:
        self._visibility = visibility

    async def subscription_begin(self, subscription_id: str, lsn: int, relations: Sequence[RelationDef]) -> None:
        self._rows = len(self.log.offsets)

    async def shape_begin(self, request_id: str) -> None:
        return None

    async def shape_rows(self, rel: RelationDef, rows: Sequence[Row]) -> None:
        if not self.snapshot:
            return
        items = []
        for row in rows:
            items.append((Offset(0, self._rows), self.projection.snapshot_row(rel, row)))
            self._rows += 1
        self.log.append(items)

    async def shape_end(self) -> None:
        return None

    async def subscription_end(self) -> None:
        vis = self._visibility
        xmin, xmax, xip = (vis.xmin, vis.xmax, sorted(vis.xip)) if vis is not None else (0, 0, [])
        self.log.append([(Offset(0, self._rows), messages.snapshot_end(xmin, xmax, xip))])

    async def subscription_failed(self, subscription_id: str, message: str) -> None:
        self.rotate(f"its data could not be read: {message}")

    # -- never used by a shape log (it has one subscription, never unsubscribed) -------------------
    async def unsubscribe_begin(self, subscription_ids: Sequence[str], lsn: int) -> None:
        return None

    async def gone(self, rel: RelationDef, keys: Sequence[Row]) -> None:
        await self.moved(max(self.log.last_lsn, 1), [(rel, k) for k in keys], [])

    async def unsubscribe_end(self) -> None:
        return None
