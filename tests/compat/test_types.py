"""Every supported type round-trips exactly, both ways, through both clients (issue 12).

A table with one column of each supported type is electrified while the server runs (it reaches
the clients as a ``create_table`` migration). Postgres holds rows at the extremes: NaN and
±Infinity floats, the integer bounds, dates and timestamps before 1900 and after 2100 (and
±infinity), bytea with NUL bytes, jsonb and text with unicode and escapes, numeric beyond a
double's precision. Each client subscribes, then copies every row it holds into a new row with
plain SQL (``INSERT ... SELECT``), as an app would; Postgres then compares each copy with its
original column by column with ``IS NOT DISTINCT FROM``: a value that changed on the way in, in the
client's file or on the way out shows as a mismatch.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from electricctl._apply import applier
from electricctl._config.loader import load_text
from electricctl._server.app import Server
from electricctl.client import SyncClient
from tests.compat.conftest import Driver
from tests.server_fixtures import CONFIG, Env, ws_url

pytestmark = pytest.mark.asyncio

COLUMNS = {
    "b": "bool",
    "by": "bytea",
    "d": "date",
    "f4": "float4",
    "f8": "float8",
    "i2": "int2",
    "i4": "int4",
    "i8": "int8",
    "j": "jsonb",
    "t": "text",
    "tm": "time",
    "ts": "timestamp",
    "tz": "timestamptz",
    "u": "uuid",
    "v": "varchar",
    "n": "numeric",
    "e": "mood",
    "ai": "int8[]",
    "at": "text[]",
    "af": "float8[]",
    "a2": "int4[]",
    "ab": "bool[]",
    "aby": "bytea[]",
    "an": "numeric[]",
    "ats": "timestamptz[]",
}
ROWS = [
    # id, then the columns in COLUMNS' order
    (
        "hi", True, b"\x00\xff\x00", "2200-12-31", "3.4028235e38", "1.7976931348623157e308", 32767, 2147483647,
        9223372036854775807, '{"k": "h\u00e9llo \u2713 \U0001f600", "n": [1, 2.5, null], "e": "\\"q\\" \\\\ \\n"}',
        'line\nbreak "q" \\ \u00e9 \U0001f600', "23:59:59.999999", "2200-01-01 00:00:00.000001",
        "2200-06-01 12:00:00.5+00", "ffffffff-ffff-ffff-ffff-ffffffffffff", "v\u00e9",
        "123456789012345678901234567890.123456789012345678901234567890", "happy",
        [9223372036854775807, None, -9223372036854775808], ["a b", 'q"uote', "back\\slash", "", None, "NULL", "{}", "\u00e9,"],
        [float("nan"), float("inf"), -float("inf"), 1.7976931348623157e308, 5e-324], [[1, 2], [3, None]],
        [True, False, None], [b"\x00\xff", b""], ["1.50", "NaN", "-1e-30"], ["2200-01-01 00:00:00.5+00", "-infinity"],
    ),
    (
        "lo", False, b"\x00", "0044-03-15 BC", "-3.4028235e38", "-1.7976931348623157e308", -32768, -2147483648,
        -9223372036854775808, "[]", "", "00:00:00", "1900-01-01 00:00:00", "1901-12-13 20:45:52+00",
        "00000000-0000-0000-0000-000000000000", "", "-0.000000000000000000000000000001", "sad",
        [], [], [], [], [], [], [], [],
    ),
    (
        "special", True, b"", "infinity", "NaN", "Infinity", 0, 0, 0, '{"": ""}', " ", "12:00:00", "-infinity",
        "infinity", "01234567-89ab-cdef-0123-456789abcdef", " ", "NaN", "happy",
        [None], [None], [None], [[None]], [None], [None], [None], [None],
    ),
    (
        "tiny", False, bytes(range(256)), "-infinity", "-Infinity", "-Infinity", 1, -1, 1, "0.1", "\t",
        "00:00:00.000001", "1969-12-31 23:59:59.999999", "1969-12-31 23:59:59.999999+00",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "x", "0.1", "sad",
        [0], ["\U0001f600"], [0.30000000000000004, -0.0], [[7]], [False], [b"\x00"], ["0"], ["1969-12-31 23:59:59.999999+00"],
    ),
    ("nulls", *([None] * len(COLUMNS))),
]  # fmt: skip


def setup_table(env: Env) -> None:
    names = ", ".join(f"{c} {t}" for c, t in COLUMNS.items())
    env.sql(f"CREATE TYPE mood AS ENUM ('happy', 'sad'); CREATE TABLE typed (id text PRIMARY KEY, {names})")
    marks = ", ".join(["%s"] * (len(COLUMNS) + 1))
    with __import__("psycopg").connect(env.url, autocommit=True) as conn:
        conn.cursor().executemany(f"INSERT INTO typed VALUES ({marks})", ROWS)
    text = CONFIG.replace(
        "tables: [items, other, big, parents, children]", "tables: [items, other, big, parents, children, typed]"
    )
    applier.apply(load_text(text, str(env.config_path), env={}), env.url)


def copy_statement(prefix: str) -> str:
    names = ", ".join(f'"{c}"' for c in COLUMNS)
    return f"INSERT INTO typed (id, {names}) SELECT '{prefix}' || id, {names} FROM typed WHERE id NOT LIKE 'copy%'"


def mismatches(env: Env, prefix: str) -> list[tuple[object, ...]]:
    """(row, column, original, copy) for every value that did not come back exactly."""
    checks = " UNION ALL ".join(
        f"SELECT a.id, '{c}', a.{c}::text, b.{c}::text FROM typed a JOIN typed b ON b.id = '{prefix}' || a.id"
        f" WHERE a.{c} IS DISTINCT FROM b.{c}"
        for c in COLUMNS
    )
    missing = f"SELECT a.id, '(row)', NULL, NULL FROM typed a WHERE a.id NOT LIKE 'copy%' AND NOT EXISTS (SELECT 1 FROM typed b WHERE b.id = '{prefix}' || a.id)"
    return env.sql(f"{checks} UNION ALL {missing} ORDER BY 1, 2")


async def until(predicate, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"{what} not met in {timeout}s"
        await asyncio.sleep(0.05)


async def test_every_type_round_trips_exactly_through_the_python_client(
    server: Server, env: Env, tmp_path: Path
) -> None:
    await asyncio.to_thread(setup_table, env)
    path = tmp_path / "typed.db"
    cl = SyncClient(str(path), ws_url(server), env.token())
    await cl.start()
    try:
        await cl.synced(await cl.subscribe("typed"))
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            # arrays are JSON on the client
            held = conn.execute("SELECT ai, a2, af FROM typed WHERE id = 'hi'").fetchone()
            assert held == (
                "[9223372036854775807, null, -9223372036854775808]",
                "[[1, 2], [3, null]]",
                '["NaN", "Infinity", "-Infinity", 1.7976931348623157e+308, 5e-324]',
            )
            conn.execute(copy_statement("copy-py-"))
        finally:
            conn.close()
        cl.notify()
        await cl.flush(timeout=30)
        assert not (found := mismatches(env, "copy-py-")), found
    finally:
        await cl.stop()


async def test_every_type_round_trips_exactly_through_the_npm_client(
    server: Server, env: Env, drivers: list[Driver]
) -> None:
    await asyncio.to_thread(setup_table, env)
    base = ws_url(server).replace("ws://", "http://").removesuffix("/ws")
    d = await asyncio.to_thread(Driver, base, env.token())
    drivers.append(d)
    await asyncio.to_thread(d.call, "subscribe", table="typed")
    held = await asyncio.to_thread(d.call, "query", sql="SELECT at FROM typed WHERE id = 'hi'")
    assert held["rows"] == [{"at": '["a b", "q\\"uote", "back\\\\slash", "", null, "NULL", "{}", "\u00e9,"]'}]
    await asyncio.to_thread(d.call, "exec", sql=copy_statement("copy-npm-"))

    async def acknowledged() -> bool:
        return (await asyncio.to_thread(d.call, "oplog"))["n"] == 0

    await until(acknowledged, "the npm client's copies acknowledged")
    assert not (found := mismatches(env, "copy-npm-")), found
