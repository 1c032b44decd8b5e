"""Typed filters, orderings and writes compiled to parameterised SQLite SQL, and to the where
clause a sync request sends the server (pure).

A filter is a mapping, as the generated ``<Table>Where`` types spell it:

- ``{"status": "done"}`` equality; ``{"deleted_at": None}`` is ``IS NULL``;
- ``{"n": {"gt": 3, "lte": 9}}`` with ``eq``, ``ne``, ``in``, ``not_in``, ``lt``, ``lte``, ``gt``,
  ``gte``, ``like`` and ``is_null`` (True or False), several at once meaning all of them;
- ``{"AND": [...], "OR": [...], "NOT": {...}}``, and several keys at once meaning all of them.

Values are converted as the column's type says (a ``uuid.UUID`` for a uuid column) and never pasted
into local SQL: they are parameters. Identifiers come from the schema, never from the filter (a key
that is not a column is an error naming the table and the key). The server's clause does hold the
values, as literals quoted for Postgres; the server parses it with pglast and allows only its
whitelist.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from electricctl.dal.spec import ColumnSpec, TableSpec
from electricctl.dal.values import LocalValue

OPS = ("eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "like", "is_null")
_COMPARE = {"eq": "=", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_NUMERIC = ("numeric",)


class FilterError(ValueError):
    """A filter, ordering or write that does not fit the table (the message says what and where)."""


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _column(spec: TableSpec, key: str) -> ColumnSpec:
    col = spec.by_name.get(key)
    if col is None:
        raise FilterError(f"{spec.name} has no column {key!r}")
    return col


def _local(spec: TableSpec, col: ColumnSpec, value: object) -> LocalValue:
    if value is None:
        return None
    try:
        out: LocalValue = spec.writers[col.name](value)
    except ValueError as exc:
        raise FilterError(f"{spec.name}.{col.name}: {exc}") from None
    return out


def _ref(col: ColumnSpec) -> str:
    # numeric is held as text (exact): compare and sort it as a number
    return f"CAST({q(col.name)} AS NUMERIC)" if col.pg_type in _NUMERIC else q(col.name)


# -- local SQL ------------------------------------------------------------------------------------
def where_sql(spec: TableSpec, where: Mapping[str, object] | None) -> tuple[str, list[LocalValue]]:
    """``(clause, params)`` for ``WHERE clause`` ("1" when there is no filter)."""
    params: list[LocalValue] = []
    if not where:
        return "1", params
    return _where(spec, where, params), params


def _where(spec: TableSpec, where: Mapping[str, object], params: list[LocalValue]) -> str:
    if not isinstance(where, Mapping):
        raise FilterError(f"a filter of {spec.name} is a mapping, got {type(where).__name__}")
    parts: list[str] = []
    for key, value in where.items():
        if key in ("AND", "OR"):
            if not isinstance(value, Sequence) or isinstance(value, str | bytes):
                raise FilterError(f"{key} of {spec.name} takes a list of filters")
            subs = [_where(spec, w, params) for w in value]
            if not subs:
                parts.append("1" if key == "AND" else "0")
            else:
                parts.append("(" + f" {key} ".join(subs) + ")")
        elif key == "NOT":
            parts.append(f"NOT ({_where(spec, value, params)})")  # type: ignore[arg-type]
        else:
            col = _column(spec, key)
            if isinstance(value, Mapping):
                parts.extend(_ops(spec, col, value, params))
            elif value is None:
                parts.append(f"{q(col.name)} IS NULL")
            else:
                params.append(_local(spec, col, value))
                parts.append(f"{_ref(col)} = {_param(col)}")
    return "(" + " AND ".join(parts) + ")" if parts else "1"


def _param(col: ColumnSpec) -> str:
    return "CAST(? AS NUMERIC)" if col.pg_type in _NUMERIC else "?"


def _ops(spec: TableSpec, col: ColumnSpec, ops: Mapping[str, object], params: list[LocalValue]) -> list[str]:
    parts: list[str] = []
    for op, value in ops.items():
        if op in _COMPARE:
            if value is None:
                if op not in ("eq", "ne"):
                    raise FilterError(f"{spec.name}.{col.name}: {op} takes a value, not None")
                parts.append(f"{q(col.name)} IS {'NOT ' if op == 'ne' else ''}NULL")
                continue
            params.append(_local(spec, col, value))
            parts.append(f"{_ref(col)} {_COMPARE[op]} {_param(col)}")
        elif op in ("in", "not_in"):
            if not isinstance(value, Sequence) or isinstance(value, str | bytes):
                raise FilterError(f"{spec.name}.{col.name}: {op} takes a list")
            values = [_local(spec, col, v) for v in value]
            if not values:
                parts.append("0" if op == "in" else "1")
                continue
            params.extend(values)
            marks = ", ".join(_param(col) for _ in values)
            parts.append(f"{_ref(col)} {'IN' if op == 'in' else 'NOT IN'} ({marks})")
        elif op == "like":
            if not isinstance(value, str):
                raise FilterError(f"{spec.name}.{col.name}: like takes a str pattern")
            params.append(value)
            parts.append(f"{q(col.name)} LIKE ? ESCAPE '\\'")
        elif op == "is_null":
            if not isinstance(value, bool):
                raise FilterError(f"{spec.name}.{col.name}: is_null takes True or False")
            parts.append(f"{q(col.name)} IS {'' if value else 'NOT '}NULL")
        else:
            raise FilterError(f"{spec.name}.{col.name}: unknown operator {op!r} (one of {', '.join(OPS)})")
    return parts


def order_sql(spec: TableSpec, order_by: Mapping[str, object] | Sequence[Mapping[str, object]] | None) -> str:
    """`` ORDER BY ...`` (empty when there is no ordering)."""
    if not order_by:
        return ""
    items = [order_by] if isinstance(order_by, Mapping) else list(order_by)
    terms: list[str] = []
    for item in items:
        for key, direction in item.items():
            col = _column(spec, key)
            if direction not in ("asc", "desc"):
                raise FilterError(f"{spec.name}.{key}: order is 'asc' or 'desc', got {direction!r}")
            terms.append(f"{_ref(col)} {str(direction).upper()}")
    return " ORDER BY " + ", ".join(terms) if terms else ""


def select_sql(
    spec: TableSpec,
    where: Mapping[str, object] | None,
    order_by: Mapping[str, object] | Sequence[Mapping[str, object]] | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> tuple[str, list[LocalValue]]:
    clause, params = where_sql(spec, where)
    cols = ", ".join(q(c.name) for c in spec.columns)
    sql = f"SELECT {cols} FROM {q(spec.name)} WHERE {clause}{order_sql(spec, order_by)}"
    if limit is not None or offset is not None:
        sql += " LIMIT ? OFFSET ?"
        params = [*params, -1 if limit is None else int(limit), int(offset or 0)]
    return sql, params


def count_sql(spec: TableSpec, where: Mapping[str, object] | None) -> tuple[str, list[LocalValue]]:
    clause, params = where_sql(spec, where)
    return f"SELECT count(*) FROM {q(spec.name)} WHERE {clause}", params


def insert_sql(spec: TableSpec, values: Mapping[str, object]) -> tuple[str, list[LocalValue]]:
    names: list[str] = []
    params: list[LocalValue] = []
    for key, value in values.items():
        col = _column(spec, key)
        names.append(q(col.name))
        params.append(_local(spec, col, value))
    marks = ", ".join("?" for _ in names)
    return f"INSERT INTO {q(spec.name)} ({', '.join(names)}) VALUES ({marks})", params


def update_sql(
    spec: TableSpec, where: Mapping[str, object] | None, data: Mapping[str, object]
) -> tuple[str, list[LocalValue]]:
    if not data:
        raise FilterError(f"an update of {spec.name} needs at least one column to set")
    sets: list[str] = []
    params: list[LocalValue] = []
    for key, value in data.items():
        col = _column(spec, key)
        if col.primary_key:
            raise FilterError(f"{spec.name}.{key} is part of the primary key: it cannot be updated")
        sets.append(f"{q(col.name)} = ?")
        params.append(_local(spec, col, value))
    clause, wparams = where_sql(spec, where)
    return f"UPDATE {q(spec.name)} SET {', '.join(sets)} WHERE {clause}", [*params, *wparams]


def delete_sql(spec: TableSpec, where: Mapping[str, object] | None) -> tuple[str, list[LocalValue]]:
    clause, params = where_sql(spec, where)
    return f"DELETE FROM {q(spec.name)} WHERE {clause}", params


# -- the server's where clause (sync requests) ----------------------------------------------------
def server_where(spec: TableSpec, where: Mapping[str, object] | None) -> str:
    """The where clause of a sync request, in the server's dialect (``this.col``, Postgres literals)."""
    if not where:
        return ""
    return _server(spec, where)


def _literal(col: ColumnSpec, value: object, spec: TableSpec) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | decimal.Decimal):
        return str(value)
    if isinstance(value, str | uuid.UUID | dt.date | dt.time):
        local = _local(spec, col, value)
        return "'" + str(local).replace("'", "''") + "'"
    if hasattr(value, "value"):  # an enum member
        return "'" + str(value.value).replace("'", "''") + "'"
    raise FilterError(f"{spec.name}.{col.name}: a sync filter cannot hold a {type(value).__name__}")


def _server(spec: TableSpec, where: Mapping[str, object]) -> str:
    parts: list[str] = []
    for key, value in where.items():
        if key in ("AND", "OR"):
            subs = [_server(spec, w) for w in value]  # type: ignore[attr-defined]
            parts.append("(" + f" {key} ".join(subs) + ")" if subs else ("true" if key == "AND" else "false"))
        elif key == "NOT":
            parts.append(f"NOT ({_server(spec, value)})")  # type: ignore[arg-type]
        else:
            col = _column(spec, key)
            ref = f"this.{q(col.name)}"
            ops: Mapping[str, Any] = value if isinstance(value, Mapping) else {"eq": value}
            for op, v in ops.items():
                if op in _COMPARE:
                    if v is None:
                        parts.append(f"{ref} IS {'NOT ' if op == 'ne' else ''}NULL")
                    else:
                        parts.append(f"{ref} {_COMPARE[op]} {_literal(col, v, spec)}")
                elif op in ("in", "not_in"):
                    items = ", ".join(_literal(col, x, spec) for x in v)
                    if not items:
                        parts.append("false" if op == "in" else "true")
                    else:
                        parts.append(f"{ref} {'IN' if op == 'in' else 'NOT IN'} ({items})")
                elif op == "like":
                    parts.append(f"{ref} LIKE {_literal(col, str(v), spec)}")
                elif op == "is_null":
                    parts.append(f"{ref} IS {'' if v else 'NOT '}NULL")
                else:
                    raise FilterError(f"{spec.name}.{col.name}: unknown operator {op!r} (one of {', '.join(OPS)})")
    return "(" + " AND ".join(parts) + ")" if parts else "true"
