"""The validated config model: frozen dataclasses built from electric.yaml.

Layer L1: pure, no I/O. Every declaration keeps the :class:`~electricctl.errors.Location` it came
from, so that later checks against the live database can still point at the YAML line.
"""

from __future__ import annotations

from dataclasses import dataclass

from electricctl._expr.ast import Expr
from electricctl._model.table import TableRef
from electricctl.errors import Diagnostic, Location

BUILTIN_ROLES = frozenset({"anyone", "authenticated"})
PRIVILEGES = ("select", "insert", "update", "delete")
PRIVILEGE_ALIASES: dict[str, tuple[str, ...]] = {
    "all": PRIVILEGES,
    "read": ("select",),
    "write": ("insert", "update", "delete"),
}


@dataclass(frozen=True, slots=True)
class Role:
    """A role: built-in (``anyone``/``authenticated``), global (``admin``) or scoped (``projects:member``)."""

    name: str
    scope: TableRef | None = None

    def __str__(self) -> str:
        return f"{self.scope.name}:{self.name}" if self.scope else self.name

    @property
    def key(self) -> str:
        """Identity of the role with a fully-qualified scope table."""
        return f"{self.scope}:{self.name}" if self.scope else self.name

    @property
    def builtin(self) -> bool:
        return self.scope is None and self.name in BUILTIN_ROLES


@dataclass(frozen=True, slots=True)
class Expression:
    text: str
    canonical: str
    expr: Expr
    location: Location


@dataclass(frozen=True, slots=True)
class TableSpec:
    ref: TableRef
    location: Location


@dataclass(frozen=True, slots=True)
class Assignment:
    role: Role
    table: TableRef
    user_column: str
    scope_column: str | None
    condition: Expression | None
    location: Location

    @property
    def address(self) -> str:
        return f"{self.role.key}@{self.table}.{self.user_column}"


@dataclass(frozen=True, slots=True)
class Grant:
    privileges: tuple[str, ...]
    table: TableRef
    role: Role
    columns: tuple[str, ...] | None
    where: Expression | None
    location: Location

    @property
    def address(self) -> str:
        return f"{self.table}/{self.role.key}/{'+'.join(self.privileges)}"


@dataclass(frozen=True, slots=True)
class Include:
    table: TableRef
    foreign_key: tuple[str, ...] | None
    where: Expression | None
    include: tuple[Include, ...]
    location: Location


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    table: TableRef
    where: Expression | None
    include: tuple[Include, ...]
    location: Location


@dataclass(frozen=True, slots=True)
class SqliteStatement:
    sql: str
    location: Location


@dataclass(frozen=True, slots=True)
class JwtConfig:
    alg: str = "HS256"
    key: str | None = None
    key_is_base64: bool = False
    issuer: str | None = None
    audience: str | None = None
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class AuthConfig:
    mode: str = "secure"
    jwt: JwtConfig = JwtConfig()


@dataclass(frozen=True, slots=True)
class ElectricConfig:
    file: str
    version: int
    database_url: str | None
    auth: AuthConfig
    tables: tuple[TableSpec, ...]
    assignments: tuple[Assignment, ...]
    grants: tuple[Grant, ...]
    shapes: tuple[Shape, ...]
    adhoc_shapes: str
    sqlite: tuple[SqliteStatement, ...]
    env_refs: tuple[str, ...] = ()
    """Environment variables the file referenced (for reporting, never their values)."""
    env_unset: tuple[str, ...] = ()
    """Those of them that were not set (only a lenient load, ``validate``, lets that pass)."""
    warnings: tuple[Diagnostic, ...] = ()
    """What is valid but not (yet) enforced, and other things worth knowing; never fatal."""

    @property
    def table_refs(self) -> tuple[TableRef, ...]:
        return tuple(t.ref for t in self.tables)
