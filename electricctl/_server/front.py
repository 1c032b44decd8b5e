"""One port, two protocols: the Satellite WebSocket at ``/ws`` and plain HTTP/1.1 beside it
(``/health``, ``/metrics``, ``/api/migrations``, Electric's HTTP Shape API ``/v1/shape`` and our
``/v1/transactions``).

websockets' own HTTP parser takes only GET (a WebSocket handshake is one), so the listening socket
is ours: each new connection is read until the end of its request head. A WebSocket upgrade is
handed, transport and bytes, to websockets (its ``ServerProtocol`` and ``ServerConnection``, and
the handler of the :class:`websockets.asyncio.server.Server` that ``serve`` made, with the same
``process_request`` checks as before); anything else is served here with h11, keep-alive included.
The handoff happens once per connection, before any frame: the WebSocket path costs nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import h11
from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

log = logging.getLogger("electricctl.server")

MAX_HEAD = 64 << 10
"""Bytes a request head may take (the request line and headers)."""
HEAD_TIMEOUT = 10.0
"""Seconds a new connection has to send its request head."""
IDLE_TIMEOUT = 75.0
"""Seconds a kept-alive HTTP connection may sit between requests."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: dict[str, str]
    """Lower-case names; repeated headers joined with ", "."""
    body: bytes
    peer: str

    def param(self, name: str) -> str | None:
        """The first value of query parameter ``name`` (None if absent)."""
        for k, v in self.query:
            if k == name:
                return v
        return None


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


App = Callable[[HttpRequest], Awaitable[HttpResponse]]


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """What websockets' ``serve`` would give each connection it made itself."""

    select_subprotocol: Callable[[ServerConnection, Sequence[Subprotocol]], Subprotocol | None]
    max_size: int
    max_queue: int
    ping_interval: float
    ping_timeout: float


class Front:
    """The protocol factory of the listening socket, and the HTTP connections it serves."""

    def __init__(
        self, app: App, ws: WsServer, settings: WebSocketSettings, *, max_body: int, max_http_per_peer: int
    ) -> None:
        self.app = app
        self.ws = ws
        self.settings = settings
        self.max_body = max_body
        self.max_http_per_peer = max_http_per_peer
        self.http: set[_HttpConnection] = set()
        self._per_peer: dict[str, int] = {}

    def protocol(self) -> asyncio.Protocol:
        return _Sniff(self)

    def close_idle(self) -> None:
        """Close kept-alive HTTP connections that wait for a request (a graceful stop)."""
        for conn in list(self.http):
            conn.close_when_idle()

    def abort_http(self) -> None:
        for conn in list(self.http):
            conn.abort()

    # -- the handoff -------------------------------------------------------------------------
    def to_websocket(self, transport: asyncio.Transport, data: bytes) -> None:
        settings = self.settings
        holder: list[ServerConnection] = []

        def select(protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
            return settings.select_subprotocol(holder[0], offered)

        protocol = ServerProtocol(select_subprotocol=select, max_size=settings.max_size, logger=self.ws.logger)
        conn = ServerConnection(
            protocol,
            self.ws,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            max_queue=settings.max_queue,
        )
        holder.append(conn)
        transport.set_protocol(conn)
        conn.connection_made(transport)  # starts websockets' handler: handshake, process_request, ours
        conn.data_received(data)

    def to_http(self, transport: asyncio.Transport, data: bytes, peer: str) -> None:
        if self._per_peer.get(peer, 0) >= self.max_http_per_peer:
            transport.write(_plain(429, f"too many HTTP connections from {peer}; retry later\n"))
            transport.close()
            return
        conn = _HttpConnection(self, peer)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        conn.data_received(data)

    def opened(self, conn: _HttpConnection) -> None:
        self.http.add(conn)
        self._per_peer[conn.peer] = self._per_peer.get(conn.peer, 0) + 1

    def closed(self, conn: _HttpConnection) -> None:
        if conn in self.http:
            self.http.discard(conn)
            left = self._per_peer.get(conn.peer, 1) - 1
            if left <= 0:
                self._per_peer.pop(conn.peer, None)
            else:
                self._per_peer[conn.peer] = left


def _is_websocket(head: bytes) -> bool:
    """A request head that asks for a WebSocket (``Upgrade: websocket``)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


def _plain(status: int, text: str) -> bytes:
    body = text.encode()
    reason = {400: "Bad Request", 408: "Request Timeout", 429: "Too Many Requests", 431: "Headers Too Large"}
    return (
        f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class _Sniff(asyncio.Protocol):
    """A new connection, until its request head says which protocol it speaks."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_plain(408, "no request head in time\n"))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._done()
                self.transport.write(_plain(431, "request head too large\n"))
                self.transport.close()
            return
        self._done()
        data, transport = bytes(self.buffer), self.transport
        self.buffer = bytearray()
        if _is_websocket(data[:end]):
            self.front.to_websocket(transport, data)
        else:
            peer = transport.get_extra_info("peername")
            self.front.to_http(transport, data, str(peer[0]) if peer else "?")

    def _done(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()


class _HttpConnection(asyncio.Protocol):
    """HTTP/1.1 on one connection (h11), one request at a time, kept alive."""

    def __init__(self, front: Front, peer: str) -> None:
        self.front = front
        self.peer = peer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._closing_when_idle = False

    # -- asyncio -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.front.opened(self)
        self._arm(HEAD_TIMEOUT)

    def data_received(self, data: bytes) -> None:
        try:
            self.h11.receive_data(data)
        except h11.RemoteProtocolError:
            self._refuse(400, "malformed request\n")
            return
        self._drive()

    def eof_received(self) -> bool | None:
        with contextlib.suppress(h11.RemoteProtocolError):
            self.h11.receive_data(b"")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.front.closed(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client left: a long poll stops waiting
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- requests ----------------------------------------------------------------------------
    def _drive(self) -> None:
        while self.task is None and self.transport is not None and not self.transport.is_closing():
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(exc.error_status_hint, f"malformed request: {exc}\n")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._disarm()
                self.request = event
                self.body = bytearray()
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > self.front.max_body:
                    self._refuse(413, f"request body over {self.front.max_body} bytes\n")
                    return
            elif isinstance(event, h11.EndOfMessage):
                assert self.request is not None
                self.task = asyncio.get_running_loop().create_task(self._serve(self.request, bytes(self.body)))
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return

    async def _serve(self, req: h11.Request, body: bytes) -> None:
        target = req.target.decode("latin-1")
        path, _, query = target.partition("?")
        headers: dict[str, str] = {}
        for name, value in req.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        request = HttpRequest(
            req.method.decode("ascii"),
            urllib.parse.unquote(path),
            tuple(urllib.parse.parse_qsl(query, keep_blank_values=True)),
            headers,
            body,
            self.peer,
        )
        try:
            response = await self.front.app(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            response = HttpResponse(500, b'{"message":"internal error"}', [("content-type", "application/json")])
        await self._send(response, head_only=request.method == "HEAD")
        self.task = None
        if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE or self._closing_when_idle:
            if self.transport is not None:
                self.transport.close()
            return
        try:
            self.h11.start_next_cycle()
        except h11.LocalProtocolError:
            if self.transport is not None:
                self.transport.close()
            return
        self._arm(IDLE_TIMEOUT)
        self._drive()  # a pipelined request may be waiting

    async def _send(self, response: HttpResponse, head_only: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        headers = [(k, v) for k, v in response.headers if k.lower() != "content-length"]
        headers.append(("content-length", str(len(response.body))))
        if self._closing_when_idle:
            headers.append(("connection", "close"))
        out = self.h11.send(h11.Response(status_code=response.status, headers=headers))
        if not head_only and response.body:
            out = (out or b"") + (self.h11.send(h11.Data(data=response.body)) or b"")
        out = (out or b"") + (self.h11.send(h11.EndOfMessage()) or b"")
        transport.write(out)
        await self._writable.wait()

    def _refuse(self, status: int, text: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_plain(status, text))
            self.transport.close()

    # -- timers and closing --------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._idle)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _idle(self) -> None:
        if self.task is None and self.transport is not None:
            self.transport.close()

    def close_when_idle(self) -> None:
        self._closing_when_idle = True
        if self.task is None and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def cors(request: HttpRequest, *, expose: str, methods: str = "GET, POST, OPTIONS, HEAD") -> list[tuple[str, str]]:
    """CORS headers for a response to ``request``: the origin echoed (else ``*``)."""
    origin = request.headers.get("origin")
    out = [
        ("access-control-allow-origin", origin or "*"),
        ("access-control-expose-headers", expose),
        ("access-control-allow-methods", methods),
    ]
    if origin:
        out.append(("vary", "Origin"))
    return out


def json_response(status: int, body: Any, headers: Sequence[tuple[str, str]] = ()) -> HttpResponse:
    import json

    return HttpResponse(
        status,
        json.dumps(body, separators=(",", ":")).encode(),
        [("content-type", "application/json"), *headers],
    )
