"""One client's shapes, served: subscriptions delivered from a consistent snapshot that joins the
live stream, the durable log read from the client's position and filtered to its shapes and
grants, rows moving in and out, unsubscribes, and changes of what the client may read.

The engine is free of any wire protocol: it emits relations, rows and changes to a
:class:`~electricctl._engine.sink.Sink`. It runs one task per client (:meth:`ShapeEngine.run`);
requests (subscribe, unsubscribe, reassess) are queued and handled between two transactions, at a
point where the client holds exactly what its shapes matched.

Catching up, the engine reads every logged transaction after its cursor. Once caught up it goes
live: the router queues only the transactions that may concern it (``relevant``), and everything
in between is skipped without being read. A slow client only slows itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from electricctl import _logctx as logctx
from electricctl._auth.tokens import Identity
from electricctl._catalog.observed import ForeignKey
from electricctl._engine import trees as tr
from electricctl._engine.ports import EngineServices, Snapshot
from electricctl._engine.projection import ReadProjection
from electricctl._engine.sink import Sink
from electricctl._engine.state import ClientState, SubscriptionRecord
from electricctl._model.migrations import Migration, by_version
from electricctl._model.rows import Change, RelationDef, Row, Transaction, change_key
from electricctl._model.table import TableRef
from electricctl._perms.read import read_roles
from electricctl._shapes.compile import CompiledWhere, ShapeError, all_true, compile_where
from electricctl._shapes.router import Router
from electricctl._shapes.routing import Shape, TableShapes, any_of, snapshot_filter
from electricctl._shapes.tree import (
    Include,
    Node,
    TreeError,
    TreeHold,
    check_shape,
    includes_from_json,
    key_of,
    resolve_edge,
)
from electricctl._shapes.visibility import Visibility

log = logging.getLogger("electricctl.server")

LIVE_QUEUE_LIMIT = 10_000
"""A live client with more relevant transactions queued than this reads from the log instead."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A shape request refused before it is compiled: why (``reason`` names the kind)."""

    reason: str
    message: str


AnyShape = Shape | tr.TreeShape


@dataclass(slots=True)
class _Subscribe:
    subscription_id: str
    shapes: list[AnyShape]
    generation: int = 0
    """The engine's catalog generation when the shapes were compiled (see ShapeEngine.catalog_changed)."""


@dataclass(slots=True)
class _Unsubscribe:
    subscription_ids: list[str]


@dataclass(slots=True)
class _Reassess:
    """The assignment tables changed: the client's roles, and so what it may read, may have too.
    ``catalog``: grants or declared shapes were applied again: reshape whatever the roles are."""

    catalog: bool = False
    previous: dict[str, list[Any]] | None = None
    """A resume: what the client held when it was last told (ClientState.access), to move it from."""


@dataclass(slots=True)
class _TreeResync:
    """A resumed client gets its trees again at a snapshot (see ClientState.tree_rows)."""


@dataclass(slots=True)
class _TreeMoves:
    """A transaction moved rows into (or out of) a tree: load them at the next snapshot point."""


class ShapeEngine:
    def __init__(
        self, services: EngineServices, client_id: str, identity: Identity, state: ClientState, sink: Sink
    ) -> None:
        self.services = services
        self.client_id = client_id
        self.identity = identity
        self.state = state
        """The client's state that outlives a connection (its subscriptions are recorded here)."""
        self.sink = sink
        self.projection = ReadProjection(services.catalog, identity)
        self.shapes: dict[str, TableShapes] = {}
        """The client's shapes, by table (``schema.name``)."""
        self.cursor = 0
        """LSN of the last logged transaction the client has been given (or has skipped)."""
        self.live = False
        self.relevant: deque[int] = deque()
        """Live: LSNs of logged transactions the router found may concern this client."""
        self.wake = asyncio.Event()
        self.trees = TreeHold(state.tree_rows, on_offer=self._offer)
        self._reread = False
        self.max_tree_rows = 1_000_000
        self._over_budget = False
        self._barriers: list[tuple[int, asyncio.Future[None]]] = []
        """Positions callers wait for the client to have been sent everything up to (see :meth:`sent_through`)."""
        """Rows this client's trees may hold in all (a subscription that would take more is refused)."""
        """A tree began offering a joining value while live: what was routed before may concern it."""
        """The client's include trees, with the rows each level holds."""
        self.tree_shapes: list[tr.TreeShape] = []
        self.pending = tr.Pending()
        """Tree work the stream left for the next snapshot point."""
        self._refs = itertools.count(1)
        """Additional-data references (per connection, never 0: 0 means none)."""
        self.control: deque[_Subscribe | _Unsubscribe | _Reassess | _TreeMoves | _TreeResync] = deque()
        self.inflight: set[str] = set()
        """Subscriptions requested and not yet recorded (delivered or failed)."""
        self.schema: list[Migration] = []
        """Migrations a starting client lacks, sent before anything else (:meth:`start`)."""
        self.catalog_generation = 0
        """Counts the applies that changed what shapes depend on, since this engine started."""

    # -- requests (from the protocol session) ----------------------------------------------
    async def resolve(
        self, tablename: str, where: str, includes: Sequence[Include] = ()
    ) -> tuple[TableRef | Refused | None, str, tuple[Include, ...]]:
        """A request names a table (with an optional where and include tree), or a shape declared
        in electric.yaml (with its own where and include tree)."""
        catalog = self.services.catalog
        table = TableRef.parse(tablename)
        if table in await catalog.electrified_tables():
            return table, where, tuple(includes)
        rules = await catalog.shape_rules()
        declared = rules.declared.get(tablename)
        if declared is not None and not where.strip() and not includes:
            return TableRef.parse(declared["table"]), declared.get("where") or "", rules.includes(tablename)
        return None, where, tuple(includes)

    async def compile(
        self,
        sub_id: str,
        request_id: str,
        table: TableRef,
        where: str,
        includes: Sequence[Include] = (),
        *,
        declared: str | None = None,
    ) -> AnyShape | str:
        """Compile one shape request, or say why it is refused (a message starting "invalid include
        tree" for a tree that cannot be served). ``declared``: the request is a shape of
        electric.yaml given by that name before (a resume): it stays allowed while the name is
        declared, even if its definition has changed since (the client is then reshaped)."""
        catalog = self.services.catalog
        if table not in await catalog.electrified_tables():
            return f"table {table} is not electrified"
        rules = await catalog.shape_rules()
        name = rules.find(table, where, includes)
        if name is None and declared is not None and declared in rules.declared:
            name = declared
        if rules.adhoc != "allow" and name is None:
            tree = " with its include tree" if includes else ""
            return (
                f"shape ({table}{' where ' + where if where.strip() else ''}){tree} is not declared in"
                " electric.yaml, and adhoc_shapes is deny"
            )
        rel = await catalog.describe(table)
        if rel is None:
            return f"table {table} does not exist"
        compiled = None
        # a client gets only the rows its grants let it read, whatever the shape asks for
        access = await self.projection.access_for(rel)
        if where.strip():
            try:
                compiled = compile_where(where, rel, self.identity.claims, readable=access.filterable(rel))
            except ShapeError as exc:
                at = f" at position {exc.offset + 1}" if exc.offset is not None else ""
                return f"invalid where clause{at}: {exc.message}"
        if access.rows is not None:
            compiled = access.rows if compiled is None else all_true([compiled, access.rows])
        if not includes:
            return Shape(sub_id, request_id, table, rel, compiled, where, name)
        root = Node(table, rel, compiled, where, None)
        try:
            await self._grow(root, includes, await catalog.foreign_keys(), [])
            check_shape(root)
        except TreeError as exc:
            return f"invalid include tree: {exc}"
        return tr.TreeShape(sub_id, request_id, root, name)

    async def _grow(
        self, parent: Node, includes: Sequence[Include], fks: Sequence[ForeignKey], path: list[tuple[object, ...]]
    ) -> None:
        """Resolve and compile the levels under ``parent``; TreeError if one cannot be served."""
        catalog = self.services.catalog
        for inc in includes:
            table = TableRef.parse(inc.table)
            if table not in await catalog.electrified_tables():
                raise TreeError(f"table {inc.table} is not electrified")
            rel = await catalog.describe(table)
            if rel is None:
                raise TreeError(f"table {inc.table} does not exist")
            edge = resolve_edge(parent.table, table, inc.foreign_key, fks)
            step = (frozenset((parent.table, table)), edge.columns, edge.parent_columns)
            if step in path:
                raise TreeError(f"the include of {table} follows the same foreign key back: a path may use it once")
            # an include reaches no row that a direct subscription to its table could not
            access = await self.projection.access_for(rel)
            compiled = None
            if inc.where.strip():
                try:
                    compiled = compile_where(inc.where, rel, self.identity.claims, readable=access.filterable(rel))
                except ShapeError as exc:
                    raise TreeError(f"the where clause of {table}: {exc.message}") from None
            if access.rows is not None:
                compiled = access.rows if compiled is None else all_true([compiled, access.rows])
            node = parent.add(Node(table, rel, compiled, inc.where, edge))
            await self._grow(node, inc.include, fks, [*path, step])

    def register(self, shape: AnyShape) -> None:
        if isinstance(shape, tr.TreeShape):
            if shape.root not in self.trees.roots:
                self.trees.add_tree(shape.root)
            self.tree_shapes.append(shape)
            for node in shape.root.walk():
                if self._link_column(node) is None:  # indexed levels follow their offered values
                    self.services.router.add(self, str(node.table), node)
            return
        self.shapes.setdefault(str(shape.table), TableShapes()).add(shape)
        self.services.router.add(self, str(shape.table), shape)

    def _forget_tree(self, shape: tr.TreeShape) -> list[tuple[Node, tuple[bytes | None, ...]]]:
        """Stop serving a tree; the rows its levels held."""
        self.tree_shapes.remove(shape)
        for node in shape.root.walk():
            if self._link_column(node) is None:
                self.services.router.remove(self, str(node.table), node)
        return self.trees.remove_tree(shape.root)  # its offered values leave the router (_offer)

    @staticmethod
    def _link_column(node: Node) -> str | None:
        """The column the router indexes an included level by: its first joining column, when the
        column's text form is canonical (None: the level is not indexed, every change of its table
        wakes the client)."""
        if node.edge is None:
            return None
        column = node.edge.columns[0]
        types = {c.name: c.type_name for c in node.relation.columns}
        return column if Router.indexable(types.get(column, "")) else None

    def _offer(self, node: Node, link: tuple[bytes, ...], added: bool) -> None:
        """A tree level starts or stops offering ``link`` to ``node``: the router wakes this client
        for the changes of ``node``'s rows with that value (and only those)."""
        column = self._link_column(node)
        if column is None:
            return
        if added:
            self.services.router.add_key(self, str(node.table), column, link[0])
            if self.live:
                # transactions the router saw before this key existed may concern the client now:
                # read the next ones from the log instead of the queue
                self._leave_live()
                self._reread = True
        else:
            self.services.router.remove_key(self, str(node.table), column, link[0])

    def start(self, cursor: int, schema: Sequence[Migration] = ()) -> None:
        """Stream from ``cursor`` (the client has everything up to it), after the migrations in
        ``schema`` (those a client starting afresh lacks: every one after its schema version)."""
        self.cursor = cursor
        self.schema = list(schema)
        if self.tree_shapes or any(self.state.tree_rows.values()):
            # (keys without trees: the client may not have got the GONEs of an unsubscribe)
            self.control.append(_TreeResync())
        self.services.scanning.add(self)
        self.wake.set()

    def subscribe(self, subscription_id: str, shapes: list[AnyShape], generation: int | None = None) -> None:
        """Deliver ``shapes``; ``generation``: :attr:`catalog_generation` as it was before they were
        compiled (an apply since then has them compiled again before they are delivered)."""
        gen = self.catalog_generation if generation is None else generation
        self.control.append(_Subscribe(subscription_id, shapes, gen))
        self.inflight.add(subscription_id)
        self.wake.set()

    def unsubscribe(self, subscription_ids: list[str]) -> None:
        known = [s for s in subscription_ids if s in self.state.subscriptions]
        if known:
            self.control.append(_Unsubscribe(known))
            self.wake.set()

    def sent_through(self, lsn: int) -> asyncio.Future[None]:
        """Done once every logged transaction up to ``lsn`` has been handed to the sink (those
        the client's shapes want, and what they brought), with nothing else pending: a client
        that applies in order has all of it when a frame sent after this arrives."""
        fut = asyncio.get_running_loop().create_future()
        self._barriers.append((lsn, fut))
        self.wake.set()
        return fut

    def _release_barriers(self) -> None:
        waiting = []
        for lsn, fut in self._barriers:
            if fut.done():
                continue
            if lsn <= self.cursor:
                fut.set_result(None)
            else:
                waiting.append((lsn, fut))
        self._barriers = waiting

    def roles_may_have_changed(self) -> None:
        if self.projection.roles is not None and not any(isinstance(c, _Reassess) for c in self.control):
            self.control.append(_Reassess())
            self.wake.set()

    def access_now(self) -> dict[str, list[Any]]:
        """What the client's flat shapes hold, by table (see ClientState.access)."""
        out: dict[str, list[Any]] = {}
        for table, shapes in self.shapes.items():
            if not shapes.all:
                continue
            where = any_of([s.where for s in shapes.all])
            access = self.projection.access.get(table)
            columns = sorted(access.columns) if access is not None and access.columns is not None else None
            per_row = (
                [
                    [None if w is None else w.sql.as_string(), None if c is None else sorted(c)]
                    for w, c in access.per_row
                ]
                if access is not None
                else []
            )
            out[table] = [None if where is None else where.sql.as_string(), columns, per_row]
        return out

    def resumed(self, previous: dict[str, list[Any]]) -> None:
        """The client resumed holding ``previous`` (what it was last told), and what its shapes
        hold now differs (grants, roles or declared shapes changed while it was away): move it at
        the next snapshot point; rows it may no longer read leave, rows it now may read arrive."""
        self.control.append(_Reassess(catalog=True, previous=previous))
        self.wake.set()

    def catalog_changed(self) -> None:
        """The catalog was applied again: every shape is compiled anew (grants, declared shapes,
        electrified tables) at the next snapshot point, and the rows that move go to the client."""
        self.catalog_generation += 1
        queued = [c for c in self.control if isinstance(c, _Reassess)]
        if queued:
            queued[0].catalog = True
        else:
            self.control.append(_Reassess(catalog=True))
        self.wake.set()

    def close(self) -> None:
        self.services.router.remove_connection(self)
        self.services.scanning.discard(self)
        for _, fut in self._barriers:
            fut.cancel()
        self._barriers = []

    # -- the stream ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the client until cancelled (or until the sink fails)."""
        sink = self.sink
        while True:
            if self.schema:
                schema, self.schema = self.schema, []
                await self._send_schema(schema)
            while self.control:
                item = self.control.popleft()
                self._leave_live()
                if isinstance(item, _Subscribe):
                    try:
                        await self._deliver(item)
                    except (psycopg.Error, TimeoutError, OSError) as exc:
                        # the client learns this subscription failed; the connection carries on
                        log.warning("could not deliver subscription %s: %s", item.subscription_id, exc)
                        await sink.subscription_failed(
                            item.subscription_id, f"the server could not read the data: {exc}"
                        )
                    except tr.TreeTooLarge as exc:
                        log.warning("refused subscription %s of %s: %s", item.subscription_id, self.client_id, exc)
                        await sink.subscription_failed(item.subscription_id, str(exc))
                    finally:
                        self.inflight.discard(item.subscription_id)
                elif isinstance(item, _Reassess):
                    await self._reassess(item.catalog, item.previous)
                elif isinstance(item, _TreeMoves):
                    await self._tree_moves()
                elif isinstance(item, _TreeResync):
                    await self._tree_resync()
                else:
                    await self._unsubscribe(item)
            if not sink.has_room():
                await sink.ready()
                continue
            self.wake.clear()
            txns = self._next_transactions()
            if not txns:
                if self._barriers:
                    self._release_barriers()
                await self.wake.wait()
                continue
            for tx in txns:
                if self.control or not sink.has_room():
                    break
                if self.live:
                    self.relevant.popleft()
                self.cursor = max(self.cursor, tx.lsn)
                await self._send_transaction(tx)
                if self._reread:
                    self._reread = False
                    break  # the next transactions come from the log, not from what was routed

    async def _send_schema(self, migrations: Sequence[Migration]) -> None:
        """Migrations the client lacks, one transaction per version, at the stream's start point."""
        now = int(time.time() * 1000)
        for group in by_version(migrations).values():
            await self.sink.migration(self.cursor, now, 0, group)

    async def _send_transaction(self, tx: Transaction) -> None:
        logctx.LSN.set(tx.lsn)  # what this task logs from here is about this position
        await self._route_and_send(tx)
        self._told()

    def _told(self) -> None:
        """Everything the client must be told of rows its trees let go has been sent (nothing is
        pending): their keys may be forgotten once it acknowledges a later position."""
        if not self.pending:
            self.trees.stamp(self.cursor)
        over = self.trees.size > self.max_tree_rows
        if over != self._over_budget:
            # a subscription over the budget is refused; live growth (rows Postgres gained) cannot
            # be, and would be lost to the client if dropped: it is served, and said
            self._over_budget = over
            if over:
                self.services.stats["trees_over_budget"] += 1
                log.warning(
                    "the include trees of client %s grew live to %d rows, over serve --max-tree-rows (%d);"
                    " they are still served (the server keeps their keys in memory): narrow the tree",
                    self.client_id,
                    self.trees.size,
                    self.max_tree_rows,
                )

    def acked(self, lsn: int) -> None:
        """The client acknowledged ``lsn``: it has everything up to it, and resumes after it."""
        if self.trees.loose:
            position = self.trees.prune(lsn)
            if position:
                self.state.tree_pruned_lsn = max(self.state.tree_pruned_lsn, position)

    async def _route_and_send(self, tx: Transaction) -> None:
        wanted = len(self.pending.wanted)
        changes = tr.route_transaction(self.shapes, self.trees, tx, self.pending)
        ref = 0
        if len(self.pending.wanted) > wanted:
            # rows entering a tree bring what hangs from them: it follows as this transaction's
            # additional data, read at the next snapshot point (Electric's move-in)
            ref = next(self._refs)
            self.pending.refs.append(ref)
        if self.pending and not any(isinstance(c, _TreeMoves) for c in self.control):
            self.control.append(_TreeMoves())
        if tx.origin is not None and tx.origin == self.client_id:
            # the client's own transaction always goes back to it (it clears its oplog with it),
            # with rows it wrote that none of its shapes hold as GONE: it must not keep them
            changes = await self._own_echo(tx, changes)
        elif not changes and not tx.migrations:
            return
        if tx.migrations:
            # every client gets the schema of every electrified table, in the stream's order. With
            # data of its own, the transaction goes in two: the migration first, at a position just
            # before the transaction's, then its rows. A client that has the migration's version
            # already skips a migration transaction whole (the npm client does), so its rows must
            # not be in it; and a client that resumes between the two gets the rows again.
            await self.sink.migration(tx.lsn - 1 if changes else tx.lsn, tx.timestamp_ms, tx.xid, tx.migrations)
            self.services.stats["migrations_sent"] += 1
            if not changes:
                return
        await self._keys_durable()
        await self.sink.transaction(tx, [self.projection.change(ch) for ch in changes], ref)
        self.services.stats["transactions_sent"] += 1
        self.services.metrics.transaction_sent(tx.commit_ts_ms, len(changes), self.live)

    async def _own_echo(self, tx: Transaction, routed: list[Change]) -> list[Change]:
        held = {change_key(ch.relation, ch.new) for ch in routed if ch.new is not None}
        extra: list[Change] = []
        for ch in tx.changes:
            if ch.op in ("I", "U") and ch.new is not None:
                key = change_key(ch.relation, ch.new)
                if key not in held:
                    # unchanged by the merge (the client's write lost), or outside its shapes
                    held.add(key)
                    shapes = self.shapes.get(ch.relation.qualified)
                    if (shapes and any(s.matches(ch.new) for s in shapes.candidates(ch))) or self.trees.holds(
                        ch.relation.qualified, key_of(ch.relation, ch.new)
                    ):
                        extra.append(Change("U", ch.relation, ch.new, ch.new))
                    else:
                        extra.append(Change("G", ch.relation, None, ch.new))
        if tx.write is not None:
            for name in tx.write.gone:
                if name in held:
                    continue
                qualified, *pk_values = name.split("\0")
                rel = await self.services.catalog.describe(TableRef.parse(qualified))
                if rel is None or len(pk_values) != len(rel.pk_indexes):
                    continue
                extra.append(Change("G", rel, None, tr.pk_row(rel, tuple(v.encode() for v in pk_values))))
        return [*routed, *extra]

    def _next_transactions(self) -> list[Transaction]:
        logf = self.services.log
        if self.live:
            if len(self.relevant) > LIVE_QUEUE_LIMIT:
                self._leave_live()  # a slow client: read from the log instead of queueing
            else:
                out = []
                for lsn in list(self.relevant)[:100]:
                    found = logf.read_after(lsn - 1, 1)
                    if not found or found[0].lsn != lsn:  # pragma: no cover - the log always has it
                        self._leave_live()
                        return []
                    out.append(found[0])
                if not out:
                    self.cursor = max(self.cursor, self.services.live_head)
                return out
        txns = logf.read_after(self.cursor, 100)
        if not txns and self.cursor >= logf.last_lsn:
            self.live = True  # nothing may await between this check and the next published batch
            self.services.scanning.discard(self)
        return txns

    def _leave_live(self) -> None:
        self.live = False
        self.relevant.clear()
        self.services.scanning.add(self)

    # -- changes of what the client holds, at a snapshot point -------------------------------
    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[Snapshot]:
        """A snapshot held only as long as Postgres takes (the sink buffers what is emitted
        meanwhile); a user holds a few snapshots at most."""
        async with self.sink.buffered():
            snap = await self.services.snapshots.take(owner=self.identity.user_id)
            try:
                yield snap
            finally:
                await snap.close()

    async def _catch_up_to(self, vis: Visibility) -> list[Transaction]:
        """Stream every logged transaction the snapshot holds, so the client is at its point.

        Transactions before the snapshot's bound that it does not hold (they committed while it was
        being taken) are returned, to be sent after the subscription change.
        """
        await self.services.caught_up()
        deferred: list[Transaction] = []
        while True:
            txns = [t for t in self.services.log.read_after(self.cursor, 500) if t.lsn < vis.bound_lsn]
            if not txns:
                return deferred
            for tx in txns:
                self.cursor = tx.lsn
                if vis.holds(tx):
                    await self._send_transaction(tx)
                else:
                    deferred.append(tx)

    async def _deliver(self, sub: _Subscribe) -> None:
        token = logctx.SUBSCRIPTION.set(sub.subscription_id)
        try:
            if sub.generation != self.catalog_generation:
                # compiled under a catalog that an apply has replaced since
                fresh = [await self._recompile(s) for s in sub.shapes]
                refused = [r for r in fresh if isinstance(r, str)]
                if refused:
                    await self.sink.subscription_failed(sub.subscription_id, refused[0])
                    return
                sub.shapes = [s for s in fresh if not isinstance(s, str)]
            await self._deliver_data(sub)
        except BaseException:
            if sub.subscription_id in self.state.subscriptions:
                raise  # delivered (the connection went meanwhile): its trees are served
            for shape in sub.shapes:  # trees taken in while delivering are let go again
                if isinstance(shape, tr.TreeShape) and shape.root in self.trees.roots:
                    self.trees.remove_tree(shape.root)
            raise
        finally:
            logctx.SUBSCRIPTION.reset(token)

    async def _keys_durable(self) -> None:
        """Before rows a tree took are sent: their keys on disk (see ClientState.tree_rows), so that
        after a crash a resumed client is told to drop those that nothing holds any more."""
        if self.trees.fresh:
            fresh, self.trees.fresh = self.trees.fresh, {}
            if any(fresh.values()):
                await self.services.store.append_tree_keys(self.client_id, self.state.tree_epoch, fresh)

    async def _deliver_tree(self, snap: Snapshot, shape: tr.TreeShape, delivered: dict[str, TableShapes]) -> None:
        """A tree's rows at the snapshot, every level, in one shape's data (the client applies the
        subscription in one transaction: it never sees a child without its parent)."""
        flat = {t: s for t, s in self.shapes.items()}
        for table, mine in delivered.items():  # flat shapes of this subscription, delivered before
            merged = TableShapes()
            for s in (*(flat[table].all if table in flat else ()), *mine.all):
                merged.add(s)
            flat[table] = merged
        self.trees.add_tree(shape.root)
        await self.sink.shape_begin(shape.request_id)
        async for rel, rows in tr.load(snap, self.trees, flat, roots=[shape.root], limit=self.max_tree_rows):
            await self.sink.shape_rows(self.projection.relation(rel), self.projection.snapshot_rows(rel, rows))
        await self.sink.shape_end()

    async def _deliver_data(self, sub: _Subscribe) -> None:
        sink = self.sink
        recorded = False
        try:
            async with self._snapshot() as snap:
                sink.snapshot_taken(snap.visibility)
                deferred = await self._catch_up_to(snap.visibility)
                relations = [
                    n.relation for s in sub.shapes for n in (s.root.walk() if isinstance(s, tr.TreeShape) else [s])
                ]
                await sink.subscription_begin(
                    sub.subscription_id, self.cursor, [self.projection.relation(r) for r in dict.fromkeys(relations)]
                )
                delivered: dict[str, TableShapes] = {}
                for shape in sub.shapes:
                    if isinstance(shape, tr.TreeShape):
                        await self._deliver_tree(snap, shape, delivered)
                        continue
                    rel = shape.relation
                    prel = self.projection.relation(rel)
                    # rows the client already holds through another shape are not sent again
                    table = str(shape.table)
                    existing = self.shapes.get(table)
                    mine = delivered.setdefault(table, TableShapes())
                    held = [
                        s.where for s in (*(existing.overlapping(shape) if existing else ()), *mine.overlapping(shape))
                    ]
                    await sink.shape_begin(shape.request_id)
                    async for rows in snap.rows(rel, snapshot_filter(shape.where, held), tags=True):
                        if self.trees.nodes_on(table):  # rows a tree holds are not sent again either
                            rows = [r for r in rows if not self.trees.holds(table, key_of(rel, r))]
                        await sink.shape_rows(prel, self.projection.snapshot_rows(rel, rows))
                    await sink.shape_end()
                    mine.add(shape)
                await self._keys_durable()  # before the client can commit what the trees gave it
                await sink.subscription_end()
                # recorded as the end goes out (the sink sends while this block runs): a client
                # that got it may leave at once (``sync --once``), and its next connection resumes
                # with this subscription. One that did not get it resumes without it, and the
                # server forgets it then.
                self._record(sub)
                recorded = True
        except (psycopg.Error, TimeoutError, OSError) as exc:
            if not recorded:
                raise
            # the data went out whole; only giving the snapshot back failed
            log.warning("after delivering subscription %s: %s", sub.subscription_id, exc)
        for tx in deferred:
            await self._send_transaction(tx)
        await self.services.store.save_async(self.state)

    def _record(self, sub: _Subscribe) -> None:
        """The subscription is delivered: its shapes are served, and it is in the client's state."""
        self.services.stats["subscription_deliveries"] += 1
        for shape in sub.shapes:
            self.register(shape)
        self.state.subscriptions[sub.subscription_id] = SubscriptionRecord(
            sub.subscription_id, [_record_of(s) for s in sub.shapes], self.cursor
        )
        self.state.access = self.access_now()

    def _rerecord(self) -> None:
        """After a reshape: each subscription remembers its shapes as they are now served (a
        declared shape may have a new definition), so a resume compiles those."""
        served: dict[tuple[str, str], AnyShape] = {
            (s.subscription_id, s.request_id): s for t in self.shapes.values() for s in t.all
        }
        served.update({(s.subscription_id, s.request_id): s for s in self.tree_shapes})
        for sub in self.state.subscriptions.values():
            sub.requests = [
                _record_of(served[(sub.id, r["request_id"])]) if (sub.id, r["request_id"]) in served else r
                for r in sub.requests
            ]

    async def outdated(self, shape: AnyShape) -> bool:
        """Whether ``shape`` is a declared shape whose definition has changed since it was given
        (a resume then reshapes the client: :meth:`catalog_changed`)."""
        if shape.declared is None:
            return False
        rules = await self.services.catalog.shape_rules()
        if isinstance(shape, tr.TreeShape):
            found = rules.find(
                shape.root.table, shape.root.where_text, includes_from_json(shape.root.describe().get("include"))
            )
        else:
            found = rules.find(shape.table, shape.where_text)
        return found != shape.declared

    async def _recompile(self, shape: AnyShape) -> AnyShape | str:
        """``shape`` compiled again under the catalog as it is now: a declared shape by its current
        definition (while it stays on the same table, flat or with includes as it was)."""
        table = shape.root.table if isinstance(shape, tr.TreeShape) else shape.table
        root_where = shape.root.where_text if isinstance(shape, tr.TreeShape) else shape.where_text
        includes = includes_from_json(shape.root.describe().get("include")) if isinstance(shape, tr.TreeShape) else ()
        if shape.declared is not None:
            rules = await self.services.catalog.shape_rules()
            now = rules.declared.get(shape.declared)
            if now is not None and TableRef.parse(now["table"]) == table:
                new_includes = rules.includes(shape.declared)
                if bool(new_includes) == isinstance(shape, tr.TreeShape):
                    root_where, includes = now.get("where") or "", new_includes
        return await self.compile(
            shape.subscription_id, shape.request_id, table, root_where, includes, declared=shape.declared
        )

    async def _reassess(self, catalog: bool = False, previous: dict[str, list[Any]] | None = None) -> None:
        """Apply a change of the client's roles (or, ``catalog``, of grants and declared shapes) at
        a consistent point: rows it may no longer read leave as GONE, rows it now may read arrive
        as inserts, in one transaction."""
        policy, relations = await self.services.catalog.policy()
        if not self.shapes and not self.tree_shapes:
            self.projection.roles = None  # read again when a shape needs them
            return
        async with self._snapshot() as snap:
            deferred = await self._catch_up_to(snap.visibility)
            roles = await read_roles(snap.conn, policy, relations, self.identity) if policy.enforced else None
            if catalog or roles != self.projection.roles:
                self.projection.roles = roles
                gone, rows = await self._reshape(snap, previous)
                if gone or rows:
                    await self._keys_durable()
                    await self.sink.moved(self.cursor, gone, rows)
                self._told()
                self.state.access = self.access_now()
                if catalog:
                    self._rerecord()
        for tx in deferred:
            await self._send_transaction(tx)
        if catalog:
            await self.services.store.save_async(self.state)

    async def _tree_moves(self) -> None:
        """Rows a transaction moved into a tree (the subtree under a row that entered, a row that a
        held row now points at) are read at a snapshot once the client is at its point, and sent
        as that transaction's additional data; GONEs for rows a tree let go that no flat shape
        holds go in one transaction at that point."""
        if not self.pending:
            return  # done by an earlier round (a catch-up queues another)
        async with self._snapshot() as snap:
            deferred = await self._catch_up_to(snap.visibility)
            await self._refresh_levels()
            pending, self.pending = self.pending, tr.Pending()  # what the catch-up added is done here too
            rows = await tr.load_all(snap, self.trees, self.shapes, wanted=pending.wanted)
            gone = await self._let_go(snap, [(n.relation, k) for n, k in pending.check])
            projected = [
                (self.projection.relation(rel), self.projection.snapshot_rows(rel, [row])[0]) for rel, row in rows
            ]
            await self._keys_durable()
            if gone:
                await self.sink.moved(self.cursor, gone, [])
            # each reference gets its data; the rows, read together, all go with the first
            for i, ref in enumerate(pending.refs):
                await self.sink.additional_data(ref, projected if i == 0 else [])
            self._told()
        for tx in deferred:
            await self._send_transaction(tx)

    async def _tree_resync(self) -> None:
        """A client resuming with include trees: the server cannot know which rows of its trees
        the client held at the position it resumes from (that depends on rows at that point), so
        once it is at a snapshot's point its trees are read again whole and sent, with GONE for
        every row they may have given it before and that no shape holds now."""
        async with self._snapshot() as snap:
            deferred = await self._catch_up_to(snap.visibility)
            await self._refresh_levels()
            self.pending = tr.Pending()
            # the keys stay (a superset is what is needed): the client may not get this resync
            earlier = {table: set(keys) for table, keys in self.state.tree_rows.items()}
            for shape in self.tree_shapes:
                self.trees.remove_tree(shape.root)
                self.trees.add_tree(shape.root)
            rows = await tr.load_all(snap, self.trees, self.shapes, roots=[s.root for s in self.tree_shapes])
            released: list[tuple[RelationDef, tuple[bytes | None, ...]]] = []
            for table, keys in sorted(earlier.items()):
                rel = await self.services.catalog.describe(TableRef.parse(table))
                if rel is not None:
                    released.extend((rel, k) for k in keys)
            gone = await self._let_go(snap, released)
            await self._keys_durable()
            await self.sink.moved(
                self.cursor,
                gone,
                [(self.projection.relation(rel), self.projection.snapshot_rows(rel, [row])[0]) for rel, row in rows],
            )
            self.trees.loosen_unheld()  # the client was told to drop them all
            self._told()
        for tx in deferred:
            await self._send_transaction(tx)
        await self.services.store.save_async(self.state)

    async def _refresh_levels(self) -> None:
        """Tree levels read rows with their table as it is now: a migration since the tree was
        compiled may have added columns (the client, at this point, has it)."""
        for shape in self.tree_shapes:
            for node in shape.root.walk():
                rel = await self.services.catalog.describe(node.table)
                if rel is not None:
                    node.relation = rel

    async def _let_go(
        self, snap: Snapshot, released: Sequence[tuple[RelationDef, tuple[bytes | None, ...]]]
    ) -> list[tuple[RelationDef, Row]]:
        """Of rows a tree no longer holds, the keys the client holds by no other shape at ``snap``."""
        by_table: dict[str, tuple[RelationDef, set[tuple[bytes | None, ...]]]] = {}
        for rel, key in released:
            if not self.trees.holds(rel.qualified, key):
                by_table.setdefault(rel.qualified, (rel, set()))[1].add(key)
        gone: list[tuple[RelationDef, Row]] = []
        for table, (rel, keys) in sorted(by_table.items()):
            shapes = self.shapes.get(table)
            if shapes:
                rows = await tr.rows_by_key(snap, rel, sorted(keys, key=repr))
                keys = {k for k in keys if k not in rows or not tr.flat_matches(shapes, rows[k])}
            prel = self.projection.relation(rel)
            gone.extend((prel, k) for k in sorted(keys, key=repr))
        return gone

    async def _reshape(
        self, snap: Snapshot, previous: dict[str, list[Any]] | None = None
    ) -> tuple[list[tuple[RelationDef, Row]], list[tuple[RelationDef, Row]]]:
        """Recompile every shape with the new roles; the rows that move: by key those that leave,
        whole those that arrive. ``previous`` (a resume): what the client held, by table, instead
        of what its shapes held as compiled."""
        gone: list[tuple[RelationDef, Row]] = []
        arriving: list[tuple[RelationDef, Row]] = []
        for table, shapes in list(self.shapes.items()):
            old = list(shapes.all)
            # the table as it is now (a migration since the shapes were compiled may have added columns)
            rel = await self.services.catalog.describe(TableRef.parse(table)) or old[0].relation
            old_access = self.projection.forget(table)
            new: list[Shape] = []
            for s in old:
                shape = await self._recompile(s)
                if isinstance(shape, Shape):
                    new.append(shape)
            new_access = self.projection.access.get(table) or await self.projection.access_for(rel)
            for s in old:
                self.services.router.remove(self, table, s)
                shapes.remove(s)
            for s in new:
                self.register(s)
            if not old:
                continue
            old_where = any_of([s.where for s in old])
            held_before = (previous or {}).get(table)
            if held_before is not None:
                # what the client was last told it holds: the SQL this server composed then
                old_where = None if held_before[0] is None else _held(held_before[0])
            prel = self.projection.relation(rel)
            if not new:
                # no shape on the table may be served now (refused under the new rules): every
                # row it held leaves, and none arrives (any_of([]) would mean the whole table)
                async for rows in snap.rows(rel, snapshot_filter(old_where, [])):
                    gone.extend((prel, tuple(row[i] for i in rel.pk_indexes)) for row in rows)
                continue
            new_where = any_of([s.where for s in new])
            async for rows in snap.rows(rel, snapshot_filter(old_where, [new_where])):
                gone.extend((prel, tuple(row[i] for i in rel.pk_indexes)) for row in rows)
            # rows that move in; every row it holds if the columns it may read changed (they carry them)
            if held_before is not None:
                now_held = self.access_now().get(table)
                widened = now_held is None or held_before[1:] != now_held[1:]
            else:
                widened = (old_access.columns if old_access else None) != new_access.columns
            held: list[CompiledWhere | None] = [] if widened else [old_where]
            async for rows in snap.rows(rel, snapshot_filter(new_where, held), tags=True):
                arriving.extend((prel, row) for row in self.projection.snapshot_rows(rel, rows))
        # trees: compiled again under the new grants and read whole (the columns a level shows may
        # have changed); rows they held and hold no more leave
        released: list[tuple[Node, tuple[bytes | None, ...]]] = []
        for old_tree in list(self.tree_shapes):
            released.extend(self._forget_tree(old_tree))
            tree = await self._recompile(old_tree)
            if isinstance(tree, tr.TreeShape):
                self.trees.add_tree(tree.root)
                self.register(tree)
                for rel, row in await tr.load_all(snap, self.trees, {}, roots=[tree.root]):
                    arriving.extend(
                        (self.projection.relation(rel), r) for r in self.projection.snapshot_rows(rel, [row])
                    )
        gone.extend(await self._let_go(snap, [(n.relation, k) for n, k in released]))
        return gone, arriving

    async def _unsubscribe(self, unsub: _Unsubscribe) -> None:
        state = self.state
        sink = self.sink
        async with self._snapshot() as snap:
            deferred = await self._catch_up_to(snap.visibility)
            leaving: dict[str, list[Shape]] = {}
            released: list[tuple[Node, tuple[bytes | None, ...]]] = []
            for sub_id in unsub.subscription_ids:
                if state.subscriptions.pop(sub_id, None) is None:
                    continue
                for tree in [t for t in self.tree_shapes if t.subscription_id == sub_id]:
                    released.extend(self._forget_tree(tree))
                for table, shapes in list(self.shapes.items()):
                    gone = [s for s in shapes.all if s.subscription_id == sub_id]
                    for shape in gone:
                        self.services.router.remove(self, table, shape)
                        shapes.remove(shape)
                    if gone:
                        leaving.setdefault(table, []).extend(gone)
                    if not shapes:
                        del self.shapes[table]
            await sink.unsubscribe_begin(unsub.subscription_ids, self.cursor)
            # the client is at the snapshot's point: it holds exactly the rows its shapes match there
            for table, removed in sorted(leaving.items()):
                rel = removed[0].relation
                prel = self.projection.relation(rel)
                left = self.shapes.get(table)
                remaining = [s.where for s in left.all] if left else []
                where = snapshot_filter(any_of([s.where for s in removed]), remaining)
                async for rows in snap.rows(rel, where):
                    keys = [key_of(rel, row) for row in rows]
                    await sink.gone(prel, [k for k in keys if not self.trees.holds(table, k)])
            for prel, key in await self._let_go(snap, [(n.relation, k) for n, k in released]):
                await sink.gone(prel, [key])
            await sink.unsubscribe_end()
            self._told()
        for tx in deferred:
            await self._send_transaction(tx)
        state.access = self.access_now()
        await self.services.store.save_async(state)


def _record_of(shape: AnyShape) -> dict[str, Any]:
    """How a subscription remembers one of its shapes (what a resume compiles again)."""
    if isinstance(shape, tr.TreeShape):
        return shape.record()
    named = {"shape": shape.declared} if shape.declared else {}
    return {"request_id": shape.request_id, "table": str(shape.table), "where": shape.where_text, **named}


def _held(composed_sql: str) -> CompiledWhere:
    """A where clause as this server composed it when it last told the client (ClientState.access):
    psycopg's rendering of a whitelisted clause and grants, every constant a quoted literal. Only its
    SQL is used (to read back the rows the client may hold)."""
    return CompiledWhere(composed_sql, sql.SQL(composed_sql), lambda row: False, frozenset(), None)
