"""The messages of a shape's log as JSON, the way Electric writes them (pure).

Values stay Postgres' text output (a JSON string) or null, as Electric sends them: the clients
parse them by the ``electric-schema`` header. A row's ``key`` is
``"<schema>"."<table>"/"<pk1>"/...``; the value of an update or delete carries the primary key (TanStack
DB keys rows by it). Facts from ../shared/reference/electric-http-shape-api.md §1.4 and §1.6.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from electricctl._model.rows import Change, RelationDef, Row


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _name(part: str) -> str:
    return part.replace("/", "//").replace(".", "..")


def row_key(rel: RelationDef, row: Row) -> str:
    """Electric's key of a row: its table and primary key values (all columns, sorted by name, for a
    table without one)."""
    indexes = rel.pk_indexes or tuple(sorted(range(len(rel.columns)), key=lambda i: rel.columns[i].name))
    parts = [f'"{_name(rel.schema)}"."{_name(rel.name)}"']
    for i in indexes:
        value = row[i]
        parts.append("_" if value is None else '"' + value.decode("utf-8", "replace").replace("/", "//") + '"')
    return "/".join(parts)


def schema_header(rel: RelationDef, columns: Sequence[str] | None) -> str:
    """``electric-schema``: each column's type, ``pk_index``, ``not_null`` and array ``dims``."""
    pks = [c.name for c in rel.columns if c.primary_key]
    out: dict[str, dict[str, Any]] = {}
    for col in rel.columns:
        if columns is not None and col.name not in columns:
            continue
        kind = col.type_name
        entry: dict[str, Any] = {}
        if kind.startswith("_"):
            entry["type"], entry["dims"] = kind[1:], 1
        else:
            entry["type"] = kind
        if col.primary_key:
            entry["pk_index"] = pks.index(col.name)
        if not col.nullable:
            entry["not_null"] = True
        out[col.name] = entry
    return json.dumps(out, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Projection:
    """The columns a request asked for (None: every column it may read) and its ``replica`` mode."""

    columns: frozenset[str] | None
    full: bool

    def _value(self, rel: RelationDef, row: Row, only: set[int] | None = None) -> dict[str, str | None]:
        value: dict[str, str | None] = {}
        for i, col in enumerate(rel.columns):
            if self.columns is not None and col.name not in self.columns and not col.primary_key:
                continue
            if only is not None and i not in only and not col.primary_key:
                continue
            value[col.name] = _text(row[i])
        return value

    def snapshot_row(self, rel: RelationDef, row: Row, mark: int | None = None) -> bytes:
        headers: dict[str, Any] = {"operation": "insert", "relation": [rel.schema, rel.name]}
        if mark is not None:
            headers["snapshot_mark"] = mark
        return _dumps({"key": row_key(rel, row), "value": self._value(rel, row), "headers": headers})

    def change(self, ch: Change, lsn: int, op_position: int, xid: int, last: bool) -> bytes | None:
        """A live change (``G``, a row leaving the shape, is a delete); None for an update that
        changed no column the request shows."""
        rel = ch.relation
        headers: dict[str, Any] = {
            "relation": [rel.schema, rel.name],
            "lsn": str(lsn),
            "op_position": op_position,
            "txids": [xid],
        }
        if last:
            headers["last"] = True
        doc: dict[str, Any]
        if ch.op == "I":
            assert ch.new is not None
            doc = {"key": row_key(rel, ch.new), "value": self._value(rel, ch.new)}
            headers["operation"] = "insert"
        elif ch.op == "U":
            assert ch.new is not None
            changed = None if ch.old is None else {i for i in range(len(rel.columns)) if ch.old[i] != ch.new[i]}
            if changed is not None and self.columns is not None:
                if not any(rel.columns[i].name in self.columns for i in changed):
                    return None
            doc = {
                "key": row_key(rel, ch.new),
                "value": self._value(rel, ch.new) if self.full else self._value(rel, ch.new, changed),
            }
            if self.full and ch.old is not None and changed is not None:
                doc["old_value"] = {k: v for k, v in self._value(rel, ch.old, changed).items() if not _is_pk(rel, k)}
            headers["operation"] = "update"
        else:  # D, or G (the row left the shape)
            row = ch.old if ch.old is not None else ch.new
            assert row is not None
            key_only = ch.op == "G" or not self.full
            doc = {
                "key": row_key(rel, row),
                "value": self._value(rel, row, set() if key_only else None),
            }
            headers["operation"] = "delete"
        doc["headers"] = headers
        return _dumps(doc)

    def moved_row(self, rel: RelationDef, row: Row, arriving: bool, lsn: int, op_position: int) -> bytes:
        """A row that arrives in (or leaves) the shape because what the user may read changed."""
        headers: dict[str, Any] = {
            "operation": "insert" if arriving else "delete",
            "relation": [rel.schema, rel.name],
            "lsn": str(lsn),
            "op_position": op_position,
        }
        value = (
            self._value(rel, row)
            if arriving
            else {rel.columns[i].name: _text(row[n]) for n, i in enumerate(rel.pk_indexes)}
        )
        return _dumps({"key": _moved_key(rel, row, arriving), "value": value, "headers": headers})


def _moved_key(rel: RelationDef, row: Row, arriving: bool) -> str:
    if arriving:
        return row_key(rel, row)
    # a leaving row is given by its key values alone, in the key's order
    full: list[bytes | None] = [None] * len(rel.columns)
    for n, i in enumerate(rel.pk_indexes):
        full[i] = row[n]
    return row_key(rel, tuple(full))


def _is_pk(rel: RelationDef, name: str) -> bool:
    return any(c.name == name and c.primary_key for c in rel.columns)


def up_to_date(lsn: int) -> bytes:
    return _dumps({"headers": {"control": "up-to-date", "global_last_seen_lsn": str(lsn)}})


def snapshot_end(xmin: int, xmax: int, xip: Sequence[int]) -> bytes:
    return _dumps(
        {
            "headers": {
                "control": "snapshot-end",
                "xmin": str(xmin),
                "xmax": str(xmax),
                "xip_list": [str(x) for x in xip],
            }
        }
    )


MUST_REFETCH = _dumps([{"headers": {"control": "must-refetch"}}])
