"""One shape's log: its messages in offset order, in memory and appended to a file, so that a
restarted server serves the same offsets (clients resume instead of refetching).

The file holds one line per message: ``<tx> <op> <json>``. It is flushed after each batch and not
fsynced: a tail lost in a crash is appended again, at the same offsets, when the shape's engine
resumes from the last transaction the file holds (offsets come from commit LSNs).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import io
from collections.abc import Sequence
from pathlib import Path

from electricctl._server.shape_api.offsets import INF, SNAPSHOT_END, Offset


class ShapeLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.offsets: list[Offset] = []
        self.messages: list[bytes] = []
        self.snapshot_done = False
        self.last_lsn = 0
        """The newest transaction whose changes are in the log (where its engine resumes from)."""
        self.bytes = 0
        self._file: io.BufferedWriter | None = None
        self._waiters: list[asyncio.Future[None]] = []

    # -- writing -------------------------------------------------------------------------------
    def open(self) -> ShapeLog:
        """Read what the file holds (if any) and open it for appending."""
        if self.path is None:
            return self
        if self.path.exists():
            with self.path.open("rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # a torn last line
                    tx, op, msg = line.rstrip(b"\n").split(b" ", 2)
                    self._add(Offset(int(tx), int(op)), msg)
            if self.offsets:
                self.path.write_bytes(
                    b"".join(self._line(o, m) for o, m in zip(self.offsets, self.messages, strict=True))
                )
        self._file = self.path.open("ab")
        return self

    @staticmethod
    def _line(offset: Offset, msg: bytes) -> bytes:
        return b"%d %d " % offset + msg + b"\n"

    def _add(self, offset: Offset, msg: bytes) -> None:
        self.offsets.append(offset)
        self.messages.append(msg)
        self.bytes += len(msg)
        if offset.tx == 0 and msg.startswith(b'{"headers":{"control":"snapshot-end"'):
            self.snapshot_done = True
        if offset.tx > 0:
            self.last_lsn = max(self.last_lsn, offset.tx)

    def append(self, items: Sequence[tuple[Offset, bytes]]) -> None:
        if not items:
            return
        for offset, msg in items:
            if self.offsets and offset <= self.offsets[-1]:
                raise ValueError(f"shape log offsets must grow: {offset} after {self.offsets[-1]}")
            self._add(offset, msg)
        if self._file is not None:
            self._file.write(b"".join(self._line(o, m) for o, m in items))
            self._file.flush()
        self.wake()

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        self.wake()

    def remove(self) -> None:
        self.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()

    # -- reading -------------------------------------------------------------------------------
    @property
    def end(self) -> Offset:
        """The offset a client that has everything holds: the last message's, or ``0_inf`` once
        the snapshot is complete and nothing followed it."""
        if not self.offsets:
            return SNAPSHOT_END if self.snapshot_done else Offset(0, 0)
        last = self.offsets[-1]
        if last.tx == 0 and self.snapshot_done:
            return SNAPSHOT_END
        return last

    def next_op(self, lsn: int) -> int:
        """The first free op position for a message at transaction ``lsn``."""
        if self.offsets and self.offsets[-1].tx == lsn:
            return self.offsets[-1].op + 2
        return 0

    def read(self, after: Offset, max_bytes: int, *, snapshot_only: bool = False) -> tuple[list[bytes], Offset, bool]:
        """Messages after ``after``, up to about ``max_bytes`` (``snapshot_only``: not past the
        initial snapshot): (messages, the offset of the last one given, whether they reach the end
        of the log, or of the snapshot)."""
        if after.tx == 0 and after.op >= INF:
            after = Offset(0, INF)
        start = bisect.bisect_right(self.offsets, after)
        out: list[bytes] = []
        size = 0
        i = start
        stop = len(self.messages)
        if snapshot_only:
            stop = bisect.bisect_right(self.offsets, SNAPSHOT_END)
        while i < stop and (not out or size + len(self.messages[i]) <= max_bytes):
            out.append(self.messages[i])
            size += len(self.messages[i])
            i += 1
        at_end = i >= stop
        if not out:
            return [], after if after > self.end else self.end, True
        last = self.offsets[i - 1]
        if at_end and last.tx == 0 and self.snapshot_done:
            last = SNAPSHOT_END
        return out, last, at_end

    def has_after(self, after: Offset) -> bool:
        return bool(self.offsets) and self.offsets[-1] > after

    async def wait(self, timeout: float) -> None:
        """Until the next append (or :meth:`wake`), at most ``timeout`` seconds."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, timeout)
