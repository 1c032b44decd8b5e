"""Permissions, the read path: the roles a user holds (read from the assignment tables), and the
rows and columns the grants let it read (:func:`read_access`, pure). :func:`read_roles` is the
one function here that does I/O: it reads the roles on a connection it is given (a snapshot's,
for a consistent point).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from electricctl._model.rows import RelationDef
from electricctl._model.table import TableRef
from electricctl._perms.policy import BUILTIN, AssignmentRule, Describe, GrantRule, Policy, primary_key
from electricctl._shapes.compile import CompiledWhere, ShapeError, all_true, any_true, compile_where, constant, in_set

log = logging.getLogger("electricctl.server")


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
            return None if common is None else common | primary_key(rel)
        return self.columns

    def masked(self, rel: RelationDef) -> Callable[[Any], frozenset[str] | None] | None:
        """A function giving the columns visible in a (Postgres text) row, or None if no masking."""
        if not self.per_row:
            return None
        rules = self.per_row
        pk = primary_key(rel)

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
        return ReadAccess(constant(False), primary_key(rel), denied=True)
    rows = None if any(t is None for t in terms) else any_true([t for t in terms if t is not None])
    # grants showing different columns: which columns a row shows depends on the grants showing it
    mixed = len({cols for _, cols in per_grant}) > 1
    return ReadAccess(
        rows,
        None if columns is None else frozenset(columns) | primary_key(rel),
        per_row=tuple(per_grant) if mixed else (),
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
                pk = rel.pk_columns
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
