"""What a generated package tells the runtime about the schema (plain data, written by
``electricctl generate``): tables with their columns, foreign keys both ways, the bundled
migrations and the declared shapes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from electricctl.dal.values import Convert, to_local, to_python


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str
    pg_type: str
    """``pg_type.typname`` (``int4``, ``timestamptz``, an enum's name, ``_int4`` for an array)."""
    nullable: bool
    primary_key: bool = False
    enum_values: tuple[str, ...] = ()
    """The enum's labels, in order (empty: not an enum, or not known)."""
    default: str = ""
    """The Python source of the default a create type gives it (empty: none; see _codegen.defaults)."""


@dataclass(frozen=True, slots=True)
class RelationSpec:
    """A foreign key followed from a table: ``one_to_many`` (the other table references this one)
    or ``many_to_one`` (this table references the other)."""

    name: str
    """The key in include specs (the other table's name, unless two foreign keys join them)."""
    table: str
    direction: Literal["one_to_many", "many_to_one"]
    foreign_key: tuple[str, ...]
    """The foreign key's own columns (on the referencing side)."""


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    columns: tuple[ColumnSpec, ...]
    relations: tuple[RelationSpec, ...] = ()
    by_name: Mapping[str, ColumnSpec] = field(init=False, repr=False, compare=False)
    readers: tuple[Convert | None, ...] = field(init=False, repr=False, compare=False)
    writers: Mapping[str, Convert] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {c.name: c for c in self.columns})
        object.__setattr__(self, "readers", tuple(to_python(c.pg_type) for c in self.columns))
        object.__setattr__(self, "writers", {c.name: to_local(c.pg_type, c.enum_values) for c in self.columns})

    @property
    def primary_key(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.primary_key)

    def relation(self, name: str) -> RelationSpec:
        for r in self.relations:
            if r.name == name:
                return r
        known = ", ".join(r.name for r in self.relations) or "none"
        raise ValueError(f"{self.name} has no relation {name!r} to include (it has: {known})")


@dataclass(frozen=True, slots=True)
class MigrationSpec:
    """One schema version, as the client applies it to its file before it first connects."""

    version: str
    tables: tuple[TableSpec, ...]
    """Every table this version creates or widens, whole."""
    statements: tuple[str, ...] = ()
    """Statements for the local database alone (electric.yaml's ``sqlite`` section)."""


@dataclass(frozen=True, slots=True)
class SchemaSpec:
    version: str
    tables: Mapping[str, TableSpec]
    migrations: tuple[MigrationSpec, ...]
    shapes: tuple[str, ...] = ()
    """The names of the shapes declared in electric.yaml."""
