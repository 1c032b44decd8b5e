"""The shape engine's output as Satellite frames: relations before the data that uses them, wire
values, the unacked window, and the spool that lets a snapshot end at Postgres' speed."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from google.protobuf.message import Message
from websockets.exceptions import ConnectionClosed

from electricctl._model.migrations import Migration
from electricctl._model.rows import Change, RelationDef, Row, Transaction
from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl._server import outbound
from electricctl._server.options import ServeOptions
from electricctl._server.spool import Spool
from electricctl._shapes.visibility import Visibility

log = logging.getLogger("electricctl.server")

SendFrame = Callable[[bytes], Awaitable[None]]


class SatelliteSink:
    def __init__(
        self,
        options: ServeOptions,
        spool_dir: object,
        send_frame: SendFrame,
        abort: Callable[[], None],
        who: str,
        has_room: Callable[[], bool],
        delivered: Callable[[int, bool], None],
        errors: Callable[[str, str], None] | None = None,
    ) -> None:
        self.options = options
        self.spool_dir = spool_dir
        self._send_frame = send_frame
        self._abort = abort
        self.who = who
        """How the client is named in the log."""
        self.has_room = has_room
        """May another transaction be sent now (the session keeps the unacked window)?"""
        self._delivered = delivered
        """Told every LSN the client is given, and whether it is a transaction (in the window)."""
        self._errors = errors
        """Told of each error sent (method, code), for ``GET /metrics``."""
        self.sent_relations: dict[int, RelationDef] = {}
        self.acked = asyncio.Event()
        self._spool: Spool | None = None
        """While a snapshot is held: where frames go first."""
        self._transforms: dict[RelationDef, Callable[[Row], Row]] = {}

    # -- flow control ------------------------------------------------------------------------
    async def ready(self) -> None:
        while not self.has_room():
            self.acked.clear()
            await self.acked.wait()

    def ack(self) -> None:
        """The client acknowledged transactions: the window may have room again."""
        self.acked.set()

    # -- frames --------------------------------------------------------------------------------
    async def _emit(self, msg: Message) -> None:
        frame = codec.encode(msg)
        if self._spool is not None:
            await self._spool.add(frame)
        else:
            await self._send_frame(frame)

    async def _relation(self, rel: RelationDef) -> None:
        if self.sent_relations.get(rel.relid) != rel:
            await self._emit(outbound.relation_message(rel))
            self.sent_relations[rel.relid] = rel

    def _transform(self, rel: RelationDef) -> Callable[[Row], Row]:
        fn = self._transforms.get(rel)
        if fn is None:
            fn = self._transforms[rel] = outbound.row_transform(rel)
        return fn

    @contextlib.asynccontextmanager
    async def buffered(self) -> AsyncIterator[None]:
        """Frames emitted inside go through a spool; a sender task takes them to the client at
        its pace, within a delivery deadline, while the block still runs. The block's end waits
        until the spool is sent."""
        spool = self._spool = Spool(self.spool_dir)  # type: ignore[arg-type]
        sender = asyncio.create_task(self._send_spooled(spool), name=f"spool {self.who}")
        try:
            try:
                yield
            finally:
                self._spool = None
                await spool.finish()
            await sender
        except (asyncio.CancelledError, ConnectionClosed):
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            raise
        except BaseException:
            # what was spooled went out as the stream's position moved: let it be sent, then fail
            await asyncio.gather(sender, return_exceptions=True)
            raise
        finally:
            spool.close()

    async def _send_spooled(self, spool: Spool) -> None:
        """Send the spool as it fills; a client that reads slower than ``min_send_rate`` (after
        the first ``send_timeout`` seconds) is dropped, so nobody holds server resources forever.
        Only the time spent waiting for the client counts: the server's own time to read and
        encode the data (long on a loaded machine) is not the client's slowness."""
        options = self.options
        waited = 0.0
        sent = 0
        try:
            async for frame in spool.frames():
                if waited > options.send_timeout + sent / options.min_send_rate:
                    log.warning(
                        "dropping client %s: it read %d bytes of subscription data slower than %d bytes/s",
                        self.who,
                        sent,
                        options.min_send_rate,
                    )
                    self._abort()
                    raise ConnectionClosed(None, None)
                began = time.monotonic()
                await self._send_frame(frame)
                waited += time.monotonic() - began
                sent += len(frame)
        except BaseException as exc:
            spool.failed = exc if isinstance(exc, ConnectionClosed) else ConnectionClosed(None, None)
            raise

    # -- what the engine emits -----------------------------------------------------------------
    async def transaction(self, tx: Transaction, changes: Sequence[Change], additional_ref: int = 0) -> None:
        for ch in changes:
            await self._relation(ch.relation)
        await self._emit(outbound.transaction_oplog(tx, changes, self._transform, additional_ref))
        self._delivered(tx.lsn, True)

    async def additional_data(self, ref: int, rows: Sequence[tuple[RelationDef, Row]]) -> None:
        for rel in dict.fromkeys(r for r, _ in rows):
            await self._relation(rel)
        oplog = pb.SatOpLog()
        oplog.ops.add().additional_begin.ref = ref
        for rel, group in itertools.groupby(rows, key=lambda item: item[0]):
            oplog.ops.extend(outbound.inserts(rel, [row for _, row in group], self._transform(rel)).ops)
        oplog.ops.add().additional_commit.ref = ref
        await self._emit(oplog)

    async def migration(self, lsn: int, timestamp_ms: int, xid: int, migrations: Sequence[Migration]) -> None:
        await self._emit(outbound.migration_oplog(lsn, timestamp_ms, xid, migrations))
        self._delivered(lsn, True)

    async def subscription_begin(self, subscription_id: str, lsn: int, relations: Sequence[RelationDef]) -> None:
        for rel in relations:
            await self._relation(rel)
        await self._emit(pb.SatSubsDataBegin(subscription_id=subscription_id, lsn=codec.encode_server_lsn(lsn)))
        self._delivered(lsn, False)

    async def shape_begin(self, request_id: str) -> None:
        await self._emit(pb.SatShapeDataBegin(request_id=request_id, uuid=str(uuid.uuid4())))

    async def shape_rows(self, rel: RelationDef, rows: Sequence[Row]) -> None:
        await self._emit(outbound.inserts(rel, rows, self._transform(rel)))

    async def shape_end(self) -> None:
        await self._emit(pb.SatShapeDataEnd())

    async def subscription_end(self) -> None:
        await self._emit(pb.SatSubsDataEnd())

    async def subscription_failed(self, subscription_id: str, message: str) -> None:
        if self._errors is not None:
            self._errors("subscriptionData", "SHAPE_DELIVERY_ERROR")
        await self._emit(
            pb.SatSubsDataError(
                code=pb.SatSubsDataError.SHAPE_DELIVERY_ERROR, message=message, subscription_id=subscription_id
            )
        )

    async def unsubscribe_begin(self, subscription_ids: Sequence[str], lsn: int) -> None:
        await self._emit(
            pb.SatUnsubsDataBegin(subscription_ids=list(subscription_ids), lsn=codec.encode_server_lsn(lsn))
        )
        self._delivered(lsn, False)

    async def gone(self, rel: RelationDef, keys: Sequence[Row]) -> None:
        await self._relation(rel)
        transform = self._transform(rel)
        await self._emit(pb.SatOpLog(ops=[outbound.gone_op(rel, pk, transform) for pk in keys]))

    async def unsubscribe_end(self) -> None:
        await self._emit(pb.SatUnsubsDataEnd())

    def snapshot_taken(self, visibility: Visibility) -> None:
        return None

    async def moved(
        self, lsn: int, gone: Sequence[tuple[RelationDef, Row]], rows: Sequence[tuple[RelationDef, Row]]
    ) -> None:
        for rel in dict.fromkeys(r for r, _ in (*gone, *rows)):
            await self._relation(rel)
        ts = int(time.time() * 1000)
        wire_lsn = codec.encode_server_lsn(lsn)
        oplog = pb.SatOpLog()
        oplog.ops.add().begin.CopyFrom(pb.SatOpBegin(commit_timestamp=ts, lsn=wire_lsn))
        oplog.ops.extend(outbound.gone_op(rel, pk, self._transform(rel)) for rel, pk in gone)
        for rel, group in itertools.groupby(rows, key=lambda item: item[0]):
            oplog.ops.extend(outbound.inserts(rel, [row for _, row in group], self._transform(rel)).ops)
        oplog.ops.add().commit.CopyFrom(pb.SatOpCommit(commit_timestamp=ts, lsn=wire_lsn))
        await self._emit(oplog)
        self._delivered(lsn, True)
