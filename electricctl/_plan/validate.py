"""Validation against the live schema: the config and an :class:`ObservedState` → typed rules.

Checks what needs the database: declared tables exist, are tables, have primary keys, supported
column types and no foreign keys to tables that are not electrified; expressions and columns
name real columns; scope columns are foreign keys to their scope table; every include follows
exactly one foreign key. Everything wrong is collected and raised as one :class:`PlanError`
whose diagnostics point at the YAML. What passes comes back as :class:`ResolvedRules`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from electricctl._catalog.observed import ForeignKey, ObservedState, TableInfo
from electricctl._config.model import Assignment, ElectricConfig, Expression, Grant, Include, Shape
from electricctl._expr import ast
from electricctl._expr.parse import is_boolean_shaped
from electricctl._model.table import TableRef
from electricctl._plan.rules import (
    AssignmentRule,
    Direction,
    GrantRule,
    IncludeRule,
    ResolvedRules,
    ScopeStep,
    SettingRule,
    ShapeRule,
    SqliteRule,
)
from electricctl._plan.types import SUPPORTED_DESCRIPTION, unsupported_reason
from electricctl.errors import Diagnostic, Location, PlanError


@dataclass(frozen=True, slots=True)
class Resolved:
    rules: ResolvedRules
    warnings: tuple[Diagnostic, ...] = ()
    """Valid, but worth knowing (wal_level is not logical, an expression may not be boolean)."""


def resolve(config: ElectricConfig, observed: ObservedState) -> Resolved:
    """Check ``config`` against ``observed``; raise :class:`PlanError` with every problem, or resolve it."""
    chk = _Checker(config, observed)
    if observed.catalog is None and observed.electric_schema_objects > 0:
        chk.error(
            Location(config.file, 1, 1, "<root>"),
            "schema electric exists but was not created by electricctl (a legacy Electric install?); "
            "rename or drop it, then apply again",
            "db.electric_schema_foreign",
        )
    chk.check_tables()
    rules = _resolve_rules(chk)
    if chk.diags:
        raise PlanError(chk.diags)
    return Resolved(rules, tuple(chk.warnings))


@dataclass(slots=True)
class _Checker:
    """Checks the config against the live schema, collecting errors and warnings."""

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

    def edge(self, parent: TableRef, inc: Include) -> tuple[Direction, ForeignKey] | None:
        """The one foreign key joining an include to its parent, and which way it points."""
        candidates: list[tuple[Direction, ForeignKey]] = []
        for fk in self.observed.foreign_keys:
            if fk.table == inc.table and fk.target == parent:
                candidates.append((Direction.ONE_TO_MANY, fk))
            elif fk.table == parent and fk.target == inc.table:
                candidates.append((Direction.MANY_TO_ONE, fk))
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
        if direction is Direction.MANY_TO_ONE and inc.where is not None:
            self.error(
                inc.where.location,
                "a many-to-one include cannot have a where clause: it would break references from the parent rows",
                "db.include_where",
            )
            return None
        return direction, fk

    def fk_path(self, start: TableRef, goal: TableRef) -> tuple[ScopeStep, ...] | None:
        """Shortest chain of many-to-one foreign keys from ``start`` to ``goal`` (BFS, deterministic)."""
        if start == goal:
            return ()
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
                    return tuple(ScopeStep(f.table, f.columns, f.target, f.target_columns) for f in (*path, fk))
                seen.add(fk.target)
                queue.append((fk.target, [*path, fk]))
        return None


def _canonical(expr: Expression | None) -> str | None:
    return expr.canonical if expr else None


def _assignment(chk: _Checker, a: Assignment) -> AssignmentRule | None:
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
    return AssignmentRule(a.role.name, a.role.scope, a.table, a.user_column, a.scope_column, _canonical(a.condition))


def _grant(chk: _Checker, g: Grant) -> GrantRule | None:
    ok = all([chk.check_column(g.table, c, g.location) for c in g.columns or ()])
    chk.check_expression(g.where, g.table)
    path: tuple[ScopeStep, ...] | None = None
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
    return GrantRule(g.privileges, g.table, g.role.name, g.role.scope, g.columns, _canonical(g.where), path)


def _includes(chk: _Checker, parent: TableRef, includes: tuple[Include, ...]) -> tuple[IncludeRule, ...] | None:
    out: list[IncludeRule] = []
    ok = True
    for inc in includes:
        chk.check_expression(inc.where, inc.table)
        edge = chk.edge(parent, inc)
        children = _includes(chk, inc.table, inc.include)
        if edge is None or children is None:
            ok = False
            continue
        direction, fk = edge
        out.append(
            IncludeRule(inc.table, direction, fk.name, fk.columns, fk.target_columns, _canonical(inc.where), children)
        )
    return tuple(out) if ok else None


def _shape(chk: _Checker, s: Shape) -> ShapeRule | None:
    chk.check_expression(s.where, s.table)
    includes = _includes(chk, s.table, s.include)
    if includes is None:
        return None
    return ShapeRule(s.table, _canonical(s.where), includes)


def _resolve_rules(chk: _Checker) -> ResolvedRules:
    cfg = chk.config
    assignments: dict[str, AssignmentRule] = {}
    grants: dict[str, GrantRule] = {}
    shapes: dict[str, ShapeRule] = {}
    for a in cfg.assignments:
        if (rule := _assignment(chk, a)) is not None:
            assignments[a.address] = rule
    for g in cfg.grants:
        if (grant := _grant(chk, g)) is not None:
            grants[g.address] = grant
    for s in cfg.shapes:
        if (shape := _shape(chk, s)) is not None:
            shapes[s.name] = shape
    statements = [SqliteRule(stmt.sql, i) for i, stmt in enumerate(cfg.sqlite)]
    return ResolvedRules(
        assignments=assignments,
        grants=grants,
        shapes=shapes,
        sqlite_statements={s.key: s for s in statements},
        settings={"adhoc_shapes": SettingRule(cfg.adhoc_shapes)},
    )
