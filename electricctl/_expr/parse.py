"""Parse a user expression with pglast and admit only a whitelisted, side-effect-free subset.

The text is wrapped as ``SELECT 1 WHERE <expr>`` and parsed by Postgres' own grammar
(libpg_query). Anything but exactly one plain SELECT whose only clause is that WHERE is
rejected, so ``1=1; DROP TABLE x`` or ``true UNION SELECT ...`` cannot be smuggled through. The
tree is then converted node by node into :mod:`electricctl._expr.ast`; a node type, operator,
function or type outside the whitelist is an error that names it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pglast import ast as pg
from pglast import enums, parse_sql
from pglast.parser import ParseError, parse_sql_json
from pglast.stream import RawStream

from electricctl._expr import ast

_PREFIX = "SELECT 1 WHERE "

COMPARISON_OPS = frozenset({"=", "<>", "!=", "<", "<=", ">", ">="})
ARITHMETIC_OPS = frozenset({"+", "-", "*", "/", "%"})
ALLOWED_OPS = COMPARISON_OPS | ARITHMETIC_OPS | {"||"}

# Deterministic, side-effect-free functions only: no now(), random(), nextval(), set-returning or
# catalog-reading functions. Each takes scalars and returns a scalar.
ALLOWED_FUNCTIONS = frozenset(
    {
        "lower",
        "upper",
        "length",
        "char_length",
        "octet_length",
        "abs",
        "trim",
        "btrim",
        "ltrim",
        "rtrim",
        "starts_with",
        "concat",
    }
)
"""Kept to functions whose Postgres semantics the shape engine reproduces exactly in Python."""

ALLOWED_CAST_TYPES = frozenset(
    {
        "text",
        "varchar",
        "bool",
        "int2",
        "int4",
        "int8",
        "float4",
        "float8",
        "date",
        "time",
        "timestamp",
        "timestamptz",
        "uuid",
        "jsonb",
        "interval",
    }
)
_TYPE_ALIASES = {
    "integer": "int4",
    "int": "int4",
    "smallint": "int2",
    "bigint": "int8",
    "boolean": "bool",
    "real": "float4",
    "double precision": "float8",
    "character varying": "varchar",
}

_LIKE_OPS = {"~~": (False, False), "!~~": (True, False), "~~*": (False, True), "!~~*": (True, True)}


class ExprError(ValueError):
    """The expression is invalid; ``offset`` is a 0-based position in the user's text, if known."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Parsed:
    expr: ast.Expr
    canonical: str
    """The expression printed back by pglast: stable under whitespace and case changes."""


def _offset(node: Any) -> int | None:
    loc = getattr(node, "location", None)
    if isinstance(loc, int) and loc >= len(_PREFIX):
        return loc - len(_PREFIX)
    return None


def parse(text: str, params: Mapping[int, str] | None = None) -> Parsed:
    """Parse and whitelist ``text``; raise :class:`ExprError` naming the first problem.

    ``params``: values for ``$1``, ``$2``... (the HTTP Shape API's ``params[n]``), each taken as an
    unknown-typed literal, as Postgres takes an untyped text parameter: it gets the type of the
    other operand. Without ``params`` a parameter is refused."""
    if not text.strip():
        raise ExprError("the expression is empty", 0)
    try:
        stmts = parse_sql(_PREFIX + text)
    except ParseError as exc:
        message, index = exc.args[0], exc.args[1] if len(exc.args) > 1 else None
        offset = index - len(_PREFIX) if isinstance(index, int) else len(text)
        raise ExprError(f"syntax error: {message}", max(offset, 0)) from exc
    if len(stmts) != 1:
        raise ExprError("must be a single expression, not several statements (found ';')", text.find(";"))
    stmt = stmts[0].stmt
    if (
        not isinstance(stmt, pg.SelectStmt)
        or stmt.op != enums.SetOperation.SETOP_NONE
        or stmt.fromClause
        or stmt.groupClause
        or stmt.havingClause
        or stmt.sortClause
        or stmt.limitCount
        or stmt.limitOffset
        or stmt.withClause
        or stmt.lockingClause
        or stmt.windowClause
        or stmt.distinctClause
        or stmt.whereClause is None
    ):
        raise ExprError("must be a single boolean expression, not a query fragment", 0)
    where = stmt.whereClause
    deep = _too_deep(where)
    if deep is not None:
        raise ExprError(f"the expression is nested more than {MAX_DEPTH} levels deep", deep)
    try:
        tree = json.loads(parse_sql_json(_PREFIX + text))["stmts"][0]["stmt"]["SelectStmt"]["whereClause"]
        consts = _const_offsets(where, tree)
        expr = _Converter(consts, params).convert(where)
        canonical = RawStream()(where)
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps well below Python's limit
        raise ExprError(f"the expression is nested more than {MAX_DEPTH} levels deep", 0) from None
    return Parsed(expr, canonical)


def bind_params(text: str, params: Mapping[int, str]) -> str:
    """``text`` with each ``$n`` replaced by ``params[n]`` as a quoted literal (pglast writes the
    quoting): one clause with its values in it, for everything downstream that takes a clause
    (compiling, routing, remembering a subscription). Raises :class:`ExprError` as :func:`parse`
    does, and for a ``$n`` without a value."""
    parse(text, params)
    stmt: Any = parse_sql(_PREFIX + text)[0].stmt
    where = stmt.whereClause

    def bound(node: Any) -> Any:
        if isinstance(node, pg.ParamRef):
            return pg.A_Const(isnull=False, val=pg.String(sval=params[int(node.number or 0)]))
        if isinstance(node, tuple):
            return tuple(bound(n) for n in node)
        if isinstance(node, pg.Node):
            for name in getattr(node, "__slots__", ()):
                child = getattr(node, name, None)
                if isinstance(child, pg.Node | tuple):
                    setattr(node, name, bound(child))
        return node

    return str(RawStream()(bound(where)))


MAX_DEPTH = 100
"""Deepest expression accepted (``NOT NOT ... x``, ``a + b + c ...``): the passes over it recurse."""


def _too_deep(root: Any) -> int | None:
    """The offset of a node nested deeper than MAX_DEPTH, measured without recursion; else None."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, tuple | list):
            stack.extend((child, depth) for child in node)
            continue
        if not isinstance(node, pg.Node):
            continue
        if depth > MAX_DEPTH:
            return _offset(node) or 0
        for name in getattr(node, "__slots__", ()):
            child = getattr(node, name, None)
            if isinstance(child, pg.Node | tuple | list):
                stack.append((child, depth + 1))
    return None


def _names(nodes: Any) -> list[str]:
    return [n.sval for n in nodes]


def _const_offsets(root: Any, tree: Any) -> dict[int, int]:
    """Offsets of the ``A_Const`` nodes under ``root``, keyed by ``id()``.

    pglast's Python nodes drop a constant's location; its JSON parse tree of the same text keeps it.
    Both trees have the same shape (slot names are the JSON keys), so they are walked side by side.
    """
    out: dict[int, int] = {}
    stack: list[tuple[Any, Any]] = [(root, tree)]
    while stack:
        node, js = stack.pop()
        if isinstance(node, tuple | list):
            items = js["List"].get("items", []) if isinstance(js, dict) and "List" in js else js
            if isinstance(items, list) and len(items) == len(node):
                stack.extend(zip(node, items, strict=True))
        elif isinstance(node, pg.A_Const):
            loc = _json_fields(node, js).get("location")
            if isinstance(loc, int) and loc >= len(_PREFIX):
                out[id(node)] = loc - len(_PREFIX)
        elif isinstance(node, pg.Node):
            fields = _json_fields(node, js)
            children = ((getattr(node, name, None), name) for name in getattr(node, "__slots__", ()) if name in fields)
            stack.extend((child, fields[name]) for child, name in children if isinstance(child, pg.Node | tuple | list))
    return out


def _json_fields(node: Any, js: Any) -> dict[str, Any]:
    """The fields of ``node``'s counterpart ``js`` in the JSON tree (``{"A_Const": {...}}``)."""
    fields = js.get(type(node).__name__) if isinstance(js, dict) else None
    return fields if isinstance(fields, dict) else {}


class _Converter:
    """pglast nodes to :mod:`electricctl._expr.ast`, with each node's offset in the user's text."""

    def __init__(self, consts: dict[int, int], params: Mapping[int, str] | None = None) -> None:
        self.consts = consts
        self.params = params

    def convert_list(self, nodes: Any) -> tuple[ast.Expr, ...]:
        return tuple(self.convert(n) for n in nodes)

    def convert(self, node: Any) -> ast.Expr:
        off = _offset(node) or 0
        match type(node):
            case pg.ColumnRef:
                return _column(node)
            case pg.A_Const:
                return self.const(node)
            case pg.BoolExpr:
                op = {
                    enums.BoolExprType.AND_EXPR: "and",
                    enums.BoolExprType.OR_EXPR: "or",
                    enums.BoolExprType.NOT_EXPR: "not",
                }[node.boolop]
                return ast.BoolOp(op, self.convert_list(node.args), off)
            case pg.A_Expr:
                return self.convert_a_expr(node)
            case pg.NullTest:
                return ast.IsNull(self.convert(node.arg), node.nulltesttype == enums.NullTestType.IS_NOT_NULL, off)
            case pg.BooleanTest:
                value, negated = _BOOL_TESTS[node.booltesttype]
                return ast.IsBool(self.convert(node.arg), value, negated, off)
            case pg.TypeCast:
                return self.cast(node)
            case pg.FuncCall:
                return self.func(node)
            case pg.CoalesceExpr:
                return ast.Coalesce(self.convert_list(node.args), off)
            case pg.SubLink:
                raise ExprError("subqueries are not allowed in expressions", _offset(node))
            case pg.ParamRef:
                if self.params is None:
                    raise ExprError("parameters ($1) are not allowed; use auth.<claim> or a literal", _offset(node))
                if node.number not in self.params:
                    raise ExprError(f"parameter ${node.number} has no value (params[{node.number}])", off)
                return ast.Const(self.params[node.number], off)
        name = type(node).__name__
        raise ExprError(f"{name} is not allowed in expressions", _offset(node))

    def const(self, node: Any) -> ast.Const:
        off = self.consts.get(id(node), 0)
        if node.isnull:
            return ast.Const(None, off)
        val = node.val
        match type(val):
            case pg.Integer:
                return ast.Const(int(val.ival), off)
            case pg.Float:
                return ast.Const(float(val.fval), off)
            case pg.String:
                return ast.Const(str(val.sval), off)
            case pg.Boolean:
                return ast.Const(bool(val.boolval), off)
        raise ExprError(f"unsupported constant {type(val).__name__}", off)

    def cast(self, node: Any) -> ast.Cast:
        names = _names(node.typeName.names)
        type_name = names[-1].lower()
        type_name = _TYPE_ALIASES.get(type_name, type_name)
        at = _offset(node.typeName) or _offset(node)
        if node.typeName.arrayBounds or type_name not in ALLOWED_CAST_TYPES:
            raise ExprError(
                f"cast to {'.'.join(names)} is not allowed; allowed types: {', '.join(sorted(ALLOWED_CAST_TYPES))}",
                at,
            )
        # ``x::t`` is at its ``::``, ``CAST(x AS t)`` at CAST; ``date '...'`` has only its type's position
        own = _offset(node)
        return ast.Cast(self.convert(node.arg), type_name, own if own is not None else at or 0)

    def func(self, node: Any) -> ast.Func:
        names = _names(node.funcname)
        name = names[-1].lower()
        if len(names) > 2 or (len(names) == 2 and names[0] != "pg_catalog") or name not in ALLOWED_FUNCTIONS:
            raise ExprError(
                f"function {'.'.join(names)}() is not allowed; allowed functions: {', '.join(sorted(ALLOWED_FUNCTIONS))}",
                _offset(node),
            )
        if node.agg_star or node.agg_distinct or node.over or node.agg_order or node.agg_filter:
            raise ExprError(f"aggregate or window use of {name}() is not allowed", _offset(node))
        if node.func_variadic:
            raise ExprError("VARIADIC calls are not allowed", _offset(node))
        args = node.args or ()
        if any(isinstance(a, pg.NamedArgExpr) for a in args):
            raise ExprError("named function arguments are not allowed", _offset(node))
        return ast.Func(name, self.convert_list(args), _offset(node) or 0)

    def convert_a_expr(self, node: Any) -> ast.Expr:
        kind = enums.A_Expr_Kind
        names = _names(node.name)
        opname = names[-1]
        off = _offset(node)
        at = off or 0
        match node.kind:
            case kind.AEXPR_OP:
                if opname not in ALLOWED_OPS:
                    raise ExprError(
                        f"operator {opname} is not allowed; allowed operators: {' '.join(sorted(ALLOWED_OPS))}", off
                    )
                op = "<>" if opname == "!=" else opname
                left = None if node.lexpr is None else self.convert(node.lexpr)
                if left is None and op not in ("-", "+"):
                    raise ExprError(f"prefix operator {op} is not allowed", off)
                return ast.Op(op, left, self.convert(node.rexpr), at)
            case kind.AEXPR_IN:
                if opname not in ("=", "<>"):
                    raise ExprError(f"{opname} IN is not allowed", off)
                return ast.In(self.convert(node.lexpr), self.convert_list(node.rexpr), opname == "<>", at)
            case kind.AEXPR_LIKE | kind.AEXPR_ILIKE:
                if opname not in _LIKE_OPS:
                    raise ExprError(f"operator {opname} is not allowed", off)
                negated, ci = _LIKE_OPS[opname]
                return ast.Like(self.convert(node.lexpr), self.convert(node.rexpr), negated, ci, at)
            case kind.AEXPR_BETWEEN | kind.AEXPR_NOT_BETWEEN:
                low, high = node.rexpr
                negated = node.kind == kind.AEXPR_NOT_BETWEEN
                return ast.Between(self.convert(node.lexpr), self.convert(low), self.convert(high), negated, at)
            case kind.AEXPR_DISTINCT | kind.AEXPR_NOT_DISTINCT:
                negated = node.kind == kind.AEXPR_NOT_DISTINCT
                return ast.Distinct(self.convert(node.lexpr), self.convert(node.rexpr), negated, at)
        raise ExprError(f"{names[-1]} ({node.kind.name}) is not allowed in expressions", off)


def _column(node: Any) -> ast.Column:
    fields = node.fields
    if not all(isinstance(f, pg.String) for f in fields):
        raise ExprError("`*` is not allowed in expressions", _offset(node))
    names = _names(fields)
    if len(names) == 1:
        return ast.Column(None, names[0], _offset(node) or 0)
    if len(names) == 2:
        return ast.Column(names[0], names[1], _offset(node) or 0)
    raise ExprError(f"column reference {'.'.join(names)} has too many parts", _offset(node))


_BOOL_TESTS = {
    enums.BoolTestType.IS_TRUE: (True, False),
    enums.BoolTestType.IS_NOT_TRUE: (True, True),
    enums.BoolTestType.IS_FALSE: (False, False),
    enums.BoolTestType.IS_NOT_FALSE: (False, True),
    enums.BoolTestType.IS_UNKNOWN: (None, False),
    enums.BoolTestType.IS_NOT_UNKNOWN: (None, True),
}
"""``x IS [NOT] TRUE|FALSE|UNKNOWN``: the tested value (None for UNKNOWN) and whether it is negated."""


_BOOLEAN_FUNCTIONS = frozenset({"starts_with"})


def is_boolean_shaped(expr: ast.Expr) -> bool | None:
    """True if ``expr`` is certainly boolean, False if certainly not, None if it depends on a column type."""
    match expr:
        case ast.BoolOp() | ast.In() | ast.Like() | ast.Between() | ast.IsNull() | ast.IsBool() | ast.Distinct():
            return True
        case ast.Op(op=op):
            return op in COMPARISON_OPS
        case ast.Const(value=value):
            return isinstance(value, bool)
        case ast.Cast(type_name=type_name):
            return type_name == "bool"
        case ast.Func(name=name):
            return name in _BOOLEAN_FUNCTIONS
        case ast.Column() | ast.Coalesce():
            return None
    return False  # pragma: no cover
