"""Client state shared by every ``serve`` instance of a JetStream log, so that a client may
reconnect to any of them and resume without a resync.

Each client's state (its subscriptions with their delivered LSNs, its acknowledged LSN, what it was
last told it may read, and its include trees' keys) is one entry of the key-value bucket
``electricctl_<STREAM>_clients``, keyed by a hash of the client id. Entries expire with the log's
retention window: a client away longer must resync anyway.

Ownership goes with the connection. An instance that binds a client *claims* its entry: it reads
it, adopts it when another instance wrote it last, and writes it back marked as its own. Every
later save is a compare-and-set on the revision it last wrote, so when the client has moved on to
another instance (which claimed the entry meanwhile), a late save from the instance it left (its
final save on disconnect, say) is refused and dropped instead of overwriting the newer state.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
            log.info("client %s moved to another instance: its state is no longer saved here", client_id)
