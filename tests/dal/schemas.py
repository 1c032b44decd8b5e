"""Schemas for the generator's tests, as the migrations that make them (what `electric.migrations` holds)."""

from __future__ import annotations

from electricctl._model.migrations import ForeignKeyRef, Migration, MigrationColumn


def col(name: str, type_name: str, notnull: bool = False, text: str | None = None) -> MigrationColumn:
    return MigrationColumn(name, text or type_name, type_name, notnull)


def create(version: str, table: str, cols: tuple[MigrationColumn, ...], *fks: ForeignKeyRef) -> Migration:
    return Migration(version, "public", table, "create_table", cols, cols, (cols[0].name,), tuple(fks))


def fk(name: str, columns: tuple[str, ...], parent: str) -> ForeignKeyRef:
    return ForeignKeyRef(name, columns, "public", parent, ("id",))


USERS = (col("id", "uuid", True), col("name", "text", True), col("email", "varchar", text="character varying(200)"))
TEAMS = (col("id", "int8", True), col("name", "text", True))
EVERY_TYPE = (
    col("id", "uuid", True),
    col("team_id", "int8"),
    col("author_id", "uuid", True),
    col("reviewer_id", "uuid"),
    col("flag", "bool", True),
    col("data", "bytea"),
    col("day", "date"),
    col("ratio", "float4"),
    col("score", "float8"),
    col("small", "int2"),
    col("n", "int4"),
    col("big", "int8"),
    col("doc", "jsonb"),
    col("price", "numeric"),
    col("body", "text"),
    col("at", "time"),
    col("seen", "timestamp"),
    col("created_at", "timestamptz", True),
    col("label", "varchar"),
    col("mood", "mood", True),
    col("moods", "_mood"),
    col("ns", "_int4"),
    col("class", "text"),
)
POSTS_FKS = (
    fk("posts_team", ("team_id",), "teams"),
    fk("posts_author", ("author_id",), "users"),
    fk("posts_reviewer", ("reviewer_id",), "users"),
)
EXTRA = col("extra", "text")
EVERY_TYPE_MIGRATIONS = [
    create("20260101", "users", USERS),
    create("20260101", "teams", TEAMS),
    create("20260102", "posts", EVERY_TYPE, *POSTS_FKS),
    Migration("20260103", "public", "posts", "add_column", (EXTRA,), (*EVERY_TYPE, EXTRA), ("id",), POSTS_FKS),
    Migration("20260104", "public", "", "sqlite", (), (), (), (), "CREATE INDEX posts_day ON posts (day)"),
]
EVERY_TYPE_ENUMS = {"mood": ("happy", "sad", "it's complicated")}

ITEMS = [
    create("1", "items", (col("id", "text", True), col("n", "int4"), col("label", "text"))),
    create("1", "other", (col("id", "int8", True), col("v", "text"))),
]
