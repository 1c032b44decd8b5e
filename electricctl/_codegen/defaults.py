"""Column defaults Postgres would fill in, as the Python defaults of a generated create type (pure).

A local write carries the whole row, so a NOT NULL column whose default only Postgres knows would
reach the server as NULL and be refused. The defaults a client can compute itself become the
create type's defaults: constants (``false``, ``0``, ``'open'``, ``'{}'`` for an array or JSON),
the current time (``now()``, ``CURRENT_TIMESTAMP``, ``CURRENT_DATE``, ``LOCALTIMESTAMP``) and a
random uuid (``gen_random_uuid()``). Any other default (a sequence, a function of your own) is
not guessed: the column stays required (or None, where it is nullable).
"""

from __future__ import annotations

import pglast
from pglast import ast, enums

from electricctl._codegen.fmt import literal

_NOW = {"now", "transaction_timestamp", "statement_timestamp", "clock_timestamp"}
_UUID = {"gen_random_uuid", "uuid_generate_v4"}
_TEXT_TYPES = {"text", "varchar", "bpchar"}


def python_default(expression: str, pg_type: str, enum: bool) -> str | None:
    """The Python source of the default for a column of ``pg_type`` whose Postgres default is
    ``expression`` (``pg_get_expr`` of it); None when the client cannot compute it."""
    try:
        node = pglast.parse_sql(f"SELECT {expression}")[0].stmt.targetList[0].val  # type: ignore[union-attr]
    except (pglast.parser.ParseError, AttributeError, IndexError, TypeError):
        return None
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.FuncCall):
        name = node.funcname[-1].sval if node.funcname else ""
        if name in _NOW and not node.args:
            return _now(pg_type)
        if name in _UUID and pg_type == "uuid":
            return "field(default_factory=uuid.uuid4)"
        return None
    if isinstance(node, ast.SQLValueFunction):
        op = enums.SQLValueFunctionOp
        if node.op in (
            op.SVFOP_CURRENT_TIMESTAMP,
            op.SVFOP_CURRENT_TIMESTAMP_N,
            op.SVFOP_LOCALTIMESTAMP,
            op.SVFOP_LOCALTIMESTAMP_N,
        ):
            return _now(pg_type)
        if node.op == op.SVFOP_CURRENT_DATE and pg_type == "date":
            return "field(default_factory=now_date)"
        return None
    if isinstance(node, ast.A_Const):
        if node.isnull:
            return None
        value = node.val
        if isinstance(value, ast.Boolean) and pg_type == "bool":
            return "True" if value.boolval else "False"
        if isinstance(value, ast.Integer) and pg_type in ("int2", "int4", "int8"):
            return str(value.ival)
        if isinstance(value, ast.Integer | ast.Float) and pg_type in ("float4", "float8"):
            return repr(float(str(value.ival if isinstance(value, ast.Integer) else value.fval)))
        if isinstance(value, ast.Integer | ast.Float) and pg_type == "numeric":
            text = str(value.ival) if isinstance(value, ast.Integer) else str(value.fval)
            return f'decimal.Decimal("{text}")'
        if isinstance(value, ast.String):
            return _string(str(value.sval), pg_type, enum)
    return None


def _now(pg_type: str) -> str | None:
    if pg_type == "timestamptz":
        return "field(default_factory=now_utc)"
    if pg_type == "timestamp":
        return "field(default_factory=now_naive)"
    if pg_type == "date":
        return "field(default_factory=now_date)"
    return None


def _string(text: str, pg_type: str, enum: bool) -> str | None:
    if pg_type in _TEXT_TYPES or enum:
        return literal(text)
    if pg_type.startswith("_") and text == "{}":
        return "field(default_factory=list)"
    if pg_type in ("json", "jsonb") and text in ("{}", "[]"):
        return f"field(default_factory={'dict' if text == '{}' else 'list'})"
    if pg_type == "bool" and text.lower() in ("t", "true", "f", "false"):
        return "True" if text.lower() in ("t", "true") else "False"
    return None
