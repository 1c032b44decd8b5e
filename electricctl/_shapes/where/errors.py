"""The two errors of where clauses: refused when compiled, or failing for one row when evaluated."""

from __future__ import annotations


class ShapeError(ValueError):
    """A clause that cannot be compiled against its table; ``offset`` is a position in the clause."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


class EvalError(ValueError):
    """Evaluation failed for a row (division by zero, out of range): Postgres would raise too."""
