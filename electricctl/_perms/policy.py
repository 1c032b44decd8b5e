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

The read path (:func:`read_access`) is pure: it turns the grants and the user's roles into the rows
and columns the user may read. :func:`read_roles` is the one function here that does I/O: it reads
the user's roles from the assignment tables on a connection it is given.

With no grants in the config the server runs open, as 0.12 did (every authenticated client may
read and write every electrified table), and says so at startup.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from electricctl._model.rows import RelationDef
from electricctl._model.table import TableRef
from electricctl._shapes.compile import CompiledWhere, ShapeError, all_true, any_true, compile_where, constant, in_set

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
        return [g for g in self.grants_for(table, privilege) if g.columns is None or written <= g.columns | _pk(rel)]

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


def _pk(rel: RelationDef) -> frozenset[str]:
    return frozenset(rel.columns[i].name for i in rel.pk_indexes)


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
        pk = [rel.columns[i].name for i in rel.pk_indexes]
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


# -- the read path -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoleState:
    """The roles a user holds, as the assignment tables say at one moment."""

    global_roles: frozenset[str]
    scopes: Mapping[tuple[str, str], frozenset[str]]
    """(role, scope table) -> the keys (Postgres text) of the scope rows the user holds it for."""
    paths: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    """Grant name -> for a scope more than one foreign key away: the values of the grant table's
    foreign key that lead to a scope row the user holds the role for (read with the roles)."""


def path_queries(policy: Policy, roles: RoleState) -> list[tuple[GrantRule, sql.Composed]]:
    """For each grant whose scope is several foreign keys away and whose role the user holds for
    some scope: one query for the keys the grant table's first foreign key may take."""
    out: list[tuple[GrantRule, sql.Composed]] = []
    for g in policy.grants:
        if g.scope_table is None or len(g.scope_path) < 2 or "select" not in g.privileges:
            continue
        keys = roles.scopes.get((g.role, str(g.scope_table)), frozenset())
        hops = g.scope_path
        if not keys or any(len(h["columns"]) != 1 or len(h.get("references_columns") or ()) != 1 for h in hops):
            continue
        # innermost: the rows of the last intermediate table that point at a scope row the user holds
        inner: sql.Composable = sql.Literal(sorted(keys))
        for hop in reversed(hops[1:]):
            table = TableRef.parse(hop["table"])
            prev = hops[hops.index(hop) - 1]
            inner = sql.SQL("SELECT {}::text FROM {} WHERE {}::text = ANY({})").format(
                sql.Identifier(prev["references_columns"][0]),
                sql.Identifier(table.schema, table.name),
                sql.Identifier(hop["columns"][0]),
                inner if isinstance(inner, sql.Literal) else sql.SQL("ARRAY({})").format(inner),
            )
        out.append((g, sql.SQL("SELECT DISTINCT * FROM ({}) AS electric_keys").format(inner)))
    return out


def with_paths(roles: RoleState, results: Sequence[tuple[GrantRule, Sequence[Sequence[Any]]]]) -> RoleState:
    paths = {g.name: frozenset(str(r[0]) for r in rows if r[0] is not None) for g, rows in results}
    return RoleState(roles.global_roles, roles.scopes, paths)


def path_tables(policy: Policy) -> set[str]:
    """Tables between a grant's table and its scope: a change to them can change what a user reads."""
    return {h["table"] for g in policy.grants if g.scope_table is not None for h in g.scope_path[1:]}


def role_queries(
    policy: Policy, user_id: str | None, claims: Mapping[str, Any], describe: Describe
) -> list[tuple[AssignmentRule, sql.Composed]]:
    """One query per assignment: the rows that give ``user_id`` its role (the scope key, or 1)."""
    out: list[tuple[AssignmentRule, sql.Composed]] = []
    if not user_id:
        return out
    for a in policy.assignments:
        arel = describe(a.table)
        if arel is None:
            continue
        conds: list[sql.Composable] = [
            sql.SQL("{}::text = {}").format(sql.Identifier(a.user_column), sql.Literal(user_id))
        ]
        if a.condition:
            try:
                conds.append(sql.SQL("coalesce(({}), false)").format(compile_where(a.condition, arel, claims).sql))
            except ShapeError as exc:
                log.warning("assignment %s cannot be checked, so it gives no role: %s", a.name, exc)
                continue
        what = (
            sql.SQL("{}::text").format(sql.Identifier(a.scope_column))
            if a.scope_table and a.scope_column
            else sql.SQL("NULL::text")
        )
        out.append(
            (
                a,
                sql.SQL("SELECT DISTINCT {} FROM {} WHERE {}").format(
                    what, sql.Identifier(a.table.schema, a.table.name), sql.SQL(" AND ").join(conds)
                ),
            )
        )
    return out


def role_state(results: Sequence[tuple[AssignmentRule, Sequence[Sequence[Any]]]]) -> RoleState:
    global_roles: set[str] = set()
    scopes: dict[tuple[str, str], set[str]] = {}
    for a, rows in results:
        if not rows:
            continue
        if a.scope_table is None:
            global_roles.add(a.role)
        else:
            scopes.setdefault((a.role, str(a.scope_table)), set()).update(str(r[0]) for r in rows if r[0] is not None)
    return RoleState(frozenset(global_roles), {k: frozenset(v) for k, v in scopes.items()})


@dataclass(frozen=True, slots=True)
class ReadAccess:
    """What a user may read of one table: which rows (None: every row) and which columns (None: all)."""

    rows: CompiledWhere | None
    columns: frozenset[str] | None
    """Every column some grant shows (the relation the client gets lists these)."""
    denied: bool = False
    per_row: tuple[tuple[CompiledWhere | None, frozenset[str] | None], ...] = ()
    """When the grants show different columns: (rows, columns) of each; a row's value of a column
    no grant showing that row covers is sent as NULL. Empty when one column set holds for every row."""

    def filterable(self, rel: RelationDef) -> frozenset[str] | None:
        """The columns a where clause of this user may use: those readable in every row the user
        can see (None: all). A column readable in some rows only is not: filtering on it would
        tell its value in the others."""
        if self.per_row:
            common: frozenset[str] | None = None
            for _, cols in self.per_row:
                if cols is not None:
                    common = cols if common is None else common & cols
            return None if common is None else common | _pk(rel)
        return self.columns

    def masked(self, rel: RelationDef) -> Callable[[Any], frozenset[str] | None] | None:
        """A function giving the columns visible in a (Postgres text) row, or None if no masking."""
        if not self.per_row:
            return None
        rules = self.per_row
        pk = _pk(rel)

        def visible(row: Any) -> frozenset[str] | None:
            out: set[str] = set(pk)
            for where, cols in rules:
                if where is None or where.matches(row):
                    if cols is None:
                        return None
                    out |= cols
            return frozenset(out)

        return visible


def read_access(
    policy: Policy, rel: RelationDef, user_id: str | None, claims: Mapping[str, Any], roles: RoleState
) -> ReadAccess:
    """The union of the select grants the user holds on ``rel``: the rows any of them shows, and
    the columns any of them shows (the key is always shown). A scoped grant shows the rows whose
    foreign keys lead to a scope row the user holds the role for (several keys away, through
    ``RoleState.paths``, which is read again whenever a table on the way changes)."""
    if not policy.enforced:
        return ReadAccess(None, None)
    table = TableRef(rel.schema, rel.name)
    terms: list[CompiledWhere | None] = []
    columns: set[str] | None = set()
    per_grant: list[tuple[CompiledWhere | None, frozenset[str] | None]] = []
    for g in policy.grants_for(table, "select"):
        term = _read_term(g, rel, user_id, claims, roles)
        if term is False:
            continue
        terms.append(term if term is not True else None)
        per_grant.append((term if term is not True else None, g.columns))
        if columns is not None:
            columns = None if g.columns is None else columns | g.columns
    if not terms:
        return ReadAccess(constant(False), _pk(rel), denied=True)
    rows = None if any(t is None for t in terms) else any_true([t for t in terms if t is not None])
    # grants showing different columns: which columns a row shows depends on the grants showing it
    mixed = len({cols for _, cols in per_grant}) > 1
    return ReadAccess(
        rows, None if columns is None else frozenset(columns) | _pk(rel), per_row=tuple(per_grant) if mixed else ()
    )


def _read_term(
    g: GrantRule, rel: RelationDef, user_id: str | None, claims: Mapping[str, Any], roles: RoleState
) -> CompiledWhere | bool:
    """The rows grant ``g`` shows this user: True (all), False (none) or a filter."""
    if g.role == "authenticated" and not user_id:
        return False
    parts: list[CompiledWhere] = []
    if g.role not in BUILTIN:
        if g.scope_table is None:
            if g.role not in roles.global_roles:
                return False
        else:
            keys = roles.scopes.get((g.role, str(g.scope_table)), frozenset())
            if not keys:
                return False
            if not g.scope_path:
                pk = [rel.columns[i].name for i in rel.pk_indexes]
                if len(pk) != 1:
                    return False
                parts.append(in_set(rel, pk[0], keys))
            elif len(g.scope_path[0]["columns"]) != 1:
                return False
            elif len(g.scope_path) == 1:
                parts.append(in_set(rel, g.scope_path[0]["columns"][0], keys))
            else:
                allowed = roles.paths.get(g.name, frozenset())
                if not allowed:
                    return False
                parts.append(in_set(rel, g.scope_path[0]["columns"][0], allowed))
    if g.where:
        try:
            parts.append(compile_where(g.where, rel, claims))
        except ShapeError as exc:
            log.warning("grant %s cannot be checked, so it shows nothing: %s", g.name, exc)
            return False
    if not parts:
        return True
    return all_true(parts)


async def read_roles(
    conn: psycopg.AsyncConnection[Any], policy: Policy, relations: Mapping[TableRef, RelationDef], identity: Any
) -> RoleState:
    """The roles ``identity`` (user_id, claims) holds, read on ``conn`` (a snapshot's, for a
    consistent point), with the keys of multi-hop scopes."""
    if identity is None:
        return RoleState(frozenset(), {})
    results = []
    for a, query in role_queries(policy, identity.user_id, identity.claims, relations.get):
        results.append((a, await (await conn.execute(query)).fetchall()))
    roles = role_state(results)
    paths = []
    for g, query in path_queries(policy, roles):
        paths.append((g, await (await conn.execute(query)).fetchall()))
    return with_paths(roles, paths)
