"""The type checker: a parsed clause (:mod:`electricctl._expr.ast`) to the typed IR (:mod:`.ir`).

Columns are bound to the table (their types come from the relation), ``auth.<claim>`` to the
token's claims (as unknown-typed literals), and operators are resolved the way Postgres resolves
them: an unknown literal takes the type of the other operand, numbers widen, anything else must
match. Every error is a :class:`ShapeError` at the offset of the node at fault: the column
reference, the literal that is not a valid value, the operator without a matching type, the call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from electricctl._expr import ast
from electricctl._model.rows import RelationDef
from electricctl._shapes.where import ir
from electricctl._shapes.where.errors import ShapeError
from electricctl._shapes.where.functions import FUNCTIONS, SAME
from electricctl._shapes.where.kinds import (
    BOOL,
    DATE,
    ENUM,
    FLOAT,
    INT,
    NUMBERS,
    NUMERIC,
    ORDERED,
    PG_TYPES,
    TEXT,
    TIMESTAMP,
    TIMESTAMPTZ,
    UNKNOWN,
)
from electricctl._shapes.where.values import parse_text, to_text

COMPARISONS = frozenset({"=", "<>", "<", "<=", ">", ">="})


def castable(source: str, kind: str) -> bool:
    """Whether a value of kind ``source`` may be cast to ``kind`` (literals aside)."""
    return (
        source == kind
        or TEXT in (source, kind)
        or (source in NUMBERS and kind in NUMBERS)
        or {source, kind} == {INT, BOOL}
    )


class Checker:
    """Checks the nodes of one clause against ``rel`` and ``claims``; collects the columns used."""

    def __init__(self, rel: RelationDef, claims: Mapping[str, Any], readable: frozenset[str] | None = None) -> None:
        self.rel = rel
        self.claims = claims
        self.readable = readable
        self.index = {c.name: i for i, c in enumerate(rel.columns)}
        self.used: set[str] = set()

    def check(self, e: ast.Expr) -> ir.Node:
        handler = _HANDLERS.get(type(e))
        if handler is None:
            raise ShapeError(f"{type(e).__name__} is not supported in shape clauses", getattr(e, "offset", 0))
        return handler(self, e)

    def condition(self, e: ast.Expr) -> ir.Node:
        """``e`` checked as a whole clause: it must be a boolean."""
        node = self.check(e)
        if node.kind not in (BOOL, UNKNOWN):
            raise ShapeError(f"the clause must be a boolean condition, not {node.kind}", node.offset)
        return self.coerce(node, BOOL, "bool")

    # -- leaves ------------------------------------------------------------------------------
    def column(self, col: ast.Column) -> ir.Node:
        if col.qualifier == "auth":
            return self.claim(col)
        if col.qualifier not in (None, "this", self.rel.name, self.rel.qualified):
            raise ShapeError(f"{col.qualifier}.{col.name} does not refer to table {self.rel.qualified}", col.offset)
        i = self.index.get(col.name)
        if i is None:
            known = ", ".join(self.index)
            raise ShapeError(
                f"column {col.name!r} does not exist in {self.rel.qualified} (columns: {known})", col.offset
            )
        if self.readable is not None and col.name not in self.readable:
            raise ShapeError(
                f"column {col.name!r} is not readable with your grants: a where clause may use only the columns"
                " you may read",
                col.offset,
            )
        pg_type = self.rel.columns[i].type_name
        if pg_type == "numeric" or pg_type.startswith("_"):
            # Postgres compares these by value (1.5 = 1.50; '{a}' = '{"a"}'), where the stream
            # carries their text: the live filter would disagree with the snapshot's
            raise ShapeError(
                f"column {col.name!r} is {'numeric' if pg_type == 'numeric' else 'an array'}: where clauses"
                " cannot use numeric or array columns yet",
                col.offset,
            )
        self.used.add(col.name)
        return ir.ColumnRef(col.offset, col.name, i, PG_TYPES.get(pg_type, ENUM), pg_type)

    def claim(self, col: ast.Column) -> ir.Const:
        if col.name not in self.claims:
            raise ShapeError(f"the token has no {col.name!r} claim for auth.{col.name}", col.offset)
        value = self.claims[col.name]
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str | int | float):
            raise ShapeError(f"claim {col.name!r} is not a scalar", col.offset)
        return self.const(ast.Const(str(value), col.offset))

    def const(self, c: ast.Const) -> ir.Const:
        v, at = c.value, c.offset
        if v is None or isinstance(v, str):
            return ir.Const(at, UNKNOWN, None, v, v)
        if isinstance(v, bool):
            return ir.Const(at, BOOL, "bool", v, v)
        if isinstance(v, int):
            if -(1 << 31) <= v < (1 << 31):
                return ir.Const(at, INT, "int4", v, v)
            if -(1 << 63) <= v < (1 << 63):
                return ir.Const(at, INT, "int8", v, v)
            return ir.Const(at, NUMERIC, "numeric", Decimal(v), v)
        # pglast gives float literals as float; Postgres reads them as exact numerics
        return ir.Const(at, NUMERIC, "numeric", Decimal(repr(v)), v)

    # -- implicit conversions ----------------------------------------------------------------
    def coerce(self, t: ir.Node, kind: str, pg_type: str | None) -> ir.Node:
        """An unknown literal (or NULL) takes the type of the other operand."""
        if t.kind == kind or kind == UNKNOWN:
            return t
        if t.kind != UNKNOWN or not isinstance(t, ir.Const):
            raise ShapeError(f"cannot use {t.kind} where {kind} is expected", t.offset)
        try:
            converted = None if t.value is None else parse_text(kind, t.value)
        except (ValueError, InvalidOperation) as exc:
            raise ShapeError(f"invalid input for type {pg_type or kind}: {exc}", t.offset) from exc
        return ir.Const(t.offset, kind, pg_type, converted, t.literal, pg_type)

    def known(self, t: ir.Node, kind: str, pg_type: str) -> ir.Node:
        """``t``, or ``t`` typed as ``kind`` if it is an unknown literal."""
        return self.coerce(t, kind, pg_type) if t.kind == UNKNOWN else t

    def unify(self, a: ir.Node, b: ir.Node, offset: int, op: str) -> tuple[ir.Node, ir.Node, str]:
        """Both operands of a binary operator at ``offset`` brought to one kind."""
        if a.kind == UNKNOWN and b.kind == UNKNOWN:
            return self.coerce(a, TEXT, "text"), self.coerce(b, TEXT, "text"), TEXT
        if a.kind == UNKNOWN:
            return self.coerce(a, b.kind, b.pg_type), b, b.kind
        if b.kind == UNKNOWN:
            return a, self.coerce(b, a.kind, a.pg_type), a.kind
        if a.kind in NUMBERS and b.kind in NUMBERS:
            kind = max(a.kind, b.kind, key=NUMBERS.__getitem__)
            return widen(a, kind), widen(b, kind), kind
        if a.kind == b.kind:
            return a, b, a.kind
        if {a.kind, b.kind} <= {TIMESTAMP, TIMESTAMPTZ, DATE}:
            raise ShapeError(f"comparing {a.kind} with {b.kind} depends on the time zone: cast one side", offset)
        raise ShapeError(f"operator does not exist: {a.kind} {op} {b.kind}", offset)

    def as_bool(self, t: ir.Node) -> ir.Node:
        if t.kind == UNKNOWN:
            return self.coerce(t, BOOL, "bool")
        if t.kind != BOOL:
            raise ShapeError(f"argument must be boolean, not {t.kind}", t.offset)
        return t

    # -- nodes -------------------------------------------------------------------------------
    def bool_op(self, e: ast.BoolOp) -> ir.Node:
        parts = tuple(self.as_bool(self.check(a)) for a in e.args)
        if e.op == "not":
            (arg,) = parts
            return ir.Not(e.offset, arg)
        return ir.Logic(e.offset, e.op, parts)

    def op(self, e: ast.Op) -> ir.Node:
        if e.left is None:
            return self.prefix(e.op, self.check(e.right), e.offset)
        left, right = self.check(e.left), self.check(e.right)
        if e.op in COMPARISONS:
            return self.compare(e.op, left, right, e.offset)
        if e.op == "||":
            return self.concat(left, right, e.offset)
        return self.arith(e.op, left, right, e.offset)

    def prefix(self, op: str, t: ir.Node, offset: int) -> ir.Node:
        t = self.known(t, NUMERIC, "numeric")
        if t.kind not in NUMBERS:
            raise ShapeError(f"prefix {op} needs a number, not {t.kind}", offset)
        return ir.Negate(offset, t.kind, t.pg_type, t) if op == "-" else t

    def compare(self, op: str, left: ir.Node, right: ir.Node, offset: int) -> ir.Node:
        a, b, kind = self.unify(left, right, offset, op)
        if op not in ("=", "<>") and kind not in ORDERED:
            raise ShapeError(f"{kind} values can only be compared with = and <>", offset)
        return ir.Compare(offset, op, a, b)

    def concat(self, left: ir.Node, right: ir.Node, offset: int) -> ir.Node:
        a, b = self.known(left, TEXT, "text"), self.known(right, TEXT, "text")
        if TEXT not in (a.kind, b.kind):
            raise ShapeError(f"operator does not exist: {a.kind} || {b.kind}", offset)
        return ir.Concat(offset, a, b)

    def arith(self, op: str, left: ir.Node, right: ir.Node, offset: int) -> ir.Node:
        a, b, kind = self.unify(left, right, offset, op)
        if kind not in NUMBERS:
            raise ShapeError(f"operator does not exist: {kind} {op} {kind}", offset)
        pg: str | None = a.pg_type
        if kind == INT:  # the result of two integers is int4 unless one is int8
            pg = "int8" if "int8" in (a.pg_type, b.pg_type) else "int4"
        return ir.Arith(offset, op, kind, pg, a, b)

    def in_list(self, e: ast.In) -> ir.Node:
        base = self.check(e.arg)
        items = []
        for item in e.items:
            typed = self.check(item)
            base, typed, _ = self.unify(base, typed, typed.offset, "=")
            items.append(typed)
        return ir.InList(e.offset, base, tuple(items), e.negated)

    def like(self, e: ast.Like) -> ir.Node:
        a = self.known(self.check(e.arg), TEXT, "text")
        p = self.known(self.check(e.pattern), TEXT, "text")
        wrong = next((t for t in (a, p) if t.kind != TEXT), None)
        if wrong is not None:
            raise ShapeError(f"LIKE needs text, not {a.kind} and {p.kind}", wrong.offset)
        return ir.Like(e.offset, a, p, e.negated, e.case_insensitive)

    def between(self, e: ast.Between) -> ir.Node:
        lo = ast.Op(">=", e.arg, e.low, e.offset)
        hi = ast.Op("<=", e.arg, e.high, e.offset)
        inner: ast.Expr = ast.BoolOp("and", (lo, hi), e.offset)
        return self.check(ast.BoolOp("not", (inner,), e.offset) if e.negated else inner)

    def is_null(self, e: ast.IsNull) -> ir.Node:
        return ir.IsNull(e.offset, self.check(e.arg), e.negated)

    def is_bool(self, e: ast.IsBool) -> ir.Node:
        return ir.IsBool(e.offset, self.as_bool(self.check(e.arg)), e.value, e.negated)

    def distinct(self, e: ast.Distinct) -> ir.Node:
        a, b, _ = self.unify(self.check(e.left), self.check(e.right), e.offset, "IS DISTINCT FROM")
        return ir.Distinct(e.offset, a, b, e.negated)

    def cast(self, e: ast.Cast) -> ir.Node:
        t = self.check(e.arg)
        target = e.type_name
        kind = PG_TYPES.get(target)
        if kind is None:
            raise ShapeError(f"casts to {target} are not supported in shape clauses", e.offset)
        if t.kind == UNKNOWN:
            return self.coerce(t, kind, target)
        if not castable(t.kind, kind):
            raise ShapeError(f"cannot cast {t.kind} to {target}", e.offset)
        return ir.Cast(e.offset, kind, target, t)

    def coalesce(self, e: ast.Coalesce) -> ir.Node:
        parts = [self.check(a) for a in e.args]
        typed = next((p for p in parts if p.kind != UNKNOWN), None)
        kind, pg_type = (TEXT, "text") if typed is None else (typed.kind, typed.pg_type)
        parts = [self.coerce(p, kind, pg_type) if p.kind == UNKNOWN else p for p in parts]
        wrong = next((p for p in parts if p.kind != kind), None)
        if wrong is not None:
            kinds = sorted({p.kind for p in parts})
            raise ShapeError(f"COALESCE types {' and '.join(kinds)} cannot be matched", wrong.offset)
        return ir.Coalesce(e.offset, kind, pg_type, tuple(parts))

    def func(self, e: ast.Func) -> ir.Node:
        args = tuple(self.known(self.check(a), TEXT, "text") for a in e.args)
        spec = FUNCTIONS.get(e.name)
        if spec is None:
            raise ShapeError(f"function {e.name}() is not supported in shape clauses", e.offset)
        if e.name == "concat":
            return ir.Call(e.offset, e.name, TEXT, "text", args)
        if len(args) != len(spec.params) or any(
            a.kind not in allowed for a, allowed in zip(args, spec.params, strict=False)
        ):
            got = ", ".join(a.kind for a in args)
            raise ShapeError(f"function {e.name}({got}) does not exist", e.offset)
        if spec.result == SAME:
            return ir.Call(e.offset, e.name, args[0].kind, args[0].pg_type, args)
        return ir.Call(e.offset, e.name, spec.result, None, args)

    # -- the equality index ------------------------------------------------------------------
    def constant_text(self, const: ast.Column | ast.Const, col: ast.Column) -> str | None:
        """The text form a constant takes when compared with ``col`` (for the equality index);
        None when it is not a constant (another column: only ``auth.`` names a claim)."""
        if isinstance(const, ast.Column) and const.qualifier != "auth":
            return None
        try:
            typed_col = self.column(col)
            value = self.claim(const) if isinstance(const, ast.Column) else self.const(const)
            coerced = self.coerce(value, typed_col.kind, typed_col.pg_type)
        except ShapeError:
            return None
        if not isinstance(coerced, ir.Const) or coerced.value is None:
            return None
        return to_text(typed_col.kind, coerced.value)


def widen(t: ir.Node, kind: str) -> ir.Node:
    """``t`` as a number of the wider ``kind``."""
    if t.kind == kind:
        return t
    return ir.Widen(t.offset, kind, "float8" if kind == FLOAT else "numeric", t)


def equality(expr: ast.Expr, checker: Checker) -> tuple[str, str] | None:
    """A conjunct ``col = 'const'`` usable as an index key (value in the column's text form)."""
    conjuncts = expr.args if isinstance(expr, ast.BoolOp) and expr.op == "and" else (expr,)
    for c in conjuncts:
        if isinstance(c, ast.Op) and c.op == "=" and c.left is not None:
            for col, const in ((c.left, c.right), (c.right, c.left)):
                if (
                    isinstance(col, ast.Column)
                    and col.qualifier != "auth"
                    and isinstance(const, ast.Column | ast.Const)
                ):
                    value = checker.constant_text(const, col)
                    if value is not None:
                        return col.name, value
    return None


_HANDLERS: dict[type[Any], Callable[[Checker, Any], ir.Node]] = {
    ast.Column: Checker.column,
    ast.Const: Checker.const,
    ast.BoolOp: Checker.bool_op,
    ast.Op: Checker.op,
    ast.In: Checker.in_list,
    ast.Like: Checker.like,
    ast.Between: Checker.between,
    ast.IsNull: Checker.is_null,
    ast.IsBool: Checker.is_bool,
    ast.Distinct: Checker.distinct,
    ast.Cast: Checker.cast,
    ast.Coalesce: Checker.coalesce,
    ast.Func: Checker.func,
}
"""The checker's method for each node kind of the parsed clause."""
