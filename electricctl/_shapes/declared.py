"""The shapes electric.yaml declares, as the server matches requests against them (pure)."""

from __future__ import annotations

from typing import Any

from electricctl._expr import ast
from electricctl._expr.parse import ExprError, parse
from electricctl._model.table import TableRef


class ShapeRules:
    """Declared shapes and the adhoc_shapes setting; each declared clause is parsed once, here."""

    def __init__(self, declared: dict[str, dict[str, Any]], adhoc: str) -> None:
        self.declared = declared
        self.adhoc = adhoc
        self._normal: dict[str, tuple[str, object]] = {
            name: (str(d.get("table")), _normal(d.get("where") or "", TableRef.parse(str(d.get("table")))))
            for name, d in declared.items()
        }

    def find(self, table: TableRef, where: str) -> str | None:
        """The name of the declared shape a request (table, where) is, if any."""
        wanted = (str(table), _normal(where, table))
        for name, declared in self._normal.items():
            if declared == wanted:
                return name
        return None


def _normal(where: str, table: TableRef) -> object:
    if not where.strip():
        return None
    try:
        return ast.normalize(parse(where).expr, frozenset({table.name, str(table)}))
    except ExprError:
        return ("unparsable", where)
