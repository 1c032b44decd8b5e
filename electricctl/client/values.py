"""Values between the wire and the local file, and the decoded form of a server change.

On the wire (Satellite rows) every value is Postgres' text form, bytea raw. Locally values are
stored as the npm client stores them: integers and booleans (0/1) as INTEGER, floats as REAL
(NaN as the text ``NaN``), bytea as BLOB, everything else as TEXT in Postgres' text form (numeric
included, so it stays exact). The oplog's JSON (written by the
triggers) holds int8 and floats as text and bytea as hex.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from electricctl.client.schema import FLOATS, INTS, Column, Table

LocalValue = int | float | str | bytes | None
"""A value as SQLite holds it."""
Wire = bytes | None
"""A value as a Satellite row carries it."""


@dataclass(slots=True)
class RemoteChange:
    """One change from the server, decoded to local values."""

    table: str
    kind: str
    """insert, update, delete, gone."""
    values: dict[str, LocalValue]
    """The new row (insert, update) or the old row / key (delete, gone)."""
    old: dict[str, LocalValue] | None
    tags: list[str]


@dataclass(slots=True)
class RowBatch:
    """Rows a server inserts into one table (subscription data), each a list of local values in the
    relation's column order, with each row's tags: written in bulk, with no dict per row."""

    table: Table
    """The relation the rows came under (its columns, in order)."""
    rows: list[list[LocalValue]]
    tags: list[list[str]]

    def changes(self) -> list[RemoteChange]:
        """The same rows as :class:`RemoteChange` inserts (for rows that must be merged)."""
        names = [c.name for c in self.table.columns]
        return [
            RemoteChange(self.table.name, "insert", dict(zip(names, row, strict=True)), None, tags)
            for row, tags in zip(self.rows, self.tags, strict=True)
        ]


_BOOLS = {b"t": 1, b"f": 0}


def _float(value: bytes) -> float | str:
    number = float(value)
    return "NaN" if number != number else number  # SQLite stores a NaN REAL as NULL: keep it as text


def converter(col: Column) -> Callable[[bytes], LocalValue]:
    """The function that turns ``col``'s non-NULL wire values into local ones (one lookup per
    column, not per value: a decoder applies it to every row of a batch)."""
    if col.pg_type == "bytea":
        return bytes
    if col.pg_type in INTS:
        return int  # int() reads the ASCII digits of a bytes value as they are
    if col.pg_type in FLOATS:
        return _float
    if col.pg_type == "bool":
        return _BOOLS.__getitem__
    return bytes.decode


def to_local(col: Column, value: Wire) -> LocalValue:
    return None if value is None else converter(col)(value)


def to_wire(col: Column, value: LocalValue) -> Wire:
    if value is None:
        return None
    if col.pg_type == "bytea":
        return value if isinstance(value, bytes) else bytes.fromhex(str(value))
    if col.pg_type == "bool":
        return b"t" if value not in (0, "0", "f", "false", False) else b"f"
    if col.pg_type in INTS:
        return str(int(value)).encode()
    if col.pg_type in FLOATS:
        return repr(float(value)).encode()
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def from_oplog(col: Column, value: Any) -> LocalValue:
    """Oplog rows are JSON (the npm client's format): bytea as hex, int8 and floats as text."""
    if value is None:
        return None
    if col.pg_type == "bytea":
        return bytes.fromhex(value)
    if col.pg_type in INTS:
        return int(value)
    if col.pg_type in FLOATS:
        return float(value)
    return value  # type: ignore[no-any-return]
