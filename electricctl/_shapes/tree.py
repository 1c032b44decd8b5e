"""Include trees: shapes that follow foreign keys from a root table, and the rows each level holds (pure).

A tree is a root (a table and a where clause) and, under each level, included tables joined to it
by a foreign key, either way:

- one-to-many: the included table references its parent (``issues.project_id -> projects.id``):
  a held project brings its issues;
- many-to-one: the parent references the included table (``comments.author_id -> users.id``): a
  held comment brings its author. As in Electric, such a level takes no where clause: a parent row
  would then reference a row the client does not have.

A row is held by a level when it matches the level's where and, below the root, is joined to a row
the parent level holds. Membership below the root depends on other rows, so, unlike a flat shape,
a tree keeps state: :class:`TreeHold` records, per level, the rows it holds, the value joining each
to its parent, and, per included level, how many held rows provide each joining value. From that
it decides, change by change, what enters and what leaves, without asking Postgres, except for
rows that enter because their parent did (a move-in): those are loaded from a snapshot.

A table that includes itself (a self-referencing foreign key) is refused: following it would need
a recursive query with a depth bound, and Electric forbids it too ("no recursive foreign keys in
shapes"). A table may appear on several paths of one tree, and in several trees.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg import sql

from electricctl._catalog.observed import ForeignKey
from electricctl._model.rows import Change, RelationDef, Row
from electricctl._model.table import TableRef
from electricctl._shapes.compile import CompiledWhere

Direction = Literal["one_to_many", "many_to_one"]
Key = tuple[bytes | None, ...]
"""A row's primary key values (text form), in key order."""
Link = tuple[bytes, ...]
"""The values that join a row to its parent level (never with a NULL: a NULL joins nothing)."""

MAX_DEPTH = 8
"""Levels below the root a tree may have (a bound against requests that would fan out without end)."""
MAX_NODES = 32
"""Levels a tree may have in all."""


class TreeError(ValueError):
    """An include tree that cannot be served; the message says why."""


@dataclass(frozen=True, slots=True)
class Include:
    """An included table, as a client or electric.yaml asks for it (before it is resolved)."""

    table: str
    foreign_key: tuple[str, ...] = ()
    """The foreign key's own columns (on the referencing side, whichever way it points); empty:
    the one foreign key between the two tables."""
    where: str = ""
    include: tuple[Include, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"table": self.table}
        if self.foreign_key:
            out["foreign_key"] = list(self.foreign_key)
        if self.where:
            out["where"] = self.where
        if self.include:
            out["include"] = [i.to_json() for i in self.include]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Include:
        # electric.yaml's resolved rules name the constraint in foreign_key, its columns in columns
        fk = data["columns"] if "columns" in data else data.get("foreign_key")
        if not isinstance(fk, list | tuple):
            fk = ()
        return cls(
            str(data["table"]),
            tuple(str(c) for c in fk),
            str(data.get("where") or ""),
            tuple(cls.from_json(i) for i in data.get("include") or ()),
        )


def includes_from_json(items: Iterable[Mapping[str, Any]] | None) -> tuple[Include, ...]:
    return tuple(Include.from_json(i) for i in items or ())


@dataclass(frozen=True, slots=True)
class Edge:
    """How a level joins its parent: its ``columns`` equal the parent row's ``parent_columns``."""

    direction: Direction
    columns: tuple[str, ...]
    parent_columns: tuple[str, ...]


def resolve_edge(parent: TableRef, child: TableRef, foreign_key: Sequence[str], fks: Iterable[ForeignKey]) -> Edge:
    """The foreign key joining ``child`` to ``parent`` (``foreign_key`` picks one), or TreeError."""
    if child == parent:
        raise TreeError(
            f"{child} includes itself: self-referencing foreign keys are not followed (a tree would need a"
            " depth bound); subscribe to the table with a where clause instead"
        )
    wanted = tuple(foreign_key)
    found: list[Edge] = []
    for fk in fks:
        if wanted and fk.columns != wanted:
            continue
        if fk.table == child and fk.target == parent:
            found.append(Edge("one_to_many", fk.columns, fk.target_columns))
        elif fk.table == parent and fk.target == child:
            found.append(Edge("many_to_one", fk.target_columns, fk.columns))
    over = f" over ({', '.join(wanted)})" if wanted else ""
    if not found:
        raise TreeError(f"no foreign key joins {child} to {parent}{over}; an include must follow a foreign key")
    if len(found) > 1:
        raise TreeError(f"several foreign keys join {child} to {parent}{over}; name one with foreign_key")
    return found[0]


@dataclass(eq=False, slots=True)
class Node:
    """One level of a compiled tree."""

    table: TableRef
    relation: RelationDef
    where: CompiledWhere | None
    """The level's clause, intersected with the rows the user may read (None: every row)."""
    where_text: str
    edge: Edge | None
    """None at the root."""
    parent: Node | None = None
    index: int = 0
    """This level's place among its parent's children."""
    children: list[Node] = field(default_factory=list)

    def add(self, child: Node) -> Node:
        child.parent = self
        child.index = len(self.children)
        self.children.append(child)
        return child

    def walk(self) -> Iterator[Node]:
        yield self
        for c in self.children:
            yield from c.walk()

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1

    def matches(self, row: Row) -> bool:
        return self.where is None or self.where.matches(row)

    def describe(self) -> dict[str, Any]:
        """The definition as recorded with the client's subscription (and compared with electric.yaml)."""
        out: dict[str, Any] = {"table": str(self.table)}
        if self.edge is not None:
            out["foreign_key"] = list(
                self.edge.columns if self.edge.direction == "one_to_many" else self.edge.parent_columns
            )
        if self.where_text.strip():
            out["where"] = self.where_text
        if self.children:
            out["include"] = [c.describe() for c in self.children]
        return out


def check_shape(root: Node) -> None:
    """Refuse trees too deep or too wide, and where clauses on many-to-one levels."""
    nodes = list(root.walk())
    if len(nodes) > MAX_NODES:
        raise TreeError(f"the include tree has {len(nodes)} levels; at most {MAX_NODES} are served")
    for n in nodes:
        if n.depth > MAX_DEPTH:
            raise TreeError(f"the include tree is deeper than {MAX_DEPTH} levels at {n.table}")
        if n.edge is not None and n.edge.direction == "many_to_one" and n.where_text.strip():
            raise TreeError(
                f"the many-to-one include of {n.table} cannot have a where clause: a row above it would"
                " reference a row the client does not have"
            )


# -- positions of named columns in a relation (relations are interned: identity-keyed cache) ------
_POSITIONS: dict[tuple[RelationDef, tuple[str, ...]], tuple[int, ...] | None] = {}


def positions(rel: RelationDef, names: tuple[str, ...]) -> tuple[int, ...] | None:
    """Where ``names`` are in ``rel``'s rows (None if one is missing, e.g. dropped)."""
    key = (rel, names)
    hit = _POSITIONS.get(key, ())
    if hit != ():
        return hit
    index = {c.name: i for i, c in enumerate(rel.columns)}
    found = tuple(index[n] for n in names) if all(n in index for n in names) else None
    if len(_POSITIONS) > 10_000:
        _POSITIONS.clear()
    _POSITIONS[key] = found
    return found


def values_at(row: Row, where: tuple[int, ...] | None) -> Link | None:
    """The values at ``where`` in ``row``; None if one is NULL (a NULL joins nothing)."""
    if where is None:
        return None
    out = tuple(row[i] for i in where)
    if any(v is None for v in out):
        return None
    return out  # type: ignore[return-value]


def key_of(rel: RelationDef, row: Row) -> Key:
    return tuple(row[i] for i in rel.pk_indexes)


@dataclass(slots=True)
class _Entry:
    link: Link | None
    """The value joining the row to its parent level (None at the root)."""
    provides: tuple[Link | None, ...]
    """Per child level: the value the row offers it."""


@dataclass(slots=True)
class _Level:
    rows: dict[Key, _Entry] = field(default_factory=dict)
    by_link: dict[Link, set[Key]] = field(default_factory=dict)
    provided: list[dict[Link, int]] = field(default_factory=list)


@dataclass(slots=True)
class Moves:
    """What one change did to a client's trees, beyond the changed row itself."""

    left: list[tuple[Node, Key]] = field(default_factory=list)
    """Rows a level no longer holds because a row above left or moved (the client may still hold them)."""
    wanted: list[tuple[Node, Link]] = field(default_factory=list)
    """Levels that now must hold the rows joined by this value (to be loaded: a move-in)."""


class TreeHold:
    """The rows each level of a client's trees holds, kept up to date change by change."""

    def __init__(
        self, seen: dict[str, set[Key]] | None = None, on_offer: Callable[[Node, Link, bool], None] | None = None
    ) -> None:
        self.on_offer = on_offer
        """Called when a level starts (True) or stops (False) offering a joining value to a child
        level: the rows of that level with the value may now belong to it (the server's router
        wakes the client for changes to them)."""
        self.seen: dict[str, set[Key]] = {} if seen is None else seen
        """By table: the key of every row a level has taken (rows the client may hold)."""
        self.fresh: dict[str, set[Key]] = {}
        """Keys added to ``seen`` since the server last made them durable."""
        self.loose: dict[tuple[str, Key], int | None] = {}
        """Keys in ``seen`` that no level holds now, with the stream position by which the client
        has been told (None: not yet; see :meth:`stamp` and :meth:`prune`)."""
        self._unstamped: list[tuple[str, Key]] = []
        self._stamped: deque[tuple[int, list[tuple[str, Key]]]] = deque()
        self.roots: list[Node] = []
        self.size = 0
        """Rows held, counted once per level holding them (what the server keeps in memory)."""
        self._levels: dict[Node, _Level] = {}
        self._by_table: dict[str, list[Node]] = {}

    def __bool__(self) -> bool:
        return bool(self.roots)

    def nodes_on(self, table: str) -> list[Node]:
        return self._by_table.get(table, [])

    def add_tree(self, root: Node) -> None:
        self.roots.append(root)
        for n in root.walk():
            self._levels[n] = _Level(provided=[{} for _ in n.children])
            self._by_table.setdefault(str(n.table), []).append(n)

    def remove_tree(self, root: Node) -> list[tuple[Node, Key]]:
        """Forget a tree; the rows its levels held (the client may still hold them otherwise)."""
        self.roots.remove(root)
        released: list[tuple[Node, Key]] = []
        for n in root.walk():
            level = self._levels.pop(n)
            self.size -= len(level.rows)
            if self.on_offer is not None:
                for child in n.children:
                    for value in level.provided[child.index]:
                        self.on_offer(child, value, False)
            released.extend((n, k) for k in level.rows)
            nodes = self._by_table[str(n.table)]
            nodes.remove(n)
            if not nodes:
                del self._by_table[str(n.table)]
        for n, k in released:
            self._loosen(str(n.table), k)
        return released

    def holds(self, table: str, key: Key) -> bool:
        return any(key in self._levels[n].rows for n in self._by_table.get(table, ()))

    def joined(self, node: Node, link: Link) -> bool:
        """Does the parent level hold a row offering ``link`` to ``node``?"""
        assert node.parent is not None
        return self._levels[node.parent].provided[node.index].get(link, 0) > 0

    # -- one row at one level --------------------------------------------------------------------
    def belongs(self, node: Node, rel: RelationDef, row: Row) -> bool:
        """Would ``node`` hold ``row`` given what its parent level holds now?"""
        if not node.matches(row):
            return False
        if node.edge is None:
            return True
        link = values_at(row, positions(rel, node.edge.columns))
        return link is not None and self.joined(node, link)

    def take(self, node: Node, rel: RelationDef, row: Row, moves: Moves) -> bool:
        """``node`` holds ``row`` (again); False if it already held it with the same joins."""
        level = self._levels[node]
        key = key_of(rel, row)
        link = None if node.edge is None else values_at(row, positions(rel, node.edge.columns))
        provides = tuple(values_at(row, positions(rel, c.edge.parent_columns)) for c in node.children if c.edge)
        old = level.rows.get(key)
        if old is not None and old.link == link and old.provides == provides:
            return False
        if old is None:
            self.size += 1
            if self.loose:
                self.loose.pop((str(node.table), key), None)
            seen = self.seen.setdefault(str(node.table), set())
            if key not in seen:
                seen.add(key)
                self.fresh.setdefault(str(node.table), set()).add(key)
        if old is not None and old.link != link:
            self._unlink(level, key, old.link)
        if link is not None and (old is None or old.link != link):
            level.by_link.setdefault(link, set()).add(key)
        level.rows[key] = _Entry(link, provides)
        for child, value in zip(node.children, provides, strict=True):
            before = None if old is None else old.provides[child.index]
            if value == before:
                continue
            if value is not None:
                counts = level.provided[child.index]
                counts[value] = counts.get(value, 0) + 1
                if counts[value] == 1:
                    moves.wanted.append((child, value))
                    if self.on_offer is not None:
                        self.on_offer(child, value, True)
            if before is not None:
                self._withdraw(node, child, before, moves)
        return True

    def take_many(
        self, node: Node, rel: RelationDef, rows: Sequence[Row], moves: Moves, held: Callable[[Row], bool] | None = None
    ) -> list[Row]:
        """:meth:`take` for a batch of snapshot rows (each may end with extra values, e.g. its
        tags): returns those the client held by no level or ``held`` before (to be sent)."""
        table = str(node.table)
        level = self._levels[node]
        taken, by_link = level.rows, level.by_link
        others = [self._levels[o].rows for o in self._by_table[table] if o is not node]
        seen = self.seen.setdefault(table, set())
        fresh = self.fresh.setdefault(table, set())
        pk = rel.pk_indexes
        link_at = None if node.edge is None else positions(rel, node.edge.columns)
        offers = [
            (child, positions(rel, child.edge.parent_columns), level.provided[child.index])
            for child in node.children
            if child.edge is not None
        ]
        wanted = moves.wanted
        loose = self.loose
        out: list[Row] = []
        before = len(taken)
        for row in rows:
            key = tuple(row[i] for i in pk)
            if key in taken:  # already held here (a row reached twice): the general path
                self.take(node, rel, row[: len(rel.columns)], moves)
                continue
            if loose:
                loose.pop((table, key), None)
            had = (key in seen and any(key in o for o in others)) or (held is not None and held(row))
            link = None if link_at is None else values_at(row, link_at)
            provides = tuple(values_at(row, at) for _, at, _ in offers)
            taken[key] = _Entry(link, provides)
            if link is not None:
                keys = by_link.get(link)
                if keys is None:
                    by_link[link] = {key}
                else:
                    keys.add(key)
            for (child, _, counts), value in zip(offers, provides, strict=True):
                if value is not None:
                    n = counts.get(value, 0) + 1
                    counts[value] = n
                    if n == 1:
                        wanted.append((child, value))
                        if self.on_offer is not None:
                            self.on_offer(child, value, True)
            if key not in seen:
                seen.add(key)
                fresh.add(key)
            if not had:
                out.append(row)
        self.size += len(taken) - before
        return out

    def release(self, node: Node, key: Key, moves: Moves) -> bool:
        """``node`` no longer holds the row ``key``, nor what hangs only from it; False if it did not."""
        level = self._levels[node]
        entry = level.rows.pop(key, None)
        if entry is None:
            return False
        self.size -= 1
        self._unlink(level, key, entry.link)
        self._loosen(str(node.table), key)
        for child, value in zip(node.children, entry.provides, strict=True):
            if value is not None:
                self._withdraw(node, child, value, moves)
        return True

    # -- forgetting keys the client no longer holds ------------------------------------------------
    def _loosen(self, table: str, key: Key) -> None:
        if (table, key) not in self.loose and not self.holds(table, key):
            self.loose[(table, key)] = None
            self._unstamped.append((table, key))

    def loosen_unheld(self) -> None:
        """Every key in ``seen`` that no level holds is loose (after a resync told the client)."""
        for table, keys in self.seen.items():
            for key in keys:
                self._loosen(table, key)

    def stamp(self, position: int) -> None:
        """The client has been sent, at ``position`` or before, everything that removes the loose
        keys not yet stamped (a GONE, or the change that took the row out), or holds them by a flat
        shape: once it acknowledges a later position, they may be forgotten."""
        if not self._unstamped:
            return
        batch: list[tuple[str, Key]] = []
        for tk in self._unstamped:
            if tk in self.loose and self.loose[tk] is None:
                self.loose[tk] = position
                batch.append(tk)
        self._unstamped = []
        if batch:
            self._stamped.append((position, batch))

    def prune(self, acked: int) -> int:
        """Forget the loose keys stamped before ``acked`` (a position the client has acknowledged:
        it got everything up to it and resumes after it); the newest stamp forgotten, or 0."""
        forgotten = 0
        while self._stamped and self._stamped[0][0] < acked:
            position, batch = self._stamped.popleft()
            for tk in batch:
                if self.loose.get(tk, -1) == position:
                    del self.loose[tk]
                    table, key = tk
                    keys = self.seen.get(table)
                    if keys is not None:
                        keys.discard(key)
                        if not keys:
                            del self.seen[table]
                    forgotten = position
        return forgotten

    @staticmethod
    def _unlink(level: _Level, key: Key, link: Link | None) -> None:
        if link is None:
            return
        keys = level.by_link[link]
        keys.discard(key)
        if not keys:
            del level.by_link[link]

    def _withdraw(self, node: Node, child: Node, value: Link, moves: Moves) -> None:
        """One row of ``node`` no longer offers ``value`` to ``child``: if none does now, the child
        rows joined by it leave, with what hangs from them."""
        counts = self._levels[node].provided[child.index]
        counts[value] -= 1
        if counts[value] > 0:
            return
        del counts[value]
        if self.on_offer is not None:
            self.on_offer(child, value, False)
        for ckey in list(self._levels[child].by_link.get(value, ())):
            self.release(child, ckey, moves)
            moves.left.append((child, ckey))

    # -- a change ---------------------------------------------------------------------------------
    def apply(self, ch: Change, moves: Moves) -> tuple[bool, bool]:
        """Update every level on ``ch``'s table; return (held before, held after) by any level.

        ``ch`` is an insert, update (same key) or delete with full rows.
        """
        table = ch.relation.qualified
        nodes = self._by_table.get(table)
        if not nodes:
            return False, False
        rel = ch.relation
        row = ch.new if ch.op in ("I", "U") else None
        old = ch.old if ch.op in ("U", "D") else None
        key = key_of(rel, row if row is not None else old)  # type: ignore[arg-type]
        before = after = False
        for node in nodes:
            held = key in self._levels[node].rows
            before = before or held
            if row is not None and self.belongs(node, rel, row):
                self.take(node, rel, row, moves)
                after = True
            elif held:
                self.release(node, key, moves)
        return before, after


def link_filter(rel: RelationDef, columns: tuple[str, ...], links: Sequence[Link]) -> sql.Composable:
    """``(columns) IN links`` for a snapshot query, every value a literal cast to its column's type."""
    types = {c.name: c.type_name for c in rel.columns}
    if len(columns) == 1:
        col = columns[0]
        return sql.SQL("{} = ANY({}::{}[])").format(
            sql.Identifier(col), sql.Literal([v[0].decode() for v in links]), sql.Identifier(types[col])
        )
    arrays = sql.SQL(", ").join(
        sql.SQL("{}::{}[]").format(sql.Literal([v[i].decode() for v in links]), sql.Identifier(types[c]))
        for i, c in enumerate(columns)
    )
    return sql.SQL("({}) IN (SELECT * FROM unnest({}))").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), arrays
    )
