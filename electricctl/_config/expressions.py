"""Checking a where/if expression of electric.yaml without a database.

The expression must parse, be a boolean condition, and name only columns of the table it is
about (bare, or qualified by one of ``qualifiers``) and, where allowed, ``auth.<claim>``.
Whether those columns exist is checked later, against the live schema, by the planner.
"""

from __future__ import annotations

from collections.abc import Collection

from electricctl._config.diagnostics import DiagnosticSink
from electricctl._config.model import Expression
from electricctl._expr import ast
from electricctl._expr.parse import ExprError, is_boolean_shaped, parse
from electricctl._model.table import TableRef


def qualifiers_for(table: TableRef, *extra: str) -> set[str]:
    """The qualifiers that refer to ``table`` in its own expressions: ``this``, its name, its full name."""
    return {"this", *extra, table.name, str(table)}


def check_expression(
    sink: DiagnosticSink,
    path: str,
    *,
    table: TableRef,
    qualifiers: Collection[str],
    allow_auth: bool,
) -> Expression | None:
    """Parse the expression at ``path``; report what is wrong with it, or return it."""
    node = sink.value(path)
    if node is None:
        return None
    text = str(node)
    # column of the expression's first character inside the YAML line, for quoted scalars
    lead = 1 if sink.quoted(path) else 0
    try:
        parsed = parse(text)
    except ExprError as exc:
        sink.error(path, f"invalid expression: {exc.message}", "expr.invalid", shift=lead + (exc.offset or 0))
        return None
    ok = True
    for col in ast.columns(parsed.expr):
        q = col.qualifier
        if q == "auth":
            if not allow_auth:
                sink.error(path, "auth.<claim> cannot be used here", "expr.auth", shift=lead + col.offset)
                ok = False
            continue
        if q is not None and q not in qualifiers:
            allowed = ", ".join(sorted(f"{x}.<column>" for x in qualifiers))
            hint = f"; use {allowed}" + (" or auth.<claim>" if allow_auth else "")
            sink.error(
                path,
                f"{q}.{col.name} does not refer to table {table}{hint}",
                "expr.qualifier",
                shift=lead + col.offset,
            )
            ok = False
    if is_boolean_shaped(parsed.expr) is False:
        sink.error(path, "the expression must be a boolean condition", "expr.not_boolean", shift=lead)
        ok = False
    if not ok:
        return None
    return Expression(text, parsed.canonical, parsed.expr, sink.at(path).shifted(lead))
