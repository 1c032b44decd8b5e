"""Being told when another process writes the database file, instead of looking for it.

On Linux, an inotify watch on the file's directory reports every write to the database and its
``-wal`` journal, from any process on this machine: the client looks (``PRAGMA data_version``) at
once, rather than at its next poll. The poll stays, less often, for what inotify cannot see
(a file on a network file system written from another machine). Elsewhere, or when inotify is
unavailable (no watch left, a sandbox without it), :meth:`FileWatch.open` returns None and the
client polls as before.

inotify is reached through libc with ctypes: the standard library has no binding, and a
dependency for four calls is not worth it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import sys

log = logging.getLogger("electricctl.client")

# <sys/inotify.h>
_IN_MODIFY = 0x002
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_Q_OVERFLOW = 0x4000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")
"""``struct inotify_event`` without its name: wd, mask, cookie, len (the name's length, padded)."""

_libc: ctypes.CDLL | None = None


def _inotify() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        name = ctypes.util.find_library("c")
        lib = ctypes.CDLL(name or "libc.so.6", use_errno=True)
        if hasattr(lib, "inotify_init1") and hasattr(lib, "inotify_add_watch"):
            lib.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
            _libc = lib
    return _libc


class FileWatch:
    """An inotify descriptor watching one database file (and its journals) for writes."""

    def __init__(self, fd: int, names: frozenset[bytes]) -> None:
        self._fd = fd
        self._names = names

    @classmethod
    def open(cls, path: str) -> FileWatch | None:
        """Watch ``path``; None where that cannot be done (then poll)."""
        lib = _inotify()
        if lib is None:
            return None
        fd = int(lib.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
        if fd < 0:
            log.debug("no inotify (%s): polling for other connections' writes", os.strerror(ctypes.get_errno()))
            return None
        directory = os.path.dirname(os.path.abspath(path))
        mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_CREATE | _IN_MOVED_TO
        if int(lib.inotify_add_watch(fd, os.fsencode(directory), mask)) < 0:
            log.debug("cannot watch %s (%s): polling", directory, os.strerror(ctypes.get_errno()))
            os.close(fd)
            return None
        base = os.fsencode(os.path.basename(path))
        return cls(fd, frozenset({base, base + b"-wal", base + b"-journal"}))

    def fileno(self) -> int:
        return self._fd

    def written(self) -> bool:
        """Read the events that are ready (never blocks): was the database or its journal written?"""
        hit = False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return hit
            except OSError as exc:  # pragma: no cover - the descriptor is ours; say so rather than spin
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not data:
                return hit
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                hit = hit or name in self._names or bool(mask & _IN_Q_OVERFLOW)  # overflow: events were lost
                offset += _EVENT.size + length

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
