"""Per-client state that outlives a connection: subscriptions and the last acknowledged position.

Kept as one small JSON file per client under ``<data-dir>/clients``, replaced atomically (write,
fsync, rename), so a reconnecting client resumes its subscriptions after a restart or a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(slots=True)
class SubscriptionRecord:
    id: str
    requests: list[dict[str, str]]
    """``[{"request_id": ..., "table": "schema.name"}]``"""
    delivered_lsn: int


@dataclass(slots=True)
class ClientState:
    client_id: str
    subscriptions: dict[str, SubscriptionRecord] = field(default_factory=dict)
    acked_lsn: int = 0


class ClientStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, asyncio.Lock] = {}

    def _path(self, client_id: str) -> Path:
        # client ids come from clients: never use them as file names directly
        return self.directory / (hashlib.sha256(client_id.encode()).hexdigest()[:32] + ".json")

    def load(self, client_id: str) -> ClientState:
        path = self._path(client_id)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return ClientState(client_id)
        subs = {
            s["id"]: SubscriptionRecord(s["id"], s["requests"], s["delivered_lsn"])
            for s in raw.get("subscriptions", [])
        }
        return ClientState(client_id, subs, int(raw.get("acked_lsn", 0)))

    async def save_async(self, state: ClientState) -> None:
        """:meth:`save` in a worker thread (the fsync must not stall the event loop), one at a
        time per client and in call order (asyncio locks are FIFO)."""
        copy = self.snapshot(state)
        lock = self._locks.setdefault(state.client_id, asyncio.Lock())
        async with lock:
            # shielded: a cancelled caller must not release the lock while the thread still writes
            await asyncio.shield(asyncio.to_thread(self.save, copy))

    @staticmethod
    def snapshot(state: ClientState) -> ClientState:
        """A copy that later changes to ``state`` do not affect while it is being written."""
        return ClientState(
            state.client_id,
            {k: SubscriptionRecord(v.id, list(v.requests), v.delivered_lsn) for k, v in state.subscriptions.items()},
            state.acked_lsn,
        )

    def save(self, state: ClientState) -> None:
        path = self._path(state.client_id)
        doc = {
            "client_id": state.client_id,
            "acked_lsn": state.acked_lsn,
            "subscriptions": [
                {"id": s.id, "requests": s.requests, "delivered_lsn": s.delivered_lsn}
                for s in state.subscriptions.values()
            ],
        }
        tmp = path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")  # concurrent writers never share a temp file
        with open(tmp, "w") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
