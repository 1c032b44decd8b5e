"""Committed transactions as the sync service carries them: decoded, values still text bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

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

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def pk_indexes(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.columns) if c.primary_key)


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
