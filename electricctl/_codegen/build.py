"""The schema a generated client describes, from the migrations of the electrified tables (pure).

The migrations (``electric.migrations``, or a service's ``/api/migrations``) say, per version,
each table's columns with their types and nullability, its primary key and its foreign keys. From
them: every table as it is at the newest version, the relations each table's include specs may
follow (both ways along each foreign key), and, per version, what a client applies to its file.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping, Sequence

from electricctl._codegen.defaults import python_default
from electricctl._model.migrations import Migration, MigrationColumn, by_version
from electricctl.dal.spec import ColumnSpec, MigrationSpec, RelationSpec, SchemaSpec, TableSpec
from electricctl.dal.values import SCALARS
from electricctl.errors import ElectricError


class GenerateError(ElectricError, ValueError):
    """The schema cannot be generated (the message says why and what to do)."""


def _column(
    table: str,
    c: MigrationColumn,
    pk: Sequence[str],
    enums: Mapping[str, tuple[str, ...]],
    defaults: Mapping[tuple[str, str], str],
) -> ColumnSpec:
    base = c.type_name[1:] if c.type_name.startswith("_") else c.type_name
    values = enums.get(base, ())
    default = ""
    expression = defaults.get((table, c.name))
    if expression:
        default = python_default(expression, c.type_name, base in enums) or ""
    return ColumnSpec(c.name, c.type_name, not c.notnull and c.name not in pk, c.name in pk, tuple(values), default)


def build_schema(
    migrations: Sequence[Migration],
    enums: Mapping[str, tuple[str, ...]] | None = None,
    shapes: Sequence[str] = (),
    defaults: Mapping[tuple[str, str], str] | None = None,
) -> SchemaSpec:
    """The schema at the newest of ``migrations`` (in order), with each version's migration.
    ``defaults``: (table, column) -> its Postgres default expression (what create types fill in)."""
    enums = enums or {}
    defaults = defaults or {}
    state: dict[str, Migration] = {}
    schemas: dict[str, str] = {}
    steps: list[MigrationSpec] = []
    for version, group in by_version(migrations).items():
        tables: dict[str, TableSpec] = {}
        statements: list[str] = []
        for m in group:
            if m.op == "sqlite":
                statements.append(m.sql.rstrip().rstrip(";") + ";")
                continue
            seen = schemas.setdefault(m.table, m.schema)
            if seen != m.schema:
                raise GenerateError(
                    f"tables {seen}.{m.table} and {m.schema}.{m.table} are both electrified: a client holds"
                    " tables by name alone; rename one of them"
                )
            state[m.table] = m
            cols = tuple(_column(m.table, c, m.primary_key, enums, defaults) for c in m.table_columns)
            tables[m.table] = TableSpec(m.table, cols)
        steps.append(MigrationSpec(version, tuple(tables.values()), tuple(statements)))
    relations = _relations(state)
    final = {
        name: TableSpec(
            name,
            tuple(_column(name, c, m.primary_key, enums, defaults) for c in m.table_columns),
            tuple(relations.get(name, ())),
        )
        for name, m in sorted(state.items())
    }
    for t in final.values():
        for c in t.columns:
            base = c.pg_type[1:] if c.pg_type.startswith("_") else c.pg_type
            if base not in SCALARS and base not in enums:
                raise GenerateError(f"{t.name}.{c.name} has type {c.pg_type}, which the typed client does not map")
    version = steps[-1].version if steps else ""
    return SchemaSpec(version, final, tuple(steps), tuple(sorted(shapes)))


def _relations(state: Mapping[str, Migration]) -> dict[str, list[RelationSpec]]:
    """Per table, the foreign keys its include specs may follow, named by the other table (or,
    where two foreign keys join the same tables, by the other table and the key's columns)."""
    raw: dict[str, list[tuple[str, str, str, tuple[str, ...]]]] = {}
    for name, m in sorted(state.items()):
        for fk in m.foreign_keys:
            if fk.parent_table == name or fk.parent_table not in state:
                continue  # self-references are not followed (the server refuses them); others are not synced
            raw.setdefault(name, []).append((fk.parent_table, fk.parent_table, "many_to_one", fk.columns))
            raw.setdefault(fk.parent_table, []).append((name, name, "one_to_many", fk.columns))
    out: dict[str, list[RelationSpec]] = {}
    for table, items in raw.items():
        counts: dict[str, int] = {}
        for other, _, _, _ in items:
            counts[other] = counts.get(other, 0) + 1
        specs = []
        for other, target, direction, columns in items:
            name = other if counts[other] == 1 else f"{other}_by_{'_'.join(columns)}"
            specs.append(RelationSpec(name, target, direction, columns))  # type: ignore[arg-type]
        out[table] = sorted(specs, key=lambda r: r.name)
    return out


# -- names ------------------------------------------------------------------------------------------
def identifier(name: str) -> str:
    """A Python identifier for a column or relation name (``class`` -> ``class_``, ``2x`` -> ``_2x``)."""
    out = re.sub(r"\W", "_", name)
    if not out or out[0].isdigit():
        out = "_" + out
    if keyword.iskeyword(out) or keyword.issoftkeyword(out) or out.startswith("__"):
        out += "_"
    return out


def singular(name: str) -> str:
    if name.endswith("ies") and len(name) > 3:
        return name[:-3] + "y"
    if name.endswith(("sses", "xes", "ches", "shes")):
        return name[:-2]
    if name.endswith("s") and not name.endswith(("ss", "us", "is")) and len(name) > 1:
        return name[:-1]
    return name


def camel(name: str) -> str:
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", name) if p]
    out = "".join(p[:1].upper() + p[1:] for p in parts) or "T"
    return "T" + out if out[0].isdigit() else out


def class_names(tables: Sequence[str]) -> dict[str, str]:
    """Per table, its row class: ``projects`` -> ``Project``; tables that would share one keep
    their whole name."""
    wanted = {t: camel(singular(t)) for t in tables}
    counts: dict[str, int] = {}
    for v in wanted.values():
        counts[v] = counts.get(v, 0) + 1
    return {t: (v if counts[v] == 1 else camel(t)) for t, v in wanted.items()}
