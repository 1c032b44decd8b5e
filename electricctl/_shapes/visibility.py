"""Which streamed transactions a snapshot's data already holds (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from electricctl._model.rows import Transaction


@dataclass(slots=True)
class Visibility:
    """A snapshot (from ``pg_current_snapshot()``): which transactions its data already holds.

    xids are compared as 32-bit values with wraparound, as pgoutput reports them.
    """

    xmin: int
    xmax: int
    xip: frozenset[int]
    bound_lsn: int
    """Transactions committed at or after this LSN are certainly newer than the snapshot."""

    @classmethod
    def parse(cls, text: str, bound_lsn: int) -> Visibility:
        xmin, xmax, xip = text.split(":")
        return cls(
            int(xmin) & 0xFFFFFFFF,
            int(xmax) & 0xFFFFFFFF,
            frozenset(int(x) & 0xFFFFFFFF for x in xip.split(",") if x),
            bound_lsn,
        )

    @staticmethod
    def _precedes(a: int, b: int) -> bool:
        return a != b and ((a - b) & 0xFFFFFFFF) >= 0x80000000

    def holds(self, tx: Transaction) -> bool:
        """Is ``tx`` already part of the snapshot's data?"""
        if tx.lsn >= self.bound_lsn:
            return False
        if self._precedes(tx.xid, self.xmin):
            return True
        if not self._precedes(tx.xid, self.xmax):
            return False
        return tx.xid not in self.xip
