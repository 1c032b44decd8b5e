"""Shape where clauses: one compiled form, evaluated as SQL for snapshots and in Python for the stream.

A clause is parsed and whitelisted by :mod:`electricctl._expr.parse`, bound to a table (column types
from the relation) and to the client's token claims (``auth.<claim>``), then type-checked the way
Postgres resolves operators. :func:`compile_where` returns both forms:

- ``sql``: a :mod:`psycopg.sql` composition for ``COPY (SELECT ... WHERE <sql>)``; every constant is a
  :class:`~psycopg.sql.Literal`, every column an :class:`~psycopg.sql.Identifier`;
- ``matches(row)``: a Python predicate over a row of Postgres text values (bytes), with SQL's
  three-valued logic (a NULL result means "not in the shape").

tests/shapes/test_oracle.py checks with hypothesis that both agree, using Postgres as the oracle.
Text ordering follows code points, as Postgres does under the C collation that ``serve`` runs with.

This module only gathers the public names; the work is done in :mod:`electricctl._shapes.where`.
"""

from __future__ import annotations

from electricctl._shapes.where.combine import all_true, any_true, constant, in_set
from electricctl._shapes.where.compiled import CompiledWhere, compile_where
from electricctl._shapes.where.errors import EvalError, ShapeError
from electricctl._shapes.where.to_python import Getter, _combine
from electricctl._shapes.where.values import Value, parse_text, to_text

__all__ = [
    "CompiledWhere",
    "EvalError",
    "Getter",
    "ShapeError",
    "Value",
    "_combine",
    "all_true",
    "any_true",
    "compile_where",
    "constant",
    "in_set",
    "parse_text",
    "to_text",
]
