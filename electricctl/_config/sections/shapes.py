"""The ``shapes`` section: named subsets of the data clients subscribe to.

A shape is a root table with an optional where clause and a tree of includes (related tables,
each optionally filtered). Names are unique and a table may appear only once on each path of
the tree. ``plan`` resolves the foreign key each include follows (see electricctl._plan.validate).
"""

from __future__ import annotations

from typing import Any

from electricctl._config.expressions import check_expression, qualifiers_for
from electricctl._config.model import Include, Shape
from electricctl._config.references import DeclaredTables
from electricctl._model.table import TableRef


def validate_shapes(items: list[Any] | None, tables: DeclaredTables) -> tuple[Shape, ...]:
    """The valid shapes, in file order."""
    sink = tables.sink
    out: list[Shape] = []
    names: dict[str, int] = {}
    for i, item in enumerate(items or []):
        path = f"shapes[{i}]"
        name = item["name"]
        if name in names:
            sink.error(
                f"{path}.name",
                f"shape name {name!r} is used twice (first at line {names[name]})",
                "shape.duplicate",
            )
            continue
        names[name] = sink.at(path).line
        table = tables.resolve(item["table"], f"{path}.table")
        if table is None:
            continue
        where = None
        if "where" in item:
            where = check_expression(
                sink, f"{path}.where", table=table, qualifiers=qualifiers_for(table), allow_auth=True
            )
            if where is None:
                continue
        includes = _includes(item.get("include") or [], f"{path}.include", (table,), tables)
        if includes is None:
            continue
        out.append(Shape(name, table, where, includes, sink.at(path)))
    return tuple(out)


def _includes(
    items: list[Any], path: str, ancestors: tuple[TableRef, ...], tables: DeclaredTables
) -> tuple[Include, ...] | None:
    """The include tree under ``path``, or None if any part of it is invalid."""
    sink = tables.sink
    out: list[Include] = []
    ok = True
    for j, item in enumerate(items):
        ipath = f"{path}[{j}]"
        table = tables.resolve(item["table"], f"{ipath}.table")
        if table is None:
            ok = False
            continue
        if table in ancestors:
            cycle = " -> ".join(str(t.name) for t in (*ancestors, table))
            sink.error(
                f"{ipath}.table",
                f"cyclic include: {cycle}; a table may appear only once on each path of the tree",
                "shape.cycle",
            )
            ok = False
            continue
        where = None
        if "where" in item:
            where = check_expression(
                sink, f"{ipath}.where", table=table, qualifiers=qualifiers_for(table), allow_auth=True
            )
            if where is None:
                ok = False
                continue
        children = _includes(item.get("include") or [], f"{ipath}.include", (*ancestors, table), tables)
        if children is None:
            ok = False
            continue
        fk = item.get("foreign_key")
        out.append(Include(table, tuple(fk) if fk else None, where, children, sink.at(ipath)))
    return tuple(out) if ok else None
