"""Which changes a client gets, given its shapes (pure).

A client holds a row while any of its shapes matches it. For each change this module decides what
the client sees, from the row before and after the change: an insert when the row moves into the
client's shapes, an update while it stays, a delete when it is deleted, and GONE when an update
moves it out (the row still exists, the client just no longer holds it).

Subscription data is always sent at a point where the client has every transaction its snapshot
holds (see Connection._catch_up_to), so a shape never has to reason about its snapshot here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from electricctl._model.rows import Change, RelationDef, Row, Transaction
from electricctl._model.table import TableRef
from electricctl._shapes.compile import CompiledWhere
from electricctl._shapes.router import Router


@dataclass(slots=True)
class Shape:
    subscription_id: str
    request_id: str
    table: TableRef
    relation: RelationDef
    where: CompiledWhere | None
    """None: the whole table."""
    where_text: str
    declared: str | None = None
    """The shape of electric.yaml this is (by name), if any: it follows that declaration when an
    apply changes it."""

    def matches(self, row: Row) -> bool:
        return self.where is None or self.where.matches(row)


def route(shapes: Sequence[Shape], tx: Transaction, ch: Change) -> list[Change]:
    """What a client with ``shapes`` (all on ``ch``'s table) receives for ``ch``.

    An update that changes the primary key is a delete of the old key and an insert of the new one.
    """
    if ch.op == "T":
        return []
    out: list[Change] = []
    for part in split_key_change(ch):
        before, after = rows_of(part)
        held_before = held_after = False
        for shape in shapes:
            held_before = held_before or (before is not None and shape.matches(before))
            held_after = held_after or (after is not None and shape.matches(after))
        one = outcome(part, held_before, held_after)
        if one is not None:
            out.append(one)
    return out


def split_key_change(ch: Change) -> list[Change]:
    """An update that changes the primary key is a delete of the old key and an insert of the new one."""
    if ch.op == "U" and ch.old is not None and ch.new is not None:
        if any(ch.old[i] != ch.new[i] for i in ch.relation.pk_indexes):
            return [Change("D", ch.relation, None, ch.old), Change("I", ch.relation, ch.new, None)]
    return [ch]


def rows_of(ch: Change) -> tuple[Row | None, Row | None]:
    """The row before and after ``ch`` (None where there is none)."""
    return (ch.old if ch.op in ("U", "D") else None), (ch.new if ch.op in ("I", "U") else None)


def outcome(ch: Change, held_before: bool, held_after: bool) -> Change | None:
    """What the client sees of ``ch`` given whether it held the row before and holds it after."""
    before_row, after_row = rows_of(ch)
    if held_after and not held_before:
        assert after_row is not None
        return Change("I", ch.relation, after_row, None)
    if held_after and held_before:
        if ch.op == "U" and before_row is not None and before_row == after_row:
            return None  # the row did not change
        return Change("U", ch.relation, after_row, before_row if before_row is not None else after_row)
    if held_before:
        # a GONE carries the key (an insert of a row a tree still held has no row before)
        row = before_row if before_row is not None else after_row
        assert row is not None
        return Change("D" if ch.op == "D" else "G", ch.relation, None, row)
    return None


class TableShapes:
    """One client's shapes on one table, indexed by their ``column = constant`` conjunct.

    A shape whose key does not match a row cannot match it, so only the indexed shapes with the
    row's values, plus the unindexed ones, need evaluating: O(1) per change for equality shapes.
    """

    def __init__(self) -> None:
        self.all: list[Shape] = []
        self._by_key: dict[tuple[str, bytes], list[Shape]] = {}
        self._keys_by_column: dict[str, set[tuple[str, bytes]]] = {}
        self._others: list[Shape] = []

    def __bool__(self) -> bool:
        return bool(self.all)

    def add(self, shape: Shape) -> None:
        self.all.append(shape)
        key = Router.key_of(shape)
        if key is None:
            self._others.append(shape)
        else:
            self._by_key.setdefault(key, []).append(shape)
            self._keys_by_column.setdefault(key[0], set()).add(key)

    def remove(self, shape: Shape) -> None:
        self.all.remove(shape)
        key = Router.key_of(shape)
        if key is None:
            self._others.remove(shape)
        else:
            bucket = self._by_key[key]
            bucket.remove(shape)
            if not bucket:
                del self._by_key[key]
                keys = self._keys_by_column[key[0]]
                keys.discard(key)
                if not keys:
                    del self._keys_by_column[key[0]]

    def overlapping(self, shape: Shape) -> list[Shape]:
        """The shapes that may share rows with ``shape``: all but those keyed on the same column
        with another value (``col = 1`` and ``col = 2`` never overlap)."""
        key = Router.key_of(shape)
        if key is None:
            return list(self.all)
        out = list(self._others) + list(self._by_key.get(key, ()))
        for column, keys in self._keys_by_column.items():
            if column != key[0]:
                for other in keys:
                    out.extend(self._by_key[other])
        return out

    def candidates(self, ch: Change) -> list[Shape]:
        if not self._by_key:
            return self._others
        found: dict[int, Shape] = {id(s): s for s in self._others}
        for i, col in enumerate(ch.relation.columns):
            for row in (ch.new, ch.old):
                if row is not None and row[i] is not None:
                    value = row[i]
                    assert value is not None
                    for shape in self._by_key.get((col.name, value.lower() if col.type_name == "uuid" else value), ()):
                        found[id(shape)] = shape
        return list(found.values())


def route_transaction(by_table: dict[str, TableShapes], tx: Transaction) -> list[Change]:
    out: list[Change] = []
    for ch in tx.changes:
        shapes = by_table.get(ch.relation.qualified)
        if shapes:
            out.extend(route(shapes.candidates(ch), tx, ch))
    return out


def any_of(wheres: Sequence[CompiledWhere | None]) -> CompiledWhere | None:
    """The union of shapes as one filter: None (the whole table) if any of them is the whole table."""
    if any(w is None for w in wheres) or not wheres:
        return None
    if len(wheres) == 1:
        return wheres[0]
    union = sql.SQL("({})").format(sql.SQL(" OR ").join(w.sql for w in wheres if w is not None))
    return CompiledWhere(
        " OR ".join(w.text for w in wheres if w is not None), union, lambda row: False, frozenset(), None
    )


def snapshot_filter(where: CompiledWhere | None, held: Sequence[CompiledWhere | None]) -> sql.Composable | None:
    """``where`` minus the rows the ``held`` shapes already match."""
    if any(h is None for h in held):
        return sql.SQL("false")  # another shape already holds the whole table
    parts: list[sql.Composable] = []
    if where is not None:
        parts.append(sql.SQL("({})").format(where.sql))  # NULL excludes the row, as WHERE does
    parts.extend(
        sql.SQL("NOT coalesce({}, false)").format(h.sql) for h in held if h is not None and not disjoint(where, h)
    )
    if not parts:
        return None
    return sql.SQL(" AND ").join(parts)


def disjoint(a: CompiledWhere | None, b: CompiledWhere) -> bool:
    """Certainly no common row: ``col = x`` and ``col = y`` with x != y."""
    if a is None or a.equality is None or b.equality is None:
        return False
    return a.equality[0] == b.equality[0] and a.equality[1] != b.equality[1]
