"""Framing, rows and LSNs on the wire, plus a fuzz of the frame decoder."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb

REPO = Path(__file__).resolve().parents[2]


def test_type_bytes_match_the_012_client() -> None:
    # ../shared/reference/electric-legacy.md §1.1, checked against the npm client's own table in tests/compat
    expected = {
        0: "SatErrorResp",
        9: "SatOpLog",
        10: "SatRelation",
        14: "SatSubsDataError",
        15: "SatSubsDataBegin",
        16: "SatSubsDataEnd",
        17: "SatShapeDataBegin",
        18: "SatShapeDataEnd",
        21: "SatRpcRequest",
        22: "SatRpcResponse",
        23: "SatOpLogAck",
        24: "SatUnsubsDataBegin",
        25: "SatUnsubsDataEnd",
    }
    for code, name in expected.items():
        frame = codec.encode(getattr(pb, name)())
        assert frame[0] == code
        assert type(codec.decode(frame)).__name__ == name
    for retired in (1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 19, 20, 26, 255):
        with pytest.raises(codec.FrameError, match=f"unknown message type {retired}"):
            codec.decode(bytes([retired]))


def test_nulls_bitmask_is_msb_first_and_padded() -> None:
    row = codec.encode_row([b"a", None, b"", None, b"e", b"f", b"g", b"h", None])
    assert row.nulls_bitmask == bytes([0b01010000, 0b10000000])
    assert list(row.values) == [b"a", b"", b"", b"", b"e", b"f", b"g", b"h", b""]
    assert codec.decode_row(row, 9) == [b"a", None, b"", None, b"e", b"f", b"g", b"h", None]
    with pytest.raises(codec.FrameError, match="row has 9 values for 3 columns"):
        codec.decode_row(row, 3)


def test_server_lsn_is_decimal_ascii() -> None:
    assert codec.encode_server_lsn(23803720) == b"23803720"
    assert codec.decode_server_lsn(b"23803720") == 23803720
    for bad in (b"", b"-1", b"0/16B3748", b"1e5", b"99999999999999999999999"):
        with pytest.raises(ValueError):
            codec.decode_server_lsn(bad)


def test_field_numbers_match_the_wire_format() -> None:
    # a few wire facts of 0.12.1 (../shared/reference/electric-legacy.md §1.2), byte for byte
    begin = pb.SatOpBegin(commit_timestamp=1, lsn=b"5", origin="o", is_migration=True, transaction_id=9)
    assert begin.SerializeToString() == b"\x08\x01\x1a\x015\x22\x01o\x28\x01\x38\x09"
    resp = pb.SatInStartReplicationResp(unacked_window_size=30)
    assert resp.SerializeToString() == b"\x10\x1e"
    op = pb.SatTransOp(gone=pb.SatOpGone(relation_id=3))
    assert op.SerializeToString() == b"\x42\x02\x08\x03"


def test_generated_code_is_in_sync_with_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(REPO / "schemas"),
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(REPO / "schemas" / "satellite.proto"),
        ],
        check=True,
    )
    for name in ("satellite_pb2.py", "satellite_pb2.pyi"):
        assert filecmp.cmp(tmp_path / name, REPO / "electricctl" / "_protocol" / name, shallow=False), (
            f"{name} is stale: run scripts/gen-proto"
        )


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_frame_decoder_never_fails_unexpectedly(frame: bytes) -> None:
    try:
        msg = codec.decode(frame)
    except codec.FrameError:
        return
    assert codec.encode(msg)[0] == frame[0]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=5)), max_size=20))
def test_rows_round_trip(values: list[bytes | None]) -> None:
    row = codec.encode_row(values)
    decoded = pb.SatOpRow.FromString(row.SerializeToString())
    assert codec.decode_row(decoded, len(values)) == values
