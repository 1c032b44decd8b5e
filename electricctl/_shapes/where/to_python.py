"""The Python back end: the typed IR to a predicate over a streamed row, with SQL's semantics.

A row is a tuple of Postgres text values (bytes, or None for NULL). Each node becomes a getter
``row -> value``; NULL propagates as in SQL, AND/OR/NOT use three-valued logic, and whatever
Postgres would refuse for a row (division by zero, an integer out of range, a bad cast) raises
:class:`EvalError`. tests/shapes/test_oracle.py checks the result against Postgres itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from functools import singledispatch

from electricctl._model.rows import Row
from electricctl._shapes.where import ir
from electricctl._shapes.where.errors import EvalError, ShapeError
from electricctl._shapes.where.functions import FUNCTIONS
from electricctl._shapes.where.kinds import BOOL, FLOAT, INT, INT_RANGES, NUMBERS, NUMERIC, TEXT
from electricctl._shapes.where.values import Value, parse_text, to_text

Getter = Callable[[Row], Value]


def constant(value: Value) -> Getter:
    def get(row: Row) -> Value:
        return value

    return get


@singledispatch
def getter(node: ir.Node) -> Getter:
    """The function computing ``node``'s value for a row."""
    raise TypeError(f"no Python form for {type(node).__name__}")  # pragma: no cover


@getter.register
def _column(node: ir.ColumnRef) -> Getter:
    i, kind = node.index, node.kind

    def get(row: Row) -> Value:
        raw = row[i]
        if raw is None:
            return None
        try:
            return parse_text(kind, raw.decode())
        except (ShapeError, ValueError, InvalidOperation) as exc:
            # a stored value Python cannot hold (a timestamp of +-infinity, BC, or past 9999): the
            # clause cannot be decided for this row, which then does not match; it must never
            # stop the stream (every client with a clause on this column would be cut off)
            raise EvalError(f"column {node.name}: {exc}") from None

    return get


@getter.register
def _const(node: ir.Const) -> Getter:
    return constant(node.value)


@getter.register
def _widen(node: ir.Widen) -> Getter:
    g = getter(node.arg)
    if node.kind == FLOAT:
        return lambda row: None if (v := g(row)) is None else float(v)
    return lambda row: None if (v := g(row)) is None else Decimal(v)


@getter.register
def _not(node: ir.Not) -> Getter:
    g = getter(node.arg)
    return lambda row: None if (v := g(row)) is None else not v


@getter.register
def _logic(node: ir.Logic) -> Getter:
    getters = [getter(a) for a in node.args]
    decisive = node.op == "or"
    return lambda row: _combine(getters, row, decisive)


@getter.register
def _negate(node: ir.Negate) -> Getter:
    g = getter(node.arg)
    return lambda row: None if (v := g(row)) is None else -v


@getter.register
def _compare(node: ir.Compare) -> Getter:
    cmp = _COMPARE[node.op]
    ga, gb = getter(node.left), getter(node.right)
    return lambda row: None if (x := ga(row)) is None or (y := gb(row)) is None else cmp(x, y)


@getter.register
def _concat(node: ir.Concat) -> Getter:
    ga, gb, ka, kb = getter(node.left), getter(node.right), node.left.kind, node.right.kind
    return lambda row: None if (x := ga(row)) is None or (y := gb(row)) is None else to_text(ka, x) + to_text(kb, y)


@getter.register
def _arith(node: ir.Arith) -> Getter:
    fn, kind, pg = _ARITH[node.op], node.kind, node.pg_type
    ga, gb = getter(node.left), getter(node.right)
    limit = INT_RANGES.get(pg or "", 0)

    def arith(row: Row) -> Value:
        x, y = ga(row), gb(row)
        if x is None or y is None:
            return None
        result = fn(x, y, kind)
        if limit and not -limit <= result < limit:
            raise EvalError(f"{pg} out of range")
        return result

    return arith


@getter.register
def _in_list(node: ir.InList) -> Getter:
    gb, negated = getter(node.arg), node.negated
    getters = [getter(i) for i in node.items]
    return lambda row: _in(gb(row), [g(row) for g in getters], negated)


@getter.register
def _like_node(node: ir.Like) -> Getter:
    ga, gp, ci, negated = getter(node.arg), getter(node.pattern), node.case_insensitive, node.negated
    return lambda row: _like(ga(row), gp(row), ci, negated)


@getter.register
def _is_null(node: ir.IsNull) -> Getter:
    g, negated = getter(node.arg), node.negated
    return lambda row: (g(row) is not None) if negated else (g(row) is None)


@getter.register
def _is_bool(node: ir.IsBool) -> Getter:
    g, value, negated = getter(node.arg), node.value, node.negated
    return lambda row: (g(row) is value) != negated


@getter.register
def _distinct(node: ir.Distinct) -> Getter:
    ga, gb, negated = getter(node.left), getter(node.right), node.negated

    def distinct(row: Row) -> bool:
        x, y = ga(row), gb(row)
        different = (x is None) != (y is None) or (x is not None and x != y)
        return different != negated

    return distinct


@getter.register
def _cast(node: ir.Cast) -> Getter:
    return _cast_getter(getter(node.arg), node.arg.kind, node.kind, node.pg_type)


@getter.register
def _coalesce(node: ir.Coalesce) -> Getter:
    getters = [getter(a) for a in node.args]
    return lambda row: next((v for g in getters if (v := g(row)) is not None), None)


@getter.register
def _call(node: ir.Call) -> Getter:
    getters = [getter(a) for a in node.args]
    if node.name == "concat":
        kinds = [a.kind for a in node.args]
        return lambda row: "".join(
            to_text(k, v) for k, g in zip(kinds, getters, strict=True) if (v := g(row)) is not None
        )
    impl = FUNCTIONS[node.name].impl

    def apply(row: Row) -> Value:
        values = [g(row) for g in getters]
        if any(v is None for v in values):
            return None
        return impl(*values)

    return apply


# -- casts ----------------------------------------------------------------------------------------


def _cast_getter(g: Getter, source: str, kind: str, target: str) -> Getter:
    """A value of kind ``source`` cast to ``target`` (of kind ``kind``); see ``check.castable``."""
    if source == kind:
        limit = INT_RANGES.get(target, 0)
        if kind == INT and limit:
            return lambda row: _check_range(g(row), limit, target)
        return g
    if kind == TEXT:
        return lambda row: None if (v := g(row)) is None else to_text(source, v)
    if source == TEXT:
        return _from_text(g, kind)
    if source in NUMBERS and kind in NUMBERS:
        if kind == INT:
            limit = INT_RANGES[target]
            return lambda row: _check_range(_round_half(g(row), source), limit, target)
        if kind == FLOAT:
            return lambda row: None if (v := g(row)) is None else float(v)
        return lambda row: None if (v := g(row)) is None else Decimal(v)
    if source == INT and kind == BOOL:
        return lambda row: None if (v := g(row)) is None else v != 0
    return lambda row: None if (v := g(row)) is None else int(v)  # bool to int


def _from_text(g: Getter, kind: str) -> Getter:
    def from_text(row: Row) -> Value:
        v = g(row)
        if v is None:
            return None
        try:
            return parse_text(kind, v)
        except (ValueError, InvalidOperation) as exc:
            raise EvalError(str(exc)) from exc

    return from_text


def _check_range(v: Value, limit: int, name: str) -> Value:
    if v is not None and not -limit <= v < limit:
        raise EvalError(f"{name} out of range")
    return v


def _round_half(v: Value, source: str) -> Value:
    if v is None:
        return None
    if source == FLOAT:
        if math.isnan(v) or math.isinf(v):
            raise EvalError("cannot cast NaN or infinity to integer")
        return round(v)  # float8 -> int rounds half to even, like rint()
    if source == NUMERIC:
        return int(v.quantize(Decimal(1), rounding="ROUND_HALF_UP"))  # numeric rounds half away from zero
    return v


# -- SQL semantics --------------------------------------------------------------------------------


def _combine(getters: Sequence[Getter], row: Row, decisive: bool) -> bool | None:
    """AND (``decisive`` False) or OR (True) with SQL's three values. An operand that fails to
    evaluate (an overflowing cast, say) does not decide the result when another operand does:
    ``x::int4 = 3 OR '' = ''`` is true in Postgres, which folds the constant side first, and a
    row for which Postgres would raise instead never reaches a client (the snapshot fails)."""
    result: bool | None = not decisive
    failed: EvalError | None = None
    for g in getters:
        try:
            v: Value = g(row)
        except EvalError as exc:
            failed = exc
            continue
        if v is decisive:
            return bool(v)
        if v is None:
            result = None
    if failed is not None:
        raise failed
    return result


def _in(x: Value, items: Sequence[Value], negated: bool) -> bool | None:
    if x is None:
        return None
    if any(x == v for v in items if v is not None):
        return not negated
    if any(v is None for v in items):
        return None
    return negated


def _like_regex(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return "".join(out)


def _like(text: Value, pattern: Value, ci: bool, negated: bool) -> bool | None:
    if text is None or pattern is None:
        return None
    flags = re.DOTALL | (re.IGNORECASE if ci else 0)
    return bool(re.fullmatch(_like_regex(pattern), text, flags)) != negated


_COMPARE: dict[str, Callable[[Value, Value], bool]] = {
    "=": lambda x, y: bool(x == y),
    "<>": lambda x, y: bool(x != y),
    "<": lambda x, y: bool(x < y),
    "<=": lambda x, y: bool(x <= y),
    ">": lambda x, y: bool(x > y),
    ">=": lambda x, y: bool(x >= y),
}


def _div(x: Value, y: Value, kind: str) -> Value:
    if y == 0:
        if kind == FLOAT and (math.isnan(x) or math.isinf(x)):
            return math.nan
        raise EvalError("division by zero")
    if kind == INT:
        q = abs(x) // abs(y)
        return q if (x >= 0) == (y >= 0) else -q
    return x / y


def _mod(x: Value, y: Value, kind: str) -> Value:
    if kind == FLOAT:
        raise EvalError("operator does not exist: double precision % double precision")
    if y == 0:
        raise EvalError("division by zero")
    if kind == INT:
        r = abs(x) % abs(y)
        return r if x >= 0 else -r
    return x - y * int(x / y)


_ARITH: dict[str, Callable[[Value, Value, str], Value]] = {
    "+": lambda x, y, k: x + y,
    "-": lambda x, y, k: x - y,
    "*": lambda x, y, k: x * y,
    "/": _div,
    "%": _mod,
}
