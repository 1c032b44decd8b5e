"""The DDL guard: event triggers that refuse schema changes clients cannot follow.

Electric 0.12 allowed only additive migrations on electrified tables
(../shared/reference/electric-legacy.md §5): add a column, create or drop an index, electrify a new
table. Everything else (dropping or renaming a table or a column, changing a column's type, adding
NOT NULL, a foreign key to a table clients do not have) would leave clients with rows and pending
writes the server can no longer take. Electric refused such DDL in its migrations proxy; we refuse
it in Postgres itself, so it holds for every connection, psql included.

- ``electric.electrified.schema_snapshot`` records each electrified table as ``apply`` (or the last
  allowed ALTER) left it: its oid, its columns (attnum, name, type, NOT NULL) and the names of its
  foreign keys.
- ``electric.guard_alter()`` runs at the end of every ``ALTER TABLE``. For an electrified table it
  compares the table with its snapshot and raises (rolling the whole statement back) on anything
  but new nullable or defaulted columns of a supported type, then records the new snapshot.
- ``electric.guard_drop()`` runs on ``sql_drop`` and refuses dropping an electrified table or one of
  its columns (``DROP SCHEMA ... CASCADE`` included).
- ``TRUNCATE`` of an electrified table is refused by its ``electric_stamp_truncate`` trigger: the WAL
  carries no rows for it and the Satellite protocol no operation, so clients would keep rows that
  are gone. ``DELETE`` reaches them row by row.

Unelectrified tables are never looked at. Event triggers need a superuser to create, so they are
installed by ``apply`` as a change of their own (see :mod:`electricctl._plan.diff`).
"""

from __future__ import annotations

from psycopg import sql

from electricctl._model.pgtypes import ARRAY_ELEMENT_TYPES, SUPPORTED_TYPES
from electricctl._model.table import TableRef
from electricctl._model.wire import MIGRATION_PREFIX
from electricctl._sql import names
from electricctl._sql.render import Statement

ALTER_TRIGGER = "electric_guard_alter"
DROP_TRIGGER = "electric_guard_drop"
EVENT_TRIGGERS = (ALTER_TRIGGER, DROP_TRIGGER)

_HINT_REMOVE = (
    "Only additive changes reach clients: add a nullable column (or one with a default), or an index. "
    "To change the table otherwise, take it out of electric.yaml and run electricctl apply --prune first "
    "(clients stop syncing it), make the change, then electrify it again."
)

_TABLE_SNAPSHOT = sql.SQL(
    """CREATE FUNCTION electric.table_snapshot(rel regclass) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $body$
SELECT CASE WHEN rel IS NULL THEN NULL ELSE jsonb_build_object(
    'relid', rel::oid::bigint,
    'columns', coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'attnum', a.attnum, 'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
                   'type_name', t.typname, 'notnull', a.attnotnull) ORDER BY a.attnum)
          FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
         WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped), '[]'::jsonb),
    'primary_key', coalesce((
        SELECT jsonb_agg(a.attname ORDER BY k.n)
          FROM pg_constraint c, unnest(c.conkey) WITH ORDINALITY AS k(attnum, n), pg_attribute a
         WHERE c.conrelid = rel AND c.contype = 'p' AND a.attrelid = rel AND a.attnum = k.attnum), '[]'::jsonb),
    'foreign_keys', coalesce((
        SELECT jsonb_agg(c.conname::text ORDER BY c.conname)
          FROM pg_constraint c WHERE c.conrelid = rel AND c.contype = 'f'), '[]'::jsonb),
    'references', coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'name', c.conname, 'parent_schema', pn.nspname, 'parent_table', pc.relname,
                   'columns', (SELECT jsonb_agg(a.attname ORDER BY k.n)
                                 FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
                                 JOIN pg_attribute a ON a.attrelid = rel AND a.attnum = k.attnum),
                   'parent_columns', (SELECT jsonb_agg(a.attname ORDER BY k.n)
                                        FROM unnest(c.confkey) WITH ORDINALITY AS k(attnum, n)
                                        JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum))
                   ORDER BY c.conname)
          FROM pg_constraint c JOIN pg_class pc ON pc.oid = c.confrelid
          JOIN pg_namespace pn ON pn.oid = pc.relnamespace
         WHERE c.conrelid = rel AND c.contype = 'f'), '[]'::jsonb)) END
$body$"""
)

_MIGRATIONS = sql.SQL(
    """CREATE TABLE electric.migrations (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version text NOT NULL,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at timestamptz NOT NULL DEFAULT now(),
    schema_name text NOT NULL,
    table_name text NOT NULL,
    op text NOT NULL,
    columns jsonb NOT NULL,
    snapshot jsonb NOT NULL
)"""
)

_MIGRATION_VERSION = sql.SQL(
    """CREATE FUNCTION electric.migration_version() RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
DECLARE
    given text := nullif(current_setting('electric.migration_version', true), '');
    chosen text := nullif(current_setting('electric.transaction_migration', true), '');
    last text;
BEGIN
    IF chosen IS NOT NULL THEN
        RETURN chosen;  -- one version per transaction
    END IF;
    SELECT max(version) INTO last FROM electric.migrations WHERE txid <> pg_current_xact_id();
    IF given IS NOT NULL THEN
        IF given !~ '^[0-9_]+$' THEN
            RAISE EXCEPTION 'electricctl: migration version % is not made of digits and underscores', given
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Clients compare versions as text: use fixed-width digits, such as 20261130120000.';
        ELSIF last IS NOT NULL AND given <= last THEN
            RAISE EXCEPTION 'electricctl: migration version % is not after the last one, %', given, last
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Versions must increase (compared as text); leave electric.migration_version unset '
                             'to get one from the clock.';
        END IF;
        chosen := given;
    ELSE
        chosen := to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISSMS');
        IF last IS NOT NULL AND chosen <= last THEN
            chosen := last || '_1';  -- the clock stepped back, or a given version ran ahead of it
        END IF;
    END IF;
    PERFORM set_config('electric.transaction_migration', chosen, true);
    RETURN chosen;
END
$body$"""
)

_RECORD_MIGRATION = sql.SQL(
    """CREATE FUNCTION electric.record_migration(rel regclass, op text, columns jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
DECLARE
    version text := electric.migration_version();
    snapshot jsonb := electric.table_snapshot(rel);
    ns text;
    nm text;
BEGIN
    SELECT n.nspname, c.relname INTO ns, nm FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = rel;
    INSERT INTO electric.migrations (version, schema_name, table_name, op, columns, snapshot)
    VALUES (version, ns, nm, op, columns, snapshot);
    -- transactional: the stream carries it in the DDL's transaction, in WAL order
    PERFORM pg_logical_emit_message(true, {prefix}, jsonb_build_object(
        'version', version, 'schema', ns, 'table', nm, 'op', op, 'columns', columns, 'snapshot', snapshot)::text);
END
$body$"""
)

_RECORD_SQLITE = sql.SQL(
    """CREATE FUNCTION electric.record_sqlite(statement text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
DECLARE
    version text := electric.migration_version();
    snapshot jsonb := jsonb_build_object('columns', '[]'::jsonb, 'sql', statement);
BEGIN
    INSERT INTO electric.migrations (version, schema_name, table_name, op, columns, snapshot)
    VALUES (version, '', '', 'sqlite', '[]', snapshot);
    PERFORM pg_logical_emit_message(true, {prefix}, jsonb_build_object(
        'version', version, 'schema', '', 'table', '', 'op', 'sqlite', 'columns', '[]'::jsonb,
        'snapshot', snapshot)::text);
END
$body$"""
)

_GUARD_ALTER = sql.SQL(
    """CREATE OR REPLACE FUNCTION electric.guard_alter() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
DECLARE
    cmd record;
    e record;
    col jsonb;
    cur record;
    fk record;
    qualified text;
    added jsonb;
    stamp record;
    hint text := {hint};
BEGIN
    FOR cmd IN SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
                WHERE classid = 'pg_class'::regclass LOOP
        FOR e IN SELECT * FROM electric.electrified el
                  WHERE (el.schema_snapshot->>'relid')::oid = cmd.objid
                     OR to_regclass(format('%I.%I', el.schema_name, el.table_name)) = cmd.objid LOOP
            qualified := format('%I.%I', e.schema_name, e.table_name);
            IF to_regclass(qualified) IS DISTINCT FROM cmd.objid THEN
                RAISE EXCEPTION 'electricctl: cannot rename electrified table %, or move it to another schema: '
                    'clients know it by its name', qualified
                    USING ERRCODE = 'feature_not_supported', HINT = hint;
            END IF;
            IF e.schema_snapshot IS NOT NULL THEN
                FOR col IN SELECT * FROM jsonb_array_elements(e.schema_snapshot->'columns') LOOP
                    SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull
                      INTO cur FROM pg_attribute a
                     WHERE a.attrelid = cmd.objid AND a.attnum = (col->>'attnum')::int2 AND NOT a.attisdropped;
                    IF NOT FOUND THEN
                        RAISE EXCEPTION 'electricctl: cannot drop column % of electrified table %: '
                            'clients hold its values and may still write them', col->>'name', qualified
                            USING ERRCODE = 'feature_not_supported', HINT = hint;
                    ELSIF cur.name <> col->>'name' THEN
                        RAISE EXCEPTION 'electricctl: cannot rename column % of electrified table % to %: '
                            'clients know it by its name', col->>'name', qualified, cur.name
                            USING ERRCODE = 'feature_not_supported', HINT = hint;
                    ELSIF cur.type <> col->>'type' THEN
                        RAISE EXCEPTION 'electricctl: cannot change the type of column % of electrified table % '
                            'from % to %: clients hold values of the old type', col->>'name', qualified,
                            col->>'type', cur.type
                            USING ERRCODE = 'feature_not_supported', HINT = hint;
                    ELSIF cur.attnotnull AND NOT (col->>'notnull')::boolean THEN
                        RAISE EXCEPTION 'electricctl: cannot make column % of electrified table % NOT NULL: '
                            'clients may hold writes with no value in it', col->>'name', qualified
                            USING ERRCODE = 'feature_not_supported', HINT = hint;
                    END IF;
                END LOOP;
                FOR cur IN SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type,
                                  a.attnotnull, a.atthasdef, a.attgenerated::text AS generated,
                                  t.typname::text AS typname, t.typtype, t.typcategory,
                                  (SELECT et.typname::text FROM pg_type et WHERE et.oid = t.typelem) AS elemname
                             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                            WHERE a.attrelid = cmd.objid AND a.attnum > 0 AND NOT a.attisdropped
                              AND a.attnum NOT IN (SELECT (c->>'attnum')::int2
                                                     FROM jsonb_array_elements(e.schema_snapshot->'columns') c) LOOP
                    IF cur.generated <> '' THEN
                        RAISE EXCEPTION 'electricctl: cannot add generated column % to electrified table %: '
                            'clients write every column of the rows they write', cur.name, qualified
                            USING ERRCODE = 'feature_not_supported',
                                  HINT = 'Add a plain column, or compute the value in a view or in the app.';
                    ELSIF cur.attnotnull AND NOT cur.atthasdef THEN
                        RAISE EXCEPTION 'electricctl: cannot add column % to electrified table % as NOT NULL '
                            'without a default: clients on the older schema cannot fill it', cur.name, qualified
                            USING ERRCODE = 'feature_not_supported',
                                  HINT = 'Add it nullable, or with a DEFAULT.';
                    ELSIF NOT (cur.typtype = 'e' OR (cur.typtype = 'b' AND cur.typcategory <> 'A'
                                                     AND cur.typname = ANY ({supported}::text[]))
                               OR (cur.typtype = 'b' AND cur.typcategory = 'A'
                                   AND cur.elemname = ANY ({array_elements}::text[]))) THEN
                        RAISE EXCEPTION 'electricctl: cannot add column % of type % to electrified table %: '
                            'clients cannot hold that type', cur.name, cur.type, qualified
                            USING ERRCODE = 'feature_not_supported',
                                  HINT = 'Supported types: ' || array_to_string({supported}::text[], ', ')
                                         || ', enum types, and arrays of '
                                         || array_to_string({array_elements}::text[], ', ') || '.';
                    END IF;
                    added := coalesce(added, '[]'::jsonb) || jsonb_build_array(jsonb_build_object(
                        'name', cur.name, 'type', cur.type, 'type_name', cur.typname, 'notnull', cur.attnotnull));
                END LOOP;
                FOR fk IN SELECT c.conname::text AS name, pn.nspname::text AS parent_schema,
                                 pc.relname::text AS parent_name
                            FROM pg_constraint c JOIN pg_class pc ON pc.oid = c.confrelid
                            JOIN pg_namespace pn ON pn.oid = pc.relnamespace
                           WHERE c.conrelid = cmd.objid AND c.contype = 'f'
                             AND NOT (e.schema_snapshot->'foreign_keys') ? c.conname::text LOOP
                    IF NOT EXISTS (SELECT 1 FROM electric.electrified x
                                    WHERE x.schema_name = fk.parent_schema AND x.table_name = fk.parent_name) THEN
                        RAISE EXCEPTION 'electricctl: cannot add foreign key % to electrified table %: '
                            'it references %, which is not electrified, so clients would not have the rows it needs',
                            fk.name, qualified, format('%I.%I', fk.parent_schema, fk.parent_name)
                            USING ERRCODE = 'feature_not_supported',
                                  HINT = 'Electrify the referenced table in electric.yaml and apply first.';
                    END IF;
                END LOOP;
            END IF;
            UPDATE electric.electrified SET schema_snapshot = electric.table_snapshot(cmd.objid::regclass)
             WHERE schema_name = e.schema_name AND table_name = e.table_name;
            IF added IS NOT NULL THEN
                PERFORM electric.record_migration(cmd.objid::regclass, 'add_column', added);
                added := NULL;
                -- the table's stamp function names the columns it had when it was written: turn on
                -- its generic path, which tags the added ones too (electricctl._sql.render)
                SELECT p.proname::text AS name, p.prosrc AS source INTO stamp
                  FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
                 WHERE t.tgrelid = cmd.objid AND t.tgname = {row_trigger};
                IF FOUND AND position({fast} IN stamp.source) > 0 THEN
                    EXECUTE format('CREATE OR REPLACE FUNCTION %I.%I() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER'
                                   ' SET search_path = pg_catalog, pg_temp AS %L', {schema}, stamp.name,
                                   replace(stamp.source, {fast}, {generic}));
                END IF;
            END IF;
        END LOOP;
    END LOOP;
END
$body$"""
)

_GUARD_DROP = sql.SQL(
    """CREATE FUNCTION electric.guard_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
DECLARE
    obj record;
    hint text := {hint};
BEGIN
    FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
        IF obj.object_type = 'table' AND EXISTS (
            SELECT 1 FROM electric.electrified e
             WHERE e.schema_name = obj.schema_name AND e.table_name = obj.object_name) THEN
            RAISE EXCEPTION 'electricctl: cannot drop electrified table %: clients hold its rows',
                format('%I.%I', obj.schema_name, obj.object_name)
                USING ERRCODE = 'feature_not_supported', HINT = hint;
        ELSIF obj.object_type = 'table column' AND EXISTS (
            SELECT 1 FROM electric.electrified e
             WHERE e.schema_name = obj.address_names[1] AND e.table_name = obj.address_names[2]) THEN
            RAISE EXCEPTION 'electricctl: cannot drop column % of electrified table %: '
                'clients hold its values and may still write them', obj.address_names[3],
                format('%I.%I', obj.address_names[1], obj.address_names[2])
                USING ERRCODE = 'feature_not_supported', HINT = hint;
        END IF;
    END LOOP;
END
$body$"""
)


_REFUSE_TRUNCATE = sql.SQL(
    """CREATE OR REPLACE FUNCTION electric.stamp_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
BEGIN
    RAISE EXCEPTION 'electricctl: cannot truncate electrified table %: clients would keep its rows',
        format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME)
        USING ERRCODE = 'feature_not_supported',
              HINT = 'Delete the rows with DELETE instead: clients receive each delete. Or take the table out of '
                     'electric.yaml and run electricctl apply --prune first.';
END
$body$"""
)


def guard_alter() -> Statement:
    return _GUARD_ALTER.format(
        hint=sql.Literal(_HINT_REMOVE),
        supported=sql.Literal(list(SUPPORTED_TYPES)),
        array_elements=sql.Literal(list(ARRAY_ELEMENT_TYPES)),
        row_trigger=sql.Literal(names.ROW_TRIGGER),
        schema=sql.Literal(names.SCHEMA),
        fast=sql.Literal(names.STAMP_FAST),
        generic=sql.Literal(names.STAMP_GENERIC),
    )


def record_sqlite_function() -> Statement:
    """``electric.record_sqlite(statement)``: a ``sqlite`` migration, recorded and in the stream."""
    return _RECORD_SQLITE.format(prefix=sql.Literal(MIGRATION_PREFIX))


def record_sqlite(statement: str) -> Statement:
    return sql.SQL("SELECT electric.record_sqlite({})").format(sql.Literal(statement))


def catalog_statements() -> list[Statement]:
    """Catalog version 4: the snapshot column, the migrations table, and the guard's functions."""
    hint = sql.Literal(_HINT_REMOVE)
    return [
        sql.SQL("ALTER TABLE electric.electrified ADD COLUMN schema_snapshot jsonb"),
        _TABLE_SNAPSHOT,
        sql.SQL(
            "UPDATE electric.electrified"
            " SET schema_snapshot = electric.table_snapshot(to_regclass(format('%I.%I', schema_name, table_name)))"
        ),
        _MIGRATIONS,
        _MIGRATION_VERSION,
        _RECORD_MIGRATION.format(prefix=sql.Literal(MIGRATION_PREFIX)),
        guard_alter(),
        _GUARD_DROP.format(hint=hint),
        # the baseline for tables electrified before this catalog version: one create_table each
        sql.SQL(
            "SELECT electric.record_migration(t.rel, 'create_table', electric.table_snapshot(t.rel)->'columns')"
            " FROM (SELECT to_regclass(format('%I.%I', schema_name, table_name)) AS rel FROM electric.electrified"
            " ORDER BY schema_name, table_name) t WHERE t.rel IS NOT NULL"
        ),
        # TRUNCATE has no rows in the WAL and no Satellite operation: a client cannot learn which of
        # its rows are gone, so it is refused (the per-table AFTER TRUNCATE trigger calls this)
        _REFUSE_TRUNCATE,
    ]


def record_create_table(table: TableRef) -> Statement:
    """The migration that creates ``table`` on clients (``apply`` electrifying it), in apply's transaction."""
    return sql.SQL(
        "SELECT electric.record_migration(c.oid::regclass, 'create_table', electric.table_snapshot(c.oid::regclass)"
        "->'columns') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = {} AND c.relname = {}"
    ).format(sql.Literal(table.schema), sql.Literal(table.name))


def install_event_triggers() -> list[Statement]:
    """(Re)create the guard's event triggers (a superuser only)."""
    return [
        sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(ALTER_TRIGGER)),
        sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(DROP_TRIGGER)),
        sql.SQL(
            "CREATE EVENT TRIGGER {} ON ddl_command_end WHEN TAG IN ('ALTER TABLE')"
            " EXECUTE FUNCTION electric.guard_alter()"
        ).format(sql.Identifier(ALTER_TRIGGER)),
        sql.SQL("CREATE EVENT TRIGGER {} ON sql_drop EXECUTE FUNCTION electric.guard_drop()").format(
            sql.Identifier(DROP_TRIGGER)
        ),
    ]
