"""The typed IR of a where clause: what the type checker produces and both back ends consume.

One small frozen dataclass per node kind. Every node has its ``kind`` (:mod:`.kinds`), the Postgres
type name it has when known (``pg_type``, used to cast literals to it) and its ``offset`` in the
clause's text, so that a problem found while checking or compiling it points at the right place.
Implicit conversions are explicit nodes here (:class:`Widen`, a :class:`Const` with ``cast``), so the
back ends need not repeat any type reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from electricctl._shapes.where.kinds import BOOL, TEXT
from electricctl._shapes.where.values import Value

Literal = str | int | float | bool | None
"""A constant as written in the clause (strings are unknown-typed until they take a type)."""


@dataclass(frozen=True, slots=True)
class ColumnRef:
    """The value of a column of the row (``index`` in the row), parsed from its text."""

    offset: int
    name: str
    index: int
    kind: str
    pg_type: str


@dataclass(frozen=True, slots=True)
class Const:
    """A constant: ``value`` is the Python value of ``kind``; SQL prints ``literal``, cast to ``cast``."""

    offset: int
    kind: str
    pg_type: str | None
    value: Value
    literal: Literal
    cast: str | None = None


@dataclass(frozen=True, slots=True)
class Widen:
    """An implicit conversion of a number to a wider numeric kind (int -> numeric -> float)."""

    offset: int
    kind: str
    pg_type: str
    arg: Node


@dataclass(frozen=True, slots=True)
class Not:
    kind: ClassVar[str] = BOOL
    pg_type: ClassVar[str | None] = "bool"
    offset: int
    arg: Node


@dataclass(frozen=True, slots=True)
class Logic:
    """``AND`` or ``OR`` (``op``) of two or more booleans, with SQL's three values."""

    kind: ClassVar[str] = BOOL
    pg_type: ClassVar[str | None] = "bool"
    offset: int
    op: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Negate:
    """Prefix ``-`` on a number."""

    offset: int
    kind: str
    pg_type: str | None
    arg: Node


@dataclass(frozen=True, slots=True)
class Compare:
    """``=``, ``<>``, ``<``, ``<=``, ``>``, ``>=`` between two operands of the same kind."""

    kind: ClassVar[str] = BOOL
    pg_type: ClassVar[str | None] = "bool"
    offset: int
    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Concat:
    """``||``: the text forms of both operands, joined."""

    kind: ClassVar[str] = TEXT
    pg_type: ClassVar[str | None] = "text"
    offset: int
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Arith:
    """``+ - * / %`` on numbers of ``kind``; an integer result must fit ``pg_type``."""

    offset: int
    op: str
    kind: str
    pg_type: str | None
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class InList:
    kind: ClassVar[str] = BOOL
    pg_type: ClassVar[str | None] = "bool"
    offset: int
    arg: Node
    items: tuple[Node, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class Like:
    kind: ClassVar[str] = BOOL
    pg_type: ClassVar[str | None] = "bool"
    offset: int
    arg: Node
    pattern: Node
    negated: bool
    case_insensitive: bool


@dataclass(frozen=True, slots=True)
class IsNull:
    kind: ClassVar[str] = BOOL
    pg_type: ClassVar[str | None] = "bool"
    offset: int
    arg: Node
    negated: bool


@dataclass(frozen=True, slots=True)
class IsBool:
    """``x IS [NOT] TRUE|FALSE|UNKNOWN``; ``value is None`` means UNKNOWN."""

    kind: ClassVar[str] = BOOL
    pg_type: ClassVar[str | None] = "bool"
    offset: int
    arg: Node
    value: bool | None
    negated: bool


@dataclass(frozen=True, slots=True)
class Distinct:
    """``a IS [NOT] DISTINCT FROM b``."""

    kind: ClassVar[str] = BOOL
    pg_type: ClassVar[str | None] = "bool"
    offset: int
    left: Node
    right: Node
    negated: bool


@dataclass(frozen=True, slots=True)
class Cast:
    """An explicit cast of a typed value to ``pg_type`` (casts of literals are :class:`Const`)."""

    offset: int
    kind: str
    pg_type: str
    arg: Node


@dataclass(frozen=True, slots=True)
class Coalesce:
    offset: int
    kind: str
    pg_type: str | None
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Call:
    """A call of one of the whitelisted functions (:mod:`.functions`)."""

    offset: int
    name: str
    kind: str
    pg_type: str | None
    args: tuple[Node, ...]


Node = (
    ColumnRef
    | Const
    | Widen
    | Not
    | Logic
    | Negate
    | Compare
    | Concat
    | Arith
    | InList
    | Like
    | IsNull
    | IsBool
    | Distinct
    | Cast
    | Coalesce
    | Call
)
