"""The door to the Satellite endpoint: plain HTTP answers (``/health``, ``/api/status``,
``/api/migrations``, ``/metrics``, 404s), the subprotocol
check, refusals while the server is not ready, and per-address limits on connections (pending
authentication and in all), all before a WebSocket is accepted."""

from __future__ import annotations

import collections
import http
import json
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from electricctl._model.migrations import Migration
from electricctl._server import migrations_api
from electricctl._server.front import HttpRequest, HttpResponse
from electricctl._server.metrics import CONTENT_TYPE
from electricctl._server.options import ServeOptions

SUPPORTED_PROTOCOLS = ((0, 10), (0, 12))
_SUBPROTOCOL = re.compile(r"^electric\.(\d+)\.(\d+)$")


def pick_subprotocol(offered: Sequence[str]) -> str | None:
    """The first offered ``electric.<major>.<minor>`` within the supported range, or None."""
    low, high = SUPPORTED_PROTOCOLS
    for proto in offered:
        m = _SUBPROTOCOL.match(proto.strip())
        if m and low <= (int(m.group(1)), int(m.group(2))) <= high:
            return proto.strip()
    return None


def response(status: int, body: str) -> Response:
    headers = Headers()
    headers["Content-Type"] = "application/json" if body.startswith("{") else "text/plain; charset=utf-8"
    data = body.encode()
    headers["Content-Length"] = str(len(data))
    return Response(status, http.HTTPStatus(status).phrase, headers, data)


class Gate:
    def __init__(
        self,
        options: ServeOptions,
        health: Callable[[], tuple[int, dict[str, Any]]],
        migrations: Callable[[str], Awaitable[list[Migration]]],
        metrics: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        self.options = options
        self.health = health
        self.migrations = migrations
        """The migrations after a version (``/api/migrations``); raises migrations_api.Unavailable."""
        self.metrics = metrics
        """The ``/metrics`` page (Prometheus text format)."""
        self._open: collections.Counter[str] = collections.Counter()
        self._pending: collections.Counter[str] = collections.Counter()
        """Per address: connections open, and those not authenticated yet."""

    # -- plain HTTP (see front.py) ---------------------------------------------------------------
    async def http(self, request: HttpRequest) -> HttpResponse | None:
        """The service's own pages; None for a path that is not one of them."""
        path = request.path
        if request.method not in ("GET", "HEAD"):
            if path in ("/health", "/api/status", "/api/migrations", "/metrics", "/ws"):
                return _as_http(response(405, f"{request.method} is not allowed on {path}\n"))
            return None
        if path in ("/health", "/api/status"):
            status, body = self.health()
            return _as_http(response(status, json.dumps(body)))
        if path == "/api/migrations":
            return _as_http(await self._migrations(urllib.parse.urlencode(request.query)))
        if path == "/metrics" and self.metrics is not None:
            data = await self.metrics()
            return HttpResponse(200, data, [("content-type", CONTENT_TYPE)])
        if path == "/ws":
            return _as_http(response(426, "the Satellite endpoint takes a WebSocket upgrade\n"))
        return None

    # -- websockets' hooks ---------------------------------------------------------------------
    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path != "/ws":
            return response(404, "not found: the Satellite endpoint is /ws\n")
        refused = self._refusal(str(connection.remote_address[0]) if connection.remote_address else "?")
        if refused is not None:
            return refused
        offered = [p.strip() for h in request.headers.get_all("Sec-WebSocket-Protocol") for p in h.split(",")]
        if not any(p.startswith("electric.") for p in offered):
            return response(400, "Missing satellite websocket subprotocol\n")
        if pick_subprotocol(offered) is None:
            return response(
                400, f"Cannot connect satellite version {', '.join(offered)}: this server speaks 0.10-0.12\n"
            )
        status, body = self.health()
        if status != 200:
            reasons = "; ".join(body["reasons"]) or "replication is not running"
            return response(503, f"the server is not ready: {reasons}\n")
        return None

    async def _migrations(self, query: str) -> Response:
        try:
            dialect, version = migrations_api.parse_query(query)
            data = migrations_api.migrations_zip(await self.migrations(version), dialect)
        except migrations_api.BadRequest as exc:
            return response(400, f"{exc}\n")
        except migrations_api.Unavailable as exc:
            return response(503, f"cannot read the migrations: {exc}\n")
        if data is None:
            return Response(204, "No Content", Headers(), b"")
        headers = Headers()
        headers["Content-Type"] = "application/zip"
        headers["Content-Disposition"] = 'attachment; filename="migrations.zip"'
        headers["Content-Length"] = str(len(data))
        return Response(200, "OK", headers, data)

    def select_subprotocol(
        self, connection: ServerConnection, subprotocols: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        picked = pick_subprotocol(subprotocols)
        return Subprotocol(picked) if picked else None

    # -- per-address counts --------------------------------------------------------------------
    def opened(self, host: str) -> None:
        self._open[host] += 1
        self._pending[host] += 1

    def pending(self, host: str) -> int:
        """Connections from ``host`` that have not authenticated yet."""
        return self._pending[host]

    def authenticated(self, host: str) -> None:
        _decrement(self._pending, host)

    def closed(self, host: str, authenticated: bool) -> None:
        _decrement(self._open, host)
        if not authenticated:
            _decrement(self._pending, host)

    def _refusal(self, host: str) -> Response | None:
        options = self.options
        if self._pending[host] >= options.max_pending_per_peer:
            return response(
                429,
                f"too many connections from {host} waiting to authenticate (at most {options.max_pending_per_peer});"
                " retry later\n",
            )
        if self._open[host] >= options.max_connections_per_peer:
            return response(
                429, f"too many connections from {host} (at most {options.max_connections_per_peer}); retry later\n"
            )
        return None


def _as_http(resp: Response) -> HttpResponse:
    return HttpResponse(
        resp.status_code,
        bytes(resp.body or b""),
        [(k, v) for k, v in resp.headers.raw_items() if k.lower() != "content-length"],
    )


def _decrement(counter: collections.Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
