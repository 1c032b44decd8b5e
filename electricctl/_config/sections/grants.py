"""The ``grants`` section: which role may do what to which rows and columns.

Privilege aliases (``all``, ``read``, ``write``) expand to the four privileges. The role must be
built in or held through some assignment; each (table, role, privilege) is granted at most
once, so that two grants never silently overlap.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from electricctl._config.diagnostics import DiagnosticSink
from electricctl._config.expressions import check_expression, qualifiers_for
from electricctl._config.model import PRIVILEGE_ALIASES, PRIVILEGES, Grant
from electricctl._config.references import DeclaredTables
from electricctl._model.table import TableRef


def expand_privileges(raw: str | list[str]) -> tuple[str, ...]:
    """``read`` or ``[read, delete]`` as privileges, each once, in the canonical order."""
    names = [raw] if isinstance(raw, str) else list(raw)
    return tuple(sorted({p for n in names for p in PRIVILEGE_ALIASES.get(n, (n,))}, key=PRIVILEGES.index))


def validate_grants(
    items: list[Any] | None, tables: DeclaredTables, assigned_roles: Collection[str]
) -> tuple[Grant, ...]:
    """The valid grants, in file order. ``assigned_roles`` are the keys of the roles assignments give."""
    sink = tables.sink
    out: list[Grant] = []
    seen: dict[tuple[TableRef, str, str], int] = {}
    for i, item in enumerate(items or []):
        path = f"grants[{i}]"
        grant = _grant(item, path, tables, sink, assigned_roles)
        if grant is None:
            continue
        clash = False
        for privilege in grant.privileges:
            key = (grant.table, grant.role.key, privilege)
            if key in seen:
                sink.error(
                    path,
                    f"{privilege} on {grant.table} is granted to {grant.role} twice (first at line {seen[key]}); "
                    "merge the two grants",
                    "grant.duplicate",
                )
                clash = True
                break
            seen[key] = grant.location.line
        if not clash:
            out.append(grant)
    return tuple(out)


def _grant(
    item: dict[str, Any], path: str, tables: DeclaredTables, sink: DiagnosticSink, assigned_roles: Collection[str]
) -> Grant | None:
    privileges = expand_privileges(item["privileges"])
    table = tables.resolve(item["on"], f"{path}.on")
    role = tables.role(item["to"], f"{path}.to")
    if table is None or role is None:
        return None
    if not role.builtin and role.key not in assigned_roles:
        sink.error(
            f"{path}.to",
            f"role {role} is not assigned by any entry under `assignments`; declare who holds it",
            "grant.role_undeclared",
        )
        return None
    columns = item.get("columns")
    if columns is not None:
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        if dupes:
            sink.error(f"{path}.columns", f"column {dupes[0]} is listed twice", "grant.column_duplicate")
            return None
    where = None
    if "where" in item:
        where = check_expression(
            sink, f"{path}.where", table=table, qualifiers=qualifiers_for(table, "new"), allow_auth=True
        )
        if where is None:
            return None
    return Grant(privileges, table, role, tuple(columns) if columns else None, where, sink.at(path))
