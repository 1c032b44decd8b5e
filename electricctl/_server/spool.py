"""Frames waiting to be sent to one client: in memory up to a bound, then in an unlinked
temporary file under the data dir.

Why: a subscription's data is read inside a REPEATABLE READ snapshot on one of a few pooled
connections. Sending it straight to the socket would keep that transaction (and the pool slot)
open for as long as the client takes to read, so a few slow readers could hold every slot and
starve everyone's subscriptions. The data is spooled here at Postgres' speed instead, the
snapshot is released, and the spool is sent afterwards at the client's speed.
"""

from __future__ import annotations

import asyncio
import struct
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

_LEN = struct.Struct("!I")
_CHUNK = 1 << 20


class Spool:
    def __init__(self, directory: Path | None, memory_bytes: int = 4 << 20) -> None:
        self.directory = directory
        self.memory_bytes = memory_bytes
        self._frames: list[bytes] = []
        self._file: IO[bytes] | None = None
        self._pending = bytearray()
        self.bytes = 0
        self.count = 0

    async def add(self, frame: bytes) -> None:
        self.bytes += len(frame)
        self.count += 1
        if self._file is None and self.bytes <= self.memory_bytes:
            self._frames.append(frame)
            return
        if self._file is None:
            self._file = await asyncio.to_thread(tempfile.TemporaryFile, dir=self.directory)
        self._pending += _LEN.pack(len(frame))
        self._pending += frame
        if len(self._pending) >= _CHUNK:
            await self._write_pending()

    async def _write_pending(self) -> None:
        if self._pending and self._file is not None:
            data, self._pending = bytes(self._pending), bytearray()
            await asyncio.to_thread(self._file.write, data)

    async def frames(self) -> AsyncIterator[bytes]:
        """The frames in the order they were added (once)."""
        frames, self._frames = self._frames, []
        for frame in frames:
            yield frame
        if self._file is None:
            return
        await self._write_pending()
        fh = self._file
        await asyncio.to_thread(fh.seek, 0)
        buf = b""
        while True:
            chunk = await asyncio.to_thread(fh.read, _CHUNK)
            if not chunk:
                return
            buf += chunk
            pos = 0
            while pos + _LEN.size <= len(buf):
                (n,) = _LEN.unpack_from(buf, pos)
                if pos + _LEN.size + n > len(buf):
                    break
                yield buf[pos + _LEN.size : pos + _LEN.size + n]
                pos += _LEN.size + n
            buf = buf[pos:]

    def close(self) -> None:
        self._frames = []
        if self._file is not None:
            self._file.close()
            self._file = None
