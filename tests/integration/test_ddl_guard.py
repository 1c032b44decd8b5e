"""The DDL guard: after ``apply``, Postgres itself refuses schema changes clients cannot follow,
and records the ones they can as migrations, in the DDL's own transaction.

Every refused statement leaves the table exactly as it was (the error rolls the statement back);
additive changes and unelectrified tables are untouched.
"""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest
from psycopg import sql

from electricctl._model import wire
from electricctl._model.migrations import Migration
from electricctl._replication import pgoutput as po
from electricctl._server.satellite_migrations import migrate_op
from electricctl._sql import guard
from tests.conftest import DEMO_CONFIG


def shape_of(url: str, table: str) -> list[tuple[Any, ...]]:
    """Columns (name, type, NOT NULL) and constraints of ``table``: what a refused DDL must not change."""
    with psycopg.connect(url) as conn:
        cols = conn.execute(
            "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            [table],
        ).fetchall()
        cons = conn.execute(
            "SELECT conname::text, contype::text FROM pg_constraint WHERE conrelid = %s::regclass ORDER BY conname",
            [table],
        ).fetchall()
    return [*cols, *cons]


def ddl(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture
def guarded(run_cli, demo_db, write_config) -> str:  # type: ignore[no-untyped-def]
    applied = run_cli("apply", "-f", str(write_config(DEMO_CONFIG)), "--database-url", demo_db)
    assert applied.code == 0, applied.err
    return demo_db  # type: ignore[no-any-return]


REFUSED = [
    ("ALTER TABLE issues DROP COLUMN priority", "cannot drop column priority of electrified table public.issues"),
    ("ALTER TABLE issues RENAME COLUMN title TO headline", "cannot rename column title of electrified table"),
    ("ALTER TABLE issues RENAME TO tickets", "cannot rename electrified table public.issues"),
    (
        "CREATE SCHEMA archive; ALTER TABLE issues SET SCHEMA archive",
        "cannot rename electrified table public.issues, or move it to another schema",
    ),
    ("ALTER TABLE issues ALTER COLUMN priority TYPE int8", "from integer to bigint"),
    ("ALTER TABLE issues ALTER COLUMN priority SET NOT NULL", "cannot make column priority of electrified table"),
    ("ALTER TABLE issues ADD COLUMN qty int4 NOT NULL", "as NOT NULL without a default"),
    ("ALTER TABLE issues ADD COLUMN price money", "of type money to electrified table public.issues"),
    ("ALTER TABLE issues ADD COLUMN tags jsonb[]", "of type jsonb[] to electrified table public.issues"),
    (
        "ALTER TABLE issues ADD COLUMN p2 int4 GENERATED ALWAYS AS (priority * 2) STORED",
        "cannot add generated column p2 to electrified table public.issues",
    ),
    (
        "ALTER TABLE issues ADD COLUMN member_id uuid REFERENCES memberships (id)",
        "it references public.memberships, which is not electrified",
    ),
    ("ALTER TABLE issues ADD COLUMN ok int4, DROP COLUMN status", "cannot drop column status"),
    ("DROP TABLE comments", "cannot drop electrified table public.comments"),
    ("DROP TABLE issues CASCADE", "cannot drop electrified table public.issues"),
]


@pytest.mark.parametrize(("statement", "message"), REFUSED, ids=[s for s, _ in REFUSED])
def test_ddl_clients_cannot_follow_is_refused_and_changes_nothing(guarded: str, statement: str, message: str) -> None:
    before = {t: shape_of(guarded, t) for t in ("issues", "comments")}
    recorded = migrations(guarded)
    with pytest.raises(psycopg.errors.FeatureNotSupported) as err:
        ddl(guarded, statement)
    assert message in str(err.value)
    assert err.value.diag.message_hint  # it says what to do instead
    assert {t: shape_of(guarded, t) for t in ("issues", "comments")} == before
    assert migrations(guarded) == recorded


def test_additive_changes_pass_and_unelectrified_tables_are_never_guarded(guarded: str) -> None:
    ddl(guarded, "ALTER TABLE issues ADD COLUMN qty int4")
    ddl(guarded, "ALTER TABLE issues ADD COLUMN archived bool NOT NULL DEFAULT false")
    ddl(guarded, "ALTER TABLE issues ADD COLUMN labels text[], ADD COLUMN amount numeric")  # arrays, numeric
    ddl(guarded, "ALTER TABLE comments ADD COLUMN parent_id uuid REFERENCES issues (id)")  # an electrified parent
    ddl(guarded, "CREATE INDEX issues_qty ON issues (qty)")
    ddl(guarded, "DROP INDEX issues_qty")
    ddl(guarded, "ALTER TABLE issues REPLICA IDENTITY FULL")
    # the added column is guarded from now on, like the others
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="cannot change the type of column qty"):
        ddl(guarded, "ALTER TABLE issues ALTER COLUMN qty TYPE int8")
    # tables that are not electrified: anything goes
    ddl(guarded, "ALTER TABLE audit_log ADD COLUMN n numeric NOT NULL DEFAULT 0")
    ddl(guarded, "ALTER TABLE audit_log RENAME COLUMN message TO text")
    ddl(guarded, "ALTER TABLE audit_log DROP COLUMN n")
    ddl(guarded, "ALTER TABLE memberships RENAME TO members")
    ddl(guarded, "DROP TABLE audit_log")


def test_plan_reinstalls_a_guard_dropped_by_hand(run_cli, guarded, write_config) -> None:  # type: ignore[no-untyped-def]
    cfg = str(write_config(DEMO_CONFIG))
    assert run_cli("plan", "-f", cfg, "--database-url", guarded, "--detailed-exitcode").code == 0
    ddl(guarded, f"DROP EVENT TRIGGER {guard.DROP_TRIGGER}")
    plan = run_cli("plan", "-f", cfg, "--database-url", guarded, "--detailed-exitcode")
    assert "guard.ddl" in plan.out
    applied = run_cli("apply", "-f", cfg, "--database-url", guarded)
    assert applied.code == 0, applied.err
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        ddl(guarded, "DROP TABLE comments")


def test_a_role_that_cannot_create_event_triggers_is_warned(run_cli, demo_db, write_config) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("CREATE ROLE guard_owner LOGIN NOSUPERUSER")
        conn.execute("GRANT ALL ON SCHEMA public TO guard_owner")
        conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO guard_owner").format(sql.Identifier(conn.info.dbname)))
    url = psycopg.conninfo.make_conninfo(demo_db, user="guard_owner")
    plan = run_cli("plan", "-f", str(write_config(DEMO_CONFIG)), "--database-url", url)
    assert "the DDL guard is not installed" in plan.out + plan.err


def test_a_version_3_catalog_upgrades_with_snapshots_of_the_tables_already_electrified(  # type: ignore[no-untyped-def]
    run_cli, guarded, write_config
) -> None:
    # take the database back to what an apply of an older release left: catalog v3, no guard
    with psycopg.connect(guarded, autocommit=True) as conn:
        for trigger in guard.EVENT_TRIGGERS:
            conn.execute(sql.SQL("DROP EVENT TRIGGER {}").format(sql.Identifier(trigger)))
        conn.execute(
            "DROP FUNCTION electric.guard_alter(), electric.guard_drop(), electric.table_snapshot(regclass),"
            " electric.record_migration(regclass, text, jsonb), electric.migration_version(),"
            " electric.record_sqlite(text)"
        )
        conn.execute("DROP TABLE electric.migrations")
        conn.execute("ALTER TABLE electric.electrified DROP COLUMN schema_snapshot")
        conn.execute("DELETE FROM electric.catalog_migrations WHERE version >= 4")
    cfg = str(write_config(DEMO_CONFIG))
    plan = run_cli("plan", "-f", cfg, "--database-url", guarded)
    assert "version 3 -> 5" in plan.out and "guard.ddl" in plan.out
    applied = run_cli("apply", "-f", cfg, "--database-url", guarded)
    assert applied.code == 0, applied.err
    with psycopg.connect(guarded) as conn:
        snapshots = conn.execute("SELECT table_name, schema_snapshot FROM electric.electrified").fetchall()
    assert snapshots and all(s is not None and s["columns"] for _, s in snapshots)
    # and a baseline migration for each table it had electrified
    assert {(r[2], r[3]) for r in migrations(guarded)} == {(t, "create_table") for t, _ in snapshots}
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="cannot drop column title"):
        ddl(guarded, "ALTER TABLE issues DROP COLUMN title")


# -- migrations captured in the DDL's transaction ----------------------------------------------------


def migrations(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT version, schema_name, table_name, op, columns, snapshot FROM electric.migrations ORDER BY id"
        ).fetchall()


def test_apply_records_one_baseline_version_for_the_tables_it_electrifies(guarded: str) -> None:
    rows = migrations(guarded)
    assert {r[2] for r in rows} == {"users", "projects", "issues", "comments"}
    assert {r[3] for r in rows} == {"create_table"}
    assert len({r[0] for r in rows}) == 1 and re.fullmatch(r"[0-9]{17}", rows[0][0])
    issues = next(r for r in rows if r[2] == "issues")
    assert [(c["name"], c["type"]) for c in issues[4]][:3] == [
        ("id", "uuid"),
        ("project_id", "uuid"),
        ("title", "text"),
    ]
    assert issues[5]["columns"] == issues[4]
    fields = ("version", "schema", "table", "op", "columns", "snapshot")
    migration = Migration.from_dict(dict(zip(fields, issues, strict=True)))
    assert migration.primary_key == ("id",)
    assert [(f.columns, f.parent_table, f.parent_columns) for f in migration.foreign_keys] == [
        (("project_id",), "projects", ("id",))
    ]
    assert migrate_op(migration).stmts[0].sql.startswith('CREATE TABLE "issues" (\n  "id" TEXT NOT NULL,')


def test_an_added_column_is_a_migration_in_the_stream_before_the_rows_that_use_it(guarded: str) -> None:
    (baseline,) = {r[0] for r in migrations(guarded)}
    with psycopg.connect(guarded, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('capture_test', 'pgoutput')")
        try:
            conn.execute("INSERT INTO users (id, name) VALUES (gen_random_uuid(), 'before')")
            with conn.transaction():
                conn.execute("ALTER TABLE users ADD COLUMN nickname text")
                conn.execute("INSERT INTO users (id, name, nickname) VALUES (gen_random_uuid(), 'with', 'n')")
            conn.execute("INSERT INTO users (id, name) VALUES (gen_random_uuid(), 'after')")
            data = [
                po.decode(bytes(r[0]))
                for r in conn.execute(
                    "SELECT data FROM pg_logical_slot_get_binary_changes('capture_test', NULL, NULL,"
                    " 'proto_version', '1', 'publication_names', %s, 'messages', 'true')",
                    [wire.PUBLICATION],
                ).fetchall()
            ]
        finally:
            conn.execute("SELECT pg_drop_replication_slot('capture_test')")
    kinds = [
        msg.prefix if isinstance(msg, po.LogicalMessage) else type(msg).__name__
        for msg in data
        if isinstance(msg, po.Begin | po.Commit | po.Insert | po.LogicalMessage)
    ]
    # three transactions; the migration opens the second, before its row
    assert kinds == [
        "Begin",
        "Insert",
        "Commit",
        "Begin",
        wire.MIGRATION_PREFIX,
        "Insert",
        "Commit",
        "Begin",
        "Insert",
        "Commit",
    ]
    message = next(m for m in data if isinstance(m, po.LogicalMessage) and m.prefix == wire.MIGRATION_PREFIX)
    assert message.transactional
    body = json.loads(message.content)
    assert body["op"] == "add_column" and (body["schema"], body["table"]) == ("public", "users")
    assert [(c["name"], c["type"], c["notnull"]) for c in body["columns"]] == [("nickname", "text", False)]
    assert body["snapshot"]["columns"][-1]["name"] == "nickname"
    assert body["version"] > baseline
    op = migrate_op(Migration.from_json(message.content))
    assert [s.sql for s in op.stmts] == ['ALTER TABLE "users" ADD COLUMN "nickname" TEXT;\n']
    assert [c.name for c in op.table.columns] == ["id", "name", "email", "nickname"] and list(op.table.pks) == ["id"]
    last = migrations(guarded)[-1]
    assert (last[0], last[2], last[3]) == (body["version"], "users", "add_column")


def test_migration_versions_one_per_transaction_given_or_from_the_clock_and_increasing(guarded: str) -> None:
    with psycopg.connect(guarded) as conn:
        conn.execute("SET LOCAL electric.migration_version = '30000101000000000'")
        conn.execute("ALTER TABLE issues ADD COLUMN a int4")
        conn.execute("ALTER TABLE comments ADD COLUMN b int4")
    added = [r for r in migrations(guarded) if r[3] == "add_column"]
    assert [(r[0], r[2]) for r in added] == [("30000101000000000", "issues"), ("30000101000000000", "comments")]
    for version, reason in (("20000101000000000", "is not after the last one, 30000101000000000"), ("v2", "digits")):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=reason):
            with psycopg.connect(guarded) as conn:
                conn.execute(sql.SQL("SET LOCAL electric.migration_version = {}").format(sql.Literal(version)))
                conn.execute("ALTER TABLE issues ADD COLUMN c int4")
    assert "c" not in [row[0] for row in shape_of(guarded, "issues")]
    # without a given version, the clock's is used, kept after the last one
    ddl(guarded, "ALTER TABLE issues ADD COLUMN d int4")
    assert migrations(guarded)[-1][0] == "30000101000000000_1"
