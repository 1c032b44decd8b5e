"""The planner: desired state (the config) against observed state (the database) → an ordered Plan.

Purely computational: no I/O. It first checks the config against the live schema (tables exist,
have primary keys and supported types, foreign keys exist for include edges, expressions name
real columns) and raises :class:`PlanError` with located diagnostics if anything is off. Then it
compares each managed object and emits a :class:`Change` for each difference, in dependency order:
catalog, publication, tables, rules, then (with ``prune``) removals.
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from electricctl._catalog.observed import ForeignKey, ObservedState, TableInfo
from electricctl._config.model import Assignment, ElectricConfig, Expression, Grant, Include, Shape
from electricctl._expr import ast
from electricctl._expr.parse import is_boolean_shaped
from electricctl._model import wire
from electricctl._model.table import TableRef
from electricctl._plan.types import SUPPORTED_DESCRIPTION, unsupported_reason
from electricctl._sql import catalog as catalog_sql
from electricctl._sql import names, render
from electricctl._sql.render import Statement
from electricctl.errors import Diagnostic, Location, PlanError

FORMAT_VERSION = "1.0"


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Change:
    address: str
    """Stable name of the object, e.g. ``table.public.issues.trigger``, ``grant.public.issues/...``."""
    action: Action
    summary: str
    statements: tuple[Statement, ...]
    drift: bool = False
    """The catalog says this object was applied, but the database no longer matches it."""
    destructive: bool = False
    locks_table: str | None = None

    def sql(self) -> list[str]:
        return [render.text(s) for s in self.statements]

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "action": self.action.value,
            "summary": self.summary,
            "drift": self.drift,
            "destructive": self.destructive,
            "locks_table": self.locks_table,
            "sql": self.sql(),
        }


@dataclass(frozen=True, slots=True)
class Plan:
    changes: tuple[Change, ...]
    config_hash: str
    orphans: tuple[str, ...] = ()
    """Objects electricctl manages that the file no longer declares: removed only with --prune."""
    warnings: tuple[Diagnostic, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.changes

    def counts(self) -> dict[str, int]:
        out = {a.value: 0 for a in Action}
        for change in self.changes:
            out[change.action.value] += 1
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "config_hash": self.config_hash,
            "changes": [c.as_json() for c in self.changes],
            "summary": self.counts(),
            "orphans": list(self.orphans),
            "warnings": [w.as_json() for w in self.warnings],
        }


@dataclass(slots=True)
class _Checker:
    """Checks the config against the live schema and resolves what needs the schema to resolve."""

    config: ElectricConfig
    observed: ObservedState
    diags: list[Diagnostic] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)

    def error(self, loc: Location, message: str, code: str) -> None:
        self.diags.append(Diagnostic(loc, message, code))

    def table(self, ref: TableRef) -> TableInfo | None:
        return self.observed.tables.get(ref)

    def check_tables(self) -> None:
        declared = set(self.config.table_refs)
        for spec in self.config.tables:
            info = self.table(spec.ref)
            if info is None:
                self.error(
                    spec.location,
                    f"table {spec.ref} does not exist in database {self.observed.database}",
                    "db.table_missing",
                )
                continue
            if info.kind not in ("r", "p"):
                self.error(spec.location, f"{spec.ref} is not a table (relkind {info.kind!r})", "db.not_a_table")
                continue
            if not info.primary_key:
                self.error(
                    spec.location,
                    f"table {spec.ref} has no primary key; sync needs one (ALTER TABLE ... ADD PRIMARY KEY)",
                    "db.no_primary_key",
                )
            for col in info.columns:
                reason = unsupported_reason(col)
                if reason:
                    self.error(
                        spec.location,
                        f"column {spec.ref.name}.{col.name} has an unsupported type: {reason}. "
                        f"Supported: {SUPPORTED_DESCRIPTION}",
                        "db.unsupported_type",
                    )
            for fk in self.observed.foreign_keys:
                if fk.table == spec.ref and fk.target not in declared:
                    self.error(
                        spec.location,
                        f"{spec.ref} references {fk.target} (foreign key {fk.name}), which is not electrified; "
                        "add it to `tables` so clients can keep the reference intact",
                        "db.fk_not_electrified",
                    )
        if self.observed.wal_level != "logical":
            self.warnings.append(
                Diagnostic(
                    Location(self.config.file, 1, 1, "<root>"),
                    f"wal_level is {self.observed.wal_level!r}; `electricctl serve` needs wal_level=logical "
                    "(set it in postgresql.conf and restart Postgres)",
                    "db.wal_level",
                    level="warning",
                )
            )

    def check_column(self, table: TableRef, column: str, loc: Location) -> bool:
        info = self.table(table)
        if info is None:
            return False
        if info.column(column) is None:
            known = ", ".join(c.name for c in info.columns)
            self.error(loc, f"column {column!r} does not exist in {table} (columns: {known})", "db.column_missing")
            return False
        return True

    def check_expression(self, expr: Expression | None, table: TableRef) -> None:
        if expr is None or self.table(table) is None:
            return
        for col in ast.columns(expr.expr):
            if col.qualifier != "auth":
                self.check_column(table, col.name, expr.location.shifted(col.offset))
        top = expr.expr
        if isinstance(top, ast.Column) and top.qualifier != "auth":
            info = self.table(table)
            column = info.column(top.name) if info else None
            if column is not None and column.type_name != "bool":
                self.error(
                    expr.location,
                    f"the expression must be a boolean condition, but {top.name} is {column.type_display}",
                    "db.not_boolean",
                )
        elif is_boolean_shaped(top) is None and not isinstance(top, ast.Column):
            self.warnings.append(
                Diagnostic(expr.location, "could not prove this expression is boolean", "expr.maybe_boolean", "warning")
            )

    # -- foreign keys ------------------------------------------------------------------------
    def edge(self, parent: TableRef, inc: Include) -> dict[str, Any] | None:
        """Resolve the foreign key joining an include to its parent."""
        candidates: list[tuple[str, ForeignKey]] = []
        for fk in self.observed.foreign_keys:
            if fk.table == inc.table and fk.target == parent:
                candidates.append(("one_to_many", fk))
            elif fk.table == parent and fk.target == inc.table:
                candidates.append(("many_to_one", fk))
        if inc.foreign_key is not None:
            candidates = [(d, fk) for d, fk in candidates if fk.columns == inc.foreign_key]
        if not candidates:
            wanted = f" over columns ({', '.join(inc.foreign_key)})" if inc.foreign_key else ""
            self.error(
                inc.location,
                f"no foreign key joins {inc.table} to {parent}{wanted}; an include must follow a foreign key",
                "db.include_no_fk",
            )
            return None
        if len(candidates) > 1:
            options = "; ".join(f"{fk.table.name}({', '.join(fk.columns)})" for _, fk in candidates)
            self.error(
                inc.location,
                f"several foreign keys join {inc.table} to {parent} ({options}); choose one with `foreign_key:`",
                "db.include_ambiguous",
            )
            return None
        direction, fk = candidates[0]
        if direction == "many_to_one" and inc.where is not None:
            self.error(
                inc.where.location,
                "a many-to-one include cannot have a where clause: it would break references from the parent rows",
                "db.include_where",
            )
            return None
        return {
            "direction": direction,
            "foreign_key": fk.name,
            "columns": list(fk.columns),
            "references": list(fk.target_columns),
        }

    def fk_path(self, start: TableRef, goal: TableRef) -> list[dict[str, Any]] | None:
        """Shortest chain of many-to-one foreign keys from ``start`` to ``goal`` (BFS, deterministic)."""
        if start == goal:
            return []
        declared = set(self.config.table_refs)
        by_table: dict[TableRef, list[ForeignKey]] = {}
        for fk in sorted(self.observed.foreign_keys, key=lambda f: f.name):
            if fk.target in declared:
                by_table.setdefault(fk.table, []).append(fk)
        queue: deque[tuple[TableRef, list[ForeignKey]]] = deque([(start, [])])
        seen = {start}
        while queue:
            node, path = queue.popleft()
            for fk in by_table.get(node, []):
                if fk.target in seen:
                    continue
                if fk.target == goal:
                    return [
                        {
                            "table": str(f.table),
                            "columns": list(f.columns),
                            "references": str(f.target),
                            "references_columns": list(f.target_columns),
                        }
                        for f in (*path, fk)
                    ]
                seen.add(fk.target)
                queue.append((fk.target, [*path, fk]))
        return None


# -- desired definitions -------------------------------------------------------------------------


def _assignment_def(chk: _Checker, a: Assignment) -> dict[str, Any] | None:
    ok = chk.check_column(a.table, a.user_column, a.location)
    if a.scope_column is not None and a.role.scope is not None:
        ok = chk.check_column(a.table, a.scope_column, a.location) and ok
        if ok and not any(
            fk.table == a.table and fk.columns == (a.scope_column,) and fk.target == a.role.scope
            for fk in chk.observed.foreign_keys
        ):
            chk.error(
                a.location,
                f"scope column {a.table.name}.{a.scope_column} must be a foreign key to {a.role.scope}",
                "db.scope_fk",
            )
            ok = False
    chk.check_expression(a.condition, a.table)
    if not ok:
        return None
    return {
        "role": a.role.name,
        "scope_table": str(a.role.scope) if a.role.scope else None,
        "table": str(a.table),
        "user_column": a.user_column,
        "scope_column": a.scope_column,
        "if": a.condition.canonical if a.condition else None,
    }


def _grant_def(chk: _Checker, g: Grant) -> dict[str, Any] | None:
    ok = all([chk.check_column(g.table, c, g.location) for c in g.columns or ()])
    chk.check_expression(g.where, g.table)
    path: list[dict[str, Any]] | None = None
    if g.role.scope is not None and chk.table(g.table) is not None:
        path = chk.fk_path(g.table, g.role.scope)
        if path is None:
            chk.error(
                g.location,
                f"{g.table} has no chain of foreign keys to {g.role.scope}, so rows of it cannot belong to a "
                f"{g.role} scope",
                "db.scope_path",
            )
            ok = False
    if not ok:
        return None
    return {
        "privileges": list(g.privileges),
        "table": str(g.table),
        "role": g.role.name,
        "scope_table": str(g.role.scope) if g.role.scope else None,
        "columns": list(g.columns) if g.columns else None,
        "where": g.where.canonical if g.where else None,
        "scope_path": path,
    }


def _include_defs(chk: _Checker, parent: TableRef, includes: Iterable[Include]) -> list[dict[str, Any]] | None:
    out: list[dict[str, Any]] = []
    ok = True
    for inc in includes:
        chk.check_expression(inc.where, inc.table)
        edge = chk.edge(parent, inc)
        children = _include_defs(chk, inc.table, inc.include)
        if edge is None or children is None:
            ok = False
            continue
        out.append(
            {"table": str(inc.table), **edge, "where": inc.where.canonical if inc.where else None, "include": children}
        )
    return out if ok else None


def _shape_def(chk: _Checker, s: Shape) -> dict[str, Any] | None:
    chk.check_expression(s.where, s.table)
    includes = _include_defs(chk, s.table, s.include)
    if includes is None:
        return None
    return {"table": str(s.table), "where": s.where.canonical if s.where else None, "include": includes}


def desired_rules(chk: _Checker) -> dict[str, dict[str, Any]]:
    """Catalog rows the config asks for: catalog table → {name → definition}."""
    cfg = chk.config
    rules: dict[str, dict[str, Any]] = {t: {} for t in catalog_sql.RULE_TABLES}
    for a in cfg.assignments:
        d = _assignment_def(chk, a)
        if d is not None:
            rules["assignments"][a.address] = d
    for g in cfg.grants:
        d = _grant_def(chk, g)
        if d is not None:
            rules["grants"][g.address] = d
    for s in cfg.shapes:
        d = _shape_def(chk, s)
        if d is not None:
            rules["shapes"][s.name] = d
    for i, stmt in enumerate(cfg.sqlite):
        key = hashlib.sha256(stmt.sql.encode()).hexdigest()[:16]
        rules["sqlite_statements"][key] = {"sql": stmt.sql, "position": i}
    rules["settings"]["adhoc_shapes"] = {"value": cfg.adhoc_shapes}
    return rules


def config_hash(tables: Iterable[TableRef], rules: dict[str, dict[str, Any]]) -> str:
    essence = {"tables": [str(t) for t in tables], "rules": rules}
    return "sha256:" + hashlib.sha256(render.canonical_json(essence).encode()).hexdigest()


# -- diffing -------------------------------------------------------------------------------------


def _table_changes(info: TableInfo, observed: ObservedState, recorded: bool) -> Iterator[Change]:
    t = info.ref
    addr = f"table.{t}"
    locks = str(t)
    if not recorded:
        yield Change(
            addr,
            Action.CREATE,
            f"electrify {t}",
            (render.record_electrified(t, info.replica_identity, info.replica_index),),
        )
    if info.replica_identity != "f":
        yield Change(
            f"{addr}.replica_identity",
            Action.UPDATE if recorded else Action.CREATE,
            f"REPLICA IDENTITY FULL on {t} (updates and deletes carry old values)",
            (render.replica_identity(t, "f"),),
            drift=recorded,
            locks_table=locks,
        )
    fn = names.stamp_function(t)
    source = render.stamp_function_source(info.primary_key, [c.name for c in info.columns])
    current = observed.functions.get(fn)
    if current != source:
        yield Change(
            f"function.{names.SCHEMA}.{fn}",
            Action.CREATE if current is None else Action.UPDATE,
            f"trigger function that tags direct writes to {t}"
            + (
                ""
                if current is None
                else " (it differs from what this version installs: columns changed, an upgrade, or an edit by hand)"
            ),
            (render.create_stamp_function(t, source),),
            drift=recorded,
        )
    for trigger, function, create in (
        (names.ROW_TRIGGER, fn, render.create_row_trigger),
        (names.TRUNCATE_TRIGGER, names.TRUNCATE_FUNCTION, render.create_truncate_trigger),
    ):
        seen = observed.triggers.get((t, trigger))
        if seen is None:
            yield Change(
                f"{addr}.trigger.{trigger}",
                Action.CREATE,
                f"trigger {trigger} on {t}",
                tuple(create(t)),
                drift=recorded,
                locks_table=locks,
            )
        elif seen.function != function:
            yield Change(
                f"{addr}.trigger.{trigger}",
                Action.UPDATE,
                f"trigger {trigger} on {t} calls {seen.function}() instead of {function}()",
                (render.drop_trigger(t, trigger), *create(t)),
                drift=recorded,
                locks_table=locks,
            )
        elif seen.enabled != "A":
            state = {"D": "disabled", "O": "enabled for origin sessions only", "R": "enabled for replicas only"}
            yield Change(
                f"{addr}.trigger.{trigger}",
                Action.UPDATE,
                f"trigger {trigger} on {t} is {state.get(seen.enabled, seen.enabled)}; enable it ALWAYS",
                (render.enable_trigger_always(t, trigger),),
                drift=recorded,
                locks_table=locks,
            )
    if observed.publication is None or t not in observed.publication:
        yield Change(
            f"{addr}.publication",
            Action.CREATE,
            f"add {t} to publication {wire.PUBLICATION}",
            (render.publication_add(t),),
            drift=recorded and observed.publication is not None,
        )


def _unelectrify(t: TableRef, observed: ObservedState, record: dict[str, Any]) -> Iterator[Change]:
    info = observed.tables.get(t)
    statements: list[Statement] = []
    if info is not None:
        for trigger in (names.ROW_TRIGGER, names.TRUNCATE_TRIGGER):
            if (t, trigger) in observed.triggers:
                statements.append(render.drop_trigger(t, trigger))
        if observed.publication is not None and t in observed.publication:
            statements.append(render.publication_drop(t))
        original = str(record.get("original_replica_identity") or "d")
        if info.replica_identity != original:
            statements.append(render.replica_identity(t, original, record.get("original_replica_index")))
    fn = names.stamp_function(t)
    if fn in observed.functions:
        statements.append(render.drop_function(fn))
    statements.extend(render.forget_electrified(t))
    yield Change(
        f"table.{t}",
        Action.DELETE,
        f"stop syncing {t}: remove its triggers, publication membership and sync metadata (its rows stay)",
        tuple(statements),
        locks_table=str(t) if info is not None else None,
    )


def plan(config: ElectricConfig, observed: ObservedState, *, prune: bool = False) -> Plan:
    """Compute the ordered changes that make the database match ``config``."""
    chk = _Checker(config, observed)
    if observed.catalog is None and observed.electric_schema_objects > 0:
        chk.error(
            Location(config.file, 1, 1, "<root>"),
            "schema electric exists but was not created by electricctl (a legacy Electric install?); "
            "rename or drop it, then apply again",
            "db.electric_schema_foreign",
        )
    chk.check_tables()
    rules = desired_rules(chk)
    if chk.diags:
        raise PlanError(chk.diags)

    changes: list[Change] = []
    catalog = observed.catalog
    version = catalog.version if catalog else 0
    if version < catalog_sql.LATEST:
        changes.append(
            Change(
                f"catalog.{names.SCHEMA}",
                Action.CREATE if version == 0 else Action.UPDATE,
                f"install electricctl's catalog (version {version} -> {catalog_sql.LATEST}) in schema {names.SCHEMA}",
                tuple(catalog_sql.migration_statements(version)),
            )
        )
    if observed.publication is None:
        changes.append(
            Change(
                f"publication.{wire.PUBLICATION}",
                Action.CREATE,
                f"publication {wire.PUBLICATION} for the electrified tables",
                (render.create_publication(),),
                drift=catalog is not None and bool(catalog.electrified),
            )
        )
    elif not observed.publication_ok:
        changes.append(
            Change(
                f"publication.{wire.PUBLICATION}",
                Action.UPDATE,
                f"publication {wire.PUBLICATION} must publish insert, update, delete and truncate",
                (render.reset_publication_options(),),
                drift=True,
            )
        )

    electrified = catalog.electrified if catalog else {}
    for spec in config.tables:
        info = observed.tables[spec.ref]
        changes.extend(_table_changes(info, observed, spec.ref in electrified))

    orphans: list[str] = []
    observed_rules = catalog.rules if catalog else {}
    for table in catalog_sql.RULE_TABLES:
        have = observed_rules.get(table, {})
        for name, definition in rules[table].items():
            if have.get(name) != definition:
                changes.append(
                    Change(
                        f"{table}.{name}",
                        Action.CREATE if name not in have else Action.UPDATE,
                        _describe(table, name, definition),
                        (render.upsert_rule(table, name, definition),),
                    )
                )
    for table in catalog_sql.RULE_TABLES:
        for name in sorted(set(observed_rules.get(table, {})) - set(rules[table])):
            if prune:
                changes.append(
                    Change(
                        f"{table}.{name}",
                        Action.DELETE,
                        _describe(table, name, observed_rules[table][name]),
                        (render.delete_rule(table, name),),
                    )
                )
            else:
                orphans.append(f"{table}.{name}")
    declared = set(config.table_refs)
    for t in sorted(set(electrified) - declared):
        if prune:
            changes.extend(_unelectrify(t, observed, electrified[t]))
        else:
            orphans.append(f"table.{t}")
    if observed.publication is not None:
        for t in sorted(observed.publication - declared - set(electrified)):
            if prune:
                changes.append(
                    Change(
                        f"table.{t}.publication",
                        Action.DELETE,
                        f"remove {t}, which electricctl does not manage, from publication {wire.PUBLICATION}",
                        (render.publication_drop(t),),
                        drift=True,
                    )
                )
            else:
                orphans.append(f"table.{t}.publication")
    warnings = (*config.warnings, *chk.warnings)
    return Plan(tuple(changes), config_hash(config.table_refs, rules), tuple(orphans), warnings)


def _kind(catalog_table: str) -> str:
    return {
        "assignments": "assignment",
        "grants": "grant",
        "shapes": "shape",
        "sqlite_statements": "sqlite statement",
        "settings": "setting",
    }[catalog_table]


def _describe(catalog_table: str, name: str, d: dict[str, Any]) -> str:
    """A one-line human summary of a catalog rule."""
    match catalog_table:
        case "assignments":
            role = f"{d['scope_table']}:{d['role']}" if d["scope_table"] else d["role"]
            scope = f" scoped by {d['scope_column']}" if d["scope_column"] else ""
            cond = f" if {d['if']}" if d["if"] else ""
            return f"assign {role} to {d['table']}.{d['user_column']}{scope}{cond}"
        case "grants":
            role = f"{d['scope_table']}:{d['role']}" if d["scope_table"] else d["role"]
            cols = f" ({', '.join(d['columns'])})" if d["columns"] else ""
            where = f" where {d['where']}" if d["where"] else ""
            return f"grant {', '.join(d['privileges'])}{cols} on {d['table']} to {role}{where}"
        case "shapes":
            return f"shape {name}: {d['table']}" + (f" where {d['where']}" if d["where"] else "")
        case "sqlite_statements":
            return f"sqlite statement: {d['sql']}"
    return f"{_kind(catalog_table)} {name} = {d.get('value', d)}"
