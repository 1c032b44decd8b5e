"""The embedded durable transaction log: append-only segment files under ``--data-dir``.

Why it exists: the replication slot can be confirmed as soon as a transaction is here, so offline
clients never pin WAL in Postgres; clients resume from their last LSN without a resync inside the
retention window; and it survives restarts, ``kill -9`` included (a torn record at the tail is cut
off on open: it was never confirmed to Postgres, so Postgres sends it again).

Layout: ``<dir>/seg-<first lsn, 16 hex digits>.log``; each segment starts with the relation
definitions in force, so it can be read on its own. Single writer (the replication task); any
number of readers. Recent transactions are also kept in memory for live tailing.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from electricctl._log import records
from electricctl._model.rows import RelationDef, Transaction
from electricctl.errors import ElectricError


@dataclass(slots=True)
class _Segment:
    path: Path
    first_lsn: int
    last_lsn: int
    last_ts_ms: int
    size: int
    index: list[tuple[int, int, dict[int, RelationDef]]] = field(default_factory=list)
    """Sparse index for reads from disk: (lsn of a transaction, offset after it, relations in force)."""


_INDEX_EVERY = 64


class LogWriteError(ElectricError):
    """The log could not be written (a full disk, a read-only file system). Nothing was lost:
    what the failed write put on disk was cut off, and the replication slot was not confirmed
    past it, so Postgres sends those transactions again."""

    def __init__(self, directory: Path, cause: OSError) -> None:
        self.cause = cause
        reason = cause.strerror or str(cause)
        super().__init__(
            f"cannot write the transaction log in {directory}: {reason}"
            + ("; free some space there" if cause.errno == errno.ENOSPC else "")
            + (" (make it writable)" if cause.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else "")
        )


@dataclass(slots=True)
class _Undo:
    """What a write changes, as it was before: restored when the write fails."""

    segments: int
    size: int
    last_lsn: int
    last_ts_ms: int
    written_relations: dict[int, RelationDef]


def approx_size(tx: Transaction) -> int:
    """About how many bytes ``tx`` holds in memory (its values, plus a little per change)."""
    size = 200
    for ch in tx.changes:
        size += 100
        for row in (ch.new, ch.old):
            if row is not None:
                size += sum(len(v) + 40 for v in row if v is not None)
    return size


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FileLog:
    shared = False
    """Only this process reads and writes it (see :class:`~electricctl._log.jetstream.JetStreamLog`)."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 64 << 20,
        retention_seconds: float = 7 * 86400,
        cache_size: int = 20_000,
        cache_bytes: int = 64 << 20,
        fsync: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.retention_seconds = retention_seconds
        self.fsync = fsync
        self._segments: list[_Segment] = []
        self._relations: dict[int, RelationDef] = {}
        self._written_relations: dict[int, RelationDef] = {}
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        """The in-memory tail of recent transactions holds at most this many, and about this many
        bytes of values (large transactions would otherwise pile up in memory)."""
        self._cache: deque[Transaction] = deque()
        self._cache_lsns: deque[int] = deque()
        self._cache_sizes: deque[int] = deque()
        self._cached_bytes = 0
        self._fh: int | None = None
        self.last_lsn = 0
        self.truncated_bytes = 0
        """Bytes of a torn tail cut off when the log was opened."""
        self._damaged: _Undo | None = None
        """Set when a failed write could not be undone yet; the next write undoes it first."""
        self.on_published: Callable[[list[Transaction]], None] | None = None
        """Called on the event loop with each batch :meth:`store` made visible."""
        self.on_gap: Callable[[int], None] | None = None

    # -- opening -----------------------------------------------------------------------------
    def open(self) -> FileLog:
        self.directory.mkdir(parents=True, exist_ok=True)
        paths = sorted(self.directory.glob("seg-*.log"))
        for i, path in enumerate(paths):
            data = path.read_bytes()
            relations: dict[int, RelationDef] = {}
            seg = _Segment(path, int(path.stem[4:], 16), 0, 0, 0)
            end = 0
            for _, next_offset, payload in records.iter_records(data):
                item = records.decode(payload, relations)
                end = next_offset
                if isinstance(item, Transaction):
                    seg.last_lsn = item.lsn
                    seg.last_ts_ms = item.commit_ts_ms
                    self._remember(item)
            if end < len(data):
                if i != len(paths) - 1:
                    raise records.CorruptRecord(f"{path} is damaged at byte {end} (not at its end)")
                self.truncated_bytes = len(data) - end
                with open(path, "r+b") as fh:
                    fh.truncate(end)
            seg.size = end
            self._segments.append(seg)
            self._relations.update(relations)
        if self._segments:
            self.last_lsn = max(s.last_lsn for s in self._segments)
        self.last_lsn = max(self.last_lsn, self.horizon)  # after a gap the stream resumes past it
        if self._segments:
            last = self._segments[-1]
            self._fh = os.open(last.path, os.O_WRONLY | os.O_APPEND)
            self._written_relations = self._relations_of(last)
        return self

    def _relations_of(self, seg: _Segment) -> dict[int, RelationDef]:
        relations: dict[int, RelationDef] = {}
        for _, _, payload in records.iter_records(seg.path.read_bytes()):
            if payload[0] == records.KIND_RELATION:
                records.decode(payload, relations)
        return relations

    def close(self) -> None:
        if self._fh is not None:
            os.close(self._fh)
            self._fh = None

    # -- positions ---------------------------------------------------------------------------
    @property
    def first_lsn(self) -> int | None:
        """LSN of the oldest transaction still retained, or None if the log is empty."""
        for seg in self._segments:
            if seg.last_lsn:
                return seg.first_lsn
        return None

    @property
    def size_bytes(self) -> int:
        """Bytes of the segments on disk (what ``--log-retention`` keeps)."""
        return sum(seg.size for seg in list(self._segments))

    @property
    def horizon(self) -> int:
        """Transactions at or below this LSN may be missing (pruned, or from before this log)."""
        path = self.directory / "horizon"
        return int(path.read_text()) if path.exists() else 0

    @property
    def has_horizon(self) -> bool:
        return (self.directory / "horizon").exists()

    def set_horizon(self, lsn: int) -> None:
        path = self.directory / "horizon"
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as fh:
                fh.write(str(lsn))
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
            if self.fsync:
                _fsync_dir(self.directory)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise LogWriteError(self.directory, exc) from exc

    def mark_gap(self, lsn: int) -> None:
        """The stream resumes at ``lsn`` with nothing before it: clients positioned before it
        must resync, and new clients start from it."""
        self.set_horizon(max(self.horizon, lsn))
        self.last_lsn = max(self.last_lsn, lsn)

    def covers(self, lsn: int) -> bool:
        """Can a client that has everything up to ``lsn`` resume from here without a gap?"""
        return lsn >= self.horizon

    # -- writing -----------------------------------------------------------------------------
    async def connect(self, timeout: float = 30.0) -> None:
        """Nothing to connect to: the file log is local."""

    async def aclose(self) -> None:
        """Nothing to disconnect (:meth:`close` closes the files)."""

    async def store(self, txns: Sequence[Transaction]) -> list[Transaction]:
        """Write ``txns`` durably (in a worker thread), then publish them and tell
        :attr:`on_published`; returns what was new."""
        written = await asyncio.to_thread(self.write, txns)
        self.publish(written)
        if written and self.on_published is not None:
            self.on_published(written)
        return written

    def append(self, txns: Sequence[Transaction]) -> None:
        """Write, fsync and publish ``txns``: :meth:`write` then :meth:`publish`."""
        self.publish(self.write(txns))

    def write(self, txns: Sequence[Transaction]) -> list[Transaction]:
        """Write and (by default) fsync ``txns``; they are durable when this returns.

        All or nothing: when a write or fsync fails (a full disk, a read-only file system), what
        this call wrote is truncated away, every position is left as it was and
        :class:`LogWriteError` is raised, so the same transactions can be written again later.
        Positions (a segment's last LSN and size) move only after a successful write and fsync.

        Safe to run in a worker thread. Returns what was written (transactions at or below the
        log's end are skipped: Postgres resends from the last confirmed position after a restart).
        """
        if self._damaged is not None:
            self._repair()
        durable = self._segments[-1].last_lsn if self._segments else 0
        txns = [t for t in txns if t.lsn > max(self.last_lsn, durable)]
        if not txns:
            return []
        undo = _Undo(
            len(self._segments),
            *(
                (self._segments[-1].size, self._segments[-1].last_lsn, self._segments[-1].last_ts_ms)
                if self._segments
                else (0, 0, 0)
            ),
            dict(self._written_relations),
        )
        try:
            self._write_records(txns)
        except OSError as exc:
            self._damaged = undo
            with contextlib.suppress(OSError):
                self._repair()
            raise LogWriteError(self.directory, exc) from exc
        return txns

    def _write_records(self, txns: Sequence[Transaction]) -> None:
        buf = bytearray()
        last: Transaction | None = None
        for tx in txns:
            if self._fh is None or (self._segments and self._segments[-1].size + len(buf) > self.segment_bytes):
                self._flush(buf, last)
                buf.clear()
                last = None
                self._new_segment(tx.lsn)
            for ch in tx.changes:
                rel = ch.relation
                if self._written_relations.get(rel.relid) != rel:
                    buf += records.frame(records.encode_relation(rel))
                    self._written_relations[rel.relid] = rel
                    self._relations[rel.relid] = rel
            buf += records.frame(records.encode_transaction(tx))
            last = tx
        self._flush(buf, last)

    def _repair(self) -> None:
        """Undo a failed write: drop the segments it created and cut the last one back to its
        size before, so no torn record stays in front of later writes."""
        undo = self._damaged
        if undo is None:
            return
        self.close()
        while len(self._segments) > undo.segments:
            self._segments.pop().path.unlink(missing_ok=True)
        if self._segments:
            seg = self._segments[-1]
            os.truncate(seg.path, undo.size)
            seg.size, seg.last_lsn, seg.last_ts_ms = undo.size, undo.last_lsn, undo.last_ts_ms
            self._fh = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
            if self.fsync:
                os.fsync(self._fh)
        self._written_relations = undo.written_relations
        self._damaged = None

    def publish(self, txns: Sequence[Transaction]) -> None:
        """Make written transactions visible to readers (call from the event loop's thread)."""
        if not txns:
            return
        for tx in txns:
            self._remember(tx)
        self.last_lsn = txns[-1].lsn

    def _flush(self, buf: bytearray | bytes, last: Transaction | None = None) -> None:
        """Write all of ``buf`` and fsync it; only then move the segment's size and last LSN."""
        if not buf or self._fh is None:
            return
        view = memoryview(buf)
        while view:
            n = os.write(self._fh, view)  # a full disk may take part of it, then raise
            view = view[n:]
        if self.fsync:
            os.fsync(self._fh)
        seg = self._segments[-1]
        seg.size += len(buf)
        if last is not None:
            seg.last_lsn = last.lsn
            seg.last_ts_ms = last.commit_ts_ms

    def _new_segment(self, first_lsn: int) -> None:
        self.close()
        path = self.directory / f"seg-{first_lsn:016x}.log"
        self._segments.append(_Segment(path, first_lsn, 0, 0, 0))
        self._fh = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
        head = bytearray()
        for rel in self._relations.values():
            head += records.frame(records.encode_relation(rel))
        self._written_relations = dict(self._relations)
        self._flush(head)
        if self.fsync:
            _fsync_dir(self.directory)

    def _remember(self, tx: Transaction) -> None:
        size = approx_size(tx)
        self._cache.append(tx)
        self._cache_lsns.append(tx.lsn)
        self._cache_sizes.append(size)
        self._cached_bytes += size
        while len(self._cache) > 1 and (len(self._cache) > self.cache_size or self._cached_bytes > self.cache_bytes):
            self._cache.popleft()
            self._cache_lsns.popleft()
            self._cached_bytes -= self._cache_sizes.popleft()

    def prune(self, now: float | None = None) -> int:
        """Drop whole segments older than the retention window; return how many were dropped."""
        cutoff_ms = ((now or time.time()) - self.retention_seconds) * 1000
        dropped = 0
        while len(self._segments) > 1 and self._segments[0].last_ts_ms < cutoff_ms:
            seg = self._segments.pop(0)
            self.set_horizon(max(self.horizon, seg.last_lsn))
            seg.path.unlink(missing_ok=True)
            dropped += 1
        return dropped

    # -- reading -----------------------------------------------------------------------------
    def read_after(self, lsn: int, limit: int = 1000) -> list[Transaction]:
        """Up to ``limit`` transactions with a commit LSN greater than ``lsn``, in order."""
        if lsn >= self.last_lsn:
            return []
        if (self._cache_lsns and self._cache_lsns[0] <= lsn + 1) or (self._cache and not self._segments):
            i = bisect.bisect_right(self._cache_lsns, lsn)
            return [self._cache[j] for j in range(i, min(i + limit, len(self._cache)))]
        return self._read_disk(lsn, limit)

    def _read_disk(self, lsn: int, limit: int) -> list[Transaction]:
        out: list[Transaction] = []
        published = self.last_lsn  # what a concurrent (failing, then undone) write adds is not read
        for seg in list(self._segments):
            if seg.last_lsn <= lsn:
                continue
            # start from the closest indexed point at or before lsn, not from the segment's head
            start, relations = 0, {}
            i = bisect.bisect_right(seg.index, lsn, key=lambda point: point[0]) - 1
            if i >= 0:
                _, start, known = seg.index[i]
                relations = dict(known)
            count = 0
            # plain reads, not mmap: a write undone in another thread may shrink the file under us
            for _, next_offset, payload in records.iter_file(seg.path, start):
                item = records.decode(payload, relations)
                if not isinstance(item, Transaction):
                    continue
                if item.lsn > published:
                    return out
                count += 1
                if count % _INDEX_EVERY == 0 and (not seg.index or seg.index[-1][0] < item.lsn):
                    seg.index.append((item.lsn, next_offset, dict(relations)))
                if item.lsn > lsn:
                    out.append(item)
                    if len(out) >= limit:
                        return out
        return out
