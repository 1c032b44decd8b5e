"""The writer's statements: each a query and its parameters, composed with ``psycopg.sql`` (no
identifier or value is pasted into SQL text). The writer runs them; nothing here does I/O.

Values travel as one JSON parameter and go through ``jsonb_populate_record(set)`` on the
table's own row type, so Postgres parses each with the column's input function.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from psycopg import sql

from electricctl._merge.plan import Action, Key, json_value
from electricctl._model.client import ClientTransaction
from electricctl._model.rows import ClientWrite, RelationDef
from electricctl._model.wire import ORIGIN_PREFIX, WRITE_PREFIX
from electricctl._sql import names

Query = tuple[sql.SQL | sql.Composed, list[Any]]


def _join(pk: Sequence[str]) -> sql.Composable:
    return sql.SQL(" AND ").join(sql.SQL("t.{c} = r.{c}").format(c=sql.Identifier(c)) for c in pk)


def claim(client_id: str) -> Query:
    """Mark the transaction as the writer's (the tagging triggers skip it) and lock the client's
    position; returns (_, the last client LSN applied or NULL)."""
    return (
        sql.SQL(
            "SELECT set_config(%s, %s, true),"
            " (SELECT lsn FROM electric.client_positions WHERE client_id = %s FOR UPDATE)"
        ),
        [names.WRITER_SETTING, client_id, client_id],
    )


def mark_writer(client_id: str) -> Query:
    return sql.SQL("SELECT set_config(%s, %s, true)"), [names.WRITER_SETTING, client_id]


def position(client_id: str) -> Query:
    return sql.SQL("SELECT lsn FROM electric.client_positions WHERE client_id = %s"), [client_id]


def read_rows(rel: RelationDef, keys: Sequence[Key]) -> Query:
    """The rows with ``keys`` and their shadow entries, one result row per key that exists or
    has a shadow entry: (ordinal of the key, canonical key..., present, column values...,
    row_tags, col_tags, tombstone)."""
    pk = rel.pk_columns
    table = sql.Identifier(rel.schema, rel.name)
    query = sql.SQL(
        """SELECT e.i, {r_key}, t.{first} IS NOT NULL, {t_cols}, s.row_tags, s.col_tags, s.tombstone
  FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS e(j, i)
 CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, e.j) AS r
  LEFT JOIN {table} AS t ON {join}
  LEFT JOIN LATERAL (
        -- one index lookup per key, whatever the statistics say (a hash join would read the
        -- table's whole shadow); LIMIT keeps the planner from flattening it into a join
        SELECT row_tags, col_tags, tombstone FROM electric.shadow AS s
         WHERE s.schema_name = %s AND s.table_name = %s AND s.pk = ARRAY[{r_key}]
         LIMIT 1
       ) AS s ON true"""
    ).format(
        r_key=sql.SQL(", ").join(sql.SQL("r.{}::text").format(sql.Identifier(c)) for c in pk),
        first=sql.Identifier(pk[0]),
        t_cols=sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c.name)) for c in rel.columns),
        table=table,
        join=_join(pk),
    )
    payload = json.dumps([dict(zip(pk, k, strict=True)) for k in keys])
    return query, [payload, rel.schema, rel.name]


def write_shadow(qualified: str, entries: list[dict[str, Any]]) -> Query:
    schema, _, name = qualified.partition(".")
    return (
        sql.SQL(
            """INSERT INTO electric.shadow AS s (schema_name, table_name, pk, row_tags, col_tags, deleted)
SELECT %s, %s, x.pk, x.row_tags, x.col_tags, x.deleted
  FROM jsonb_to_recordset(%s::jsonb) AS x(pk text[], row_tags jsonb, col_tags jsonb, deleted boolean)
    ON CONFLICT (schema_name, table_name, pk) DO UPDATE
   SET row_tags = EXCLUDED.row_tags, col_tags = EXCLUDED.col_tags, deleted = EXCLUDED.deleted,
       tombstone = CASE WHEN EXCLUDED.deleted THEN s.tombstone END"""
        ),
        [schema, name, json.dumps(entries)],
    )


def finish(tx: ClientTransaction, write: ClientWrite) -> Query:
    """Describe the transaction in the WAL (origin, timestamp, tags) and record the client's position."""
    return (
        sql.SQL(
            "WITH position AS ("
            " INSERT INTO electric.client_positions (client_id, lsn) VALUES (%s, %s)"
            " ON CONFLICT (client_id) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = now() RETURNING 1)"
            " SELECT pg_logical_emit_message(true, %s, %s), pg_logical_emit_message(true, %s, %s) FROM position"
        ),
        [tx.client_id, tx.lsn, WRITE_PREFIX, write.to_json(), ORIGIN_PREFIX, tx.client_id],
    )


BEFORE_ROW = sql.SQL("(SELECT electric_before.*)")
"""The row before an operation, as a grant condition in :func:`failing_rows` reads it."""
AFTER_ROW = sql.SQL("(SELECT electric_after.*)")


def failing_rows(rel: RelationDef, ok: sql.Composable, rows: list[dict[str, Any]]) -> Query:
    """Which of ``rows`` (each ``{"b": before, "a": after}``) fail the grant condition ``ok``,
    which reads them as ``electric_before`` and ``electric_after``: their ordinals."""
    table = sql.Identifier(rel.schema, rel.name)
    query = sql.SQL(
        """SELECT e.i FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS e(j, i)
  CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, e.j->'b') AS electric_before
  CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, e.j->'a') AS electric_after
 WHERE NOT coalesce(({ok}), false)"""
    ).format(table=table, ok=ok)
    return query, [json.dumps(rows)]


def batch(actions: Sequence[Action]) -> list[Query]:
    """Statements for one batch: actions of one kind on one table, each key once."""
    rel = actions[0].rel
    table = sql.Identifier(rel.schema, rel.name)
    pk = rel.pk_columns
    if actions[0].kind == "delete":
        payload = json.dumps([dict(zip(pk, a.key, strict=True)) for a in actions])
        query = sql.SQL(
            "DELETE FROM {table} AS t USING jsonb_populate_recordset(NULL::{table}, %s::jsonb) AS r WHERE {join}"
        ).format(table=table, join=_join(pk))
        return [(query, [payload])]
    # one statement per set of known columns (a client may know fewer columns than the table has)
    groups: dict[tuple[str, ...], list[Action]] = {}
    order = [c.name for c in rel.columns]
    for a in actions:
        cols = tuple(c for c in order if c in a.values)
        groups.setdefault(cols, []).append(a)
    out: list[Query] = []
    for cols, group in groups.items():
        payload = json.dumps([{c: json_value(rel, c, a.values[c]) for c in cols} for a in group])
        non_key = [c for c in cols if c not in pk]
        conflict = (
            sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in non_key)
            )
            if non_key
            else sql.SQL("DO UPDATE SET {c} = EXCLUDED.{c}").format(c=sql.Identifier(pk[0]))
        )
        query = sql.SQL(
            "INSERT INTO {table} ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb)"
            " ON CONFLICT ({pk}) {conflict}"
        ).format(
            table=table,
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
            pk=sql.SQL(", ").join(sql.Identifier(c) for c in pk),
            conflict=conflict,
        )
        out.append((query, [payload]))
    return out
