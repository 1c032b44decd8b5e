"""A where clause compiled once into its two forms: :func:`compile_where` runs the pipeline.

parse and whitelist (:mod:`electricctl._expr.parse`) -> type-check into the typed IR
(:mod:`.check`) -> SQL (:mod:`.to_sql`) and a Python row predicate (:mod:`.to_python`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from electricctl._expr.parse import ExprError, parse
from electricctl._model.rows import RelationDef, Row
from electricctl._shapes.where.check import Checker, equality
from electricctl._shapes.where.errors import EvalError, ShapeError
from electricctl._shapes.where.to_python import getter
from electricctl._shapes.where.to_sql import to_sql


@dataclass(frozen=True, slots=True)
class CompiledWhere:
    text: str
    sql: sql.Composable
    matches: Callable[[Row], bool]
    columns: frozenset[str]
    equality: tuple[str, str] | None
    """``(column, value as text)`` when the clause is (or is an AND with) ``column = constant``:
    the server indexes such shapes so that matching a change does not cost O(shapes)."""


def compile_where(
    text: str,
    rel: RelationDef,
    claims: Mapping[str, Any] | None = None,
    *,
    readable: frozenset[str] | None = None,
) -> CompiledWhere:
    """Parse, bind and type-check ``text`` against ``rel``; raise ShapeError with a position.

    ``readable``: the only columns the clause may use (those the user may read in every row it
    can see). Filtering on any other column would tell its values by which rows come back.
    """
    try:
        parsed = parse(text)
    except ExprError as exc:
        raise ShapeError(exc.message, exc.offset) from exc
    checker = Checker(rel, claims or {}, readable)
    node = checker.condition(parsed.expr)
    get = getter(node)

    def matches(row: Row) -> bool:
        try:
            return get(row) is True
        except EvalError:
            return False

    return CompiledWhere(text, to_sql(node), matches, frozenset(checker.used), equality(parsed.expr, checker))
