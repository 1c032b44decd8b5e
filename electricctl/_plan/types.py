"""Supported column types, and why the others are refused."""

from __future__ import annotations

from electricctl._catalog.observed import ColumnInfo
from electricctl._model.arrays import element_type
from electricctl._model.pgtypes import ARRAY_ELEMENT_TYPES, SUPPORTED_TYPES

SUPPORTED_DESCRIPTION = ", ".join(SUPPORTED_TYPES) + ", enum types, and arrays of them but jsonb and enums"

_REASONS = {
    "json": "use jsonb: json keeps duplicate keys and formatting that clients cannot round-trip",
    "timetz": "time with time zone is not supported; use timestamptz or time",
    "interval": "interval has no SQLite type; store a number of seconds, or text",
    "bpchar": "char(n) pads its values with blanks; use text or varchar",
    "money": "money depends on lc_monetary; use an integer number of cents",
    "xml": "xml is not supported; use text",
    "oid": "oid is not supported; use int8",
}


def unsupported_reason(col: ColumnInfo) -> str | None:
    """Why the column cannot be synced, or None if it can."""
    if col.generated:
        return "generated columns cannot be written by clients"
    if col.is_array:
        if element_type(col.type_name) in ARRAY_ELEMENT_TYPES:
            return None
        return (
            f"{col.type_display} is an array of a type clients cannot hold in one (arrays of "
            f"{', '.join(ARRAY_ELEMENT_TYPES)} are supported; use jsonb or a child table)"
        )
    if col.type_kind == "e":
        return None
    if col.type_kind == "d":
        return f"{col.type_display} is a domain; domain types are not supported (use the base type)"
    if col.type_kind != "b":
        return f"{col.type_display} is not a base type (composite, range and pseudo types are not supported)"
    if col.type_name in SUPPORTED_TYPES:
        return None
    reason = _REASONS.get(col.type_name, "this type is not supported")
    return f"{col.type_display}: {reason}"
