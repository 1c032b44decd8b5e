"""The shapes electric.yaml declares, as the server matches requests against them (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from electricctl._expr import ast
from electricctl._expr.parse import ExprError, parse
from electricctl._model.table import TableRef
from electricctl._shapes.tree import Include, includes_from_json


class ShapeRules:
    """Declared shapes and the adhoc_shapes setting; each declared clause is parsed once, here."""

    def __init__(self, declared: dict[str, dict[str, Any]], adhoc: str) -> None:
        self.declared = declared
        self.adhoc = adhoc
        self._normal: dict[str, tuple[str, object]] = {
            name: (str(d.get("table")), _normal(d.get("where") or "", TableRef.parse(str(d.get("table")))))
            for name, d in declared.items()
        }

    def find(self, table: TableRef, where: str, includes: Sequence[Include] = ()) -> str | None:
        """The name of the declared shape a request (table, where, include tree) is, if any."""
        wanted = (str(table), _normal(where, table))
        for name, declared in self._normal.items():
            if declared == wanted and _same_tree(includes, self.includes(name)):
                return name
        return None

    def includes(self, name: str) -> tuple[Include, ...]:
        """A declared shape's include tree."""
        return includes_from_json(self.declared[name].get("include"))


def _same_tree(asked: Sequence[Include], declared: Sequence[Include]) -> bool:
    """The same levels (in any order) with the same clauses; a level that names no foreign key
    stands for the one the declared shape follows."""
    if len(asked) != len(declared):
        return False
    left = list(declared)
    for a in asked:
        ta = TableRef.parse(a.table)
        for d in left:
            td = TableRef.parse(d.table)
            if (
                ta == td
                and (not a.foreign_key or a.foreign_key == d.foreign_key)
                and _normal(a.where, ta) == _normal(d.where, td)
                and _same_tree(a.include, d.include)
            ):
                left.remove(d)
                break
        else:
            return False
    return True


def _normal(where: str, table: TableRef) -> object:
    if not where.strip():
        return None
    try:
        return ast.normalize(parse(where).expr, frozenset({table.name, str(table)}))
    except ExprError:
        return ("unparsable", where)
