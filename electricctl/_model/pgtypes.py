"""The Postgres column types electricctl syncs (shared by the planner and the DDL guard)."""

from __future__ import annotations

# ../shared/reference/electric-legacy.md §5: Electric.Postgres.supported_types, plus enums, plus numeric. Values
# travel as text in Postgres' output format and map onto SQLite INTEGER/REAL/TEXT/BLOB. numeric is
# TEXT on clients (Electric's dialect said REAL, which is not exact): its text form round-trips as is.
SUPPORTED_TYPES = (
    "bool",
    "bytea",
    "date",
    "float4",
    "float8",
    "int2",
    "int4",
    "int8",
    "jsonb",
    "numeric",
    "text",
    "time",
    "timestamp",
    "timestamptz",
    "uuid",
    "varchar",
)

ARRAY_ELEMENT_TYPES = tuple(t for t in SUPPORTED_TYPES if t != "jsonb")
"""Arrays of these are supported (JSON on clients; see ``electricctl._model.arrays``). Not of jsonb:
in JSON its ``null`` element could not be told from SQL NULL."""
