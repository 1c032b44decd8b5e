"""Names used across sections of electric.yaml, resolved against the ``tables`` section.

Assignments, grants and shapes name tables (``issues`` or ``public.issues``), columns
(``issues.owner_id``) and roles (``admin``, ``projects:member``). Each resolves only against the
tables the file declares; an unknown or ambiguous name is reported to the sink at the node
that uses it, and resolves to None so the caller can skip the declaration.
"""

from __future__ import annotations

from collections.abc import Iterable

from electricctl._config.diagnostics import DiagnosticSink
from electricctl._config.model import BUILTIN_ROLES, Role, TableSpec
from electricctl._model.table import TableRef


class DeclaredTables:
    """The tables under ``tables``, for resolving the names other sections use."""

    def __init__(self, sink: DiagnosticSink, specs: Iterable[TableSpec]) -> None:
        self.sink = sink
        self.refs: tuple[TableRef, ...] = tuple(s.ref for s in specs)

    def resolve(self, name: str, path: str) -> TableRef | None:
        """The declared table ``name`` means: qualified, unique by name, or the one in ``public``."""
        if "." in name:
            ref = TableRef.parse(name)
            if ref in self.refs:
                return ref
        else:
            matches = [r for r in self.refs if r.name == name]
            if len(matches) == 1:
                return matches[0]
            public = [r for r in matches if r.schema == "public"]
            if public:
                return public[0]
            if len(matches) > 1:
                options = ", ".join(str(m) for m in sorted(matches))
                self.sink.error(
                    path, f"table name {name!r} is ambiguous ({options}); qualify it with its schema", "table.ambiguous"
                )
                return None
        self.sink.error(
            path, f"table {name!r} is not declared under `tables`; add it there to electrify it", "table.undeclared"
        )
        return None

    def column(self, text: str, path: str) -> tuple[TableRef, str] | None:
        """``table.column`` (the table may be schema-qualified) as a declared table and a column name."""
        table, _, column = text.rpartition(".")
        ref = self.resolve(table, path)
        return (ref, column) if ref else None

    def role(self, text: str, path: str) -> Role | None:
        """A role: built-in (case-insensitive), global, or ``<scope table>:<name>``."""
        scope_name, sep, name = text.rpartition(":")
        if not sep:
            lowered = text.lower()
            return Role(lowered if lowered in BUILTIN_ROLES else text)
        scope = self.resolve(scope_name, path)
        return Role(name, scope) if scope else None
