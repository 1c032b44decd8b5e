"""Combinators over compiled clauses: the permission filters (:mod:`electricctl._perms`) and the
engine build a client's row filter from a shape's clause and its grants with these."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from electricctl._model.rows import RelationDef
from electricctl._shapes.where.compiled import CompiledWhere


def constant(value: bool) -> CompiledWhere:
    """Every row (True) or none (False)."""
    return CompiledWhere(
        str(value).lower(), sql.SQL("true" if value else "false"), lambda row: value, frozenset(), None
    )


def all_true(parts: Sequence[CompiledWhere]) -> CompiledWhere:
    """Rows every part matches (SQL AND: a NULL part excludes the row, as it does here)."""
    if len(parts) == 1:
        return parts[0]
    fns = [p.matches for p in parts]
    equality = next((p.equality for p in parts if p.equality is not None), None)
    return CompiledWhere(
        " AND ".join(f"({p.text})" for p in parts),
        sql.SQL("({})").format(sql.SQL(" AND ").join(sql.SQL("({})").format(p.sql) for p in parts)),
        lambda row: all(f(row) for f in fns),
        frozenset().union(*(p.columns for p in parts)),
        equality,
    )


def any_true(parts: Sequence[CompiledWhere]) -> CompiledWhere:
    """Rows some part matches (SQL OR: true when any part is true)."""
    if len(parts) == 1:
        return parts[0]
    fns = [p.matches for p in parts]
    return CompiledWhere(
        " OR ".join(f"({p.text})" for p in parts),
        sql.SQL("({})").format(sql.SQL(" OR ").join(sql.SQL("({})").format(p.sql) for p in parts)),
        lambda row: any(f(row) for f in fns),
        frozenset().union(*(p.columns for p in parts)),
        None,
    )


def in_set(rel: RelationDef, column: str, values: frozenset[str]) -> CompiledWhere:
    """``column``'s text form is one of ``values`` (Postgres' text of the column, as the stream carries it)."""
    idx = next(i for i, c in enumerate(rel.columns) if c.name == column)
    raw = frozenset(v.encode() for v in values)
    ordered = sorted(values)
    return CompiledWhere(
        f"{column} IN ({', '.join(ordered)})",
        sql.SQL("({}::text = ANY({}))").format(sql.Identifier(column), sql.Literal(ordered)),
        lambda row: row[idx] in raw,
        frozenset({column}),
        None,
    )
