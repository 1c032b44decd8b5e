"""The shapes served over HTTP: one log per shape definition and audience, each fed by a shape
engine (the Satellite protocol's, with a :class:`~.sink.LogSink`), kept on disk across restarts.

A shape's rows depend on who asks when grants are enforced or its where clause reads
``auth.<claim>``: it then has one log per identity (user and claims), and its responses are
private. Otherwise one log serves every user, and its responses may be cached by a shared cache
per token (``Vary: Authorization``).

A handle names one log and is never reused (``<definition hash>-<microseconds>``). A log is
rotated (its clients get 409 and the new handle) when the schema of its table changes, the table is
truncated, the declared shape it was asked for by name is redefined, or its engine cannot go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from electricctl._auth.tokens import Identity
from electricctl._engine.engine import ShapeEngine
from electricctl._engine.state import ClientState
from electricctl._engine.trees import TreeShape
from electricctl._model.rows import RelationDef, Transaction
from electricctl._model.table import TableRef
from electricctl._server.shape_api import messages
from electricctl._server.shape_api.shapelog import ShapeLog
from electricctl._server.shape_api.sink import LogSink
from electricctl._shapes.routing import Shape
from electricctl._shapes.tree import Include, includes_from_json

log = logging.getLogger("electricctl.server")

SUBSCRIPTION = "shape"
IDLE_SECONDS = 3600.0
"""A log nobody has asked for in this long is dropped (its clients refetch if they come back)."""


@dataclass(frozen=True, slots=True)
class ShapeDef:
    """What a log serves: the request, resolved (a declared name to its table, where and tree)."""

    table: TableRef
    where: str
    """With ``params`` bound (literals in place of ``$n``)."""
    includes: tuple[Include, ...]
    columns: tuple[str, ...] | None
    full: bool
    changes_only: bool
    name: str
    """What the request named (a table, or a shape declared in electric.yaml)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "table": str(self.table),
            "where": self.where,
            "include": [i.to_json() for i in self.includes],
            "columns": list(self.columns) if self.columns is not None else None,
            "replica": "full" if self.full else "default",
            "log": "changes_only" if self.changes_only else "full",
            "name": self.name,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ShapeDef:
        return cls(
            TableRef.parse(doc["table"]),
            doc["where"],
            includes_from_json(doc.get("include")),
            tuple(doc["columns"]) if doc.get("columns") is not None else None,
            doc["replica"] == "full",
            doc["log"] == "changes_only",
            doc["name"],
        )


def _digest(doc: object) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def audience_of(identity: Identity) -> str:
    """An identity's part of a log's key: its user and claims (not the token's times)."""
    claims = {k: v for k, v in identity.claims.items() if k not in ("exp", "iat", "nbf", "jti")}
    return _digest({"user": identity.user_id, "claims": claims})[:32]


@dataclass(slots=True)
class ShapeInstance:
    handle: str
    definition: ShapeDef
    audience: str
    """"" when every user gets the same rows; else the identity's (:func:`audience_of`)."""
    log: ShapeLog
    engine: ShapeEngine | None = None
    task: asyncio.Task[None] | None = None
    rotated: str | None = None
    """Why this log ended (its clients must refetch), once it has."""
    successor: ShapeInstance | None = None
    relation: RelationDef | None = None
    """The shape's root table as compiled when the log began (a log ends at any schema change), for
    ``electric-schema`` before the snapshot has registered the shape with its engine."""
    last_used: float = field(default_factory=time.monotonic)

    @property
    def client_id(self) -> str:
        return f"http-shape-{self.handle}"

    @property
    def private(self) -> bool:
        return self.audience != ""

    def tables(self) -> set[str]:
        engine = self.engine
        if engine is None:
            return {str(self.definition.table)}
        return {*engine.shapes, *(str(n.table) for t in engine.tree_shapes for n in t.root.walk())}


class Refused(Exception):
    """The request cannot be served as a shape (the message says why; ``field`` is the parameter)."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


class ShapeManager:
    def __init__(self, server: Any, directory: Path) -> None:
        self.server = server
        self.directory = directory
        self.instances: dict[str, ShapeInstance] = {}
        """The current log of each key (definition and audience)."""
        self.by_handle: dict[str, ShapeInstance] = {}
        self._creating: dict[str, asyncio.Future[ShapeInstance]] = {}

    def _key(self, definition: ShapeDef, audience: str) -> str:
        return _digest({"def": definition.to_json(), "audience": audience})

    # -- finding and making logs -------------------------------------------------------------
    async def get(self, definition: ShapeDef, identity: Identity, user_specific: bool) -> ShapeInstance:
        """The current log for this definition and user (made, and its engine started, if needed);
        Refused when the engine refuses the shape for this user."""
        audience = audience_of(identity) if user_specific else ""
        key = self._key(definition, audience)
        inst = self.instances.get(key)
        if inst is not None and inst.rotated is None:
            inst.last_used = time.monotonic()
            return inst
        pending = self._creating.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[ShapeInstance] = asyncio.get_running_loop().create_future()
        self._creating[key] = fut
        try:
            made = await self._make(key, definition, identity, audience)
            fut.set_result(made)
            return made
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: a waiter re-raises it
            raise
        finally:
            del self._creating[key]

    async def _make(self, key: str, definition: ShapeDef, identity: Identity, audience: str) -> ShapeInstance:
        handle = f"{int(key[:12], 16) % 10**10}-{time.time_ns() // 1000}"
        while handle in self.by_handle:  # pragma: no cover - the clock moved back
            handle = f"{int(key[:12], 16) % 10**10}-{time.time_ns() // 1000 + 1}"
        path = self.directory / f"{handle}.log"
        inst = ShapeInstance(handle, definition, audience, ShapeLog(path))
        engine = self._engine(inst, identity, ClientState(inst.client_id))
        shape = await engine.compile(
            SUBSCRIPTION, "r", definition.table, definition.where, definition.includes, declared=None
        )
        if isinstance(shape, str):
            engine.close()
            on_where = "where clause" in shape or ("adhoc_shapes is deny" in shape and definition.where.strip() != "")
            raise Refused("where" if on_where else "table", shape)
        inst.relation = shape.relation if isinstance(shape, Shape) else shape.root.relation
        inst.log.open()
        self._write_meta(inst, identity)
        engine.start(self.server.log.last_lsn)
        engine.subscribe(SUBSCRIPTION, [shape])
        self._run(inst)
        old = self.instances.get(key)
        if old is not None and old.rotated is not None:
            old.successor = inst
        self.instances[key] = inst
        self.by_handle[handle] = inst
        log.info("shape %s: %s for %s", handle, definition.name, "one user" if audience else "every user")
        return inst

    def _engine(self, inst: ShapeInstance, identity: Identity, state: ClientState) -> ShapeEngine:
        d = inst.definition
        projection = messages.Projection(frozenset(d.columns) if d.columns is not None else None, d.full)
        sink = LogSink(
            inst.log,
            projection,
            inst.tables,
            lambda reason: self.rotate(inst, reason),
            snapshot=not d.changes_only,
            max_bytes=self.server.options.shape_log_bytes,
        )
        engine = ShapeEngine(self.server, inst.client_id, identity, state, sink)
        engine.max_tree_rows = self.server.options.max_tree_rows
        inst.engine = engine
        return engine

    def _run(self, inst: ShapeInstance) -> None:
        engine = inst.engine
        assert engine is not None

        async def run() -> None:
            try:
                await engine.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("shape %s stopped", inst.handle)
                self.rotate(inst, f"its stream failed: {exc}")

        inst.task = asyncio.create_task(run(), name=f"shape {inst.handle}")

    def _write_meta(self, inst: ShapeInstance, identity: Identity) -> None:
        doc = {
            "handle": inst.handle,
            "definition": inst.definition.to_json(),
            "audience": inst.audience,
            "identity": {"user_id": identity.user_id, "claims": identity.claims},
        }
        path = self.directory / f"{inst.handle}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)

    # -- ending logs -----------------------------------------------------------------------------
    def rotate(self, inst: ShapeInstance, reason: str) -> None:
        """End ``inst``'s log: its clients get 409 and refetch from the definition's next log."""
        if inst.rotated is not None:
            return
        inst.rotated = reason
        log.info("shape %s rotated: %s", inst.handle, reason)
        self._stop(inst)
        inst.log.remove()
        with contextlib.suppress(OSError):
            (self.directory / f"{inst.handle}.json").unlink()

    def _stop(self, inst: ShapeInstance) -> None:
        if inst.task is not None:
            inst.task.cancel()
        if inst.engine is not None:
            inst.engine.close()
        inst.log.wake()

    def engines(self) -> list[ShapeEngine]:
        return [i.engine for i in self.instances.values() if i.engine is not None and i.rotated is None]

    def on_transactions(self, written: Sequence[Transaction]) -> None:
        """A truncate ends the logs of the tables it emptied (Electric rotates them too)."""
        truncated = {ch.relation.qualified for tx in written for ch in tx.changes if ch.op == "T"}
        if truncated:
            for inst in list(self.instances.values()):
                if inst.rotated is None and inst.tables() & truncated:
                    self.rotate(inst, "its table was truncated")

    async def catalog_changed(self) -> None:
        """An apply committed: a log asked for by a declared name whose definition changed is
        rotated; every other one is reassessed by its engine (rows move under the new grants)."""
        rules = await self.server.catalog.shape_rules()
        for inst in list(self.instances.values()):
            if inst.rotated is not None or inst.engine is None:
                continue
            d = inst.definition
            declared = rules.declared.get(d.name)
            was_declared = d.name != str(d.table) and d.name != d.table.name
            if was_declared:
                now = (
                    None
                    if declared is None
                    else (TableRef.parse(declared["table"]), declared.get("where") or "", rules.includes(d.name))
                )
                if now != (d.table, d.where, d.includes):
                    self.rotate(inst, f"the shape {d.name} was redefined in electric.yaml")
                    continue
            inst.engine.catalog_changed()

    def roles_may_have_changed(self) -> None:
        for engine in self.engines():
            engine.roles_may_have_changed()

    async def expire(self) -> None:
        """Drop logs nobody asked for in :data:`IDLE_SECONDS`."""
        now = time.monotonic()
        for key, inst in list(self.instances.items()):
            if inst.rotated is None and now - inst.last_used > IDLE_SECONDS:
                self.rotate(inst, "nobody asked for it for an hour")
                del self.instances[key]
                self.by_handle.pop(inst.handle, None)

    async def close(self) -> None:
        for inst in self.instances.values():
            self._stop(inst)
            if inst.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await inst.task
            inst.log.close()

    # -- a restart -------------------------------------------------------------------------------
    async def restore(self) -> None:
        """Logs from before a restart resume where their engines were, so their clients go on
        with the same handle and offsets; one that cannot (its subscription was never delivered,
        or the durable log no longer covers it) is dropped, and its clients refetch."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for meta in sorted(self.directory.glob("*.json")):
            try:
                doc = json.loads(meta.read_text())
                await self._restore_one(doc)
            except Exception as exc:
                log.warning("could not restore the shape log %s (%s): its clients refetch", meta.stem, exc)
                with contextlib.suppress(OSError):
                    meta.unlink()
                    (self.directory / f"{meta.stem}.log").unlink()

    async def _restore_one(self, doc: dict[str, Any]) -> None:
        definition = ShapeDef.from_json(doc["definition"])
        identity = Identity(doc["identity"]["user_id"], doc["identity"]["claims"], None)
        inst = ShapeInstance(
            doc["handle"], definition, doc["audience"], ShapeLog(self.directory / f"{doc['handle']}.log")
        )
        inst.log.open()
        state = self.server.store.load(inst.client_id)
        record = state.subscriptions.get(SUBSCRIPTION)
        cursor = max(inst.log.last_lsn, record.delivered_lsn if record is not None else 0)
        if record is None or not inst.log.snapshot_done or not self.server.log.covers(cursor):
            raise RuntimeError("its data was never complete, or the log no longer covers it")
        engine = self._engine(inst, identity, state)
        for r in record.requests:
            shape = await engine.compile(
                SUBSCRIPTION,
                r["request_id"],
                TableRef.parse(r["table"]),
                r.get("where", ""),
                includes_from_json(r.get("include")),
                declared=r.get("shape"),
            )
            if not isinstance(shape, Shape | TreeShape):
                raise RuntimeError(shape)
            if inst.relation is None:
                inst.relation = shape.relation if isinstance(shape, Shape) else shape.root.relation
            engine.register(shape)
        engine.start(cursor)
        self._run(inst)
        key = self._key(definition, inst.audience)
        self.instances[key] = inst
        self.by_handle[inst.handle] = inst
        log.info("shape %s resumed at %d", inst.handle, cursor)
