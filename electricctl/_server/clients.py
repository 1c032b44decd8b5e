"""Per-client state that outlives a connection: subscriptions and the last acknowledged position.

Kept as one small JSON file per client under ``<data-dir>/clients``, replaced atomically (write,
fsync, rename), so a reconnecting client resumes its subscriptions after a restart or a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from electricctl._engine.state import ClientState as ClientState
from electricctl._engine.state import SubscriptionRecord as SubscriptionRecord

if TYPE_CHECKING:
    from electricctl._server.shared_state import SharedStates

log = logging.getLogger("electricctl.server")


class ClientStore:
    """The client state files. A save that fails (a full disk, a read-only file system) loses
    nothing that matters to the client: the state stays in memory, :attr:`error` says why (and
    ``/health`` with it), and :meth:`retry_failed` writes it again until it works."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._locks: dict[str, asyncio.Lock] = {}
        self._generation = 0
        self._written: dict[str, int] = {}
        """By client: the generation of the newest state on disk (an older one is never written over it)."""
        self._failed: dict[str, tuple[int, ClientState]] = {}
        self._tree_written: dict[str, tuple[int, int]] = {}
        self._tree_counts: dict[str, int] = {}
        """By client: how many tree keys its last state handed to a save had."""
        """By client: (epoch, keys) of the tree keys last written (unchanged ones are not written again)."""
        self._queued: dict[str, tuple[int, ClientState]] = {}
        """By client: the newest state handed to a save that has not finished writing it."""
        self._saving: set[asyncio.Future[None]] = set()
        self.error: str | None = None
        """Why the last save failed, until every failed save has been written."""
        self.shared: SharedStates | None = None
        """With a shared log: where every instance keeps client state (see :meth:`claim`)."""

    def _path(self, client_id: str) -> Path:
        # client ids come from clients: never use them as file names directly
        return self.directory / (hashlib.sha256(client_id.encode()).hexdigest()[:32] + ".json")

    def load(self, client_id: str) -> ClientState:
        waiting = [w for w in (self._failed.get(client_id), self._queued.get(client_id)) if w is not None]
        if waiting:  # not on disk yet: the newest state is the one waiting to be written
            return self.snapshot(max(waiting, key=lambda w: w[0])[1])
        path = self._path(client_id)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return ClientState(client_id)
        try:
            tree_doc = json.loads(self._trees_path(client_id).read_text())
        except FileNotFoundError:
            tree_doc = {}
        lines: list[str] = []
        # and every key appended since (a superset of what the client may hold is what is needed)
        for log_path in sorted(self.directory.glob(self._path(client_id).stem + ".trees.*.log")):
            tree_doc["epoch"] = max(int(tree_doc.get("epoch", 0)), int(log_path.name.rsplit(".", 2)[1]))
            lines.extend(log_path.read_text().splitlines())
        return self._state_from(client_id, raw, tree_doc, lines)

    @staticmethod
    def _state_from(client_id: str, raw: dict[str, Any], tree_doc: dict[str, Any], lines: list[str]) -> ClientState:
        subs = {
            s["id"]: SubscriptionRecord(s["id"], s["requests"], s["delivered_lsn"])
            for s in raw.get("subscriptions", [])
        }
        trees: dict[str, set[tuple[bytes | None, ...]]] = {}
        epoch = int(tree_doc.get("epoch", 0))
        docs = [tree_doc.get("tree_rows") or {}]
        for line in lines:
            with contextlib.suppress(ValueError):  # a torn last line
                docs.append(json.loads(line))
        for doc in docs:
            for t, keys in doc.items():
                trees.setdefault(t, set()).update(tuple(None if v is None else v.encode() for v in k) for k in keys)
        pruned = int(tree_doc.get("pruned_lsn", 0))
        access = raw.get("access") or {}
        return ClientState(client_id, subs, int(raw.get("acked_lsn", 0)), trees, epoch, pruned, access)

    async def claim(self, client_id: str) -> None:
        """With state shared between instances: take the client over, and adopt its state if
        another instance saved it last (it is newer than anything of it here)."""
        if self.shared is None:
            return
        lock = self._locks.setdefault(client_id, asyncio.Lock())
        async with lock:  # after this instance's own saves of it, if any are in flight
            doc = await self.shared.claim(client_id)
            if doc is None:
                return
            state = self._state_from(client_id, doc, doc.get("trees") or {}, list(doc.get("key_lines") or []))
            self._generation += 1
            copy = self.snapshot(state)
            self._queued[client_id] = (self._generation, copy)
            self._tree_written.pop(client_id, None)
            try:
                await asyncio.to_thread(self.save, copy)
            except OSError:
                return  # load() reads the queued copy meanwhile; the next save writes it
            self._written[client_id] = self._generation
            del self._queued[client_id]

    async def append_tree_keys(
        self, client_id: str, epoch: int, keys: dict[str, set[tuple[bytes | None, ...]]]
    ) -> None:
        """Append keys a client's trees are about to give it to its key log, durably, before they
        are sent: after a crash the client is told to drop them if nothing holds them any more.
        A failed write is logged (and retried with the next keys' write), never raised."""
        line = json.dumps({t: [[None if v is None else v.decode() for v in k] for k in ks] for t, ks in keys.items()})
        path = self._path(client_id).with_suffix(f".trees.{epoch}.log")
        try:
            await asyncio.to_thread(self._append, path, line)
        except OSError as exc:
            log.error("cannot append to %s: %s", path, exc.strerror or exc)
        if self.shared is not None:
            try:
                await self.shared.append_keys(client_id, epoch, line)
            except Exception as exc:
                log.error("cannot share the tree keys of client %s: %s", client_id, exc)

    @staticmethod
    def _append(path: Path, line: str) -> None:
        with open(path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _trees_path(self, client_id: str) -> Path:
        return self._path(client_id).with_suffix(".trees.json")

    async def save_async(self, state: ClientState) -> None:
        """:meth:`save` in a worker thread (the fsync must not stall the event loop).

        Saves of one client run one at a time in call order, and a newer state is never
        overwritten by an older one: the save runs in a task of its own that holds the client's
        lock until the file is written, even when the caller is cancelled meanwhile (the caller's
        cancellation cannot release the lock early). A failed save does not raise (see the class).
        """
        self._generation += 1
        count = sum(len(keys) for keys in state.tree_rows.values())
        if count != self._tree_counts.get(state.client_id, 0):
            # the tree keys are written whole with this state: the keys appended from now on go to
            # a new key log, and those before it can go once this is on disk
            state.tree_epoch += 1
            self._tree_counts[state.client_id] = count
        copy = self.snapshot(state)
        # a connection of the same client that starts before this is written reads this, not the disk
        self._queued[copy.client_id] = (self._generation, copy)
        task = asyncio.ensure_future(self._save_in_order(self._generation, copy))
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)
        await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait for every save in progress, including those whose callers were cancelled."""
        while self._saving:
            await asyncio.gather(*list(self._saving), return_exceptions=True)

    async def _save_in_order(self, generation: int, copy: ClientState) -> None:
        lock = self._locks.setdefault(copy.client_id, asyncio.Lock())
        async with lock:
            if self._written.get(copy.client_id, 0) > generation:
                return  # a newer state is already on disk
            try:
                await asyncio.to_thread(self.save, copy)
            except OSError as exc:
                known = self._failed.get(copy.client_id)
                if known is None or known[0] < generation:
                    self._failed[copy.client_id] = (generation, copy)
                if self.error is None:
                    log.error("cannot save client state in %s: %s; retrying", self.directory, exc.strerror or exc)
                self.error = f"cannot save client state in {self.directory}: {exc.strerror or exc}"
                return
            self._written[copy.client_id] = generation
            if self.shared is not None:
                try:
                    await self.shared.push(copy.client_id, self.document(copy))
                except Exception as exc:  # the local copy is saved; another instance may resync it
                    log.warning("cannot share the state of client %s: %s", copy.client_id, exc)
            queued = self._queued.get(copy.client_id)
            if queued is not None and queued[0] <= generation:
                del self._queued[copy.client_id]
            known = self._failed.get(copy.client_id)
            if known is not None and known[0] <= generation:
                del self._failed[copy.client_id]
            if not self._failed and self.error is not None:
                log.info("client state is saved again in %s", self.directory)
                self.error = None

    async def retry_failed(self) -> None:
        """Write again every state whose save failed (each one's newest)."""
        for generation, copy in list(self._failed.values()):
            await asyncio.shield(asyncio.ensure_future(self._save_in_order(generation, copy)))

    @staticmethod
    def snapshot(state: ClientState) -> ClientState:
        """A copy that later changes to ``state`` do not affect while it is being written."""
        return ClientState(
            state.client_id,
            {k: SubscriptionRecord(v.id, list(v.requests), v.delivered_lsn) for k, v in state.subscriptions.items()},
            state.acked_lsn,
            {t: set(keys) for t, keys in state.tree_rows.items()},
            state.tree_epoch,
            state.tree_pruned_lsn,
            {t: list(v) for t, v in state.access.items()},
        )

    @staticmethod
    def _doc(state: ClientState) -> dict[str, Any]:
        return {
            "client_id": state.client_id,
            "acked_lsn": state.acked_lsn,
            "subscriptions": [
                {"id": s.id, "requests": s.requests, "delivered_lsn": s.delivered_lsn}
                for s in state.subscriptions.values()
            ],
            "access": state.access,
        }

    @staticmethod
    def _trees_doc(state: ClientState) -> dict[str, Any]:
        trees = {
            t: sorted(([None if v is None else v.decode() for v in k] for k in keys), key=repr)
            for t, keys in state.tree_rows.items()
            if keys
        }
        return {"epoch": state.tree_epoch, "pruned_lsn": state.tree_pruned_lsn, "tree_rows": trees}

    def document(self, state: ClientState) -> dict[str, Any]:
        """The whole state as one JSON document (what is shared between instances)."""
        return {**self._doc(state), "trees": self._trees_doc(state)}

    def save(self, state: ClientState) -> None:
        path = self._path(state.client_id)
        doc = self._doc(state)
        # the include trees' keys (possibly many) go in a file of their own, written only when their
        # number changed ((epoch, count) tells; keys given since are in the key logs). With them,
        # atomically, the position keys were last forgotten at
        signature = (state.tree_epoch, sum(len(keys) for keys in state.tree_rows.values()))
        if signature != self._tree_written.get(state.client_id, (0, 0)):
            self._write(self._trees_path(state.client_id), self._trees_doc(state))
            self._tree_written[state.client_id] = signature
            # the key logs of earlier epochs are in no state any more
            for old in self.directory.glob(path.stem + ".trees.*.log"):
                if int(old.name.rsplit(".", 2)[1]) < state.tree_epoch:
                    old.unlink(missing_ok=True)
        self._write(path, doc)

    @staticmethod
    def _write(path: Path, doc: object) -> None:
        """Write ``doc`` as JSON to ``path`` atomically and durably (write, fsync, rename)."""
        tmp = path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")  # concurrent writers never share a temp file
        try:
            with open(tmp, "w") as fh:
                json.dump(doc, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
