"""A shape's log on disk: offsets in order, old messages read back from the file, a torn last line
cut off when it is opened again."""

from __future__ import annotations

from pathlib import Path

import pytest

from electricctl._server.shape_api import shapelog
from electricctl._server.shape_api.offsets import BEFORE_ALL, SNAPSHOT_END, Offset, parse
from electricctl._server.shape_api.shapelog import ShapeLog


def test_offsets_parse_and_order() -> None:
    assert parse("-1") == BEFORE_ALL and parse("0_inf") == SNAPSHOT_END and str(SNAPSHOT_END) == "0_inf"
    assert parse("26800584_4") == Offset(26800584, 4) and str(Offset(5, 2)) == "5_2"
    assert BEFORE_ALL < Offset(0, 0) < SNAPSHOT_END < Offset(1, 0)
    for bad in ("", "1", "1_", "_1", "01_1", "1_-2", "x_y", "1_2_3", "99999999999999999999999_0"):
        with pytest.raises(ValueError):
            parse(bad)


def test_reads_past_the_memory_tail_and_survives_a_torn_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shapelog, "TAIL_BYTES", 64)
    path = tmp_path / "s.log"
    log = ShapeLog(path).open()
    log.append([(Offset(0, i), b'{"key":"%d"}' % i) for i in range(10)])
    log.append([(Offset(0, 10), b'{"headers":{"control":"snapshot-end"}}')])
    log.append([(Offset(100, 0), b'{"key":"live0"}'), (Offset(100, 2), b'{"key":"live1"}')])
    assert log.snapshot_done and log.last_lsn == 100 and log.end == Offset(100, 2)
    body, last, at_end = log.read(BEFORE_ALL, 1 << 20, snapshot_only=True)
    assert body[0] == b'{"key":"0"}' and len(body) == 11 and last == SNAPSHOT_END and at_end
    body, last, at_end = log.read(SNAPSHOT_END, 1 << 20)
    assert body == [b'{"key":"live0"}', b'{"key":"live1"}'] and last == Offset(100, 2) and at_end
    body, last, at_end = log.read(BEFORE_ALL, 30)  # about 30 bytes: a page, then the rest
    assert len(body) == 2 and last == Offset(0, 1) and not at_end
    with pytest.raises(ValueError):
        log.append([(Offset(100, 2), b"{}")])
    log.close()
    with path.open("ab") as f:
        f.write(b'100 4 {"key":"torn')  # a crash mid-line
    again = ShapeLog(path).open()
    assert again.offsets == log.offsets and again.read(Offset(0, 4), 20)[0] == [b'{"key":"5"}']
    again.append([(Offset(101, 0), b'{"key":"next"}')])
    again.close()
    assert ShapeLog(path).open().read(Offset(100, 2), 100)[0] == [b'{"key":"next"}']
