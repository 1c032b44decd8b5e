"""A queue of frames between a snapshot being read and the client it goes to: in memory up to a
bound, then in an unlinked temporary file under the data dir.

Why: a subscription's data is read inside a REPEATABLE READ snapshot on one of a few pooled
connections. Sending it straight to the socket would keep that transaction (and the pool slot)
open for as long as the client takes to read, so a few slow readers could hold every slot and
starve everyone's subscriptions. The reader (the producer) appends here at Postgres' speed and
the snapshot ends as soon as it is done; a sender (the consumer) takes frames out concurrently,
at the client's speed. A client that keeps up never touches the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

_LEN = struct.Struct("!I")
_FLUSH = 256 << 10
_READ = 1 << 20


class Spool:
    def __init__(self, directory: Path | None, memory_bytes: int = 4 << 20) -> None:
        self.directory = directory
        self.memory_bytes = memory_bytes
        self.bytes = 0
        """Bytes of every frame added so far."""
        self._memory: deque[bytes] = deque()
        self._memory_bytes = 0
        self._file: IO[bytes] | None = None
        """Once frames go to the file, every later frame does too (the order is kept)."""
        self._pending = bytearray()
        self._written = 0
        self._read = 0
        self._finished = False
        self._more = asyncio.Event()
        self._flushing = asyncio.Lock()
        self.failed: BaseException | None = None
        """Set when the sender gave up (the client went away or was too slow): adding raises it."""

    async def add(self, frame: bytes) -> None:
        if self.failed is not None:
            raise self.failed
        self.bytes += len(frame)
        if self._file is None and self._memory_bytes + len(frame) <= self.memory_bytes:
            self._memory.append(frame)
            self._memory_bytes += len(frame)
        else:
            if self._file is None:
                self._file = await asyncio.to_thread(tempfile.TemporaryFile, dir=self.directory)
            self._pending += _LEN.pack(len(frame))
            self._pending += frame
            if len(self._pending) >= _FLUSH:
                await self._flush()
        self._more.set()

    async def _flush(self) -> None:
        async with self._flushing:  # producer and consumer may both flush: one write at a time
            if not self._pending or self._file is None:
                return
            data, self._pending = bytes(self._pending), bytearray()
            await asyncio.to_thread(os.pwrite, self._file.fileno(), data, self._written)
            self._written += len(data)
        self._more.set()

    async def finish(self) -> None:
        """Nothing more will be added."""
        await self._flush()
        self._finished = True
        self._more.set()

    async def frames(self) -> AsyncIterator[bytes]:
        """The frames in the order they were added, as they come, until :meth:`finish`."""
        buf = b""
        while True:
            self._more.clear()
            while self._memory:
                frame = self._memory.popleft()
                self._memory_bytes -= len(frame)
                yield frame
            if self._file is not None and self._read < self._written:
                chunk = await asyncio.to_thread(
                    os.pread, self._file.fileno(), min(_READ, self._written - self._read), self._read
                )
                self._read += len(chunk)
                buf += chunk
                pos = 0
                while pos + _LEN.size <= len(buf):
                    (n,) = _LEN.unpack_from(buf, pos)
                    if pos + _LEN.size + n > len(buf):
                        break
                    yield buf[pos + _LEN.size : pos + _LEN.size + n]
                    pos += _LEN.size + n
                buf = buf[pos:]
                continue
            if self._finished and not self._memory and self._read >= self._written:
                return
            if not self._finished and self._pending and self._read >= self._written:
                await self._flush()  # the producer is slow: do not wait for a full chunk
                continue
            await self._more.wait()

    def close(self) -> None:
        self._memory.clear()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
