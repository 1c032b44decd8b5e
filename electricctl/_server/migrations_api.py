"""``GET /api/migrations``: the migrations as the legacy tooling reads them (a zip), and ``GET /api/status``.

The 0.12 CLI's generator fetches ``/api/migrations?dialect=sqlite|postgresql[&version=V]`` and
bundles the result with the app (../shared/reference/electric-legacy.md §5 and §9):
- a zip with, per version after ``V`` (compared as text), ``<version>/migration.sql`` (the DDL of
  its operations) and ``<version>/metadata.json``, an object with exactly the keys ``format``
  (``"SatOpMigrate"``), ``ops`` (each operation as a whole ``SatOpMigrate`` message, base64),
  ``protocol_version`` (``"Electric.Satellite"``) and ``version``;
- 204 with no body when there is nothing after ``V``; the generator accepts only 200 and 204.

Like Electric's, the endpoint needs no token: it describes the schema of the electrified tables,
not their rows. Building the zip is pure; :func:`load` reads ``electric.migrations``.
"""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

from electricctl._model.migrations import Migration, by_version
from electricctl._server.satellite_migrations import migrate_op

DIALECTS = ("sqlite", "postgresql")
_VERSION = re.compile(r"^[0-9_]*$")
QUERY = (
    "SELECT version, schema_name, table_name, op, columns, snapshot FROM electric.migrations"
    " WHERE version > %s ORDER BY id"
)

Rows = Callable[[str, Sequence[Any]], Awaitable[list[tuple[Any, ...]]]]


class Unavailable(RuntimeError):
    """The migrations could not be read (a 503, with this message)."""


class BadRequest(ValueError):
    """The request names no valid dialect or version (a 400, with this message)."""


def parse_query(query: str) -> tuple[str, str]:
    """``(dialect, version)`` from the query string."""
    params = parse_qs(query, keep_blank_values=True)
    dialect = (params.get("dialect") or [""])[-1]
    version = (params.get("version") or [""])[-1]
    if dialect not in DIALECTS:
        raise BadRequest(f"dialect must be one of {', '.join(DIALECTS)} (got {dialect!r})")
    if not _VERSION.fullmatch(version):
        raise BadRequest(f"version must be digits and underscores, as the server gives them (got {version!r})")
    return dialect, version


def from_rows(rows: Sequence[tuple[Any, ...]]) -> list[Migration]:
    fields = ("version", "schema", "table", "op", "columns", "snapshot")
    return [Migration.from_dict(dict(zip(fields, row, strict=True))) for row in rows]


def migrations_zip(migrations: Sequence[Migration], dialect: str) -> bytes | None:
    """The zip of ``migrations`` (in order, grouped by version), or None if there are none."""
    versions = by_version(migrations)
    if not versions:
        return None
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for version, group in versions.items():
            ops = [migrate_op(m, dialect) for m in group]
            zf.writestr(f"{version}/migration.sql", "".join(s.sql for op in ops for s in op.stmts))
            metadata = {
                "format": "SatOpMigrate",
                "ops": [base64.b64encode(op.SerializeToString()).decode() for op in ops],
                "protocol_version": "Electric.Satellite",
                "version": version,
            }
            zf.writestr(f"{version}/metadata.json", json.dumps(metadata, indent=2))
    return buf.getvalue()


async def load(rows: Rows, after: str) -> list[Migration]:
    return from_rows(await rows(QUERY, [after]))
