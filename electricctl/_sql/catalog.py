"""electricctl's own catalog in the ``electric`` schema, as versioned migrations.

Each version is a list of static statements (no user input reaches them). ``apply`` runs the
missing versions first, in the same transaction as everything else.

Tables:
- ``catalog_migrations``: which catalog versions are installed; its presence marks the schema as ours.
- ``applied_configs``: one row per apply that changed something: config hash, time, version, who.
- ``electrified``: the electrified tables, with the replica identity to restore on removal and the
  schema snapshot the DDL guard compares ALTER TABLE against (:mod:`electricctl._sql.guard`).
- ``assignments``, ``grants``, ``shapes``, ``sqlite_statements``, ``settings``: the declared rules,
  keyed by a stable name, each with its canonical definition as jsonb.
- ``shadow``: per-row sync metadata for the conflict rules (../shared/reference/electric-legacy.md §4): the add-wins
  set of row tags, a last-writer-wins tag per column, and a deleted row's last values. A tag is
  ``[ts_ms, origin]``; origin is null for writes made directly in Postgres, which win ties.
- ``client_positions``: per client, the last client transaction (client LSN) applied.
- ``client_owners``: per client id, the user that owns it (the first to authenticate with it).
- ``stream_gaps``: replication slots created again while a log existed (the stream has a gap).
"""

from __future__ import annotations

from psycopg import sql

from electricctl._sql import guard
from electricctl._sql.render import Statement

RULE_TABLES = ("assignments", "grants", "shapes", "sqlite_statements", "settings")

_RULE_TABLE = """
CREATE TABLE electric.{} (
    name text PRIMARY KEY,
    definition jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)"""

_V1: list[Statement] = [
    sql.SQL("CREATE SCHEMA IF NOT EXISTS electric"),
    sql.SQL("COMMENT ON SCHEMA electric IS 'managed by electricctl: sync catalog and metadata'"),
    sql.SQL(
        "CREATE TABLE electric.catalog_migrations ("
        " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    ),
    sql.SQL(
        """CREATE TABLE electric.applied_configs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    config_hash text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    electricctl_version text NOT NULL,
    applied_by text NOT NULL DEFAULT current_user,
    client_host text,
    source_file text,
    changes jsonb NOT NULL
)"""
    ),
    sql.SQL(
        """CREATE TABLE electric.electrified (
    schema_name text NOT NULL,
    table_name text NOT NULL,
    original_replica_identity text NOT NULL,
    original_replica_index text,
    electrified_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, table_name)
)"""
    ),
    *(sql.SQL(_RULE_TABLE).format(sql.Identifier(t)) for t in RULE_TABLES),
    sql.SQL(
        """CREATE TABLE electric.shadow (
    schema_name text NOT NULL,
    table_name text NOT NULL,
    pk text[] NOT NULL,
    row_tags jsonb NOT NULL DEFAULT '[]',
    col_tags jsonb NOT NULL DEFAULT '{}',
    deleted boolean NOT NULL DEFAULT false,
    PRIMARY KEY (schema_name, table_name, pk)
)"""
    ),
    sql.SQL(
        """CREATE FUNCTION electric.stamp_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
BEGIN
    IF coalesce(current_setting('electric.writer', true), '') <> '' THEN
        RETURN NULL;
    END IF;
    UPDATE electric.shadow SET row_tags = '[]', deleted = true
     WHERE schema_name = TG_TABLE_SCHEMA AND table_name = TG_TABLE_NAME;
    RETURN NULL;
END
$body$"""
    ),
]

_V2: list[Statement] = [
    # the values a deleted row had (column -> text), so a write that revives it (add-wins)
    # merges column by column against them
    sql.SQL("ALTER TABLE electric.shadow ADD COLUMN tombstone jsonb"),
    # the last client transaction applied per client: duplicates are skipped, and a reconnecting
    # client is asked to resume after it (the 0.12 server's acknowledged_client_lsns)
    sql.SQL(
        """CREATE TABLE electric.client_positions (
    client_id text PRIMARY KEY,
    lsn bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)"""
    ),
]

_V3: list[Statement] = [
    # which user (the token's sub) owns each client id: the first one that authenticated with it.
    # Another user is refused that id, so nobody can write under another user's client id and
    # move its position (which would make the server skip the owner's transactions).
    sql.SQL(
        """CREATE TABLE electric.client_owners (
    client_id text PRIMARY KEY,
    user_id text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now()
)"""
    ),
    # replication slots that serve found missing and created again: the stream had a gap there,
    # and clients from before it were sent to resync (`status` and /health report it)
    sql.SQL(
        """CREATE TABLE electric.stream_gaps (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slot_name text NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    log_last_lsn pg_lsn NOT NULL,
    resumed_at_lsn pg_lsn NOT NULL
)"""
    ),
]

# the DDL guard (see electricctl._sql.guard): a snapshot of each electrified table, and the functions
# that compare ALTER TABLE and DROP against it
_V4: list[Statement] = guard.catalog_statements()

# the guard turns on a stamp function's generic path when a column is added (_sql.render); the
# statements of electric.yaml's sqlite section become migrations
_V5: list[Statement] = [guard.guard_alter(), guard.record_sqlite_function()]

MIGRATIONS: tuple[tuple[int, tuple[Statement, ...]], ...] = (
    (1, tuple(_V1)),
    (2, tuple(_V2)),
    (3, tuple(_V3)),
    (4, tuple(_V4)),
    (5, tuple(_V5)),
)
LATEST = MIGRATIONS[-1][0]


def migration_statements(from_version: int) -> list[Statement]:
    """Statements that bring the catalog from ``from_version`` (0: none) to :data:`LATEST`."""
    out: list[Statement] = []
    for version, stmts in MIGRATIONS:
        if version > from_version:
            out.extend(stmts)
            out.append(
                sql.SQL("INSERT INTO electric.catalog_migrations (version) VALUES ({})").format(sql.Literal(version))
            )
    return out
