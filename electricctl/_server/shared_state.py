"""Client state shared by every ``serve`` instance of a JetStream log, so that a client may
reconnect to any of them and resume without a resync.

Each client's state (its subscriptions with their delivered LSNs, its acknowledged LSN, what it was
last told it may read, and its include trees' keys) is one entry of the key-value bucket
``electricctl_<STREAM>_clients``, keyed by a hash of the client id. Entries expire with the log's
retention window: a client away longer must resync anyway.

The keys a client's include trees are about to give it are also appended, before they are sent,
as entries ``<client key>.k.<epoch>.<n>`` (as the file store appends them to a key log), so that an
instance killed between two saves loses none; a claim reads those of the state's tree epoch and
later ones, and a save of a later epoch deletes the earlier ones this instance wrote.

Ownership goes with the connection. An instance that binds a client *claims* its entry: it reads
it, adopts it when another instance wrote it last, and writes it back marked as its own. Every
later save is a compare-and-set on the revision it last wrote, so when the client has moved on to
another instance (which claimed the entry meanwhile), a late save from the instance it left (its
final save on disconnect, say) is refused and dropped instead of overwriting the newer state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

log = logging.getLogger("electricctl.server")

MAX_VALUE = 900 << 10
"""An entry larger than this (include trees with very many keys) is kept without its tree keys:
NATS' default max_payload is 1 MiB. Such a client's trees are resent if it changes instance."""


def key_of(client_id: str) -> str:
    return hashlib.sha256(client_id.encode()).hexdigest()[:32]


class SharedStates:
    def __init__(self, js: JetStreamContext, stream: str, instance: str, retention: float, replicas: int) -> None:
        self.js = js
        self.bucket = f"electricctl_{stream}_clients"
        self.instance = instance
        self.retention = retention
        self.replicas = replicas
        self.kv: KeyValue | None = None
        self._revisions: dict[str, int] = {}
        """By client: the revision this instance last wrote (absent: the client is not ours)."""
        self._key_entries: dict[str, list[tuple[int, str]]] = {}
        """By client: (epoch, entry) of the tree key entries this instance appended."""

    async def _kv(self) -> KeyValue:
        if self.kv is None:
            try:
                self.kv = await self.js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                self.kv = await self.js.create_key_value(
                    bucket=self.bucket, history=1, ttl=self.retention, replicas=self.replicas
                )
        return self.kv

    async def claim(self, client_id: str) -> dict[str, Any] | None:
        """Make this instance the client's owner; return its state as another instance last wrote
        it (None: none is shared, or this instance wrote it last, so its own copy is current)."""
        kv = await self._kv()
        key = key_of(client_id)
        try:
            entry = await kv.get(key)
            revision, doc = entry.revision or 0, json.loads(entry.value) if entry.value else None
        except nats.js.errors.KeyNotFoundError:
            revision, doc = 0, None
        adopt = doc if doc is not None and doc.get("instance") != self.instance else None
        if adopt is not None:
            trees = adopt.get("trees") or {}
            lines = await self._key_lines(kv, key, int(trees.get("epoch", 0)))
            if lines:
                adopt = {**adopt, "key_lines": lines}
        mine = {**(doc or {"client_id": client_id}), "instance": self.instance}
        value = json.dumps(mine).encode()
        try:
            if revision:
                self._revisions[client_id] = await kv.update(key, value, last=revision)
            else:
                self._revisions[client_id] = await kv.create(key, value)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
            # another instance claimed it in between (the client connected to both at once): the
            # newest connection wins, as on one instance
            self._revisions[client_id] = await kv.put(key, value)
        return adopt

    async def _key_lines(self, kv: KeyValue, key: str, epoch: int) -> list[str]:
        """The tree key entries of ``epoch`` and later, oldest first."""
        found: list[tuple[int, int, str]] = []
        watcher = await kv.watch(f"{key}.k.>", ignore_deletes=True)
        try:
            while True:
                entry = await watcher.updates(timeout=5.0)  # type: ignore[no-untyped-call]
                if entry is None:
                    break  # the end of what is stored
                _, _, e, n = entry.key.split(".")
                if int(e) >= epoch and entry.value:
                    found.append((int(e), int(n), entry.value.decode()))
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
        return [line for _, _, line in sorted(found)]

    async def append_keys(self, client_id: str, epoch: int, line: str) -> None:
        """Keys the client's trees are about to give it (one JSON line, as in the file key log)."""
        if client_id not in self._revisions:
            return
        kv = await self._kv()
        entry = f"{key_of(client_id)}.k.{epoch}.{time.time_ns()}"
        await kv.put(entry, line.encode())
        self._key_entries.setdefault(client_id, []).append((epoch, entry))

    async def push(self, client_id: str, doc: dict[str, Any]) -> None:
        """Write the client's newest state, if it is still ours."""
        last = self._revisions.get(client_id)
        if last is None:
            return
        kv = await self._kv()
        body = {**doc, "instance": self.instance}
        value = json.dumps(body).encode()
        if len(value) > MAX_VALUE and "trees" in body:
            log.warning(
                "the include tree keys of client %s are too many to share: it gets them again elsewhere", client_id
            )
            value = json.dumps({**body, "trees": None}).encode()
        try:
            self._revisions[client_id] = await kv.update(key_of(client_id), value, last=last)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
            # it connected to another instance since: that one's state is newer than ours
            self._revisions.pop(client_id, None)
            self._key_entries.pop(client_id, None)
            log.info("client %s moved to another instance: its state is no longer saved here", client_id)
            return
        epoch = int((doc.get("trees") or {}).get("epoch", 0))
        entries = self._key_entries.get(client_id, [])
        stale = [name for e, name in entries if e < epoch]  # in the state just written
        if stale:
            self._key_entries[client_id] = [(e, name) for e, name in entries if e >= epoch]
            await asyncio.gather(*(kv.purge(name) for name in stale), return_exceptions=True)
