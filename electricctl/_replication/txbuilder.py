"""Assemble pgoutput messages into committed :class:`Transaction` objects (pure)."""

from __future__ import annotations

from collections.abc import Callable

from electricctl._model.migrations import Migration
from electricctl._model.rows import Change, ClientWrite, RelationDef, Row, Transaction
from electricctl._model.wire import MIGRATION_PREFIX, ORIGIN_PREFIX, WRITE_PREFIX
from electricctl._replication import pgoutput as po


def _migration(content: bytes) -> Migration:
    try:
        return Migration.from_json(content)
    except (ValueError, KeyError, TypeError) as exc:
        raise po.DecodeError(f"malformed {MIGRATION_PREFIX} message: {exc}") from None


def _client_write(content: bytes) -> ClientWrite:
    try:
        return ClientWrite.from_json(content)
    except (ValueError, KeyError, TypeError) as exc:
        raise po.DecodeError(f"malformed {WRITE_PREFIX} message: {exc}") from None


Resolver = Callable[[po.Relation], RelationDef]


class _Streamed:
    """A large transaction that pgoutput (proto 2) sends in blocks before it commits."""

    __slots__ = ("changes", "migrations", "origin", "write")

    def __init__(self) -> None:
        self.changes: list[tuple[int, Change]] = []
        """(sub)transaction xid of each change, so a subtransaction's abort can drop its changes."""
        self.migrations: list[tuple[int, Migration]] = []
        self.origin: str | None = None
        self.write: ClientWrite | None = None


class TxBuilder:
    """Feed decoded messages in order; :meth:`feed` returns a Transaction at each Commit.

    ``resolve`` turns a pgoutput Relation into a :class:`RelationDef` (type names, primary key),
    which needs the catalog; the builder itself does no I/O. With protocol 2 streaming, changes of
    large in-progress transactions arrive in blocks (Stream Start ... Stream Stop, data messages
    carrying their subtransaction's xid) and are kept until Stream Commit or dropped at Stream Abort.
    """

    def __init__(self, resolve: Resolver) -> None:
        self._resolve = resolve
        self.relations: dict[int, RelationDef] = {}
        self._begin: po.Begin | None = None
        self._changes: list[Change] = []
        self._origin: str | None = None
        self._write: ClientWrite | None = None
        self._migrations: list[Migration] = []
        self._streams: dict[int, _Streamed] = {}
        self._stream: int | None = None

    @property
    def in_stream_block(self) -> bool:
        """Between Stream Start and Stream Stop: data messages carry an xid (decode with streaming)."""
        return self._stream is not None

    @property
    def open_transactions(self) -> bool:
        """A transaction is partly received (the slot must not be confirmed past it)."""
        return self._begin is not None or bool(self._streams)

    def feed(self, msg: po.Message, xid: int | None = None) -> Transaction | None:
        """Feed one message; ``xid`` is the (sub)transaction of a data message inside a stream block."""
        if self._stream is not None and isinstance(
            msg, po.Insert | po.Update | po.Delete | po.Truncate | po.LogicalMessage
        ):
            self._feed_streamed(msg, self._stream if xid is None else xid)
            return None
        match msg:
            case po.StreamStart():
                self._stream = msg.xid
                self._streams.setdefault(msg.xid, _Streamed())
                return None
            case po.StreamStop():
                self._stream = None
                return None
            case po.StreamAbort():
                streamed = self._streams.get(msg.xid)
                if streamed is not None:
                    if msg.subxid == msg.xid:
                        del self._streams[msg.xid]
                    else:
                        streamed.changes = [(x, c) for x, c in streamed.changes if x != msg.subxid]
                        streamed.migrations = [(x, m) for x, m in streamed.migrations if x != msg.subxid]
                return None
            case po.StreamCommit():
                done = self._streams.pop(msg.xid, None) or _Streamed()
                return Transaction(
                    lsn=msg.commit_lsn,
                    end_lsn=msg.end_lsn,
                    xid=msg.xid,
                    commit_ts_ms=msg.commit_ts_us // 1000,
                    origin=done.origin,
                    changes=tuple(c for _, c in done.changes),
                    write=done.write,
                    migrations=tuple(m for _, m in done.migrations),
                )
        match msg:
            case po.Begin():
                self._begin = msg
                self._changes = []
                self._origin = None
                self._write = None
                self._migrations = []
            case po.Relation():
                self.relations[msg.relid] = self._resolve(msg)
            case po.Insert() | po.Update() | po.Delete() | po.Truncate():
                self._changes.extend(self._changes_of(msg))
            case po.LogicalMessage():
                if msg.prefix == ORIGIN_PREFIX:
                    self._origin = msg.content.decode()
                elif msg.prefix == WRITE_PREFIX:
                    self._write = _client_write(msg.content)
                elif msg.prefix == MIGRATION_PREFIX and msg.transactional:
                    self._migrations.append(_migration(msg.content))
            case po.Commit():
                begin = self._begin
                if begin is None:
                    raise po.DecodeError("Commit without Begin")
                self._begin = None
                return Transaction(
                    lsn=msg.commit_lsn,
                    end_lsn=msg.end_lsn,
                    xid=begin.xid,
                    commit_ts_ms=msg.commit_ts_us // 1000,
                    origin=self._origin,
                    changes=tuple(self._changes),
                    write=self._write,
                    migrations=tuple(self._migrations),
                )
        return None

    def _feed_streamed(self, msg: po.Message, xid: int) -> None:
        assert self._stream is not None
        streamed = self._streams[self._stream]
        if isinstance(msg, po.LogicalMessage):
            if msg.prefix == ORIGIN_PREFIX:
                streamed.origin = msg.content.decode()
            elif msg.prefix == WRITE_PREFIX:
                streamed.write = _client_write(msg.content)
            elif msg.prefix == MIGRATION_PREFIX and msg.transactional:
                streamed.migrations.append((xid, _migration(msg.content)))
            return
        for change in self._changes_of(msg):
            streamed.changes.append((xid, change))

    def _changes_of(self, msg: po.Message) -> list[Change]:
        match msg:
            case po.Insert():
                return [Change("I", self.relations[msg.relid], _plain(msg.new, None), None)]
            case po.Update():
                old = _plain(msg.old, None) if msg.old is not None else None
                return [Change("U", self.relations[msg.relid], _plain(msg.new, old), old)]
            case po.Delete():
                return [Change("D", self.relations[msg.relid], None, _plain(msg.old, None))]
            case po.Truncate():
                return [Change("T", self.relations[relid], None, None) for relid in msg.relids]
        return []


def _plain(values: tuple[po.TupleValue, ...], old: Row | None) -> Row:
    """Replace unchanged-TOAST markers with the old values (REPLICA IDENTITY FULL sends them)."""
    if not any(v is po.UNCHANGED for v in values):
        return values  # type: ignore[return-value]
    out: list[bytes | None] = []
    for i, v in enumerate(values):
        if v is po.UNCHANGED:
            if old is None:
                raise po.DecodeError("unchanged TOAST value without the old row; is REPLICA IDENTITY FULL set?")
            out.append(old[i])
        else:
            out.append(v)  # type: ignore[arg-type]
    return tuple(out)
