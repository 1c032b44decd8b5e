"""Permissions: the grants and assignments of electric.yaml, as the server enforces them.

Roles: ``anyone`` and ``authenticated`` (every client with a valid token); global roles, held by a
user when a row of the assignment's table names them (``user_column = sub``, and its ``if``
holds); scoped roles such as ``projects:member``, held for one scope row (the assignment row's
``scope_column``). A grant of a scoped role applies to the rows whose chain of foreign keys
(``scope_path``, found by ``plan``) leads to a scope row the user holds the role for.

A client operation is allowed when at least one grant on its table allows its privilege to a role
the user holds, for the row as it is before the operation (update, delete) and as it will be after
(insert, update), with the grant's ``where`` true for both and every written column in the
grant's ``columns``. The writer decides it in its own transaction, after the writes and inside a
savepoint: one set-based query per (table, privilege, grants), composed once here from
:mod:`psycopg.sql` (values are Literals or parameters), takes the transaction's rows and returns
those no grant allows. It runs against the data as the transaction leaves it, so an assignment
written a moment ago counts and no cache can be stale.

The read path is in :mod:`.read`.

With no grants in the config the server runs open, as 0.12 did (every authenticated client may
read and write every electrified table), and says so at startup.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from electricctl._model.rows import RelationDef
from electricctl._model.table import TableRef
from electricctl._shapes.compile import ShapeError, compile_where

log = logging.getLogger("electricctl.server")

BUILTIN = frozenset({"anyone", "authenticated"})
Describe = Callable[[TableRef], RelationDef | None]


class PolicyError(ValueError):
    """A rule the server cannot enforce (the message names it); operations it would allow are denied."""


@dataclass(frozen=True, slots=True)
class GrantRule:
    name: str
    privileges: frozenset[str]
    table: TableRef
    role: str
    scope_table: TableRef | None
    columns: frozenset[str] | None
    where: str | None
    scope_path: tuple[Mapping[str, Any], ...]

    @classmethod
    def from_definition(cls, name: str, d: Mapping[str, Any]) -> GrantRule:
        return cls(
            name,
            frozenset(d["privileges"]),
            TableRef.parse(d["table"]),
            d["role"],
            TableRef.parse(d["scope_table"]) if d.get("scope_table") else None,
            frozenset(d["columns"]) if d.get("columns") else None,
            d.get("where"),
            tuple(d.get("scope_path") or ()),
        )


@dataclass(frozen=True, slots=True)
class AssignmentRule:
    name: str
    role: str
    scope_table: TableRef | None
    table: TableRef
    user_column: str
    scope_column: str | None
    condition: str | None

    @classmethod
    def from_definition(cls, name: str, d: Mapping[str, Any]) -> AssignmentRule:
        return cls(
            name,
            d["role"],
            TableRef.parse(d["scope_table"]) if d.get("scope_table") else None,
            TableRef.parse(d["table"]),
            d["user_column"],
            d.get("scope_column"),
            d.get("if"),
        )


@dataclass(frozen=True, slots=True)
class Policy:
    grants: tuple[GrantRule, ...]
    assignments: tuple[AssignmentRule, ...]

    @classmethod
    def from_catalog(
        cls, grants: Mapping[str, Mapping[str, Any]], assignments: Mapping[str, Mapping[str, Any]]
    ) -> Policy:
        return cls(
            tuple(GrantRule.from_definition(n, d) for n, d in sorted(grants.items())),
            tuple(AssignmentRule.from_definition(n, d) for n, d in sorted(assignments.items())),
        )

    @property
    def enforced(self) -> bool:
        """Grants are declared: everything not granted is denied."""
        return bool(self.grants)

    def grants_for(self, table: TableRef, privilege: str) -> list[GrantRule]:
        return [g for g in self.grants if g.table == table and privilege in g.privileges]

    def candidates(self, privilege: str, rel: RelationDef, written: frozenset[str]) -> list[GrantRule]:
        """The grants that may allow ``privilege`` on ``rel`` for a write of ``written`` columns."""
        table = TableRef(rel.schema, rel.name)
        return [
            g for g in self.grants_for(table, privilege) if g.columns is None or written <= g.columns | primary_key(rel)
        ]

    def denial(self, privilege: str, rel: RelationDef, written: frozenset[str]) -> str:
        """Why no grant can allow this write (for the client's error and the audit log)."""
        cols = f" (columns {', '.join(sorted(written))})" if written else ""
        return f"{privilege} on {rel.qualified}{cols} is not granted to any role this user holds"

    def write_check(
        self,
        grants: Sequence[GrantRule],
        rel: RelationDef,
        user_id: str | None,
        claims: Mapping[str, Any],
        before: sql.Composable | None,
        after: sql.Composable | None,
        describe: Describe,
    ) -> sql.Composable:
        """A boolean: does one of ``grants`` allow this change for this user?

        ``before``/``after`` are row sources (a record of ``rel``'s type, e.g.
        ``jsonb_populate_record(...)``) for the row before and after the operation; None when
        there is no row.
        """
        checks: list[sql.Composable] = []
        for g in grants:
            try:
                checks.append(self._grant_check(g, rel, user_id, claims, before, after, describe))
            except (PolicyError, ShapeError) as exc:
                # a rule that cannot be checked allows nothing
                log.warning("grant %s cannot be checked, so it allows nothing: %s", g.name, exc)
                checks.append(sql.SQL("false"))
        if not checks:
            return sql.SQL("false")
        return sql.SQL(" OR ").join(sql.SQL("({})").format(c) for c in checks)

    def _grant_check(
        self,
        g: GrantRule,
        rel: RelationDef,
        user_id: str | None,
        claims: Mapping[str, Any],
        before: sql.Composable | None,
        after: sql.Composable | None,
        describe: Describe,
    ) -> sql.Composable:
        parts: list[sql.Composable] = []
        rows = [r for r in (before, after) if r is not None]
        if g.where:
            where = compile_where(g.where, rel, claims)
            for row in rows:
                parts.append(sql.SQL("coalesce(({}), false)").format(_over(row, where.sql)))
        if g.role in BUILTIN:
            if g.role == "authenticated" and not user_id:
                return sql.SQL("false")
        elif g.scope_table is None:
            parts.append(self._holds_global(g.role, user_id, claims, describe))
        else:
            for row in rows:
                parts.append(self._holds_scoped(g, rel, row, user_id, claims, describe))
        if not parts:
            return sql.SQL("true")
        return sql.SQL(" AND ").join(parts)

    def _holds_global(
        self, role: str, user_id: str | None, claims: Mapping[str, Any], describe: Describe
    ) -> sql.Composable:
        sources = [a for a in self.assignments if a.role == role and a.scope_table is None]
        if not sources or not user_id:
            return sql.SQL("false")
        return sql.SQL(" OR ").join(self._assigned(a, user_id, claims, describe, None) for a in sources)

    def _holds_scoped(
        self,
        g: GrantRule,
        rel: RelationDef,
        row: sql.Composable,
        user_id: str | None,
        claims: Mapping[str, Any],
        describe: Describe,
    ) -> sql.Composable:
        sources = [a for a in self.assignments if a.role == g.role and a.scope_table == g.scope_table]
        if not sources or not user_id:
            return sql.SQL("false")
        scope_id = _scope_id(g, rel, row, describe)
        return sql.SQL("({})").format(
            sql.SQL(" OR ").join(self._assigned(a, user_id, claims, describe, scope_id) for a in sources)
        )

    def _assigned(
        self,
        a: AssignmentRule,
        user_id: str,
        claims: Mapping[str, Any],
        describe: Describe,
        scope_id: sql.Composable | None,
    ) -> sql.Composable:
        """EXISTS a row of the assignment's table giving the user the role (for that scope)."""
        arel = describe(a.table)
        if arel is None:
            raise PolicyError(f"assignment {a.name}: table {a.table} does not exist")
        conds: list[sql.Composable] = [
            sql.SQL("{}::text = {}").format(sql.Identifier("electric_assignment", a.user_column), sql.Literal(user_id))
        ]
        if scope_id is not None:
            if a.scope_column is None:
                raise PolicyError(f"assignment {a.name} has no scope column")
            conds.append(sql.SQL("{} = {}").format(sql.Identifier("electric_assignment", a.scope_column), scope_id))
        if a.condition:
            cond = compile_where(a.condition, arel, claims)
            conds.append(sql.SQL("coalesce(({}), false)").format(cond.sql))
        # the alias differs from every row source's (electric_before, electric_after, electric_r):
        # a row source referring to this table's alias would check the wrong row
        return sql.SQL("EXISTS (SELECT 1 FROM {} AS electric_assignment WHERE {})").format(
            sql.Identifier(a.table.schema, a.table.name), sql.SQL(" AND ").join(conds)
        )


def primary_key(rel: RelationDef) -> frozenset[str]:
    return frozenset(rel.pk_columns)


def record(rel: RelationDef, row: Mapping[str, Any]) -> sql.Composed:
    """A row source for one row given as JSON values (column -> value)."""
    return sql.SQL("jsonb_populate_record(NULL::{}, {}::jsonb)").format(
        sql.Identifier(rel.schema, rel.name), sql.Literal(json.dumps(dict(row)))
    )


def _over(row: sql.Composable, expr: sql.Composable) -> sql.Composable:
    """``expr`` (over unqualified columns) evaluated for the row ``row`` gives."""
    return sql.SQL("SELECT {} FROM {} AS electric_r").format(expr, row)


def _scope_id(g: GrantRule, rel: RelationDef, row: sql.Composable, describe: Describe) -> sql.Composable:
    """The key of the scope row that ``row`` belongs to, following the grant's foreign keys."""
    path: Sequence[Mapping[str, Any]] = g.scope_path
    if not path:
        # the table is the scope table: its own key
        pk = rel.pk_columns
        if len(pk) != 1:
            raise PolicyError(f"grant {g.name}: scope table {g.table} needs a single-column primary key")
        return sql.SQL("({})").format(_over(row, sql.Identifier(pk[0])))
    first = path[0]
    if len(first["columns"]) != 1:
        raise PolicyError(f"grant {g.name}: multi-column foreign keys cannot carry a scope")
    expr: sql.Composable = sql.SQL("({})").format(_over(row, sql.Identifier(first["columns"][0])))
    for prev, hop in itertools.pairwise(path):
        if len(hop["columns"]) != 1 or len(prev.get("references_columns") or ()) != 1:
            raise PolicyError(
                f"grant {g.name}: the scope path needs single-column foreign keys; run `electricctl apply`"
            )
        table = TableRef.parse(hop["table"])
        expr = sql.SQL("(SELECT {} FROM {} WHERE {} = {})").format(
            sql.Identifier(hop["columns"][0]),
            sql.Identifier(table.schema, table.name),
            sql.Identifier(prev["references_columns"][0]),
            expr,
        )
    return expr
