"""Which changes a client gets, given its shapes (pure).

A client holds a row while any of its shapes matches it. For each change this module decides what
the client sees, from the row before and after the change: an insert when the row moves into the
client's shapes, an update while it stays, a delete when it is deleted, and GONE when an update
moves it out (the row still exists, the client just no longer holds it). A shape whose snapshot
already holds the transaction (its Visibility) counts the row's new state as already delivered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from electricctl._config.model import TableRef
from electricctl._replication.model import Change, RelationDef, Row, Transaction
from electricctl._server.outbound import Visibility
from electricctl._shapes.compile import CompiledWhere


@dataclass(slots=True)
class Shape:
    subscription_id: str
    request_id: str
    table: TableRef
    relation: RelationDef
    where: CompiledWhere | None
    """None: the whole table."""
    where_text: str
    visibility: Visibility | None = None

    def matches(self, row: Row) -> bool:
        return self.where is None or self.where.matches(row)


def route(shapes: Sequence[Shape], tx: Transaction, ch: Change) -> list[Change]:
    """What a client with ``shapes`` (all on ``ch``'s table) receives for ``ch``.

    An update that changes the primary key is a delete of the old key and an insert of the new one.
    """
    if ch.op == "T":
        return []
    if ch.op == "U" and ch.old is not None and ch.new is not None:
        idx = ch.relation.pk_indexes
        if any(ch.old[i] != ch.new[i] for i in idx):
            return [
                *route(shapes, tx, Change("D", ch.relation, None, ch.old)),
                *route(shapes, tx, Change("I", ch.relation, ch.new, None)),
            ]
    one = _route_one(shapes, tx, ch)
    return [] if one is None else [one]


def _route_one(shapes: Sequence[Shape], tx: Transaction, ch: Change) -> Change | None:
    before_row = ch.old if ch.op in ("U", "D") else None
    after_row = ch.new if ch.op in ("I", "U") else None
    held_before = held_after = False
    for shape in shapes:
        after = after_row is not None and shape.matches(after_row)
        if shape.visibility is not None and shape.visibility.holds(tx):
            before = after  # this shape's snapshot already had the row in its new state
        else:
            before = before_row is not None and shape.matches(before_row)
        held_before = held_before or before
        held_after = held_after or after
    if held_after and not held_before:
        assert after_row is not None
        return Change("I", ch.relation, after_row, None)
    if held_after and held_before:
        if ch.op == "U" and before_row is not None and before_row == after_row:
            return None  # the row did not change
        return Change("U", ch.relation, after_row, before_row if before_row is not None else after_row)
    if held_before:
        assert before_row is not None
        return Change("D" if ch.op == "D" else "G", ch.relation, None, before_row)
    return None


def route_transaction(by_table: dict[str, list[Shape]], tx: Transaction) -> list[Change]:
    out: list[Change] = []
    for ch in tx.changes:
        shapes = by_table.get(ch.relation.qualified)
        if shapes:
            out.extend(route(shapes, tx, ch))
    return out


def expire_visibility(shapes: Iterable[Shape], cursor: int) -> None:
    """Forget snapshot horizons the stream has passed."""
    for shape in shapes:
        if shape.visibility is not None and shape.visibility.bound_lsn <= cursor:
            shape.visibility = None
