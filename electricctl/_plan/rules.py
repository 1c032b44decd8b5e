"""Resolved rules: what the config asks the catalog to hold, once checked against the live schema.

Validation (:mod:`electricctl._plan.validate`) turns each assignment, grant, shape, SQLite
statement and setting of the config into one of these frozen dataclasses, with everything that
needed the database resolved: the foreign key each include follows, the chain of foreign keys
from a granted table to its role's scope table.

The catalog stores each rule as a canonical JSON definition (jsonb). :meth:`definition` is the
one conversion to that form; the stored values and the config hash depend on it byte for byte,
so a change here is a change to every applied database.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from electricctl._model.table import TableRef
from electricctl._sql import catalog as catalog_sql


def _name(table: TableRef | None) -> str | None:
    return None if table is None else str(table)


class CatalogRule(Protocol):
    def definition(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class AssignmentRule:
    """A role held by the users named in ``table.user_column`` (per ``scope_column`` if scoped)."""

    role: str
    scope_table: TableRef | None
    table: TableRef
    user_column: str
    scope_column: str | None
    condition: str | None
    """The canonical text of the ``if`` expression."""

    def definition(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "scope_table": _name(self.scope_table),
            "table": str(self.table),
            "user_column": self.user_column,
            "scope_column": self.scope_column,
            "if": self.condition,
        }


@dataclass(frozen=True, slots=True)
class ScopeStep:
    """One many-to-one foreign key on the way from a granted table to its role's scope table."""

    table: TableRef
    columns: tuple[str, ...]
    references: TableRef
    references_columns: tuple[str, ...]

    def definition(self) -> dict[str, Any]:
        return {
            "table": str(self.table),
            "columns": list(self.columns),
            "references": str(self.references),
            "references_columns": list(self.references_columns),
        }


@dataclass(frozen=True, slots=True)
class GrantRule:
    """Privileges on ``table`` for a role, optionally limited to columns and to rows ``where`` holds."""

    privileges: tuple[str, ...]
    table: TableRef
    role: str
    scope_table: TableRef | None
    columns: tuple[str, ...] | None
    where: str | None
    scope_path: tuple[ScopeStep, ...] | None
    """For a scoped role: the foreign keys from ``table`` to ``scope_table`` (empty if they are the same)."""

    def definition(self) -> dict[str, Any]:
        return {
            "privileges": list(self.privileges),
            "table": str(self.table),
            "role": self.role,
            "scope_table": _name(self.scope_table),
            "columns": list(self.columns) if self.columns else None,
            "where": self.where,
            "scope_path": None if self.scope_path is None else [s.definition() for s in self.scope_path],
        }


class Direction(enum.StrEnum):
    ONE_TO_MANY = "one_to_many"
    """The included table references its parent: a parent row brings its children."""
    MANY_TO_ONE = "many_to_one"
    """The parent references the included table: a parent row brings the row it points at."""


@dataclass(frozen=True, slots=True)
class IncludeRule:
    """A table included in a shape, joined to its parent by the foreign key ``foreign_key``."""

    table: TableRef
    direction: Direction
    foreign_key: str
    columns: tuple[str, ...]
    """The foreign key's own columns (on the referencing table, whichever direction)."""
    references: tuple[str, ...]
    """The columns the foreign key references."""
    where: str | None
    include: tuple[IncludeRule, ...] = ()

    def definition(self) -> dict[str, Any]:
        return {
            "table": str(self.table),
            "direction": self.direction.value,
            "foreign_key": self.foreign_key,
            "columns": list(self.columns),
            "references": list(self.references),
            "where": self.where,
            "include": [i.definition() for i in self.include],
        }


@dataclass(frozen=True, slots=True)
class ShapeRule:
    table: TableRef
    where: str | None
    include: tuple[IncludeRule, ...] = ()

    def definition(self) -> dict[str, Any]:
        return {
            "table": str(self.table),
            "where": self.where,
            "include": [i.definition() for i in self.include],
        }


@dataclass(frozen=True, slots=True)
class SqliteRule:
    sql: str
    position: int

    @property
    def key(self) -> str:
        """The statement's name in the catalog: a prefix of the SHA-256 of its text."""
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    def definition(self) -> dict[str, Any]:
        return {"sql": self.sql, "position": self.position}


@dataclass(frozen=True, slots=True)
class SettingRule:
    value: str

    def definition(self) -> dict[str, Any]:
        return {"value": self.value}


@dataclass(frozen=True, slots=True)
class ResolvedRules:
    """Every rule the config asks for, by catalog table and name (in config order)."""

    assignments: Mapping[str, AssignmentRule] = field(default_factory=dict)
    grants: Mapping[str, GrantRule] = field(default_factory=dict)
    shapes: Mapping[str, ShapeRule] = field(default_factory=dict)
    sqlite_statements: Mapping[str, SqliteRule] = field(default_factory=dict)
    settings: Mapping[str, SettingRule] = field(default_factory=dict)

    def by_table(self) -> dict[str, Mapping[str, CatalogRule]]:
        """Catalog table → {name → rule}, in :data:`~electricctl._sql.catalog.RULE_TABLES` order."""
        tables: dict[str, Mapping[str, CatalogRule]] = {
            "assignments": self.assignments,
            "grants": self.grants,
            "shapes": self.shapes,
            "sqlite_statements": self.sqlite_statements,
            "settings": self.settings,
        }
        return {t: tables[t] for t in catalog_sql.RULE_TABLES}

    def definitions(self) -> dict[str, dict[str, Any]]:
        """The JSON the catalog stores: catalog table → {name → definition}."""
        return {t: {name: r.definition() for name, r in rules.items()} for t, rules in self.by_table().items()}
