"""The transaction log interface the server depends on.

The embedded default is :class:`electricctl._log.filelog.FileLog`;
:class:`electricctl._log.jetstream.JetStreamLog` keeps it on NATS JetStream so that several ``serve``
instances share one replication stream (``shared``): the one holding the slot stores into it, and
every one of them sees what was stored through :attr:`on_published`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from electricctl._model.rows import Transaction


class TransactionLog(Protocol):
    shared: bool
    """Other processes append to and read the same log (then only the leader may :meth:`store`)."""
    on_published: Callable[[list[Transaction]], None] | None
    """Called on the event loop with each batch that became readable, in commit order."""
    on_gap: Callable[[int], None] | None
    """Called when the log learns of a gap before an LSN that it did not cause itself."""

    @property
    def last_lsn(self) -> int:
        """Commit LSN of the newest readable transaction in the log (0 when empty)."""
        ...

    def open(self) -> TransactionLog: ...

    def close(self) -> None: ...

    async def connect(self, timeout: float = 30.0) -> None:
        """Reach what the log is kept in (waiting up to ``timeout`` seconds for it), and start
        following it (a no-op for local files)."""
        ...

    async def aclose(self) -> None: ...

    async def store(self, txns: Sequence[Transaction]) -> list[Transaction]:
        """Durably store ``txns``; when it returns the replication slot may be confirmed past them.
        Returns those not already stored."""
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
