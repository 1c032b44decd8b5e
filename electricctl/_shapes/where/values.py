"""Text to typed Python values and back, as Postgres reads and prints them.

The stream carries row values as Postgres' text output; the Python back end parses them into the
value of their kind (:mod:`.kinds`) before comparing them, and prints values back to text where SQL
would (casts to text, ``||``, ``concat``). Literals are parsed the same way when they take a type.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from decimal import Decimal
from typing import Any

from electricctl._shapes.where.errors import ShapeError
from electricctl._shapes.where.kinds import BOOL, BYTEA, FLOAT, JSONB, TIMESTAMP, TIMESTAMPTZ

Value = Any
"""A Python value of one of the kinds, or None for NULL."""


def _parse_ts(text: str, tz: bool) -> dt.datetime:
    t = text.strip()
    if t in ("infinity", "-infinity"):
        raise ShapeError(f"{t} timestamps are not supported in shape clauses")
    t = t.replace("T", " ")
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    m = re.match(r"^(.*?)([+-]\d{2})(?::?(\d{2}))?$", t) if tz else None
    if m and ":" in m.group(1):
        t = f"{m.group(1)}{m.group(2)}:{m.group(3) or '00'}"
    value = dt.datetime.fromisoformat(t)
    if tz:
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)  # the server's sessions run in UTC
        return value.astimezone(dt.UTC)
    if value.tzinfo is not None:
        raise ValueError("timestamp without time zone has an offset")
    return value


def _parse_float(text: str) -> float:
    low = text.strip().lower()
    if low in ("nan", "infinity", "-infinity", "inf", "-inf"):
        return float(low.replace("infinity", "inf"))
    return float(text)


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("t", "true", "y", "yes", "on", "1"):
        return True
    if low in ("f", "false", "n", "no", "off", "0"):
        return False
    raise ValueError(f"invalid boolean {text!r}")


def _parse_bytea(text: str) -> bytes:
    return bytes.fromhex(text[2:]) if text.startswith("\\x") else text.encode()


def _same(text: str) -> str:
    return text


_PARSERS: dict[str, Any] = {
    "int": lambda text: int(text.strip()),
    "float": _parse_float,
    "numeric": lambda text: Decimal(text.strip()),
    "text": _same,
    "enum": _same,
    "unknown": _same,
    "bool": _parse_bool,
    "date": lambda text: dt.date.fromisoformat(text.strip()),
    "time": lambda text: dt.time.fromisoformat(text.strip()),
    "timestamp": lambda text: _parse_ts(text, tz=False),
    "timestamptz": lambda text: _parse_ts(text, tz=True),
    "uuid": lambda text: str(uuid.UUID(text.strip())),
    "jsonb": json.loads,
    "bytea": _parse_bytea,
}


def parse_text(kind: str, text: str) -> Value:
    """Convert Postgres text output (or a literal) to the Python value of ``kind``.

    Raises ValueError (or :class:`decimal.InvalidOperation`) for text that is not a value of ``kind``.
    """
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ShapeError(f"unsupported type {kind}")
    return parser(text)


def _float_text(value: float) -> str:
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def _fraction(value: dt.datetime) -> str:
    return f".{value.microsecond:06d}".rstrip("0") if value.microsecond else ""


_PRINTERS: dict[str, Any] = {
    BOOL: lambda value: "true" if value else "false",
    FLOAT: _float_text,
    TIMESTAMPTZ: lambda value: str(value.strftime("%Y-%m-%d %H:%M:%S")) + _fraction(value) + "+00",
    TIMESTAMP: lambda value: str(value.strftime("%Y-%m-%d %H:%M:%S")) + _fraction(value),
    JSONB: lambda value: json.dumps(value, separators=(", ", ": ")),
    BYTEA: lambda value: "\\x" + str(value.hex()),
}


def to_text(kind: str, value: Value) -> str:
    """Postgres' text output for a value (used by casts to text and by ``||``)."""
    printer = _PRINTERS.get(kind)
    return str(value) if printer is None else str(printer(value))
