"""Streaming logical replication from Postgres: the only code that touches the replication socket.

psycopg 3 has no replication API, but since 3.3 it lets ``START_REPLICATION`` enter COPY_BOTH, and
its libpq wrapper (``pgconn.get_copy_data`` / ``put_copy_data``) drives the stream; ../shared/reference/measured-limits.md
§2 found this as fast as psycopg2's replication support. The socket is watched by the asyncio loop.

The flush position confirmed to Postgres only moves after the consumer says the transactions are
durably handed off (:meth:`confirm`); keepalives that ask for a reply are answered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from electricctl._model.rows import Column, RelationDef, Transaction, canonical
from electricctl._model.wire import DISPLAY_OPTIONS, MARKER_PREFIX, PUBLICATION
from electricctl._replication import lsn as lsnmod
from electricctl._replication import pgoutput as po
from electricctl._replication.txbuilder import TxBuilder

# Postgres' epoch for the clock fields of the streaming protocol
_PG_EPOCH = 946_684_800
_XLOG = struct.Struct("!QQq")
_KEEPALIVE = struct.Struct("!QqB")
_STATUS = struct.Struct("!cQQQqB")
_DATA_TAGS = frozenset(b"RYIUDTM"[i : i + 1] for i in range(7))
STATUS_INTERVAL = 10.0
MAX_BATCH = 1000
MAX_BATCH_BYTES = 16 << 20
"""A batch handed to the consumer ends at this many transactions or about this many bytes
(so a burst of large transactions is not all held in memory at once)."""


Consumer = Callable[[Sequence[Transaction]], Awaitable[None]]


class ReplicationError(Exception):
    """The stream stopped; serve retries with backoff."""


class SlotInUse(ReplicationError):
    """Another process streams from the slot (another serve on this database, or on another
    database of the server with the same slot name; or the previous serve's walsender, briefly)."""


class PermanentReplicationError(ReplicationError):
    """Retrying cannot help (a slot with another plugin, no REPLICATION privilege, no publication,
    wal_level not logical): serve stops with this message."""


CONNECT_OPTIONS: dict[str, Any] = {"connect_timeout": 10, "tcp_user_timeout": 15_000, "keepalives_idle": 10}
"""A database that stops answering (black-holed) is noticed within seconds, not TCP's minutes."""


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, **CONNECT_OPTIONS)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _stream_error(pg: Any) -> str:
    """The server's reason for ending the stream: the final result's error, if it has one."""
    message = pg.get_error_message() or ""
    try:
        result = pg.get_result()
    except psycopg.Error:
        result = None
    if result is not None and result.error_message:
        message = (
            result.error_message.decode(errors="replace")
            if isinstance(result.error_message, bytes)
            else str(result.error_message)
        )
    return message.strip() or "server closed the stream"


def classify_stream_error(message: str) -> ReplicationError:
    """A stream that ended with this server message: permanent or worth retrying?"""
    message = " ".join((message.strip().splitlines() or [""])[0].split())  # its first line (not CONTEXT)
    if "publication" in message and "does not exist" in message:
        return PermanentReplicationError(
            f"replication stream ended: {message.strip()}: run `electricctl apply` (it creates the publication)"
        )
    return ReplicationError(f"replication stream ended: {message.strip()}")


def _now_pg() -> int:
    return int((time.time() - _PG_EPOCH) * 1_000_000)


class CatalogResolver:
    """Enriches pgoutput Relation messages with type names, primary keys and nullability."""

    def __init__(self, url: str) -> None:
        self._conn = psycopg.connect(url, autocommit=True, application_name="electricctl-catalog", **CONNECT_OPTIONS)

    def close(self) -> None:
        self._conn.close()

    def __call__(self, rel: po.Relation) -> RelationDef:
        rows = self._conn.execute(
            """
            SELECT a.attname, t.typname, a.attnotnull,
                   coalesce(a.attnum = ANY(i.indkey), false) AS pk
              FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
              LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
             WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
            """,
            [rel.relid],
        ).fetchall()
        info = {r[0]: r for r in rows}
        cols = []
        for c in rel.columns:
            row = info.get(c.name)
            cols.append(
                Column(
                    name=c.name,
                    type_oid=c.type_oid,
                    type_name=row[1] if row else str(c.type_oid),
                    primary_key=bool(row[3]) if row else c.key,
                    nullable=not row[2] if row else True,
                )
            )
        return canonical(RelationDef(rel.relid, rel.schema, rel.name, tuple(cols)))


async def _readable(fd: int, timeout: float) -> None:
    """Return when ``fd`` is readable, or after ``timeout`` seconds.

    The reader is registered only for the wait. Left registered while the stream is busy (a log
    write in a thread, a send), a readable socket nobody reads made every turn of the event loop
    call it again: the loop spun, some 200k turns a second, taking a third of serve's CPU.
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        async with asyncio.timeout(timeout):
            await ready
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)


class ReplicationSource:
    def __init__(
        self,
        url: str,
        slot: str,
        *,
        publication: str = PUBLICATION,
        streaming: bool = True,
        work_mem: str | None = None,
    ) -> None:
        self.url = url
        self.streaming = streaming
        """Protocol 2 with streaming: large transactions arrive while they run (../shared/reference/measured-limits.md §2:
        a 100k-row transaction reached the client in 241 ms instead of 786 ms), not all after commit."""
        self.work_mem = work_mem
        """logical_decoding_work_mem for the walsender (when it starts streaming a transaction)."""
        self.slot = slot
        self.publication = publication
        self._conn: psycopg.Connection[Any] | None = None
        self._resolver: CatalogResolver | None = None
        self.flushed_lsn = 0
        self.received_lsn = 0
        self.server_wal_end = 0
        self._last_status = 0.0
        self._in_transaction = False
        self._handed_lsn = 0
        self.on_marker: Callable[[bytes], None] | None = None
        """Called with each marker message (see MARKER_PREFIX) once everything before it was consumed."""
        self._markers: list[bytes] = []
        self._tx_markers: list[bytes] = []
        self._batch_bytes = 0
        self._tx_bytes = 0
        """Bytes of the transaction being received (decoded into the builder, not yet handed over)."""

    # -- setup -------------------------------------------------------------------------------
    def ensure_slot(self) -> bool:
        """Create the slot if it is missing; True if it was created."""
        with _connect(self.url) as conn:
            found = conn.execute("SELECT plugin FROM pg_replication_slots WHERE slot_name = %s", [self.slot]).fetchone()
            if found:
                if found[0] != "pgoutput":
                    raise PermanentReplicationError(
                        f"replication slot {self.slot} exists but uses the plugin {found[0]}, not pgoutput:"
                        " drop it, or pass another --slot"
                    )
                return False
            try:
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [self.slot])
            except psycopg.errors.InsufficientPrivilege as exc:
                raise PermanentReplicationError(
                    f"cannot create the replication slot: {_first_line(exc)}; the database user needs the"
                    " REPLICATION privilege (ALTER ROLE ... WITH REPLICATION)"
                ) from None
            except psycopg.errors.ObjectNotInPrerequisiteState as exc:  # wal_level is not logical
                raise PermanentReplicationError(
                    f"cannot create the replication slot: {_first_line(exc)}; set wal_level = logical and restart"
                    " Postgres"
                ) from None
            return True

    def confirmed_position(self) -> int:
        """The slot's confirmed flush LSN (0 if unknown)."""
        with _connect(self.url) as conn:
            row = conn.execute(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", [self.slot]
            ).fetchone()
        return lsnmod.parse(row[0]) if row and row[0] else 0

    def start(self, start_lsn: int) -> None:
        self._resolver = CatalogResolver(self.url)
        options = DISPLAY_OPTIONS + (f" -c logical_decoding_work_mem={self.work_mem}" if self.work_mem else "")
        try:
            conn = psycopg.connect(
                self.url,
                replication="database",
                autocommit=True,
                application_name="electricctl-replication",
                options=options,
                **CONNECT_OPTIONS,
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            raise PermanentReplicationError(
                f"cannot stream changes: {_first_line(exc)}; the database user needs the REPLICATION"
                " privilege (ALTER ROLE ... WITH REPLICATION)"
            ) from None
        protocol = "proto_version '2', streaming 'on'" if self.streaming else "proto_version '1'"
        try:
            conn.execute(
                sql.SQL("START_REPLICATION SLOT {} LOGICAL {} ({}, publication_names {}, messages 'true')").format(
                    sql.Identifier(self.slot),
                    sql.SQL(lsnmod.format(start_lsn)),
                    sql.SQL(protocol),
                    sql.Literal(self.publication),
                )
            )
        except psycopg.errors.ObjectInUse as exc:
            conn.close()
            raise SlotInUse(
                f"{_first_line(exc)}: another `electricctl serve` streams from this slot (on this database, or"
                " on another database of this server with the same slot name); give each serve its own --slot"
            ) from None
        conn.pgconn.nonblocking = 1
        self._conn = conn
        self._tx_bytes = 0
        self.flushed_lsn = start_lsn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._resolver is not None:
            self._resolver.close()
            self._resolver = None

    # -- streaming ---------------------------------------------------------------------------
    def confirm(self, flushed: int) -> None:
        """Tell Postgres everything up to ``flushed`` is durably handed off (sent lazily)."""
        self.flushed_lsn = max(self.flushed_lsn, flushed)

    def _send_status(self, reply: bool = False) -> None:
        assert self._conn is not None
        pg = self._conn.pgconn
        flushed = self.flushed_lsn
        msg = _STATUS.pack(b"r", max(self.received_lsn, flushed), flushed, flushed, _now_pg(), 1 if reply else 0)
        pg.put_copy_data(msg)
        pg.flush()
        self._last_status = time.monotonic()

    async def run(self, consumer: Consumer, stop: asyncio.Event) -> None:
        """Stream until ``stop`` is set; hand each burst of committed transactions to ``consumer``."""
        assert self._conn is not None and self._resolver is not None
        pg = self._conn.pgconn
        builder = TxBuilder(self._resolver)
        drained = False
        while not stop.is_set():
            batch: list[Transaction] = []
            received = 0
            self._batch_bytes = 0
            while len(batch) < MAX_BATCH and self._batch_bytes < MAX_BATCH_BYTES:
                nbytes, data = pg.get_copy_data(1)
                if nbytes == 0:
                    break
                if nbytes < 0:
                    raise classify_stream_error(_stream_error(pg))
                received += 1
                raw = bytes(data)
                if raw[:1] == b"w" and raw[_XLOG.size + 1 : _XLOG.size + 2] == b"R":
                    # a Relation message: the resolver queries the catalog (blocking); keep that
                    # off the event loop, where every websocket client is served
                    await asyncio.to_thread(self._handle, raw, builder, batch)
                else:
                    self._handle(raw, builder, batch)
            if batch:
                await consumer(batch)
            if self._markers:
                markers, self._markers = self._markers, []
                for marker in markers:
                    if self.on_marker is not None:
                        self.on_marker(marker)
            if batch or time.monotonic() - self._last_status > STATUS_INTERVAL:
                self._send_status()
            if received:
                drained = False
                continue
            if drained:
                # libpq's buffer and the socket are both empty: sleep until the socket is readable
                await _readable(pg.socket, 1.0)
            pg.consume_input()
            drained = True
        # stopping: Postgres learns the last position handed off now, not at the next start
        with contextlib.suppress(Exception):
            self._send_status()

    def _handle(self, data: bytes, builder: TxBuilder, batch: list[Transaction]) -> None:
        kind = data[0]
        if kind == 0x77:  # 'w' XLogData
            _start, end, _clock = _XLOG.unpack_from(data, 1)
            self.received_lsn = max(self.received_lsn, end)
            payload = data[_XLOG.size + 1 :]
            self._tx_bytes += len(payload)
            in_block = builder.in_stream_block
            msg = po.decode(payload, streaming=in_block)
            sub_xid = struct.unpack_from("!I", payload, 1)[0] if in_block and payload[:1] in _DATA_TAGS else None
            if isinstance(msg, po.LogicalMessage) and msg.prefix == MARKER_PREFIX:
                if not msg.transactional:
                    self._markers.append(msg.content)
                else:
                    self._tx_markers.append(msg.content)
                return
            tx = builder.feed(msg, sub_xid)
            self._in_transaction = builder.open_transactions
            if tx is not None:
                self._batch_bytes += self._tx_bytes
                self._tx_bytes = 0
                if self._tx_markers:
                    # a marker's own transaction: signal it after what came before, log nothing
                    self._markers.extend(self._tx_markers)
                    self._tx_markers.clear()
                    if not tx.changes:
                        return
                self._handed_lsn = tx.end_lsn
                batch.append(tx)
        elif kind == 0x6B:  # 'k' keepalive
            wal_end, _clock, reply = _KEEPALIVE.unpack_from(data, 1)
            self.server_wal_end = wal_end
            # Nothing of ours is in flight and everything received is stored: let the slot move
            # past WAL that had no published changes, so an idle publication never pins WAL.
            if not self._in_transaction and not batch and self._handed_lsn <= self.flushed_lsn:
                self.flushed_lsn = max(self.flushed_lsn, wal_end)
            self.received_lsn = max(self.received_lsn, wal_end)
            if reply:
                self._send_status(reply=False)
