"""Include trees in the shape engine: routing a transaction through a client's flat shapes and trees,
and loading what enters a tree from a snapshot, level by level (one query per level and batch of
joining values, never one per row).

Protocol-free like the rest of the engine: it returns changes and rows, the engine emits them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from psycopg import sql

from electricctl._engine.ports import Snapshot
from electricctl._model.rows import Change, RelationDef, Row, Transaction
from electricctl._shapes import routing
from electricctl._shapes.routing import TableShapes
from electricctl._shapes.tree import Key, Link, Moves, Node, TreeHold, key_of, link_filter


class TreeTooLarge(Exception):
    """A tree would hold more rows than one client's trees may (``serve --max-tree-rows``)."""


LINKS_PER_QUERY = 10_000
"""Joining values per snapshot query (a level with more parents takes a few queries)."""


@dataclass(slots=True)
class TreeShape:
    """One requested shape with an include tree: the root level and everything under it."""

    subscription_id: str
    request_id: str
    root: Node
    declared: str | None = None
    """The shape of electric.yaml this is (by name), if any."""

    @property
    def table(self) -> str:
        return str(self.root.table)

    def record(self) -> dict[str, object]:
        """How the client's subscription remembers it (what a resume compiles again)."""
        described = self.root.describe()
        named = {"shape": self.declared} if self.declared else {}
        return {"request_id": self.request_id, "table": self.table, "where": self.root.where_text, **described, **named}


@dataclass(slots=True)
class Pending:
    """Tree work a transaction left, done at the next snapshot point (see ShapeEngine._tree_moves)."""

    wanted: list[tuple[Node, Link]] = field(default_factory=list)
    refs: list[int] = field(default_factory=list)
    """The additional-data references of the transactions that wanted them (sent with each)."""
    check: list[tuple[Node, Key]] = field(default_factory=list)
    """Rows a tree let go that a flat shape may still hold: decided on the row as it is then."""

    def __bool__(self) -> bool:
        return bool(self.wanted or self.check)


def flat_matches(shapes: TableShapes | None, row: Row) -> bool:
    return bool(shapes) and any(s.matches(row) for s in shapes.all)  # type: ignore[union-attr]


def pk_row(rel: RelationDef, key: Key) -> Row:
    values: list[bytes | None] = [None] * len(rel.columns)
    for i, v in zip(rel.pk_indexes, key, strict=True):
        values[i] = v
    return tuple(values)


def route_transaction(flat: dict[str, TableShapes], hold: TreeHold, tx: Transaction, pending: Pending) -> list[Change]:
    """What a client with these flat shapes and trees receives for ``tx``: each change as the
    client sees it (insert on entering, update, delete, GONE on leaving), then GONE for the rows
    that left with a row above them. Work for a snapshot (move-ins) is added to ``pending``."""
    if not hold:
        return routing.route_transaction(flat, tx)
    out: list[Change] = []
    moves = Moves()
    relations: dict[str, RelationDef] = {}
    for ch in tx.changes:
        table = ch.relation.qualified
        shapes = flat.get(table)
        if ch.op == "T" or (not shapes and not hold.nodes_on(table)):
            continue
        relations[table] = ch.relation
        for part in routing.split_key_change(ch):
            before, after = routing.rows_of(part)
            candidates = shapes.candidates(part) if shapes else []
            flat_before = before is not None and any(s.matches(before) for s in candidates)
            flat_after = after is not None and any(s.matches(after) for s in candidates)
            tree_before, tree_after = hold.apply(part, moves)
            one = routing.outcome(part, flat_before or tree_before, flat_after or tree_after)
            if one is not None:
                out.append(one)
    # rows that left with a row above them: GONE unless something still holds them
    gone: dict[tuple[str, Key], Change] = {}
    for node, key in moves.left:
        table = str(node.table)
        if hold.holds(table, key) or (table, key) in gone:
            continue
        if flat.get(table):
            pending.check.append((node, key))  # a flat shape may hold it: decided on the row later
            continue
        rel = relations.get(table, node.relation)
        gone[(table, key)] = Change("G", rel, None, pk_row(rel, key))
    out.extend(gone.values())
    pending.wanted.extend((node, link) for node, link in moves.wanted if hold.joined(node, link))
    return out


async def load(
    snap: Snapshot,
    hold: TreeHold,
    flat: dict[str, TableShapes],
    roots: Sequence[Node] = (),
    wanted: Sequence[tuple[Node, Link]] = (),
    limit: int | None = None,
) -> AsyncIterator[tuple[RelationDef, list[Row]]]:
    """Read what enters the trees at ``snap``: each root's rows, and the rows joined by each wanted
    (level, value), level by level with what hangs from them, as they come (never the whole tree
    at once). Every row is taken into ``hold``; yielded (each with its tags last) are the rows the
    client held by no shape before."""
    moves = Moves(wanted=list(wanted))

    async def take_rows(node: Node, where: sql.Composable | None) -> AsyncIterator[tuple[RelationDef, list[Row]]]:
        rel = node.relation
        shapes = flat.get(str(node.table))
        n = len(rel.columns)
        held = None if not shapes else (lambda row: flat_matches(shapes, row[:n]))
        async for rows in snap.rows(rel, where, tags=True):
            fresh = hold.take_many(node, rel, rows, moves, held)
            if limit is not None and hold.size > limit:
                raise TreeTooLarge(
                    f"the include trees would hold more than {limit:,} rows, the most one client's trees may"
                    " hold on this server (serve --max-tree-rows): narrow the tree with where clauses"
                )
            if fresh:
                yield rel, fresh

    for root in roots:
        async for item in take_rows(root, root.where.sql if root.where is not None else None):
            yield item
    while moves.wanted:
        batch, moves.wanted = moves.wanted, []
        by_node: dict[Node, list[Link]] = {}
        for node, link in batch:
            if hold.joined(node, link):
                by_node.setdefault(node, []).append(link)
        for node, links in by_node.items():
            assert node.edge is not None
            for i in range(0, len(links), LINKS_PER_QUERY):
                where = link_filter(node.relation, node.edge.columns, links[i : i + LINKS_PER_QUERY])
                if node.where is not None:
                    where = sql.SQL("{} AND ({})").format(where, node.where.sql)
                async for item in take_rows(node, where):
                    yield item


async def load_all(
    snap: Snapshot,
    hold: TreeHold,
    flat: dict[str, TableShapes],
    roots: Sequence[Node] = (),
    wanted: Sequence[tuple[Node, Link]] = (),
) -> list[tuple[RelationDef, Row]]:
    """:func:`load`, collected: ``(relation, row)`` pairs."""
    return [(rel, row) async for rel, rows in load(snap, hold, flat, roots, wanted) for row in rows]


async def rows_by_key(snap: Snapshot, rel: RelationDef, keys: Sequence[Key]) -> dict[Key, Row]:
    """The rows with these keys at ``snap`` (those that still exist)."""
    names = tuple(rel.columns[i].name for i in rel.pk_indexes)
    found: dict[Key, Row] = {}
    for i in range(0, len(keys), LINKS_PER_QUERY):
        chunk = [k for k in keys[i : i + LINKS_PER_QUERY] if all(v is not None for v in k)]
        if not chunk:
            continue
        async for rows in snap.rows(rel, link_filter(rel, names, chunk)):  # type: ignore[arg-type]
            for row in rows:
                found[key_of(rel, row)] = row
    return found
