"""What the engine keeps of a client that outlives its connection: its subscriptions (what was
requested, and the point each was delivered at) and the newest position it acknowledged. Plain
data; :class:`~electricctl._server.clients.ClientStore` keeps it on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class SubscriptionRecord:
    id: str
    requests: list[dict[str, Any]]
    """``[{"request_id": ..., "table": "schema.name", "where": ..., "include": [...]}]``"""
    delivered_lsn: int


@dataclass(slots=True)
class ClientState:
    client_id: str
    subscriptions: dict[str, SubscriptionRecord] = field(default_factory=dict)
    acked_lsn: int = 0
    tree_rows: dict[str, set[tuple[bytes | None, ...]]] = field(default_factory=dict)
    """By table: the keys (text values, as the stream carries them) of every row the client's include trees may have given it
    and may still hold (a superset is what resuming needs). A client that resumes gets its trees again at a snapshot, with GONE
    for those of them no shape holds there (the server cannot know what the client held at the
    position it resumes from). A key leaves once the client acknowledges a position after the one
    by which it was told to drop the row (see TreeHold.prune)."""
    tree_epoch: int = 0
    """Numbers the key log new tree keys are appended to (a new one each time the keys are written whole)."""
    tree_pruned_lsn: int = 0
    """The newest position keys were forgotten at: a client resuming from it or before (it lost
    what it acknowledged) cannot be reconciled, and must start afresh."""
