"""Schema migrations of electrified tables, as captured in Postgres (``electricctl._sql.guard``).

The guard and ``apply`` emit each migration as a transactional logical message (JSON) in the
DDL's own transaction, so it reaches the stream in WAL order; :class:`Migration` is that message
decoded. It is protocol-free: the Satellite output turns it into ``SatOpMigrate``
(``electricctl._server.satellite_migrations``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class MigrationColumn:
    name: str
    type: str
    """``format_type``: ``integer``, ``character varying(20)``, ``timestamp with time zone``."""
    type_name: str
    """``pg_type.typname``: ``int4``, ``varchar``, ``timestamptz`` (an enum's own name)."""
    notnull: bool


@dataclass(frozen=True, slots=True)
class ForeignKeyRef:
    name: str
    columns: tuple[str, ...]
    parent_schema: str
    parent_table: str
    parent_columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    schema: str
    table: str
    op: str
    """``create_table`` (the table was electrified), ``add_column``, or ``sqlite`` (a statement of
    electric.yaml's ``sqlite`` section, for the clients' own databases; no table)."""
    columns: tuple[MigrationColumn, ...]
    """The columns this migration adds (every column for ``create_table``)."""
    table_columns: tuple[MigrationColumn, ...]
    """The whole table after the migration."""
    primary_key: tuple[str, ...]
    foreign_keys: tuple[ForeignKeyRef, ...]
    sql: str = ""
    """The statement of a ``sqlite`` migration."""

    @classmethod
    def from_json(cls, raw: str | bytes) -> Migration:
        """The migration message's JSON; a ValueError, KeyError or TypeError if it is not one."""
        return cls.from_dict(json.loads(raw))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Migration:
        """The message's JSON once parsed (a catalog row, or an element of the log's array)."""
        snapshot = data["snapshot"]
        return cls(
            version=str(data["version"]),
            schema=str(data["schema"]),
            table=str(data["table"]),
            op=str(data["op"]),
            columns=tuple(_column(c) for c in data["columns"]),
            table_columns=tuple(_column(c) for c in snapshot["columns"]),
            primary_key=tuple(str(c) for c in snapshot.get("primary_key", ())),
            foreign_keys=tuple(
                ForeignKeyRef(
                    str(f["name"]),
                    tuple(str(c) for c in f["columns"]),
                    str(f["parent_schema"]),
                    str(f["parent_table"]),
                    tuple(str(c) for c in f["parent_columns"]),
                )
                for f in snapshot.get("references", ())
            ),
            sql=str(snapshot.get("sql", "")),
        )

    def to_json(self) -> str:
        """The same JSON shape :meth:`from_json` reads (the durable log keeps it so)."""
        return json.dumps(
            {
                "version": self.version,
                "schema": self.schema,
                "table": self.table,
                "op": self.op,
                "columns": [_column_json(c) for c in self.columns],
                "snapshot": {
                    "columns": [_column_json(c) for c in self.table_columns],
                    "primary_key": list(self.primary_key),
                    "references": [
                        {
                            "name": f.name,
                            "columns": list(f.columns),
                            "parent_schema": f.parent_schema,
                            "parent_table": f.parent_table,
                            "parent_columns": list(f.parent_columns),
                        }
                        for f in self.foreign_keys
                    ],
                    **({"sql": self.sql} if self.sql else {}),
                },
            },
            separators=(",", ":"),
        )


def by_version(migrations: Iterable[Migration]) -> dict[str, list[Migration]]:
    """``migrations`` grouped by version, in their order (a version is one transaction's)."""
    grouped: dict[str, list[Migration]] = {}
    for m in migrations:
        grouped.setdefault(m.version, []).append(m)
    return grouped


def _column(c: dict[str, Any]) -> MigrationColumn:
    return MigrationColumn(str(c["name"]), str(c["type"]), str(c.get("type_name") or c["type"]), bool(c["notnull"]))


def _column_json(c: MigrationColumn) -> dict[str, Any]:
    return {"name": c.name, "type": c.type, "type_name": c.type_name, "notnull": c.notnull}
