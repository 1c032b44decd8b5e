"""Our own small expression AST for where clauses, grant checks and assignment conditions.

It is produced from pglast's parse tree by :mod:`electricctl._expr.parse`, which admits only a
whitelisted subset of SQL. The shape engine evaluates this AST; nothing downstream ever sees
pglast nodes or the user's original text. Every node keeps its position in that text, so errors
found later (type checks in :mod:`electricctl._shapes.where`) can point at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Column:
    """A column reference: ``col``, ``table.col``, ``this.col`` or ``auth.claim``."""

    qualifier: str | None
    name: str
    offset: int
    """Character offset of the reference in the user's expression text."""


@dataclass(frozen=True, slots=True)
class Const:
    value: str | int | float | bool | None
    """``None`` is SQL NULL; strings are unknown-typed literals as in SQL."""
    offset: int = field(default=0, compare=False)
    """Where the node is in the user's text: a literal's start, an operator's or keyword's position, a
    function's name. Not part of equality, so clauses compare by meaning (as :func:`normalize` does)."""


@dataclass(frozen=True, slots=True)
class Op:
    """A binary or unary (``left is None``) operator: comparisons, arithmetic, ``||``."""

    op: str
    left: Expr | None
    right: Expr
    offset: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # "and" | "or" | "not"
    args: tuple[Expr, ...]
    offset: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class In:
    arg: Expr
    items: tuple[Expr, ...]
    negated: bool
    offset: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Like:
    arg: Expr
    pattern: Expr
    negated: bool
    case_insensitive: bool
    offset: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Between:
    arg: Expr
    low: Expr
    high: Expr
    negated: bool
    offset: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class IsNull:
    arg: Expr
    negated: bool
    offset: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class IsBool:
    """``x IS [NOT] TRUE|FALSE|UNKNOWN``; ``value is None`` means UNKNOWN."""

    arg: Expr
    value: bool | None
    negated: bool
    offset: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Distinct:
    """``a IS [NOT] DISTINCT FROM b``."""

    left: Expr
    right: Expr
    negated: bool
    offset: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Func:
    name: str
    args: tuple[Expr, ...]
    offset: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Cast:
    arg: Expr
    type_name: str
    offset: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Coalesce:
    args: tuple[Expr, ...]
    offset: int = field(default=0, compare=False)


Expr = Column | Const | Op | BoolOp | In | Like | Between | IsNull | IsBool | Distinct | Func | Cast | Coalesce


def children(expr: Expr) -> tuple[Expr, ...]:
    match expr:
        case Column() | Const():
            return ()
        case Op(left=left, right=right):
            return (right,) if left is None else (left, right)
        case BoolOp(args=args) | Func(args=args) | Coalesce(args=args):
            return args
        case In(arg=arg, items=items):
            return (arg, *items)
        case Like(arg=arg, pattern=pattern):
            return (arg, pattern)
        case Between(arg=arg, low=low, high=high):
            return (arg, low, high)
        case IsNull(arg=arg) | IsBool(arg=arg) | Cast(arg=arg):
            return (arg,)
        case Distinct(left=left, right=right):
            return (left, right)
    raise TypeError(f"not an expression node: {expr!r}")  # pragma: no cover


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node of ``expr``, depth first, parents before children."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(children(node)))


def columns(expr: Expr) -> Iterator[Column]:
    for node in walk(expr):
        if isinstance(node, Column):
            yield node


def normalize(expr: Expr, table_names: frozenset[str] = frozenset()) -> Expr:
    """``expr`` with positions dropped and ``this.``/table qualifiers removed, for comparing clauses."""
    match expr:
        case Column(qualifier=q, name=name):
            keep = q if q is not None and q != "this" and q not in table_names else None
            return Column(keep, name, 0)
        case Const():
            return expr
        case Op(op=op, left=left, right=right):
            return Op(op, None if left is None else normalize(left, table_names), normalize(right, table_names))
        case BoolOp(op=op, args=args):
            return BoolOp(op, tuple(normalize(a, table_names) for a in args))
        case In(arg=arg, items=items, negated=negated):
            return In(normalize(arg, table_names), tuple(normalize(i, table_names) for i in items), negated)
        case Like(arg=arg, pattern=pattern, negated=negated, case_insensitive=ci):
            return Like(normalize(arg, table_names), normalize(pattern, table_names), negated, ci)
        case Between(arg=arg, low=low, high=high, negated=negated):
            return Between(
                normalize(arg, table_names), normalize(low, table_names), normalize(high, table_names), negated
            )
        case IsNull(arg=arg, negated=negated):
            return IsNull(normalize(arg, table_names), negated)
        case IsBool(arg=arg, value=value, negated=negated):
            return IsBool(normalize(arg, table_names), value, negated)
        case Distinct(left=left, right=right, negated=negated):
            return Distinct(normalize(left, table_names), normalize(right, table_names), negated)
        case Func(name=name, args=args):
            return Func(name, tuple(normalize(a, table_names) for a in args))
        case Cast(arg=arg, type_name=type_name):
            return Cast(normalize(arg, table_names), type_name)
        case Coalesce(args=args):
            return Coalesce(tuple(normalize(a, table_names) for a in args))
    raise TypeError(f"not an expression node: {expr!r}")  # pragma: no cover
