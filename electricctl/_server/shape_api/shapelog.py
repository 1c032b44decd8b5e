"""One shape's log: its messages in offset order, in a file, so that a restarted server serves the
same offsets (clients resume instead of refetching).

The file holds one line per message: ``<tx> <op> <json>``. Memory holds the offsets, where each
message is in the file, and the newest messages (what live clients read); older ones are read
back from the file (the page cache, mostly). The file is flushed after each batch and not fsynced:
a tail lost in a crash is appended again, at the same offsets, when the shape's engine resumes from
the last transaction the file holds (offsets come from commit LSNs).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from electricctl._server.shape_api.offsets import INF, SNAPSHOT_END, Offset

TAIL_BYTES = 1 << 20
"""Newest messages kept in memory per log."""
_SNAPSHOT_END_PREFIX = b'{"headers":{"control":"snapshot-end"'


class ShapeLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.offsets: list[Offset] = []
        self._where: list[tuple[int, int]] = []
        """Each message's position and length in the file."""
        self._tail: OrderedDict[int, bytes] = OrderedDict()
        self._tail_bytes = 0
        self.snapshot_done = False
        self.last_lsn = 0
        """The newest transaction whose changes are in the log (where its engine resumes from)."""
        self.bytes = 0
        self._fd: int | None = None
        self._size = 0
        self._memory: list[bytes] = []
        """The messages themselves when there is no file (``path`` None)."""
        self._waiters: list[asyncio.Future[None]] = []

    # -- writing -------------------------------------------------------------------------------
    def open(self) -> ShapeLog:
        """Read what the file holds (if any; a torn last line is cut off) and open it for appending."""
        if self.path is None:
            return self
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        pos = 0
        with open(self.path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                tx, op, msg = line[:-1].split(b" ", 2)
                start = pos + len(tx) + len(op) + 2
                self._index(Offset(int(tx), int(op)), start, len(msg), msg)
                pos += len(line)
        if pos < os.fstat(self._fd).st_size:
            os.ftruncate(self._fd, pos)
        self._size = pos
        return self

    def _index(self, offset: Offset, start: int, length: int, msg: bytes) -> None:
        self.offsets.append(offset)
        self._where.append((start, length))
        self.bytes += length
        if offset.tx == 0 and msg.startswith(_SNAPSHOT_END_PREFIX):
            self.snapshot_done = True
        if offset.tx > 0:
            self.last_lsn = max(self.last_lsn, offset.tx)
        self._remember(len(self.offsets) - 1, msg)

    def _remember(self, i: int, msg: bytes) -> None:
        self._tail[i] = msg
        self._tail_bytes += len(msg)
        while self._tail_bytes > TAIL_BYTES and len(self._tail) > 1:
            _, old = self._tail.popitem(last=False)
            self._tail_bytes -= len(old)

    def append(self, items: Sequence[tuple[Offset, bytes]]) -> None:
        if not items:
            return
        out = bytearray()
        for offset, msg in items:
            if self.offsets and offset <= self.offsets[-1]:
                raise ValueError(f"shape log offsets must grow: {offset} after {self.offsets[-1]}")
            head = b"%d %d " % offset
            start = self._size + len(out) + len(head)
            out += head + msg + b"\n"
            if self._fd is None:
                self._memory.append(msg)
            self._index(offset, start, len(msg), msg)
        if self._fd is not None:
            os.write(self._fd, out)
            self._size += len(out)
        self.wake()

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self.wake()

    def remove(self) -> None:
        self.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()

    # -- reading -------------------------------------------------------------------------------
    def _message(self, i: int) -> bytes:
        hit = self._tail.get(i)
        if hit is not None:
            return hit
        if self._fd is None:
            return self._memory[i]
        start, length = self._where[i]
        return os.pread(self._fd, length, start)

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
            after = SNAPSHOT_END
        start = bisect.bisect_right(self.offsets, after)
        stop = bisect.bisect_right(self.offsets, SNAPSHOT_END) if snapshot_only else len(self.offsets)
        out: list[bytes] = []
        size = 0
        i = start
        while i < stop and (not out or size + self._where[i][1] <= max_bytes):
            out.append(self._message(i))
            size += self._where[i][1]
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
