"""Build ObservedState snapshots by hand, for planner tests that need no database."""

from __future__ import annotations

from dataclasses import replace

from electricctl._catalog.observed import CatalogState, ColumnInfo, ForeignKey, ObservedState, TableInfo, TriggerInfo
from electricctl._model.table import TableRef
from electricctl._sql import catalog as catalog_sql
from electricctl._sql import names, render

_TYPES = {
    "uuid": ("uuid", "b"),
    "text": ("text", "b"),
    "int4": ("integer", "b"),
    "bool": ("boolean", "b"),
    "timestamptz": ("timestamp with time zone", "b"),
    "numeric": ("numeric", "b"),
    "money": ("money", "b"),
    "json": ("json", "b"),
    "_int4": ("integer[]", "b"),
    "_json": ("json[]", "b"),
    "mood": ("mood", "e"),
}


def table(name: str, *cols: str, pk: tuple[str, ...] = ("id",), replident: str = "d") -> TableInfo:
    """``table("issues", "id:uuid", "title:text")``"""
    columns = []
    for spec in cols:
        col, typ = spec.split(":")
        display, kind = _TYPES[typ]
        columns.append(ColumnInfo(col, display, typ, kind, typ.startswith("_"), col in pk, False))
    ref = TableRef.parse(name)
    return TableInfo(ref, abs(hash(name)) % 100000, "r", tuple(columns), pk, replident)


def fk(src: str, cols: str, target: str, name: str | None = None) -> ForeignKey:
    s, t = TableRef.parse(src), TableRef.parse(target)
    return ForeignKey(name or f"{s.name}_{cols}_fkey", s, tuple(cols.split(",")), t, ("id",))


def observed(*tables: TableInfo, fks: tuple[ForeignKey, ...] = ()) -> ObservedState:
    return ObservedState(
        server_version=150000,
        wal_level="logical",
        database="test",
        tables={t.ref: t for t in tables},
        foreign_keys=fks,
        triggers={},
        functions={},
        publication=None,
        publication_ok=False,
        electric_schema_objects=-1,
        catalog=None,
    )


def applied(state: ObservedState, rules: dict[str, dict[str, object]] | None = None) -> ObservedState:
    """The state after a successful apply of every table in ``state`` (and the given rules)."""
    triggers = {}
    functions = {names.TRUNCATE_FUNCTION: "..."}
    electrified = {}
    tables = {}
    for ref, info in state.tables.items():
        fn = names.stamp_function(ref)
        functions[fn] = render.stamp_function_source(info.primary_key, [c.name for c in info.columns])
        triggers[(ref, names.ROW_TRIGGER)] = TriggerInfo(ref, names.ROW_TRIGGER, "A", fn)
        triggers[(ref, names.TRUNCATE_TRIGGER)] = TriggerInfo(ref, names.TRUNCATE_TRIGGER, "A", names.TRUNCATE_FUNCTION)
        electrified[ref] = {"original_replica_identity": info.replica_identity, "original_replica_index": None}
        tables[ref] = replace(info, replica_identity="f")
    return replace(
        state,
        tables=tables,
        triggers=triggers,
        functions=functions,
        publication=frozenset(state.tables),
        publication_ok=True,
        electric_schema_objects=10,
        catalog=CatalogState(version=catalog_sql.LATEST, electrified=electrified, rules=dict(rules or {})),
    )
