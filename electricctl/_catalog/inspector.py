"""Read the live database into an :class:`ObservedState`, in a handful of catalog queries.

Runs inside whatever transaction the caller holds (``apply`` introspects under its advisory lock,
so the plan it executes is computed from the state it will change). Catalog queries use
``pg_publication_rel`` rather than ``pg_publication_tables`` because the latter expands
partitioned tables into their leaves, and we want explicit membership.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from electricctl._catalog.observed import (
    AppliedRecord,
    CatalogState,
    ColumnInfo,
    ForeignKey,
    ObservedState,
    SlotInfo,
    TableInfo,
    TriggerInfo,
)
from electricctl._model import wire
from electricctl._model.table import TableRef
from electricctl._sql.catalog import RULE_TABLES
from electricctl.errors import CatalogError

_TABLES = """
SELECT c.oid, n.nspname AS schema, c.relname AS name, c.relkind::text AS kind,
       c.relreplident::text AS replident,
       (SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
         WHERE i.indrelid = c.oid AND i.indisreplident) AS replica_index,
       (SELECT array_agg(a.attname ORDER BY k.ord)
          FROM pg_index i
          CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = c.oid AND i.indisprimary) AS pk
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%(schemas)s::text[], %(names)s::text[]))
"""

_COLUMNS = """
SELECT a.attrelid AS oid, a.attname AS name, format_type(a.atttypid, a.atttypmod) AS display,
       t.typname AS type_name, t.typtype::text AS type_kind, t.typcategory = 'A' AS is_array,
       a.attnotnull AS not_null, a.attgenerated <> '' AS generated
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
 WHERE a.attrelid = ANY(%(oids)s) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attrelid, a.attnum
"""

FOREIGN_KEYS = """
SELECT con.conname AS name,
       sn.nspname AS schema, sc.relname AS table,
       (SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum) AS columns,
       tn.nspname AS target_schema, tc.relname AS target_table,
       (SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(con.confkey) WITH ORDINALITY k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum) AS target_columns
  FROM pg_constraint con
  JOIN pg_class sc ON sc.oid = con.conrelid JOIN pg_namespace sn ON sn.oid = sc.relnamespace
  JOIN pg_class tc ON tc.oid = con.confrelid JOIN pg_namespace tn ON tn.oid = tc.relnamespace
 WHERE con.contype = 'f' AND (con.conrelid = ANY(%(oids)s) OR con.confrelid = ANY(%(oids)s))
 ORDER BY con.conname
"""

_TRIGGERS = """
SELECT n.nspname AS schema, c.relname AS table, t.tgname AS name, t.tgenabled::text AS enabled,
       p.proname AS function
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_proc p ON p.oid = t.tgfoid
 WHERE NOT t.tgisinternal AND t.tgname LIKE 'electric\\_%%'
   AND c.oid = ANY(%(oids)s)
"""

_FUNCTIONS = """
SELECT p.proname AS name, p.prosrc AS source
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'electric'
"""

_PUBLICATION = """
SELECT p.puballtables AND true AS all_tables,
       p.pubinsert AND p.pubupdate AND p.pubdelete AND p.pubtruncate AS all_ops,
       coalesce((SELECT array_agg(n.nspname) FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.prpubid = p.oid), '{}') AS schemas,
       coalesce((SELECT array_agg(c.relname) FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.prpubid = p.oid), '{}') AS names
  FROM pg_publication p WHERE p.pubname = %(name)s
"""

_SLOTS = """
SELECT slot_name AS name, plugin, slot_type, active, wal_status::text AS wal_status,
       CASE WHEN slot_type = 'logical' THEN pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) END::bigint AS lag_bytes
  FROM pg_replication_slots WHERE database = current_database() OR database IS NULL
 ORDER BY slot_name
"""


def foreign_key(row: dict[str, Any]) -> ForeignKey:
    """A row of :data:`FOREIGN_KEYS` (read with ``dict_row``)."""
    return ForeignKey(
        name=row["name"],
        table=TableRef(row["schema"], row["table"]),
        columns=tuple(row["columns"]),
        target=TableRef(row["target_schema"], row["target_table"]),
        target_columns=tuple(row["target_columns"]),
    )


def inspect(conn: psycopg.Connection[Any], wanted: Iterable[TableRef], *, slots: bool = False) -> ObservedState:
    """Snapshot everything electricctl manages, for the ``wanted`` tables and the catalog's own."""
    try:
        return _inspect(conn, wanted, slots)
    except psycopg.Error as exc:
        raise CatalogError(f"could not introspect the database: {exc}") from exc


def _inspect(conn: psycopg.Connection[Any], wanted: Iterable[TableRef], slots: bool) -> ObservedState:
    cur = conn.cursor(row_factory=dict_row)
    settings = cur.execute(
        "SELECT current_setting('server_version_num')::int AS v, current_setting('wal_level') AS wal,"
        " current_database() AS db,"
        " CASE WHEN to_regnamespace('electric') IS NULL THEN -1 ELSE"
        "  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        "    WHERE n.nspname = 'electric')"
        "  + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        "    WHERE n.nspname = 'electric') END AS objects,"
        " to_regclass('electric.catalog_migrations') IS NOT NULL AS has_catalog"
    ).fetchone()
    assert settings is not None
    catalog = _catalog(cur) if settings["has_catalog"] else None

    want = set(wanted)
    if catalog:
        want |= set(catalog.electrified)
    ordered = sorted(want)
    rows = cur.execute(_TABLES, {"schemas": [t.schema for t in ordered], "names": [t.name for t in ordered]}).fetchall()
    oids = [r["oid"] for r in rows]
    columns: dict[int, list[ColumnInfo]] = {oid: [] for oid in oids}
    for c in cur.execute(_COLUMNS, {"oids": oids}).fetchall():
        columns[c.pop("oid")].append(
            ColumnInfo(
                name=c["name"],
                type_display=c["display"],
                type_name=c["type_name"],
                type_kind=c["type_kind"],
                is_array=c["is_array"],
                not_null=c["not_null"],
                generated=c["generated"],
            )
        )
    tables = {
        TableRef(r["schema"], r["name"]): TableInfo(
            ref=TableRef(r["schema"], r["name"]),
            oid=r["oid"],
            kind=r["kind"],
            columns=tuple(columns[r["oid"]]),
            primary_key=tuple(r["pk"] or ()),
            replica_identity=r["replident"],
            replica_index=r["replica_index"],
        )
        for r in rows
    }
    fks = tuple(foreign_key(r) for r in cur.execute(FOREIGN_KEYS, {"oids": oids}).fetchall())
    triggers = {
        (TableRef(r["schema"], r["table"]), r["name"]): TriggerInfo(
            TableRef(r["schema"], r["table"]), r["name"], r["enabled"], r["function"]
        )
        for r in cur.execute(_TRIGGERS, {"oids": oids}).fetchall()
    }
    functions = {r["name"]: r["source"] for r in cur.execute(_FUNCTIONS).fetchall()}
    event_triggers = frozenset(
        r["evtname"]
        for r in cur.execute(
            "SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'electric\\_%%' AND evtenabled <> 'D'"
        ).fetchall()
    )
    superuser = cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    pub = cur.execute(_PUBLICATION, {"name": wire.PUBLICATION}).fetchone()
    publication = None
    publication_ok = False
    if pub is not None:
        publication = frozenset(TableRef(s, n) for s, n in zip(pub["schemas"], pub["names"], strict=True))
        publication_ok = bool(pub["all_ops"]) and not pub["all_tables"]
    slot_infos: tuple[SlotInfo, ...] = ()
    if slots:
        gaps: dict[str, str] = {}
        if catalog is not None and catalog.version >= 3:
            gaps = {
                r["slot_name"]: r["at"]
                for r in cur.execute(
                    "SELECT slot_name, max(detected_at)::text AS at FROM electric.stream_gaps GROUP BY slot_name"
                ).fetchall()
            }
        slot_infos = tuple(
            SlotInfo(
                r["name"],
                r["plugin"],
                r["slot_type"],
                r["active"],
                r["lag_bytes"],
                r["wal_status"],
                gaps.get(r["name"]),
            )
            for r in cur.execute(_SLOTS).fetchall()
        )
    return ObservedState(
        server_version=settings["v"],
        wal_level=settings["wal"],
        database=settings["db"],
        tables=tables,
        foreign_keys=fks,
        triggers=triggers,
        functions=functions,
        publication=publication,
        publication_ok=publication_ok,
        electric_schema_objects=settings["objects"],
        catalog=catalog,
        slots=slot_infos,
        event_triggers=event_triggers,
        superuser=bool(superuser and superuser["rolsuper"]),
    )


def _catalog(cur: psycopg.Cursor[dict[str, Any]]) -> CatalogState:
    row = cur.execute("SELECT max(version) AS v FROM electric.catalog_migrations").fetchone()
    version = int(row["v"]) if row and row["v"] is not None else 0
    electrified = {
        TableRef(r["schema_name"], r["table_name"]): dict(r)
        for r in cur.execute(
            "SELECT schema_name, table_name, original_replica_identity, original_replica_index"
            " FROM electric.electrified"
        ).fetchall()
    }
    rules: dict[str, dict[str, Any]] = {}
    for table in RULE_TABLES:
        query = psycopg.sql.SQL("SELECT name, definition FROM electric.{}").format(psycopg.sql.Identifier(table))
        rules[table] = {r["name"]: r["definition"] for r in cur.execute(query).fetchall()}
    last = cur.execute(
        "SELECT config_hash, applied_at::text AS applied_at, electricctl_version, applied_by"
        " FROM electric.applied_configs ORDER BY id DESC LIMIT 1"
    ).fetchone()
    applied = AppliedRecord(**last) if last else None
    return CatalogState(version=version, electrified=electrified, rules=rules, last_applied=applied)
