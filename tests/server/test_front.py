"""The serve port's front: plain HTTP/1.1 (any method, keep-alive) beside the WebSocket upgrade."""

from __future__ import annotations

import asyncio
import json

from electricctl._server.app import Server
from tests.server_fixtures import ws_url


async def _exchange(port: int, raw: bytes, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1) if read_until_close else reader.read(65536), 15)
    writer.close()
    return data


async def test_keep_alive_methods_and_malformed_requests(server: Server) -> None:
    port = server.bound_port
    # two requests on one connection, answered in order; the second asks to close
    got = await _exchange(
        port,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    first, _, rest = got.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    length = int(
        next(line for line in first.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
    )
    assert json.loads(rest[:length])["ready"] is True
    assert rest[length:].startswith(b"HTTP/1.1 404")
    # a method websockets' own parser would refuse is answered, not dropped
    got = await _exchange(port, b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    assert got.startswith(b"HTTP/1.1 405")
    got = await _exchange(port, b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 426")
    assert (await _exchange(port, b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400")
    got = await _exchange(port, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n")
    assert got.startswith(b"HTTP/1.1 431")
    # and the WebSocket beside it (ws_url is the same port)
    assert ws_url(server).endswith(f":{port}/ws")
