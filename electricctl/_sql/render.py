"""SQL for every change the planner can make, composed with :mod:`psycopg.sql`.

Pure: composing needs no connection, and ``as_string(None)`` prints the exact text that ``apply``
executes. Identifiers always go through :class:`~psycopg.sql.Identifier` and values through
:class:`~psycopg.sql.Literal`; no user text is ever pasted into SQL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from psycopg import sql

from electricctl._model import wire
from electricctl._model.table import TableRef
from electricctl._sql import names

_PUBLISH = "insert, update, delete, truncate"

Statement: TypeAlias = sql.SQL | sql.Composed
"""One executable statement."""


def text(stmt: sql.Composable) -> str:
    return stmt.as_string(None)


def table_ident(table: TableRef) -> sql.Identifier:
    return sql.Identifier(table.schema, table.name)


def electric_ident(name: str) -> sql.Identifier:
    return sql.Identifier(names.SCHEMA, name)


# -- publication ---------------------------------------------------------------------------------


def create_publication() -> Statement:
    return sql.SQL("CREATE PUBLICATION {} WITH (publish = {})").format(
        sql.Identifier(wire.PUBLICATION), sql.Literal(_PUBLISH)
    )


def reset_publication_options() -> Statement:
    return sql.SQL("ALTER PUBLICATION {} SET (publish = {})").format(
        sql.Identifier(wire.PUBLICATION), sql.Literal(_PUBLISH)
    )


def publication_add(table: TableRef) -> Statement:
    return sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(wire.PUBLICATION), table_ident(table))


def publication_drop(table: TableRef) -> Statement:
    return sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(sql.Identifier(wire.PUBLICATION), table_ident(table))


# -- replica identity ----------------------------------------------------------------------------


def replica_identity(table: TableRef, mode: str, index: str | None = None) -> Statement:
    """``mode`` is ``relreplident``: f full, d default, n nothing, i using ``index``."""
    if mode == "i" and index:
        clause: sql.Composable = sql.SQL("USING INDEX {}").format(sql.Identifier(index))
    else:
        clause = sql.SQL({"f": "FULL", "n": "NOTHING"}.get(mode, "DEFAULT"))
    return sql.SQL("ALTER TABLE {} REPLICA IDENTITY {}").format(table_ident(table), clause)


# -- stamping triggers ---------------------------------------------------------------------------

# jsonb_build_object takes at most 100 arguments: build wide tables' tag maps in chunks.
_CHUNK = 40


def _json_map(columns: Sequence[str], value: Callable[[str], sql.Composable]) -> sql.Composable:
    if not columns:
        return sql.SQL("'{}'::jsonb")
    parts = []
    for i in range(0, len(columns), _CHUNK):
        pairs = sql.SQL(", ").join(sql.SQL("{}, {}").format(sql.Literal(c), value(c)) for c in columns[i : i + _CHUNK])
        parts.append(sql.SQL("jsonb_build_object({})").format(pairs))
    return sql.SQL(" || ").join(parts)


def _tag_map(columns: Sequence[str]) -> sql.Composable:
    return _json_map(columns, lambda c: sql.SQL("tag"))


def _value_map(row: str, columns: Sequence[str]) -> sql.Composable:
    """``{column: value as text}`` of ``row`` (OLD or NEW)."""
    return _json_map(columns, lambda c: sql.SQL("{}.{}::text").format(sql.SQL(row), sql.Identifier(c)))


def _key(row: str, pk: Sequence[str]) -> tuple[sql.Composable, sql.Composable]:
    """The row's key as a row value (for comparison) and as text[] (for the shadow table)."""
    cols = [sql.SQL("{}.{}").format(sql.SQL(row), sql.Identifier(c)) for c in pk]
    as_row = sql.SQL("({})").format(sql.SQL(", ").join(cols))
    as_text = sql.SQL("ARRAY[{}]").format(sql.SQL(", ").join(sql.SQL("{}::text").format(c) for c in cols))
    return as_row, as_text


_UPSERT = """    INSERT INTO electric.shadow AS s (schema_name, table_name, pk, row_tags, col_tags, deleted, tombstone)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, {key}, {row_tags}, {col_tags}, {deleted}, {tombstone})
    ON CONFLICT (schema_name, table_name, pk) DO UPDATE SET {set};"""


def stamp_function_source(pk: Sequence[str], columns: Sequence[str], *, generic: bool = False) -> str:
    """Body of the per-table trigger function that keeps ``electric.shadow`` in step with direct writes.

    A direct write has observed the row as it is, so it replaces the row's tag set with its own
    tag (add-wins: it saw every earlier tag). An insert tags every column; an update tags only the
    columns whose value changed; a delete empties the tag set and keeps the row's last values as its
    tombstone. The tag's time is the clock when the row is written (after its row lock is taken), so
    a later write to the row never carries an earlier time than the commit it follows; clients know
    a direct write by its commit time, which is never earlier (see ``_merge.rules``).

    The sync worker sets ``electric.writer`` and tags the rows it writes itself, so inserts and
    updates are skipped for it; deletes are recorded in all cases, because a delete the worker
    makes can cascade to rows it does not track.

    ``columns`` are written into the body, which is fastest. A column added to the table later
    (the DDL guard lets additive changes through) must be tagged from the DDL's own transaction:
    the guard then turns on the body's ``generic`` path (:data:`~electricctl._sql.names.STAMP_FAST`
    becomes :data:`~electricctl._sql.names.STAMP_GENERIC`, a text swap it can make in plpgsql),
    where the row's columns this body does not name (``to_jsonb(row) - names``) are tagged the same
    way, more slowly. Two values compare equal as ``jsonb`` exactly when they do as their types,
    for every supported type. A tombstone's added columns keep their text forms, but for booleans
    and timestamps, which are in JSON's forms (Postgres reads them back the same). The planner
    takes such a body, written for a prefix of the table's columns, as in step
    (:func:`stamp_function_current`), so ``status`` shows no drift after an added column; the table
    keeps the generic path until its function is written again.
    """
    old_row, old_key = _key("OLD", pk)
    new_row, new_key = _key("NEW", pk)
    non_key = [c for c in columns if c not in pk]
    changed = [
        sql.SQL(
            "    IF NEW.{c} IS DISTINCT FROM OLD.{c} THEN changed := changed || jsonb_build_object({lit}, tag); END IF;"
        ).format(c=sql.Identifier(c), lit=sql.Literal(c))
        for c in non_key
    ]
    known = sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(sql.Literal(c) for c in columns))
    body = sql.SQL(
        """
DECLARE
    tag jsonb;
    changed jsonb := '{{}}'::jsonb;
    added jsonb;
    {generic}
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND {old_row} IS DISTINCT FROM {new_row}) THEN
        IF generic THEN
            -- the values of the columns added to the table since this function was written
            added := to_jsonb(OLD) - {known};
            changed := (SELECT coalesce(jsonb_object_agg(key, value), '{{}}') FROM json_each_text(row_to_json(OLD))
                        WHERE added ? key);
        END IF;
{delete}
        IF TG_OP = 'DELETE' THEN
            RETURN NULL;
        END IF;
        changed := '{{}}';
    END IF;
    IF coalesce(current_setting({writer}, true), '') <> '' THEN
        RETURN NULL;
    END IF;
    -- legacy Electric tags Postgres writes with a time in ms and no origin
    tag := jsonb_build_array(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint, NULL::text);
    IF generic THEN
        added := to_jsonb(NEW) - {known};
    END IF;
    IF TG_OP = 'INSERT' OR {old_row} IS DISTINCT FROM {new_row} THEN
        IF generic THEN
            changed := (SELECT coalesce(jsonb_object_agg(key, tag), '{{}}') FROM jsonb_object_keys(added) AS key);
        END IF;
{insert}
    ELSE
{changed}
        IF generic THEN
            changed := changed || (SELECT coalesce(jsonb_object_agg(key, tag), '{{}}') FROM jsonb_each(added)
                                   WHERE value IS DISTINCT FROM to_jsonb(OLD) -> key);
        END IF;
{update}
    END IF;
    RETURN NULL;
END
"""
    ).format(
        generic=sql.SQL(names.STAMP_GENERIC if generic else names.STAMP_FAST),
        writer=sql.Literal(names.WRITER_SETTING),
        old_row=old_row,
        new_row=new_row,
        known=known,
        delete=sql.SQL(_UPSERT).format(
            key=old_key,
            row_tags=sql.SQL("'[]'"),
            col_tags=sql.SQL("'{}'"),
            deleted=sql.SQL("true"),
            tombstone=sql.SQL("{} || changed").format(_value_map("OLD", non_key)),
            set=sql.SQL("row_tags = '[]', deleted = true, tombstone = EXCLUDED.tombstone"),
        ),
        insert=sql.SQL(_UPSERT).format(
            key=new_key,
            row_tags=sql.SQL("jsonb_build_array(tag)"),
            col_tags=sql.SQL("{} || changed").format(_tag_map(non_key)),
            deleted=sql.SQL("false"),
            tombstone=sql.SQL("NULL"),
            set=sql.SQL(
                "row_tags = EXCLUDED.row_tags, col_tags = EXCLUDED.col_tags, deleted = false, tombstone = NULL"
            ),
        ),
        changed=sql.SQL("\n").join(changed) if changed else sql.SQL("    NULL;"),
        update=sql.SQL(_UPSERT).format(
            key=new_key,
            row_tags=sql.SQL("jsonb_build_array(tag)"),
            col_tags=sql.SQL("changed"),
            deleted=sql.SQL("false"),
            tombstone=sql.SQL("NULL"),
            set=sql.SQL(
                "row_tags = EXCLUDED.row_tags, col_tags = s.col_tags || EXCLUDED.col_tags, deleted = false,"
                " tombstone = NULL"
            ),
        ),
    )
    return text(body)


def stamp_function_current(current: str | None, pk: Sequence[str], columns: Sequence[str]) -> bool:
    """Is ``current`` (an installed body) the one for these columns, or for the columns the table
    had before some were added (a prefix: added columns come last)? It tags both alike."""
    if current is None:
        return False
    if current == stamp_function_source(pk, columns):
        return True
    return any(current == stamp_function_source(pk, columns[:n], generic=True) for n in range(len(columns), 0, -1))


def create_stamp_function(table: TableRef, source: str) -> Statement:
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
        " SET search_path = pg_catalog, pg_temp AS {}"
    ).format(electric_ident(names.stamp_function(table)), sql.Literal(source))


def drop_function(name: str) -> Statement:
    return sql.SQL("DROP FUNCTION IF EXISTS {}()").format(electric_ident(name))


def create_row_trigger(table: TableRef) -> list[Statement]:
    return [
        sql.SQL("CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
            sql.Identifier(names.ROW_TRIGGER), table_ident(table), electric_ident(names.stamp_function(table))
        ),
        enable_trigger_always(table, names.ROW_TRIGGER),
    ]


def create_truncate_trigger(table: TableRef) -> list[Statement]:
    return [
        sql.SQL("CREATE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(
            sql.Identifier(names.TRUNCATE_TRIGGER), table_ident(table), electric_ident(names.TRUNCATE_FUNCTION)
        ),
        enable_trigger_always(table, names.TRUNCATE_TRIGGER),
    ]


def enable_trigger_always(table: TableRef, trigger: str) -> Statement:
    # ALWAYS: also fire when session_replication_role = replica (e.g. a native subscription
    # writing into this database), because those are direct writes that must be tagged too.
    return sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}").format(table_ident(table), sql.Identifier(trigger))


def drop_trigger(table: TableRef, trigger: str) -> Statement:
    return sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), table_ident(table))


# -- catalog rows --------------------------------------------------------------------------------


def record_electrified(table: TableRef, replica_identity: str, replica_index: str | None) -> Statement:
    """The table's catalog row, with the schema snapshot the DDL guard checks ALTER TABLE against."""
    return sql.SQL(
        "INSERT INTO electric.electrified"
        " (schema_name, table_name, original_replica_identity, original_replica_index, schema_snapshot)"
        " VALUES ({schema}, {name}, {identity}, {index}, electric.table_snapshot({table}))"
    ).format(
        schema=sql.Literal(table.schema),
        name=sql.Literal(table.name),
        identity=sql.Literal(replica_identity),
        index=sql.Literal(replica_index),
        table=sql.SQL(
            "(SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = {} AND c.relname = {})"
        ).format(sql.Literal(table.schema), sql.Literal(table.name)),
    )


def forget_electrified(table: TableRef) -> list[Statement]:
    where = sql.SQL("schema_name = {} AND table_name = {}").format(sql.Literal(table.schema), sql.Literal(table.name))
    return [
        sql.SQL("DELETE FROM electric.shadow WHERE {}").format(where),
        sql.SQL("DELETE FROM electric.electrified WHERE {}").format(where),
    ]


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def upsert_rule(catalog_table: str, name: str, definition: Any) -> Statement:
    return sql.SQL(
        "INSERT INTO {} (name, definition) VALUES ({}, {}::jsonb)"
        " ON CONFLICT (name) DO UPDATE SET definition = EXCLUDED.definition, updated_at = now()"
    ).format(electric_ident(catalog_table), sql.Literal(name), sql.Literal(canonical_json(definition)))


def delete_rule(catalog_table: str, name: str) -> Statement:
    return sql.SQL("DELETE FROM {} WHERE name = {}").format(electric_ident(catalog_table), sql.Literal(name))
