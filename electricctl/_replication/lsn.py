"""Postgres WAL positions (LSNs): 64-bit integers written ``X/Y`` in hex."""

from __future__ import annotations


def parse(text: str) -> int:
    """``"16/B374D848"`` -> 97500059720.

    >>> parse("0/16B3748")
    23803720
    """
    hi, sep, lo = text.partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(hi, 16) << 32) | int(lo, 16)


def format(value: int) -> str:
    """>>> format(23803720)
    '0/16B3748'
    """
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
