"""What introspection saw in the database: one immutable snapshot (pure data, no I/O).

The planner compares this against the desired state; ``status`` compares it against what the
catalog says was applied. Keeping it plain data lets the planner be tested without a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from electricctl._model.table import TableRef


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type_display: str
    """``format_type()``: what a human would write, e.g. ``character varying(20)``."""
    type_name: str
    """``pg_type.typname`` of the column type, e.g. ``varchar``, ``_int4`` for arrays."""
    type_kind: str
    """``pg_type.typtype``: b base, e enum, d domain, c composite, r range, m multirange, p pseudo."""
    is_array: bool
    not_null: bool
    generated: bool


@dataclass(frozen=True, slots=True)
class TableInfo:
    ref: TableRef
    oid: int
    kind: str
    """``relkind``: r table, p partitioned table, v view, m matview, f foreign table."""
    columns: tuple[ColumnInfo, ...]
    primary_key: tuple[str, ...]
    replica_identity: str
    """``relreplident``: d default, f full, n nothing, i index."""
    replica_index: str | None = None

    def column(self, name: str) -> ColumnInfo | None:
        for col in self.columns:
            if col.name == name:
                return col
        return None


@dataclass(frozen=True, slots=True)
class ForeignKey:
    name: str
    table: TableRef
    columns: tuple[str, ...]
    target: TableRef
    target_columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TriggerInfo:
    table: TableRef
    name: str
    enabled: str
    """``tgenabled``: O origin, D disabled, R replica, A always."""
    function: str


@dataclass(frozen=True, slots=True)
class AppliedRecord:
    config_hash: str
    applied_at: str
    electricctl_version: str
    applied_by: str


@dataclass(frozen=True, slots=True)
class CatalogState:
    """Rows of electricctl's own catalog in the ``electric`` schema."""

    version: int
    electrified: dict[TableRef, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Catalog table name → {object name → definition}."""
    last_applied: AppliedRecord | None = None


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    plugin: str | None
    slot_type: str
    active: bool
    lag_bytes: int | None
    wal_status: str | None
    last_gap_at: str | None = None
    """When `serve` last found this slot missing and created it again (the stream had a gap)."""


@dataclass(frozen=True, slots=True)
class ObservedState:
    server_version: int
    wal_level: str
    database: str
    tables: dict[TableRef, TableInfo]
    foreign_keys: tuple[ForeignKey, ...]
    triggers: dict[tuple[TableRef, str], TriggerInfo]
    functions: dict[str, str]
    """Functions in the electric schema: name → source (``prosrc``)."""
    publication: frozenset[TableRef] | None
    """Tables in electricctl's publication, or None if the publication does not exist."""
    publication_ok: bool
    """The publication publishes inserts, updates, deletes and truncates, and not ALL TABLES."""
    electric_schema_objects: int
    """Tables, views, sequences and functions in the ``electric`` schema (-1: no such schema)."""
    catalog: CatalogState | None
    """None when the electric schema holds no electricctl catalog."""
    slots: tuple[SlotInfo, ...] = ()
    event_triggers: frozenset[str] = frozenset()
    """electricctl's event triggers that are enabled (the DDL guard)."""
    superuser: bool = False
    """The connected role is a superuser (only a superuser can create event triggers)."""
