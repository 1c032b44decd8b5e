"""Which connections a change can concern, without looking at every shape (pure).

Shapes whose clause has a ``column = constant`` conjunct are indexed by (table, column, value): a
change costs one dictionary lookup per indexed column of its table, not one evaluation per shape.
Other shapes (ranges, whole tables) are kept in a per-table list that is always consulted. The
router only narrows the candidates; each connection still evaluates its own shapes exactly.

Only columns whose text form is canonical (integers, text, uuid) are indexed: the key is compared
with the value's text in the stream, and e.g. a boolean constant's text differs from Postgres'.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from electricctl._model.rows import Change

_K = TypeVar("_K", bound=Hashable)
_INDEXABLE_TYPES = frozenset({"int2", "int4", "int8", "text", "varchar", "uuid"})


@dataclass(slots=True)
class _TableIndex:
    by_value: dict[tuple[str, bytes], dict[Hashable, int]] = field(default_factory=dict)
    """(column, value) -> connection -> number of its shapes with that key."""
    columns: dict[str, int] = field(default_factory=dict)
    """Indexed column -> number of shapes indexed on it."""
    unindexed: dict[Hashable, int] = field(default_factory=dict)
    """Connection -> number of its shapes on this table that are not indexed."""


class Router:
    def __init__(self) -> None:
        self._tables: dict[str, _TableIndex] = {}

    @staticmethod
    def key_of(shape: object) -> tuple[str, bytes] | None:
        """The index key of a shape (table qualified name aside), or None if it is not indexable."""
        where = getattr(shape, "where", None)
        relation = getattr(shape, "relation", None)
        if where is None or where.equality is None or relation is None:
            return None
        column, value = where.equality
        types = {c.name: c.type_name for c in relation.columns}
        if types.get(column) not in _INDEXABLE_TYPES:
            return None
        if types[column] == "uuid":
            value = value.lower()
        return column, value.encode()

    @staticmethod
    def indexable(type_name: str) -> bool:
        """Can a column of this type be indexed (its text form is canonical)?"""
        return type_name in _INDEXABLE_TYPES

    def add(self, conn: Hashable, table: str, shape: object) -> None:
        key = self.key_of(shape)
        if key is None:
            idx = self._tables.setdefault(table, _TableIndex())
            idx.unindexed[conn] = idx.unindexed.get(conn, 0) + 1
            return
        self.add_key(conn, table, *key)

    def add_key(self, conn: Hashable, table: str, column: str, value: bytes) -> None:
        """``conn`` wants the changes whose row (old or new) has ``value`` in ``column``."""
        idx = self._tables.setdefault(table, _TableIndex())
        conns = idx.by_value.setdefault((column, value), {})
        conns[conn] = conns.get(conn, 0) + 1
        idx.columns[column] = idx.columns.get(column, 0) + 1

    def remove(self, conn: Hashable, table: str, shape: object) -> None:
        """Forget one of ``conn``'s shapes."""
        key = self.key_of(shape)
        if key is not None:
            self.remove_key(conn, table, *key)
            return
        idx = self._tables.get(table)
        if idx is None:
            return
        _decrement(idx.unindexed, conn)
        if not idx.by_value and not idx.unindexed:
            del self._tables[table]

    def remove_key(self, conn: Hashable, table: str, column: str, value: bytes) -> None:
        idx = self._tables.get(table)
        if idx is None:
            return
        conns = idx.by_value.get((column, value))
        if conns is not None:
            _decrement(conns, conn)
            if not conns:
                del idx.by_value[(column, value)]
        _decrement(idx.columns, column)
        if not idx.by_value and not idx.unindexed:
            del self._tables[table]

    def remove_connection(self, conn: Hashable) -> None:
        for table in list(self._tables):
            idx = self._tables[table]
            idx.unindexed.pop(conn, None)
            for key in list(idx.by_value):
                n = idx.by_value[key].pop(conn, 0)
                if n:
                    _decrement(idx.columns, key[0], n)
                if not idx.by_value[key]:
                    del idx.by_value[key]
            if not idx.by_value and not idx.unindexed:
                del self._tables[table]

    def candidates(self, changes: Iterable[Change]) -> set[Hashable]:
        """Connections that may be concerned by any of ``changes``."""
        out: set[Hashable] = set()
        for ch in changes:
            idx = self._tables.get(ch.relation.qualified)
            if idx is None:
                continue
            out.update(idx.unindexed)
            if not idx.columns:
                continue
            positions = {c.name: i for i, c in enumerate(ch.relation.columns)}
            for column in idx.columns:
                i = positions.get(column)
                if i is None:
                    continue
                for row in (ch.new, ch.old):
                    if row is not None and row[i] is not None:
                        conns = idx.by_value.get((column, row[i]))  # type: ignore[arg-type]
                        if conns:
                            out.update(conns)
            if ch.op == "T":
                for conns in idx.by_value.values():
                    out.update(conns)
        return out


def _decrement(counts: dict[_K, int], key: _K, by: int = 1) -> None:
    n = counts.get(key, 0) - by
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)
