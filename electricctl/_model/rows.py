"""Committed transactions as the sync service carries them: decoded, values still text bytes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from electricctl._model.migrations import Migration

Value: TypeAlias = bytes | None
Row: TypeAlias = tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_name: str
    """``pg_type.typname``: what SatRelation sends, e.g. ``int4``."""
    primary_key: bool
    nullable: bool


@dataclass(frozen=True, slots=True)
class RelationDef:
    """A table as it was when a change was captured (pgoutput Relation, enriched from the catalog)."""

    relid: int
    schema: str
    name: str
    columns: tuple[Column, ...]
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # every change carries its relation, and the server keys several per-relation caches by
        # it: hashing the columns on each lookup cost ~5% of serve's CPU while streaming
        object.__setattr__(self, "_hash", hash((self.relid, self.schema, self.name, self.columns)))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, RelationDef):
            return NotImplemented
        return self._hash == other._hash and (self.relid, self.schema, self.name, self.columns) == (
            other.relid,
            other.schema,
            other.name,
            other.columns,
        )

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def pk_indexes(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.columns) if c.primary_key)

    @property
    def pk_columns(self) -> tuple[str, ...]:
        """The primary key's column names, in the table's column order."""
        return tuple(c.name for c in self.columns if c.primary_key)


_CANONICAL: dict[RelationDef, RelationDef] = {}


def canonical(rel: RelationDef) -> RelationDef:
    """The one shared object for this definition. Relations are decoded anew from each Relation
    message and each log segment read; interned, the per-change lookups keyed by them (sent
    relations, projections, row transforms) compare by identity. A process sees few distinct
    definitions (one per table and schema version), so the table stays small."""
    return _CANONICAL.setdefault(rel, rel)


@dataclass(frozen=True, slots=True)
class Change:
    op: str
    """``I`` insert, ``U`` update, ``D`` delete, ``T`` truncate."""
    relation: RelationDef
    new: Row | None
    old: Row | None


@dataclass(frozen=True, slots=True)
class Transaction:
    lsn: int
    """The commit LSN: the transaction's position in the log, and what clients resume from."""
    end_lsn: int
    xid: int
    commit_ts_ms: int
    origin: str | None
    """The client that wrote it (via the sync worker), or None for a write made in Postgres."""
    changes: tuple[Change, ...]
    write: ClientWrite | None = None
    """Set for transactions the sync worker wrote for a client (see ``_server.writer``)."""
    migrations: tuple[Migration, ...] = ()
    """Schema migrations of electrified tables made in this transaction, in order (additive only,
    so a client applies them before the transaction's rows)."""

    @property
    def timestamp_ms(self) -> int:
        """The transaction's timestamp on the wire: the client's own for a client's transaction."""
        return self.write.client_ts_ms if self.write is not None else self.commit_ts_ms


def row_key(qualified: str, key: Sequence[str]) -> str:
    """A row's name in :class:`ClientWrite`: its table and key values (text), NUL-separated."""
    return "\0".join((qualified, *key))


def change_key(rel: RelationDef, row: Row) -> str:
    """A row's name in :attr:`ClientWrite.row_tags`: table and key values, NUL-separated."""
    return row_key(rel.qualified, [(row[i] or b"").decode() for i in rel.pk_indexes])


@dataclass(frozen=True, slots=True)
class ClientWrite:
    """What the sync worker says, in the WAL, about a client transaction it wrote."""

    client_ts_ms: int
    """The client's commit timestamp: its echo carries it, so the client can clear its oplog."""
    row_tags: Mapping[str, tuple[str, ...]]
    """Each written row's tag set after the merge, by :func:`row_key`."""
    gone: tuple[str, ...] = ()
    """Rows (same naming) the client wrote that Postgres does not have: the transaction was
    refused, so its echo tells the client to drop them."""

    def to_json(self) -> str:
        return json.dumps({"ts": self.client_ts_ms, "rows": self.row_tags, "gone": self.gone}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> ClientWrite:
        data = json.loads(raw)
        return cls(int(data["ts"]), {k: tuple(v) for k, v in data["rows"].items()}, tuple(data.get("gone", ())))
