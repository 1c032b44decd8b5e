"""Real faults for the hardening tests: a small tmpfs that fills up (and can be grown or made
read-only), as the fault-injection run that found the defects used."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


class Tmpfs:
    """A tmpfs mounted at ``path`` (needs root, as CI runs)."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        self.size = size

    def remount(self, *options: str) -> None:
        subprocess.run(["mount", "-o", ",".join(("remount", *options)), str(self.path)], check=True)

    def grow(self, size: str) -> None:
        self.remount(f"size={size}")

    def read_only(self) -> None:
        """Remount read-only (fails while a file on it is open for writing: see :meth:`freeze`)."""
        self.remount("ro")

    def freeze(self) -> None:
        """Make every file and directory immutable (``chattr +i``): writes to files already
        open fail too, with EPERM, as on a file system turned read-only under a running process."""
        subprocess.run(["chattr", "-R", "+i", str(self.path)], check=True)

    def thaw(self) -> None:
        subprocess.run(["chattr", "-R", "-i", str(self.path)], check=True)

    def writable(self) -> None:
        self.remount("rw")

    def fill(self) -> Path:
        """Take every free byte with a ballast file; return it (delete it to free the space)."""
        ballast = self.path / f"ballast-{uuid.uuid4().hex[:6]}"
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for size in (1 << 16, 512, 1):
                with contextlib.suppress(OSError):
                    while os.write(fd, b"\0" * size):
                        pass
        finally:
            os.close(fd)
        return ballast


@contextlib.contextmanager
def tmpfs(parent: Path, size: str) -> Iterator[Tmpfs]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    path = parent / f"tmpfs-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield Tmpfs(path, size)
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(path)], check=False)
