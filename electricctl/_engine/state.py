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
    access: dict[str, list[Any]] = field(default_factory=dict)
    """By table: what the client's flat shapes held when it was last told, as ``[where SQL, columns,
    per-row columns]`` (the SQL psycopg composed from the whitelisted clause and grants, literals
    quoted; None: the whole table / every column). A client that resumes after its grants, roles or
    declared shapes changed is moved from this to what it may hold now, so rows it may no longer
    read leave (the server reads them back with this SQL), and rows it now may read arrive."""
