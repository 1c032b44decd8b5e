"""The durable log: append, reopen, torn tails, segments, retention and reads from disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from electricctl._log import records
from electricctl._log.filelog import FileLog, LogWriteError
from electricctl._model.rows import Change, Column, RelationDef, Transaction
from electricctl._server.snapshot import parse_copy_lines
from electricctl._shapes.visibility import Visibility
from tests.faults import tmpfs

REL = RelationDef(7, "public", "items", (Column("id", 25, "text", True, False), Column("n", 23, "int4", False, True)))
REL2 = RelationDef(7, "public", "items", (*REL.columns, Column("m", 25, "text", False, True)))


def tx(lsn: int, rel: RelationDef = REL, ts: int = 1000) -> Transaction:
    values = (str(lsn).encode(), None) + ((b"m",) if len(rel.columns) == 3 else ())
    return Transaction(lsn, lsn + 8, lsn // 10, ts, None if lsn % 2 else "client-1", (Change("I", rel, values, None),))


def test_append_reopen_and_read(tmp_path: Path) -> None:
    log = FileLog(tmp_path).open()
    log.append([tx(10), tx(20)])
    log.append([tx(20), tx(30, REL2)])  # 20 again: a resend after a restart is skipped
    log.close()
    again = FileLog(tmp_path, cache_size=1).open()
    assert again.last_lsn == 30
    got = again.read_after(0)
    assert [t.lsn for t in got] == [10, 20, 30]
    assert got[0] == tx(10) and got[2].changes[0].relation == REL2
    assert [t.lsn for t in again.read_after(15)] == [20, 30]
    assert again.read_after(30) == []


def test_relations_read_back_are_one_shared_object_per_definition(tmp_path: Path) -> None:
    """Per-change caches keyed by relation (sent relations, projections) compare by identity:
    every read of a definition must give back the same object, and a changed one another."""
    log = FileLog(tmp_path).open()
    log.append([tx(10), tx(20), tx(30, REL2)])
    log.close()
    first = FileLog(tmp_path, cache_size=1).open().read_after(0)
    second = FileLog(tmp_path, cache_size=1).open().read_after(0)
    assert first[0].changes[0].relation is second[1].changes[0].relation
    assert first[0].changes[0].relation is not first[2].changes[0].relation
    assert first[2].changes[0].relation is second[2].changes[0].relation == REL2
    assert hash(first[2].changes[0].relation) == hash(REL2)


def test_a_torn_tail_is_cut_off(tmp_path: Path) -> None:
    log = FileLog(tmp_path).open()
    log.append([tx(10), tx(20)])
    log.close()
    (seg,) = tmp_path.glob("seg-*.log")
    size = seg.stat().st_size
    with open(seg, "ab") as fh:
        fh.write(records.frame(records.encode_transaction(tx(30)))[:-5])  # a kill -9 mid-write
    again = FileLog(tmp_path).open()
    assert again.last_lsn == 20 and again.truncated_bytes > 0
    assert seg.stat().st_size == size
    again.append([tx(30)])
    assert [t.lsn for t in FileLog(tmp_path).open().read_after(0)] == [10, 20, 30]


def test_corruption_in_the_middle_is_an_error(tmp_path: Path) -> None:
    log = FileLog(tmp_path, segment_bytes=1).open()
    log.append([tx(10), tx(20), tx(30)])
    log.close()
    first = sorted(tmp_path.glob("seg-*.log"))[0]
    data = bytearray(first.read_bytes())
    data[-3] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(records.CorruptRecord, match="damaged"):
        FileLog(tmp_path).open()


def test_segments_retention_and_coverage(tmp_path: Path) -> None:
    log = FileLog(tmp_path, segment_bytes=1, retention_seconds=10, cache_size=1).open()
    log.append([tx(10, ts=1_000), tx(20, ts=2_000), tx(30, ts=50_000)])
    assert len(list(tmp_path.glob("seg-*.log"))) == 3
    assert log.covers(5) and log.covers(30)
    assert log.prune(now=45.0) == 2  # segments whose last commit is older than 35 s
    assert log.first_lsn == 30
    assert not log.covers(10) and not log.covers(19) and log.covers(20) and log.covers(30)
    assert FileLog(tmp_path).open().horizon == 20  # remembered across restarts
    assert [t.lsn for t in log.read_after(0)] == [30]


def test_snapshot_visibility() -> None:
    vis = Visibility.parse("100:105:101,103", bound_lsn=1000)
    seen = {xid: vis.holds(Transaction(500, 0, xid, 0, None, ())) for xid in (99, 100, 101, 102, 103, 104, 105)}
    assert seen == {99: True, 100: True, 101: False, 102: True, 103: False, 104: True, 105: False}
    assert not vis.holds(Transaction(1000, 0, 99, 0, None, ()))  # at or after the bound: newer
    wrapped = Visibility.parse(f"{2**32 + 5}:{2**32 + 9}:", bound_lsn=10)
    assert wrapped.holds(Transaction(1, 0, 2**32 - 3 & 0xFFFFFFFF, 0, None, ()))  # before xmin, across wraparound


def test_copy_text_parsing() -> None:
    rows, rest = parse_copy_lines(b"1\ta\\tb\t\\N\n2\t\\\\x\t\\101\\n\n3\tpart")
    assert rows == [(b"1", b"a\tb", None), (b"2", b"\\x", b"A\n")]
    assert rest == b"3\tpart"


def test_log_files_are_fsynced_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    FileLog(tmp_path).open().append([tx(10)])
    assert calls, "append returned before fsync"


def test_reads_from_disk_use_the_sparse_index(tmp_path: Path) -> None:
    log = FileLog(tmp_path).open()
    log.append([tx(10 * i, REL if i < 150 else REL2) for i in range(1, 301)])
    log.close()
    disk = FileLog(tmp_path, cache_size=1).open()
    assert [t.lsn for t in disk.read_after(0, limit=5)] == [10, 20, 30, 40, 50]
    (seg,) = disk._segments
    assert len(seg.index) == 0  # nothing scanned far enough yet
    everything = disk.read_after(0, limit=1000)
    assert [t.lsn for t in everything] == [10 * i for i in range(1, 301)]
    assert len(seg.index) == 300 // 64
    for start in (0, 635, 640, 1490, 1500, 2555, 2990):
        got = disk.read_after(start, limit=7)
        assert [t.lsn for t in got] == [lsn for lsn in range(10, 3001, 10) if lsn > start][:7]
        assert all(t.changes[0].relation == (REL if t.lsn < 1500 else REL2) for t in got)


def _big_tx(lsn: int, size: int = 100_000) -> Transaction:
    payload = os.urandom(size // 2).hex().encode()
    return Transaction(lsn, lsn + 8, lsn, 1000, None, (Change("I", REL, (str(lsn).encode(), payload), None),))


@pytest.mark.parametrize("segment_bytes", [64 << 20, 250_000], ids=["one-segment", "rolling-segments"])
def test_a_full_disk_loses_nothing_and_moves_no_position(tmp_path: Path, segment_bytes: int) -> None:
    """Issue 10, point 1: a write that fails on a full disk leaves the log as it was, and the
    same transactions can be written once there is room (nothing skipped, no torn tail)."""
    with tmpfs(tmp_path, "1m") as fs:
        log = FileLog(fs.path / "log", segment_bytes=segment_bytes).open()
        lsn, stored = 10, []
        failed: list[Transaction] = []
        while not failed:
            batch = [_big_tx(lsn), _big_tx(lsn + 10)]
            lsn += 20
            segments = [(p.name, p.stat().st_size) for p in sorted((fs.path / "log").glob("seg-*"))]
            last = log._segments[-1].last_lsn if log._segments else 0
            try:
                log.append(batch)
            except LogWriteError as exc:
                assert "No space left on device" in str(exc) and "free some space" in str(exc)
                failed = batch
                # the failed write was cut off: every segment as before, no new one
                assert [(p.name, p.stat().st_size) for p in sorted((fs.path / "log").glob("seg-*"))] == segments
                assert (log._segments[-1].last_lsn if log._segments else 0) == last
            else:
                stored.extend(batch)
        assert stored, "the tmpfs filled before anything was written"
        assert log.last_lsn == stored[-1].lsn
        assert log.read_after(0, 1000) == stored
        with pytest.raises(LogWriteError):
            log.append(failed)  # still full: refused again, still nothing half-written
        fs.grow("8m")
        assert log.write(failed) == failed  # the same transactions, not skipped as "already written"
        log.publish(failed)
        log.append([_big_tx(lsn)])
        log.close()
        again = FileLog(fs.path / "log", cache_size=1).open()
        assert again.truncated_bytes == 0
        assert [t.lsn for t in again.read_after(0, 1000)] == [t.lsn for t in (*stored, *failed)] + [lsn]


def test_the_horizon_is_written_durably_or_not_at_all(tmp_path: Path) -> None:
    with tmpfs(tmp_path, "64k") as fs:
        log = FileLog(fs.path).open()
        log.set_horizon(5)
        ballast = fs.fill()
        with pytest.raises(LogWriteError, match="No space left"):
            log.set_horizon(2**40)
        assert FileLog(fs.path).open().horizon == 5
        assert not list(fs.path.glob("*.tmp"))
        ballast.unlink()
        log.set_horizon(7)
        assert FileLog(fs.path).open().horizon == 7
