"""The Postgres column types electricctl syncs (shared by the planner and the DDL guard)."""

from __future__ import annotations

# ../shared/reference/electric-legacy.md §5: Electric.Postgres.supported_types, plus enums. Values travel as text in
# Postgres' output format and map onto SQLite INTEGER/REAL/TEXT/BLOB.
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
    "text",
    "time",
    "timestamp",
    "timestamptz",
    "uuid",
    "varchar",
)
