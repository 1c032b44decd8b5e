"""The ``assignments`` section: who holds which role.

An assignment gives ``role`` to the user whose id is in ``to`` (``table.column``), optionally
scoped by a column of the same table (``scope``) and conditional on ``if``. Built-in roles
cannot be assigned; a scoped role needs a scope column and a global role must not have one.
"""

from __future__ import annotations

from typing import Any

from electricctl._config.diagnostics import DiagnosticSink
from electricctl._config.expressions import check_expression, qualifiers_for
from electricctl._config.model import Assignment
from electricctl._config.references import DeclaredTables


def validate_assignments(
    items: list[Any] | None, tables: DeclaredTables, named: set[str] | None = None
) -> tuple[Assignment, ...]:
    """The valid assignments, in file order; each address (role, table, user column) at most once.
    ``named`` collects the key of every role an entry names, valid or not (a grant to a role whose
    assignment has an error of its own is not reported a second time as unassigned)."""
    sink = tables.sink
    out: list[Assignment] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items or []):
        path = f"assignments[{i}]"
        assignment = _assignment(item, path, tables, sink, named)
        if assignment is None:
            continue
        if assignment.address in seen:
            sink.error(
                path,
                f"role {assignment.role} is assigned to {assignment.table}.{assignment.user_column} twice"
                f" (first at line {seen[assignment.address]})",
                "assign.duplicate",
            )
            continue
        seen[assignment.address] = assignment.location.line
        out.append(assignment)
    return tuple(out)


def _assignment(
    item: dict[str, Any], path: str, tables: DeclaredTables, sink: DiagnosticSink, named: set[str] | None
) -> Assignment | None:
    role = tables.role(item["role"], f"{path}.role")
    if role is not None and named is not None:
        named.add(role.key)
    to = tables.column(item["to"], f"{path}.to")
    if role is None or to is None:
        return None
    table, user_column = to
    if role.builtin:
        sink.error(f"{path}.role", f"{role} is a built-in role and cannot be assigned", "assign.builtin")
        return None
    scope_column = None
    if "scope" in item:
        scope = tables.column(item["scope"], f"{path}.scope")
        if scope is None:
            return None
        if scope[0] != table:
            sink.error(
                f"{path}.scope",
                f"scope column must be on the same table as `to` ({table}), not {scope[0]}",
                "assign.scope_table",
            )
            return None
        scope_column = scope[1]
        if role.scope is None:
            sink.error(
                f"{path}.scope",
                f"role {role} is global; write it as '<scope_table>:{role.name}' to scope it, or drop `scope`",
                "assign.scope_global",
            )
            return None
    elif role.scope is not None:
        sink.error(
            path,
            f"scoped role {role} needs `scope: {table.name}.<column referencing {role.scope.name}>`",
            "assign.scope_missing",
        )
        return None
    condition = None
    if "if" in item:
        condition = check_expression(
            sink, f"{path}.if", table=table, qualifiers=qualifiers_for(table), allow_auth=False
        )
        if condition is None:
            return None
    return Assignment(role, table, user_column, scope_column, condition, sink.at(path))
