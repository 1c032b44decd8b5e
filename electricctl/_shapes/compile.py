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
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from psycopg import sql

from electricctl._expr import ast
from electricctl._expr.parse import ExprError, parse
from electricctl._model.rows import RelationDef, Row

Value = Any
"""A Python value of one of the SQL types below, or None for NULL."""
Getter = Callable[[Row], Value]


class ShapeError(ValueError):
    """A clause that cannot be compiled against its table; ``offset`` is a position in the clause."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


class EvalError(ValueError):
    """Evaluation failed for a row (division by zero, out of range): Postgres would raise too."""


# -- types ----------------------------------------------------------------------------------------

INT = "int"
FLOAT = "float"
NUMERIC = "numeric"
TEXT = "text"
BOOL = "bool"
DATE = "date"
TIME = "time"
TIMESTAMP = "timestamp"
TIMESTAMPTZ = "timestamptz"
UUID = "uuid"
JSONB = "jsonb"
BYTEA = "bytea"
ENUM = "enum"
UNKNOWN = "unknown"
"""A quoted literal whose type comes from the other operand, as in Postgres."""

_PG_TYPES = {
    "int2": INT,
    "int4": INT,
    "int8": INT,
    "float4": FLOAT,
    "float8": FLOAT,
    "text": TEXT,
    "varchar": TEXT,
    "bool": BOOL,
    "date": DATE,
    "time": TIME,
    "timestamp": TIMESTAMP,
    "timestamptz": TIMESTAMPTZ,
    "uuid": UUID,
    "jsonb": JSONB,
    "bytea": BYTEA,
}
_INT_RANGES = {"int2": 1 << 15, "int4": 1 << 31, "int8": 1 << 63}
_ORDERED = {INT, FLOAT, NUMERIC, TEXT, BOOL, DATE, TIME, TIMESTAMP, TIMESTAMPTZ, UUID, BYTEA}
_NUMBERS = {INT: 0, NUMERIC: 1, FLOAT: 2}


def _parse_ts(text: str, tz: bool) -> dt.datetime:
    t = text.strip()
    if t in ("infinity", "-infinity"):
        raise ShapeError(f"{t} timestamps are not supported in shape clauses")
    t = t.replace("T", " ")
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    m = re.match(r"^(.*?)([+-]\d{2})(?::?(\d{2}))?$", t) if tz else None
    if m and ":" in m.group(1):
        t = f"{m.group(1)}{m.group(2)}:{m.group(3) or '00'}"
    value = dt.datetime.fromisoformat(t)
    if tz:
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)  # the server's sessions run in UTC
        return value.astimezone(dt.UTC)
    if value.tzinfo is not None:
        raise ValueError("timestamp without time zone has an offset")
    return value


def parse_text(kind: str, text: str) -> Value:
    """Convert Postgres text output (or a literal) to the Python value of ``kind``."""
    match kind:
        case "int":
            return int(text.strip())
        case "float":
            low = text.strip().lower()
            if low in ("nan", "infinity", "-infinity", "inf", "-inf"):
                return float(low.replace("infinity", "inf"))
            return float(text)
        case "numeric":
            return Decimal(text.strip())
        case "text" | "enum" | "unknown":
            return text
        case "bool":
            low = text.strip().lower()
            if low in ("t", "true", "y", "yes", "on", "1"):
                return True
            if low in ("f", "false", "n", "no", "off", "0"):
                return False
            raise ValueError(f"invalid boolean {text!r}")
        case "date":
            return dt.date.fromisoformat(text.strip())
        case "time":
            return dt.time.fromisoformat(text.strip())
        case "timestamp":
            return _parse_ts(text, tz=False)
        case "timestamptz":
            return _parse_ts(text, tz=True)
        case "uuid":
            return str(uuid.UUID(text.strip()))
        case "jsonb":
            return json.loads(text)
        case "bytea":
            return bytes.fromhex(text[2:]) if text.startswith("\\x") else text.encode()
    raise ShapeError(f"unsupported type {kind}")


def to_text(kind: str, value: Value) -> str:
    """Postgres' text output for a value (used by casts to text and by ``||``)."""
    if kind == BOOL:
        return "true" if value else "false"
    if kind == FLOAT:
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if math.isnan(value):
            return "NaN"
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if kind == TIMESTAMPTZ:
        return str(value.strftime("%Y-%m-%d %H:%M:%S")) + _fraction(value) + "+00"
    if kind == TIMESTAMP:
        return str(value.strftime("%Y-%m-%d %H:%M:%S")) + _fraction(value)
    if kind == JSONB:
        return json.dumps(value, separators=(", ", ": "))
    if kind == BYTEA:
        return "\\x" + str(value.hex())
    return str(value)


def _fraction(value: dt.datetime) -> str:
    return f".{value.microsecond:06d}".rstrip("0") if value.microsecond else ""


def _constant(value: Value) -> Getter:
    def get(row: Row) -> Value:
        return value

    return get


# -- the compiled form ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Typed:
    kind: str
    get: Getter
    sql: sql.Composable
    pg_type: str | None = None
    """The Postgres type name for casts of unknown literals (``int4``, ``timestamptz``...)."""


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
    binder = _Binder(rel, claims or {}, readable)
    typed = binder.expr(parsed.expr)
    if typed.kind not in (BOOL, UNKNOWN):
        raise ShapeError(f"the clause must be a boolean condition, not {typed.kind}", 0)
    if typed.kind == UNKNOWN:
        typed = binder.coerce(typed, BOOL, "bool", 0)
    get = typed.get

    def matches(row: Row) -> bool:
        try:
            return get(row) is True
        except EvalError:
            return False

    return CompiledWhere(text, typed.sql, matches, frozenset(binder.used), _equality(parsed.expr, binder))


def _equality(expr: ast.Expr, binder: _Binder) -> tuple[str, str] | None:
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
                    value = binder.constant_text(const, col)
                    if value is not None:
                        return col.name, value
    return None


class _Binder:
    def __init__(self, rel: RelationDef, claims: Mapping[str, Any], readable: frozenset[str] | None = None) -> None:
        self.rel = rel
        self.claims = claims
        self.readable = readable
        self.index = {c.name: i for i, c in enumerate(rel.columns)}
        self.used: set[str] = set()

    # -- leaves ------------------------------------------------------------------------------
    def column(self, col: ast.Column) -> Typed:
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
        kind = _PG_TYPES.get(pg_type, ENUM)
        self.used.add(col.name)

        def get(row: Row, i: int = i, kind: str = kind) -> Value:
            raw = row[i]
            if raw is None:
                return None
            return parse_text(kind, raw.decode())

        return Typed(kind, get, sql.Identifier(col.name), pg_type)

    def claim(self, col: ast.Column) -> Typed:
        if col.name not in self.claims:
            raise ShapeError(f"the token has no {col.name!r} claim for auth.{col.name}", col.offset)
        value = self.claims[col.name]
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str | int | float):
            raise ShapeError(f"claim {col.name!r} is not a scalar", col.offset)
        return self.const(ast.Const(str(value)))

    def const(self, c: ast.Const) -> Typed:
        v = c.value
        if v is None:
            return Typed(UNKNOWN, _constant(None), sql.SQL("NULL"))
        if isinstance(v, bool):
            return Typed(BOOL, _constant(v), sql.SQL("true" if v else "false"), "bool")
        if isinstance(v, int):
            kind_pg = "int4" if -(1 << 31) <= v < (1 << 31) else "int8" if -(1 << 63) <= v < (1 << 63) else None
            if kind_pg is None:
                return Typed(NUMERIC, _constant(Decimal(v)), sql.SQL(str(v)), "numeric")
            return Typed(INT, _constant(v), sql.SQL(str(v)), kind_pg)
        if isinstance(v, float):
            # pglast gives float literals as float; Postgres reads them as exact numerics
            d = Decimal(repr(v))
            return Typed(NUMERIC, _constant(d), sql.SQL(repr(v)), "numeric")
        return Typed(UNKNOWN, _constant(v), sql.Literal(v))

    def constant_text(self, const: ast.Column | ast.Const, col: ast.Column) -> str | None:
        """The text form a constant takes when compared with ``col`` (for the equality index)."""
        try:
            typed_col = self.column(col)
            value = (
                self.claim(const)
                if isinstance(const, ast.Column)
                else self.const(const)
                if isinstance(const, ast.Const)
                else None
            )
            if value is None or const is None:
                return None
            coerced = self.coerce(value, typed_col.kind, typed_col.pg_type, 0)
            v = coerced.get(())
        except (ShapeError, EvalError, IndexError):
            return None
        if v is None:
            return None
        return to_text(typed_col.kind, v)

    # -- coercion ----------------------------------------------------------------------------
    def coerce(self, t: Typed, kind: str, pg_type: str | None, offset: int) -> Typed:
        """An unknown literal (or NULL) takes the type of the other operand."""
        if t.kind == kind or kind == UNKNOWN:
            return t
        if t.kind != UNKNOWN:
            raise ShapeError(f"cannot use {t.kind} where {kind} is expected", offset)
        try:
            value = t.get(())
            converted = None if value is None else parse_text(kind, value)
        except (ValueError, InvalidOperation, IndexError) as exc:
            raise ShapeError(f"invalid input for type {pg_type or kind}: {exc}", offset) from exc
        cast = sql.SQL("CAST({} AS {})").format(t.sql, sql.SQL(pg_type)) if pg_type else t.sql
        return Typed(kind, _constant(converted), cast, pg_type)

    def unify(self, a: Typed, b: Typed, offset: int, op: str) -> tuple[Typed, Typed, str]:
        if a.kind == UNKNOWN and b.kind == UNKNOWN:
            return self.coerce(a, TEXT, "text", offset), self.coerce(b, TEXT, "text", offset), TEXT
        if a.kind == UNKNOWN:
            return self.coerce(a, b.kind, b.pg_type, offset), b, b.kind
        if b.kind == UNKNOWN:
            return a, self.coerce(b, a.kind, a.pg_type, offset), a.kind
        if a.kind in _NUMBERS and b.kind in _NUMBERS:
            kind = max(a.kind, b.kind, key=_NUMBERS.__getitem__)
            return self.widen(a, kind), self.widen(b, kind), kind
        if a.kind == b.kind:
            return a, b, a.kind
        if {a.kind, b.kind} <= {TIMESTAMP, TIMESTAMPTZ, DATE}:
            raise ShapeError(f"comparing {a.kind} with {b.kind} depends on the time zone: cast one side", offset)
        raise ShapeError(f"operator does not exist: {a.kind} {op} {b.kind}", offset)

    @staticmethod
    def widen(t: Typed, kind: str) -> Typed:
        if t.kind == kind:
            return t
        get = t.get
        if kind == FLOAT:
            return Typed(FLOAT, lambda row: None if (v := get(row)) is None else float(v), t.sql, "float8")
        return Typed(NUMERIC, lambda row: None if (v := get(row)) is None else Decimal(v), t.sql, "numeric")

    # -- nodes -------------------------------------------------------------------------------
    def expr(self, e: ast.Expr) -> Typed:
        match e:
            case ast.Column():
                return self.column(e)
            case ast.Const():
                return self.const(e)
            case ast.BoolOp(op="not", args=(arg,)):
                t = self.as_bool(self.expr(arg))
                g = t.get
                return Typed(
                    BOOL,
                    lambda row: None if (v := g(row)) is None else not v,
                    sql.SQL("(NOT {})").format(t.sql),
                    "bool",
                )
            case ast.BoolOp(op=op, args=args):
                parts = [self.as_bool(self.expr(a)) for a in args]
                getters = [p.get for p in parts]
                joined = sql.SQL(f" {op.upper()} ").join(p.sql for p in parts)
                if op == "and":
                    return Typed(BOOL, lambda row: _and(getters, row), sql.SQL("({})").format(joined), "bool")
                return Typed(BOOL, lambda row: _or(getters, row), sql.SQL("({})").format(joined), "bool")
            case ast.Op(op=op, left=None, right=right):
                t = self.expr(right)
                if t.kind == UNKNOWN:
                    t = self.coerce(t, NUMERIC, "numeric", 0)
                if t.kind not in _NUMBERS:
                    raise ShapeError(f"prefix {op} needs a number, not {t.kind}", 0)
                g = t.get
                if op == "-":
                    return Typed(
                        t.kind,
                        lambda row: None if (v := g(row)) is None else -v,
                        sql.SQL("(- {})").format(t.sql),
                        t.pg_type,
                    )
                return t
            case ast.Op(op=op, left=left, right=right) if op in ("=", "<>", "<", "<=", ">", ">="):
                assert left is not None
                a, b, kind = self.unify(self.expr(left), self.expr(right), 0, op)
                if op not in ("=", "<>") and kind not in _ORDERED:
                    raise ShapeError(f"{kind} values can only be compared with = and <>", 0)
                cmp = _COMPARE[op]
                ga, gb = a.get, b.get
                return Typed(
                    BOOL,
                    lambda row: None if (x := ga(row)) is None or (y := gb(row)) is None else cmp(x, y),
                    sql.SQL("({} {} {})").format(a.sql, sql.SQL(op), b.sql),
                    "bool",
                )
            case ast.Op(op="||", left=left, right=right):
                assert left is not None
                a, b = self.expr(left), self.expr(right)
                if a.kind == UNKNOWN:
                    a = self.coerce(a, TEXT, "text", 0)
                if b.kind == UNKNOWN:
                    b = self.coerce(b, TEXT, "text", 0)
                if TEXT not in (a.kind, b.kind):
                    raise ShapeError(f"operator does not exist: {a.kind} || {b.kind}", 0)
                ga, gb, ka, kb = a.get, b.get, a.kind, b.kind
                return Typed(
                    TEXT,
                    lambda row: (
                        None if (x := ga(row)) is None or (y := gb(row)) is None else to_text(ka, x) + to_text(kb, y)
                    ),
                    sql.SQL("({} || {})").format(a.sql, b.sql),
                    "text",
                )
            case ast.Op(op=op, left=left, right=right):
                assert left is not None
                a, b, kind = self.unify(self.expr(left), self.expr(right), 0, op)
                if kind not in _NUMBERS:
                    raise ShapeError(f"operator does not exist: {kind} {op} {kind}", 0)
                fn = _ARITH[op]
                ga, gb = a.get, b.get
                pg = (
                    "int8" if kind == INT and "int8" in (a.pg_type, b.pg_type) else a.pg_type if kind != INT else "int4"
                )
                limit = _INT_RANGES.get(pg or "", 0)

                def arith(row: Row) -> Value:
                    x, y = ga(row), gb(row)
                    if x is None or y is None:
                        return None
                    result = fn(x, y, kind)
                    if limit and not -limit <= result < limit:
                        raise EvalError(f"{pg} out of range")
                    return result

                return Typed(kind, arith, sql.SQL("({} {} {})").format(a.sql, sql.SQL(op), b.sql), pg)
            case ast.In(arg=arg, items=items, negated=negated):
                base = self.expr(arg)
                typed_items = []
                kind = base.kind
                for item in items:
                    x, y, kind = self.unify(base, self.expr(item), 0, "=")
                    base = x
                    typed_items.append(y)
                getters = [t.get for t in typed_items]
                gb = base.get
                return Typed(
                    BOOL,
                    lambda row: _in(gb(row), [g(row) for g in getters], negated),
                    sql.SQL("({} {}IN ({}))").format(
                        base.sql, sql.SQL("NOT " if negated else ""), sql.SQL(", ").join(t.sql for t in typed_items)
                    ),
                    "bool",
                )
            case ast.Like(arg=arg, pattern=pattern, negated=negated, case_insensitive=ci):
                a = self.expr(arg)
                p = self.expr(pattern)
                a = self.coerce(a, TEXT, "text", 0) if a.kind == UNKNOWN else a
                p = self.coerce(p, TEXT, "text", 0) if p.kind == UNKNOWN else p
                if a.kind != TEXT or p.kind != TEXT:
                    raise ShapeError(f"LIKE needs text, not {a.kind} and {p.kind}", 0)
                ga, gp = a.get, p.get
                op = ("NOT " if negated else "") + ("ILIKE" if ci else "LIKE")
                return Typed(
                    BOOL,
                    lambda row: _like(ga(row), gp(row), ci, negated),
                    sql.SQL("({} {} {})").format(a.sql, sql.SQL(op), p.sql),
                    "bool",
                )
            case ast.Between(arg=arg, low=low, high=high, negated=negated):
                lo = ast.Op(">=", arg, low)
                hi = ast.Op("<=", arg, high)
                inner: ast.Expr = ast.BoolOp("and", (lo, hi))
                t = self.expr(ast.BoolOp("not", (inner,)) if negated else inner)
                return t
            case ast.IsNull(arg=arg, negated=negated):
                t = self.expr(arg)
                g = t.get
                return Typed(
                    BOOL,
                    lambda row: (g(row) is not None) if negated else (g(row) is None),
                    sql.SQL("({} IS {}NULL)").format(t.sql, sql.SQL("NOT " if negated else "")),
                    "bool",
                )
            case ast.IsBool(arg=arg, value=value, negated=negated):
                t = self.as_bool(self.expr(arg))
                g = t.get
                word = {True: "TRUE", False: "FALSE", None: "UNKNOWN"}[value]
                return Typed(
                    BOOL,
                    lambda row: (g(row) is value) != negated,
                    sql.SQL("({} IS {}{})").format(t.sql, sql.SQL("NOT " if negated else ""), sql.SQL(word)),
                    "bool",
                )
            case ast.Distinct(left=left, right=right, negated=negated):
                a, b, _ = self.unify(self.expr(left), self.expr(right), 0, "IS DISTINCT FROM")
                ga, gb = a.get, b.get

                def distinct(row: Row) -> bool:
                    x, y = ga(row), gb(row)
                    different = (x is None) != (y is None) or (x is not None and x != y)
                    return different != negated

                word = "IS NOT DISTINCT FROM" if negated else "IS DISTINCT FROM"
                return Typed(BOOL, distinct, sql.SQL("({} {} {})").format(a.sql, sql.SQL(word), b.sql), "bool")
            case ast.Cast(arg=arg, type_name=type_name):
                return self.cast(self.expr(arg), type_name)
            case ast.Coalesce(args=args):
                parts = [self.expr(a) for a in args]
                kind = next((p.kind for p in parts if p.kind != UNKNOWN), UNKNOWN)
                pg_type = next((p.pg_type for p in parts if p.kind != UNKNOWN), None)
                if kind == UNKNOWN:
                    kind, pg_type = TEXT, "text"
                parts = [self.coerce(p, kind, pg_type, 0) if p.kind == UNKNOWN else p for p in parts]
                if any(p.kind != kind for p in parts):
                    kinds = sorted({p.kind for p in parts})
                    raise ShapeError(f"COALESCE types {' and '.join(kinds)} cannot be matched", 0)
                getters = [p.get for p in parts]
                return Typed(
                    kind,
                    lambda row: next((v for g in getters if (v := g(row)) is not None), None),
                    sql.SQL("COALESCE({})").format(sql.SQL(", ").join(p.sql for p in parts)),
                    pg_type,
                )
            case ast.Func(name=name, args=args):
                return self.func(name, [self.expr(a) for a in args])
        raise ShapeError(f"{type(e).__name__} is not supported in shape clauses", 0)

    def as_bool(self, t: Typed) -> Typed:
        if t.kind == UNKNOWN:
            return self.coerce(t, BOOL, "bool", 0)
        if t.kind != BOOL:
            raise ShapeError(f"argument must be boolean, not {t.kind}", 0)
        return t

    def cast(self, t: Typed, target: str) -> Typed:
        kind = _PG_TYPES.get(target)
        if kind is None:
            raise ShapeError(f"casts to {target} are not supported in shape clauses", 0)
        if t.kind == UNKNOWN:
            return self.coerce(t, kind, target, 0)
        source, g = t.kind, t.get
        out_sql = sql.SQL("CAST({} AS {})").format(t.sql, sql.SQL(target))
        if source == kind:
            limit = _INT_RANGES.get(target, 0)
            if kind == INT and limit:
                return Typed(kind, lambda row: _check_range(g(row), limit, target), out_sql, target)
            return Typed(kind, g, out_sql, target)
        if kind == TEXT:
            return Typed(TEXT, lambda row: None if (v := g(row)) is None else to_text(source, v), out_sql, target)
        if source == TEXT:

            def from_text(row: Row) -> Value:
                v = g(row)
                if v is None:
                    return None
                try:
                    return parse_text(kind, v)
                except (ValueError, InvalidOperation) as exc:
                    raise EvalError(str(exc)) from exc

            return Typed(kind, from_text, out_sql, target)
        if source in _NUMBERS and kind in _NUMBERS:
            if kind == INT:
                limit = _INT_RANGES[target]
                return Typed(INT, lambda row: _check_range(_round_half(g(row), source), limit, target), out_sql, target)
            return Typed(kind, self.widen(t, kind).get, out_sql, target)
        if source == INT and kind == BOOL:
            return Typed(BOOL, lambda row: None if (v := g(row)) is None else v != 0, out_sql, target)
        if source == BOOL and kind == INT:
            return Typed(INT, lambda row: None if (v := g(row)) is None else int(v), out_sql, target)
        raise ShapeError(f"cannot cast {source} to {target}", 0)

    def func(self, name: str, args: Sequence[Typed]) -> Typed:
        args = [self.coerce(a, TEXT, "text", 0) if a.kind == UNKNOWN else a for a in args]
        getters = [a.get for a in args]
        call = sql.SQL("{}({})").format(sql.SQL(name), sql.SQL(", ").join(a.sql for a in args))
        spec = _FUNCTIONS.get(name)
        if spec is None:
            raise ShapeError(f"function {name}() is not supported in shape clauses", 0)
        arg_kinds, result_kind, impl = spec
        if name == "concat":
            kinds = [a.kind for a in args]
            return Typed(
                TEXT,
                lambda row: "".join(
                    to_text(k, v) for k, g in zip(kinds, getters, strict=True) if (v := g(row)) is not None
                ),
                call,
                "text",
            )
        if len(args) != len(arg_kinds) or any(
            a.kind not in allowed for a, allowed in zip(args, arg_kinds, strict=False)
        ):
            got = ", ".join(a.kind for a in args)
            raise ShapeError(f"function {name}({got}) does not exist", 0)
        kind = args[0].kind if result_kind == "same" else result_kind

        def apply(row: Row) -> Value:
            values = [g(row) for g in getters]
            if any(v is None for v in values):
                return None
            return impl(*values)

        return Typed(kind, apply, call, args[0].pg_type if result_kind == "same" else None)


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


def _and(getters: Sequence[Getter], row: Row) -> bool | None:
    return _combine(getters, row, False)


def _or(getters: Sequence[Getter], row: Row) -> bool | None:
    return _combine(getters, row, True)


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


def _compare_eq(x: Value, y: Value) -> bool:
    return bool(x == y)


_COMPARE: dict[str, Callable[[Value, Value], bool]] = {
    "=": _compare_eq,
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
    if kind == NUMERIC:
        return x / y
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

_TEXTS = {TEXT}
_FUNCTIONS: dict[str, tuple[Sequence[set[str]], str, Callable[..., Value]]] = {
    "lower": ([_TEXTS], TEXT, lambda s: s.lower()),
    "upper": ([_TEXTS], TEXT, lambda s: s.upper()),
    "length": ([_TEXTS], INT, len),
    "char_length": ([_TEXTS], INT, len),
    "octet_length": ([_TEXTS], INT, lambda s: len(s.encode())),
    "abs": ([{INT, FLOAT, NUMERIC}], "same", abs),
    "trim": ([_TEXTS], TEXT, lambda s: s.strip(" ")),
    "btrim": ([_TEXTS], TEXT, lambda s: s.strip(" ")),
    "ltrim": ([_TEXTS], TEXT, lambda s: s.lstrip(" ")),
    "rtrim": ([_TEXTS], TEXT, lambda s: s.rstrip(" ")),
    "starts_with": ([_TEXTS, _TEXTS], BOOL, lambda s, p: s.startswith(p)),
    "concat": ([], TEXT, lambda *a: ""),
}


# -- combinators (the permission filters are built from these) ------------------------------------


def constant(value: bool) -> CompiledWhere:
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
