"""The SQL back end: the typed IR to a :mod:`psycopg.sql` composition for ``WHERE``.

Every constant is a :class:`~psycopg.sql.Literal` (or a number or keyword printed from its Python
value), every column an :class:`~psycopg.sql.Identifier`; operators, function and type names come
from the checker's whitelists, never from the clause's text. Each operation is parenthesised so the
printed form keeps the IR's structure whatever the precedence.
"""

from __future__ import annotations

from functools import singledispatch

from psycopg import sql

from electricctl._shapes.where import ir


@singledispatch
def to_sql(node: ir.Node) -> sql.Composable:
    """``node`` as SQL."""
    raise TypeError(f"no SQL form for {type(node).__name__}")  # pragma: no cover


def _not(negated: bool) -> sql.SQL:
    return sql.SQL("NOT " if negated else "")


@to_sql.register
def _column(node: ir.ColumnRef) -> sql.Composable:
    return sql.Identifier(node.name)


@to_sql.register
def _const(node: ir.Const) -> sql.Composable:
    v = node.literal
    base: sql.Composable
    if v is None:
        base = sql.SQL("NULL")
    elif isinstance(v, bool):
        base = sql.SQL("true" if v else "false")
    elif isinstance(v, int):
        base = sql.SQL(str(v))
    elif isinstance(v, float):
        base = sql.SQL(repr(v))
    else:
        base = sql.Literal(v)
    return base if node.cast is None else sql.SQL("CAST({} AS {})").format(base, sql.SQL(node.cast))


@to_sql.register
def _widen(node: ir.Widen) -> sql.Composable:
    return to_sql(node.arg)  # Postgres widens numbers by itself


@to_sql.register
def _not_node(node: ir.Not) -> sql.Composable:
    return sql.SQL("(NOT {})").format(to_sql(node.arg))


@to_sql.register
def _logic(node: ir.Logic) -> sql.Composable:
    word = sql.SQL(" AND " if node.op == "and" else " OR ")
    return sql.SQL("({})").format(word.join(to_sql(a) for a in node.args))


@to_sql.register
def _negate(node: ir.Negate) -> sql.Composable:
    return sql.SQL("(- {})").format(to_sql(node.arg))


def _binary(left: ir.Node, op: str, right: ir.Node) -> sql.Composable:
    return sql.SQL("({} {} {})").format(to_sql(left), sql.SQL(op), to_sql(right))


@to_sql.register
def _compare(node: ir.Compare) -> sql.Composable:
    return _binary(node.left, node.op, node.right)


@to_sql.register
def _concat(node: ir.Concat) -> sql.Composable:
    return _binary(node.left, "||", node.right)


@to_sql.register
def _arith(node: ir.Arith) -> sql.Composable:
    return _binary(node.left, node.op, node.right)


@to_sql.register
def _in_list(node: ir.InList) -> sql.Composable:
    items = sql.SQL(", ").join(to_sql(i) for i in node.items)
    return sql.SQL("({} {}IN ({}))").format(to_sql(node.arg), _not(node.negated), items)


@to_sql.register
def _like(node: ir.Like) -> sql.Composable:
    word = ("NOT " if node.negated else "") + ("ILIKE" if node.case_insensitive else "LIKE")
    return _binary(node.arg, word, node.pattern)


@to_sql.register
def _is_null(node: ir.IsNull) -> sql.Composable:
    return sql.SQL("({} IS {}NULL)").format(to_sql(node.arg), _not(node.negated))


@to_sql.register
def _is_bool(node: ir.IsBool) -> sql.Composable:
    word = {True: "TRUE", False: "FALSE", None: "UNKNOWN"}[node.value]
    return sql.SQL("({} IS {}{})").format(to_sql(node.arg), _not(node.negated), sql.SQL(word))


@to_sql.register
def _distinct(node: ir.Distinct) -> sql.Composable:
    return _binary(node.left, "IS NOT DISTINCT FROM" if node.negated else "IS DISTINCT FROM", node.right)


@to_sql.register
def _cast(node: ir.Cast) -> sql.Composable:
    return sql.SQL("CAST({} AS {})").format(to_sql(node.arg), sql.SQL(node.pg_type))


@to_sql.register
def _coalesce(node: ir.Coalesce) -> sql.Composable:
    return sql.SQL("COALESCE({})").format(sql.SQL(", ").join(to_sql(a) for a in node.args))


@to_sql.register
def _call(node: ir.Call) -> sql.Composable:
    return sql.SQL("{}({})").format(sql.SQL(node.name), sql.SQL(", ").join(to_sql(a) for a in node.args))
