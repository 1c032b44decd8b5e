"""Assemble pgoutput messages into committed :class:`Transaction` objects (pure)."""

from __future__ import annotations

from collections.abc import Callable

from electricctl._replication import pgoutput as po
from electricctl._replication.model import Change, RelationDef, Row, Transaction

ORIGIN_PREFIX = "electric.origin"
"""Prefix of the logical message the sync worker emits in transactions it writes for a client."""

Resolver = Callable[[po.Relation], RelationDef]


class TxBuilder:
    """Feed decoded messages in order; :meth:`feed` returns a Transaction at each Commit.

    ``resolve`` turns a pgoutput Relation into a :class:`RelationDef` (type names, primary key),
    which needs the catalog; the builder itself does no I/O.
    """

    def __init__(self, resolve: Resolver) -> None:
        self._resolve = resolve
        self.relations: dict[int, RelationDef] = {}
        self._begin: po.Begin | None = None
        self._changes: list[Change] = []
        self._origin: str | None = None

    def feed(self, msg: po.Message) -> Transaction | None:
        match msg:
            case po.Begin():
                self._begin = msg
                self._changes = []
                self._origin = None
            case po.Relation():
                self.relations[msg.relid] = self._resolve(msg)
            case po.Insert():
                rel = self.relations[msg.relid]
                self._changes.append(Change("I", rel, _plain(msg.new, None), None))
            case po.Update():
                rel = self.relations[msg.relid]
                old = _plain(msg.old, None) if msg.old is not None else None
                self._changes.append(Change("U", rel, _plain(msg.new, old), old))
            case po.Delete():
                rel = self.relations[msg.relid]
                self._changes.append(Change("D", rel, None, _plain(msg.old, None)))
            case po.Truncate():
                for relid in msg.relids:
                    self._changes.append(Change("T", self.relations[relid], None, None))
            case po.LogicalMessage():
                if msg.prefix == ORIGIN_PREFIX:
                    self._origin = msg.content.decode()
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
                )
        return None


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
