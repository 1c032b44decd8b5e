"""The transaction log interface the server depends on.

The embedded default is :class:`electricctl._log.filelog.FileLog`; a later issue adds one on NATS
JetStream so that several ``serve`` instances can share one replication stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from electricctl._model.rows import Transaction


class TransactionLog(Protocol):
    last_lsn: int
    """Commit LSN of the newest transaction in the log (0 when empty)."""

    def open(self) -> TransactionLog: ...

    def close(self) -> None: ...

    def write(self, txns: Sequence[Transaction]) -> list[Transaction]:
        """Durably store ``txns`` (may run in a worker thread); return those not already stored."""
        ...

    def publish(self, txns: Sequence[Transaction]) -> None:
        """Make stored transactions visible to readers (event loop thread)."""
        ...

    def read_after(self, lsn: int, limit: int = 1000) -> list[Transaction]: ...

    def covers(self, lsn: int) -> bool:
        """Can a client holding everything up to ``lsn`` resume without a gap?"""
        ...

    @property
    def horizon(self) -> int: ...

    @property
    def size_bytes(self) -> int:
        """Bytes the log holds on disk (``GET /metrics``)."""
        ...

    def set_horizon(self, lsn: int) -> None: ...

    def mark_gap(self, lsn: int) -> None:
        """The stream resumes at ``lsn`` with a gap before it (clients from before must resync)."""
        ...

    @property
    def has_horizon(self) -> bool:
        """A horizon is on record: the log was started with its slot (even if it holds nothing yet)."""
        ...

    def prune(self, now: float | None = None) -> int: ...
