"""The value kinds a where clause is typed with, and how Postgres type names map onto them.

A kind is a small string naming how values of a SQL type are represented in Python and which
operators apply to them (``int`` values are Python ints, ``timestamptz`` aware datetimes in UTC...).
"""

from __future__ import annotations

INT = "int"
FLOAT = "float"
NUMERIC = "numeric"
TEXT = "text"
BOOL = "bool"
DATE = "date"
TIME = "time"
TIMESTAMP = "timestamp"
TIMESTAMPTZ = "timestamptz"
UUID = "uuid"
JSONB = "jsonb"
BYTEA = "bytea"
ENUM = "enum"
UNKNOWN = "unknown"
"""A quoted literal (or NULL) whose type comes from the other operand, as in Postgres."""

PG_TYPES = {
    "int2": INT,
    "int4": INT,
    "int8": INT,
    "float4": FLOAT,
    "float8": FLOAT,
    "text": TEXT,
    "varchar": TEXT,
    "bool": BOOL,
    "date": DATE,
    "time": TIME,
    "timestamp": TIMESTAMP,
    "timestamptz": TIMESTAMPTZ,
    "uuid": UUID,
    "jsonb": JSONB,
    "bytea": BYTEA,
}
"""Postgres type name -> kind; a column of any other type (an enum, say) is compared as its text."""

INT_RANGES = {"int2": 1 << 15, "int4": 1 << 31, "int8": 1 << 63}
"""Each integer type holds values in ``[-limit, limit)``."""

ORDERED = frozenset({INT, FLOAT, NUMERIC, TEXT, BOOL, DATE, TIME, TIMESTAMP, TIMESTAMPTZ, UUID, BYTEA})
"""Kinds with ``<``, ``<=``, ``>``, ``>=``."""

NUMBERS = {INT: 0, NUMERIC: 1, FLOAT: 2}
"""Numeric kinds by rank: a mixed operation widens to the higher one."""
