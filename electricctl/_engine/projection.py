"""What one client may read: per table, the rows and columns its grants show (the read projection).

Rows leave the engine projected: only the columns some grant shows (the relation lists just
those), and, when grants show different columns of different rows, a column no grant showing
that row covers is NULL. The key is always shown. Both protocols get rows already projected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from electricctl._auth.tokens import Identity
from electricctl._engine.ports import Catalog
from electricctl._model.rows import Change, RelationDef, Row
from electricctl._perms.read import ReadAccess, RoleState, read_access

Project = Callable[[Row], Row]


class ReadProjection:
    def __init__(self, catalog: Catalog, identity: Identity) -> None:
        self.catalog = catalog
        self.identity = identity
        self.roles: RoleState | None = None
        """The user's roles (from the assignment tables), once grants are enforced and read."""
        self.access: dict[str, ReadAccess] = {}
        """By table (``schema.name``): the rows and columns this client may read."""
        self._projected: dict[RelationDef, tuple[RelationDef, Project]] = {}

    async def access_for(self, rel: RelationDef) -> ReadAccess:
        """What this client may read of ``rel`` under its grants and roles as they are now."""
        policy, relations = await self.catalog.policy()
        if not policy.enforced:
            return ReadAccess(None, None)
        if self.roles is None:
            self.roles = await self.catalog.role_state(policy, relations, self.identity)
        access = read_access(policy, rel, self.identity.user_id, self.identity.claims, self.roles)
        self.access[rel.qualified] = access
        self._projected = {r: p for r, p in self._projected.items() if r.qualified != rel.qualified}
        return access

    def forget(self, table: str) -> ReadAccess | None:
        """Drop what is known of ``table`` (its grants are about to be read again)."""
        self._projected = {r: p for r, p in self._projected.items() if r.qualified != table}
        return self.access.pop(table, None)

    def relation(self, rel: RelationDef) -> RelationDef:
        """``rel`` with only the columns this client may read."""
        return self._projection(rel)[0]

    def row(self, rel: RelationDef, row: Row) -> Row:
        return self._projection(rel)[1](row)

    def snapshot_rows(self, rel: RelationDef, rows: Any) -> list[Row]:
        """Snapshot rows (each ending with its row tags, kept as they are), projected."""
        project = self._projection(rel)[1]
        n = len(rel.columns)
        return [(*project(row[:n]), row[n]) for row in rows]

    def change(self, ch: Change) -> Change:
        prel, project = self._projection(ch.relation)
        if project is _identity:
            return ch
        return Change(
            ch.op,
            prel,
            None if ch.new is None else project(ch.new),
            None if ch.old is None else project(ch.old),
        )

    def _projection(self, rel: RelationDef) -> tuple[RelationDef, Project]:
        hit = self._projected.get(rel)
        if hit is not None:
            return hit
        access = self.access.get(rel.qualified)
        keep = (
            None
            if access is None or access.columns is None
            else tuple(i for i, c in enumerate(rel.columns) if c.name in access.columns)
        )
        visible = access.masked(rel) if access is not None else None
        prel = (
            rel if keep is None else RelationDef(rel.relid, rel.schema, rel.name, tuple(rel.columns[i] for i in keep))
        )
        project: Project
        if visible is not None:
            names = [c.name for c in rel.columns]
            indexes = keep if keep is not None else tuple(range(len(names)))

            def project(row: Row, k: tuple[int, ...] = indexes, v: Any = visible) -> Row:
                shown = v(row)  # None: every column
                return tuple(row[i] if shown is None or names[i] in shown else None for i in k)

        elif keep is None:
            project = _identity
        else:
            kept = keep

            def project(row: Row, k: tuple[int, ...] = kept) -> Row:
                return tuple(row[i] for i in k)

        self._projected[rel] = (prel, project)
        return prel, project


def _identity(row: Row) -> Row:
    return row
