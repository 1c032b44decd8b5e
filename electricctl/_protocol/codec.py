"""Satellite framing and row encoding (pure).

A frame is one type byte followed by the protobuf encoding of the message (../shared/reference/electric-legacy.md §1.1).
Rows travel as ``SatOpRow``: one value per column in Postgres text form, NULL as an empty value with
its bit set in an MSB-first bitmask (§1.2 item 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from google.protobuf.message import DecodeError, Message

from electricctl._protocol import satellite_pb2 as pb

# type byte <-> message class; codes 1-8, 11-13, 19, 20 are retired and refused
_TYPES: dict[int, type[Message]] = {
    0: pb.SatErrorResp,
    9: pb.SatOpLog,
    10: pb.SatRelation,
    14: pb.SatSubsDataError,
    15: pb.SatSubsDataBegin,
    16: pb.SatSubsDataEnd,
    17: pb.SatShapeDataBegin,
    18: pb.SatShapeDataEnd,
    21: pb.SatRpcRequest,
    22: pb.SatRpcResponse,
    23: pb.SatOpLogAck,
    24: pb.SatUnsubsDataBegin,
    25: pb.SatUnsubsDataEnd,
}
_CODES: dict[type[Message], int] = {cls: code for code, cls in _TYPES.items()}

# RPC method name -> (request class, response class), for calls in either direction
CAUGHT_UP = "electricctl.caughtUp"
RPC_METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    "authenticate": (pb.SatAuthReq, pb.SatAuthResp),
    "startReplication": (pb.SatInStartReplicationReq, pb.SatInStartReplicationResp),
    "stopReplication": (pb.SatInStopReplicationReq, pb.SatInStopReplicationResp),
    "subscribe": (pb.SatSubsReq, pb.SatSubsResp),
    "unsubscribe": (pb.SatUnsubsReq, pb.SatUnsubsResp),
    # electricctl's extension (schemas/satellite.proto): the server has sent everything committed before it
    CAUGHT_UP: (pb.ElectricctlCaughtUpReq, pb.ElectricctlCaughtUpResp),
}

Value: TypeAlias = bytes | None


class FrameError(ValueError):
    """A frame that is not a valid Satellite message."""


def encode(msg: Message) -> bytes:
    try:
        code = _CODES[type(msg)]
    except KeyError:
        raise TypeError(f"{type(msg).__name__} is not a top-level Satellite message") from None
    return bytes((code,)) + msg.SerializeToString()


def decode(frame: bytes) -> Message:
    if not frame:
        raise FrameError("empty frame")
    cls = _TYPES.get(frame[0])
    if cls is None:
        raise FrameError(f"unknown message type {frame[0]}")
    msg = cls()
    try:
        msg.ParseFromString(frame[1:])
    except DecodeError as exc:
        raise FrameError(f"malformed {cls.__name__}: {exc}") from exc
    return msg


def encode_row(values: Sequence[Value]) -> pb.SatOpRow:
    row = pb.SatOpRow()
    fill_row(row, values)
    return row


def fill_row(row: pb.SatOpRow, values: Sequence[Value]) -> None:
    """Set ``row``'s values in place (about twice as fast as building a new message)."""
    mask = bytearray((len(values) + 7) // 8)
    out: list[bytes] = []
    for i, v in enumerate(values):
        if v is None:
            mask[i >> 3] |= 0x80 >> (i & 7)
            out.append(b"")
        else:
            out.append(v)
    row.nulls_bitmask = bytes(mask)
    row.values.extend(out)


def decode_row(row: pb.SatOpRow, ncols: int) -> list[Value]:
    if len(row.values) != ncols:
        raise FrameError(f"row has {len(row.values)} values for {ncols} columns")
    mask = row.nulls_bitmask
    out: list[Value] = []
    for i, v in enumerate(row.values):
        byte = i >> 3
        null = byte < len(mask) and bool(mask[byte] & (0x80 >> (i & 7)))
        out.append(None if null else v)
    return out


def encode_client_lsn(position: int) -> bytes:
    """Client LSNs (the client's oplog rowid) are big-endian unsigned integers: 4 bytes, as the
    0.12 client sends them, or 8 past 2**32."""
    return position.to_bytes(4 if position < 1 << 32 else 8, "big")


def encode_server_lsn(position: int) -> bytes:
    """Server LSNs are the decimal ASCII form of the 64-bit WAL position."""
    return str(position).encode()


def decode_server_lsn(raw: bytes) -> int:
    """Parse a server LSN a client sent back; raise ValueError if it is not one."""
    text = raw.decode("ascii")
    if not text.isdigit() or len(text) > 20:
        raise ValueError(f"malformed LSN {raw!r}")
    value = int(text)
    if value >= 1 << 64:
        raise ValueError(f"LSN {raw!r} is out of range")
    return value
