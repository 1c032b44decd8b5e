"""The ``tables`` section: which tables are electrified.

Each name becomes a :class:`TableSpec`; a table listed twice and tables of the ``electric``
schema (electricctl's own) are refused.
"""

from __future__ import annotations

from typing import Any

from electricctl._config.diagnostics import DiagnosticSink
from electricctl._config.model import TableSpec
from electricctl._model.table import TableRef


def validate_tables(items: list[Any] | None, sink: DiagnosticSink) -> tuple[TableSpec, ...]:
    """The declared tables, in file order, without duplicates or reserved ones."""
    declared: dict[TableRef, TableSpec] = {}
    for i, name in enumerate(items or []):
        path = f"tables[{i}]"
        ref = TableRef.parse(name)
        if ref in declared:
            first = declared[ref].location.line
            sink.error(path, f"table {ref} is declared twice (first at line {first})", "table.duplicate")
            continue
        if ref.schema == "electric":
            sink.error(
                path,
                "the electric schema belongs to electricctl; its tables cannot be electrified",
                "table.reserved",
            )
            continue
        declared[ref] = TableSpec(ref, sink.at(path))
    return tuple(declared.values())
