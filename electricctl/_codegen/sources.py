"""Where ``electricctl generate`` reads the schema: the database electric.yaml points at, or a
running service's ``/api/migrations`` (the route the legacy generator reads too)."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from typing import Any

import pglast
import psycopg
from google.protobuf.message import DecodeError
from pglast import ast

from electricctl._codegen.build import GenerateError
from electricctl._model.migrations import ForeignKeyRef, Migration, MigrationColumn
from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.migrations_api import QUERY, from_rows

ENUMS = """
SELECT t.typname, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
GROUP BY t.typname ORDER BY t.typname
"""


DEFAULTS = """
SELECT n.nspname, c.relname, a.attname, pg_get_expr(d.adbin, d.adrelid)
FROM pg_attrdef d
JOIN pg_class c ON c.oid = d.adrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
WHERE NOT a.attisdropped AND a.attgenerated = ''
"""


def from_database(
    url: str,
) -> tuple[list[Migration], dict[str, tuple[str, ...]], dict[tuple[str, str], str]]:
    """The migrations recorded in ``electric.migrations``, every enum type's labels, and the
    electrified columns' defaults ((table, column) -> expression)."""
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            rows = conn.execute(QUERY, [""]).fetchall()
            enums = {str(r[0]): tuple(r[1]) for r in conn.execute(ENUMS).fetchall()}
            defaults_rows = conn.execute(DEFAULTS).fetchall()
    except psycopg.errors.UndefinedTable:
        raise GenerateError("the database has no electric.migrations: run `electricctl apply` first") from None
    except psycopg.Error as exc:
        raise GenerateError(f"cannot read the schema from the database: {exc}") from None
    migrations = from_rows(rows)
    schemas = {m.table: m.schema for m in migrations if m.op != "sqlite"}
    defaults = {
        (str(table), str(column)): str(expression)
        for schema, table, column, expression in defaults_rows
        if schemas.get(str(table)) == schema
    }
    return migrations, enums, defaults


def service_base(url: str) -> str:
    """``http://host:port`` from a service URL (``ws://host:port/ws`` is taken too)."""
    parsed = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parsed.scheme, parsed.scheme)
    if scheme not in ("http", "https") or not parsed.netloc:
        raise GenerateError(f"{url!r} is not a service URL (http://host:port, or ws://host:port/ws)")
    return f"{scheme}://{parsed.netloc}"


def _fetch_zip(base: str, dialect: str, timeout: float) -> dict[str, dict[str, bytes]]:
    """Per version, the files of the migrations zip (empty when the service has none)."""
    url = f"{base}/api/migrations?dialect={dialect}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) only, checked above
            if resp.status == 204:
                return {}
            data = resp.read()
    except urllib.error.HTTPError as exc:
        raise GenerateError(f"{url} answered {exc.code}: {exc.read()[:200].decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise GenerateError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    out: dict[str, dict[str, bytes]] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for name in zf.namelist():
                version, _, file = name.partition("/")
                out.setdefault(version, {})[file] = zf.read(name)
    except zipfile.BadZipFile:
        raise GenerateError(f"{url} did not answer with a migrations zip") from None
    return out


def _not_null(sql: str) -> dict[tuple[str, str], tuple[str, bool]]:
    """(table, column) -> (its type as written, NOT NULL?) from Postgres DDL of a migration."""
    out: dict[tuple[str, str], tuple[str, bool]] = {}
    if not sql.strip():
        return out
    for raw in pglast.parse_sql(sql):
        stmt = raw.stmt
        if isinstance(stmt, ast.CreateStmt):
            table = str(stmt.relation.relname) if stmt.relation is not None else ""
            for elt in stmt.tableElts or ():
                if isinstance(elt, ast.ColumnDef):
                    notnull = any(c.contype == pglast.enums.ConstrType.CONSTR_NOTNULL for c in elt.constraints or ())
                    out[(table, str(elt.colname))] = (_type_text(elt), notnull)
        elif isinstance(stmt, ast.AlterTableStmt):
            table = str(stmt.relation.relname) if stmt.relation is not None else ""
            for cmd in stmt.cmds or ():
                if isinstance(cmd, ast.AlterTableCmd) and isinstance(cmd.def_, ast.ColumnDef):
                    elt = cmd.def_
                    notnull = any(c.contype == pglast.enums.ConstrType.CONSTR_NOTNULL for c in elt.constraints or ())
                    out[(table, str(elt.colname))] = (_type_text(elt), notnull)
    return out


def _type_text(col: ast.ColumnDef) -> str:
    if col.typeName is None or not col.typeName.names:
        return ""
    names = [str(n.sval) for n in col.typeName.names if n.sval != "pg_catalog"]
    return ".".join(names)


def from_service(url: str, timeout: float = 30) -> list[Migration]:
    """The migrations a running service serves, as ``electricctl.migrations`` holds them.

    The Postgres dialect's DDL says which columns are NOT NULL when a table is created (the
    ``SatOpMigrate`` messages do not); a column added later counts as nullable. Enum labels are
    not in the protocol: enum columns are typed ``str`` (generate from the database for ``Literal``s).
    """
    base = service_base(url)
    pg = _fetch_zip(base, "postgresql", timeout)
    lite = _fetch_zip(base, "sqlite", timeout)
    known: dict[tuple[str, str], tuple[str, bool]] = {}
    out: list[Migration] = []
    for version in sorted(set(pg) | set(lite)):
        known.update(_not_null(pg.get(version, {}).get("migration.sql", b"").decode()))
        ops = _ops(pg.get(version) or lite.get(version) or {}, f"migration {version} from {base}", required=True)
        lite_ops = _ops(lite.get(version, {}), f"migration {version} from {base} (sqlite)")
        for i, op in enumerate(ops):
            out.extend(_migration(version, op, lite_ops[i] if i < len(lite_ops) else None, known))
    return out


def _ops(files: dict[str, bytes], what: str, required: bool = False) -> list[pb.SatOpMigrate]:
    """The ``SatOpMigrate`` operations of one version's ``metadata.json`` (none without the file,
    unless it is ``required``)."""
    if "metadata.json" not in files and not required:
        return []
    try:
        meta: dict[str, Any] = json.loads(files["metadata.json"])
        return [pb.SatOpMigrate.FromString(base64.b64decode(o)) for o in meta["ops"]]
    except (KeyError, ValueError, TypeError, DecodeError) as exc:
        raise GenerateError(f"{what} is not readable: {exc}") from None


def _migration(
    version: str,
    op: pb.SatOpMigrate,
    lite: pb.SatOpMigrate | None,
    known: dict[tuple[str, str], tuple[str, bool]],
) -> Sequence[Migration]:
    if not op.HasField("table") or not op.table.name:
        # a statement for the clients' own databases (electric.yaml's sqlite section)
        sql = "".join(s.sql for s in (lite.stmts if lite is not None else ()) if s.sql.strip())
        return [Migration(version, "public", "", "sqlite", (), (), (), (), sql)] if sql else []
    t = op.table
    cols = tuple(
        MigrationColumn(
            c.name,
            known.get((t.name, c.name), (c.pg_type.name, False))[0],
            c.pg_type.name,
            known.get((t.name, c.name), ("", False))[1],
        )
        for c in t.columns
    )
    kind = "create_table" if any(s.type == pb.SatOpMigrate.CREATE_TABLE for s in op.stmts) else "add_column"
    fks = tuple(
        ForeignKeyRef(f"{t.name}_{'_'.join(f.fk_cols)}_fkey", tuple(f.fk_cols), "public", f.pk_table, tuple(f.pk_cols))
        for f in t.fks
    )
    return [Migration(version, "public", t.name, kind, cols, cols, tuple(t.pks), fks)]
