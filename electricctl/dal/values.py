"""Python values of synced columns, to and from the local file's storage (pure).

The local file holds values as the sync client writes them (``electricctl.client.values``):
integers and booleans as INTEGER, floats as REAL (NaN as the text ``NaN``), bytea as BLOB,
arrays as JSON text, everything else as TEXT in Postgres' text form. The typed client reads them
as Python values: ``uuid.UUID``, ``decimal.Decimal`` for numeric, ``datetime`` types, ``bytes``,
``bool``, JSON as :data:`JsonValue`, arrays as lists; and writes them back in the form the server
sends, so a value written locally and the same value synced compare equal in SQLite.

Timestamps with a time zone are written in UTC as the server sends them (Postgres' text for a
session in UTC, with ``Z`` for ``+00``: ``2026-11-30 20:00:00.5Z``); an aware datetime in another
zone is converted, a naive one refused. Times and timestamps have Postgres' fraction (no trailing
zeros), so a value written locally equals the same value synced, in filters too.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Callable
from typing import Any, TypeAlias

JsonValue: TypeAlias = "dict[str, JsonValue] | list[JsonValue] | str | int | float | bool | None"
"""A JSON value (a ``json`` or ``jsonb`` column)."""

LocalValue: TypeAlias = int | float | str | bytes | None
Convert: TypeAlias = Callable[[Any], Any]

SCALARS = {
    "bool": "bool",
    "bytea": "bytes",
    "date": "datetime.date",
    "float4": "float",
    "float8": "float",
    "int2": "int",
    "int4": "int",
    "int8": "int",
    "json": "JsonValue",
    "jsonb": "JsonValue",
    "numeric": "decimal.Decimal",
    "text": "str",
    "time": "datetime.time",
    "timestamp": "datetime.datetime",
    "timestamptz": "datetime.datetime",
    "uuid": "uuid.UUID",
    "varchar": "str",
}
"""Postgres type name -> the Python annotation of its values (an enum is its own type; an array
``_t`` is ``list[<t's> | None]``)."""


class ColumnValueError(ValueError):
    """A value that does not fit its column (the message names both)."""


def now_utc() -> dt.datetime:
    """The current time, aware (a ``timestamptz`` column's ``now()`` default)."""
    return dt.datetime.now(dt.UTC)


def now_naive() -> dt.datetime:
    """The current UTC time, naive (a ``timestamp`` column's ``now()`` default)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def now_date() -> dt.date:
    """Today in UTC (a ``date`` column's ``CURRENT_DATE`` default)."""
    return dt.datetime.now(dt.UTC).date()


# -- local -> Python ------------------------------------------------------------------------------
def _bool(v: Any) -> bool:
    return bool(v)


def _float(v: Any) -> float:
    return float(v)  # a REAL, or the text "NaN" / "Infinity" / "-Infinity"


def _decimal(v: Any) -> decimal.Decimal:
    return decimal.Decimal(str(v))


def _uuid(v: Any) -> uuid.UUID:
    return uuid.UUID(str(v))


def _date(v: Any) -> dt.date:
    return dt.date.fromisoformat(str(v))


def _time(v: Any) -> dt.time:
    return dt.time.fromisoformat(str(v))


def _timestamp(v: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(str(v))


def _timestamptz(v: Any) -> dt.datetime:
    text = str(v)
    # Postgres prints the offset as +HH (or +HH:MM); Python 3.11 reads both
    return dt.datetime.fromisoformat(text)


def _json(v: Any) -> Any:
    return json.loads(v)


def _bytes(v: Any) -> bytes:
    return bytes(v)


_TO_PY: dict[str, Convert] = {
    "bool": _bool,
    "bytea": _bytes,
    "date": _date,
    "float4": _float,
    "float8": _float,
    "json": _json,
    "jsonb": _json,
    "numeric": _decimal,
    "time": _time,
    "timestamp": _timestamp,
    "timestamptz": _timestamptz,
    "uuid": _uuid,
}


def to_python(pg_type: str) -> Convert | None:
    """The function turning a non-NULL local value of ``pg_type`` into Python (None: as it is)."""
    if pg_type.startswith("_"):
        element = to_python(pg_type[1:])
        if element is None:
            return _json
        convert: Convert = element

        def array(v: Any) -> Any:
            return _each(json.loads(v), convert)

        return array
    return _TO_PY.get(pg_type)


def _each(value: Any, f: Convert) -> Any:
    if isinstance(value, list):
        return [_each(x, f) for x in value]
    return None if value is None else f(value)


# -- Python -> local ------------------------------------------------------------------------------
def _out_bool(v: Any) -> int:
    if not isinstance(v, bool):
        raise ColumnValueError(f"expected a bool, got {type(v).__name__}")
    return int(v)


def _out_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ColumnValueError(f"expected an int, got {type(v).__name__}")
    return v


def _out_float(v: Any) -> float | str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ColumnValueError(f"expected a float, got {type(v).__name__}")
    f = float(v)
    if math.isnan(f):
        return "NaN"
    return f


def _out_str(v: Any) -> str:
    if not isinstance(v, str):
        raise ColumnValueError(f"expected a str, got {type(v).__name__}")
    return v


def _out_bytes(v: Any) -> bytes:
    if not isinstance(v, bytes | bytearray | memoryview):
        raise ColumnValueError(f"expected bytes, got {type(v).__name__}")
    return bytes(v)


def _out_decimal(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, decimal.Decimal | int):
        raise ColumnValueError(f"expected a decimal.Decimal, got {type(v).__name__}")
    return str(v)


def _out_uuid(v: Any) -> str:
    if not isinstance(v, uuid.UUID):
        raise ColumnValueError(f"expected a uuid.UUID, got {type(v).__name__}")
    return str(v)


def _out_date(v: Any) -> str:
    if isinstance(v, dt.datetime) or not isinstance(v, dt.date):
        raise ColumnValueError(f"expected a datetime.date, got {type(v).__name__}")
    return v.isoformat()


def _clock(v: dt.time | dt.datetime) -> str:
    """``HH:MM:SS[.f]`` as Postgres prints it: the fraction without trailing zeros, none when zero
    (Python's isoformat always writes six digits)."""
    text = f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
    return text + (f".{v.microsecond:06d}".rstrip("0") if v.microsecond else "")


def _out_time(v: Any) -> str:
    if not isinstance(v, dt.time):
        raise ColumnValueError(f"expected a datetime.time, got {type(v).__name__}")
    return _clock(v)


def _out_timestamp(v: Any) -> str:
    if not isinstance(v, dt.datetime):
        raise ColumnValueError(f"expected a datetime.datetime, got {type(v).__name__}")
    if v.tzinfo is not None:
        raise ColumnValueError("a timestamp (without time zone) takes a naive datetime")
    return f"{v.date().isoformat()} {_clock(v)}"


def _out_timestamptz(v: Any) -> str:
    if not isinstance(v, dt.datetime):
        raise ColumnValueError(f"expected a datetime.datetime, got {type(v).__name__}")
    if v.tzinfo is None:
        raise ColumnValueError("a timestamptz takes an aware datetime (say, datetime.now(timezone.utc))")
    utc = v.astimezone(dt.UTC)
    return f"{utc.date().isoformat()} {_clock(utc)}Z"  # as the server sends it (outbound._timestamptz)


def _out_json(v: Any) -> str:
    return json.dumps(v, separators=(", ", ": "))


_TO_LOCAL: dict[str, Convert] = {
    "bool": _out_bool,
    "bytea": _out_bytes,
    "date": _out_date,
    "float4": _out_float,
    "float8": _out_float,
    "int2": _out_int,
    "int4": _out_int,
    "int8": _out_int,
    "json": _out_json,
    "jsonb": _out_json,
    "numeric": _out_decimal,
    "text": _out_str,
    "time": _out_time,
    "timestamp": _out_timestamp,
    "timestamptz": _out_timestamptz,
    "uuid": _out_uuid,
    "varchar": _out_str,
}


def to_local(pg_type: str, enum_values: tuple[str, ...] = ()) -> Convert:
    """The function turning a non-NULL Python value into what the file holds for ``pg_type``
    (a ValueError naming what was expected if it does not fit)."""
    if pg_type.startswith("_"):
        element = to_local(pg_type[1:], enum_values)
        numbers = pg_type[1:] in ("int2", "int4", "int8", "float4", "float8", "bool")

        def array(v: Any) -> str:
            if not isinstance(v, list | tuple):
                raise ColumnValueError(f"expected a list, got {type(v).__name__}")
            return json.dumps(_each_out(list(v), element, numbers))

        return array
    if enum_values:
        allowed = frozenset(enum_values)

        def enum(v: Any) -> str:
            text = str(v.value) if hasattr(v, "value") else v
            if text not in allowed:
                raise ColumnValueError(f"expected one of {', '.join(enum_values)}, got {v!r}")
            return str(text)

        return enum
    return _TO_LOCAL.get(pg_type, _out_str)


def _each_out(value: list[Any], f: Convert, numbers: bool) -> list[Any]:
    out: list[Any] = []
    for x in value:
        if isinstance(x, list):
            out.append(_each_out(x, f, numbers))
        elif x is None:
            out.append(None)
        elif numbers:
            local = f(x)
            out.append(bool(local) if isinstance(x, bool) else local)
        else:
            out.append(f(x))
    return out
