"""``electricctl generate``: a typed Python client package from the electrified schema.

:mod:`~electricctl._codegen.sources` reads the migrations (from the database or a running
service), :mod:`~electricctl._codegen.build` turns them into the schema the runtime
(:mod:`electricctl.dal`) takes, :mod:`~electricctl._codegen.render` writes the package's source,
laid out by :mod:`~electricctl._codegen.fmt` as ``ruff format`` would.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from electricctl._codegen.build import GenerateError, build_schema
from electricctl._codegen.render import render
from electricctl._codegen.sources import from_database, from_service
from electricctl.dal.values import SCALARS

__all__ = ["GenerateError", "Generated", "generate", "write_package"]


@dataclass(frozen=True, slots=True)
class Generated:
    version: str
    tables: tuple[str, ...]
    written: tuple[str, ...]
    """The files whose bytes changed (empty: the package was up to date)."""


def generate(
    out: Path, *, database_url: str | None = None, service: str | None = None, shapes: Sequence[str] = ()
) -> Generated:
    """Read the schema from ``service`` (if given) or ``database_url`` and write the package."""
    enums: dict[str, tuple[str, ...]] = {}
    defaults: dict[tuple[str, str], str] = {}  # not in the protocol: from the database only
    if service:
        migrations = from_service(service)
        # a service electrifies only the types it maps and enums: another type name is an enum,
        # whose labels the protocol does not carry (its columns are str)
        for m in migrations:
            for c in m.table_columns:
                base = c.type_name.lstrip("_")
                if base not in SCALARS:
                    enums[base] = ()
    elif database_url:
        migrations, enums, defaults = from_database(database_url)
    else:
        raise GenerateError("no schema source: give a database (--database-url) or a service (--service)")
    if not any(m.op != "sqlite" for m in migrations):
        raise GenerateError("no table is electrified yet: declare tables in electric.yaml and `electricctl apply`")
    schema = build_schema(migrations, enums, shapes, defaults)
    return Generated(schema.version, tuple(schema.tables), write_package(out, render(schema)))


def write_package(out: Path, files: dict[str, str]) -> tuple[str, ...]:
    """Write each file whose bytes differ (atomically); the names written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in sorted(files.items()):
        path = out / name
        data = text.encode()
        try:
            if path.read_bytes() == data:
                continue
        except FileNotFoundError:
            pass
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        written.append(name)
    return tuple(written)
