"""The HTTP Shape API on the wire: Electric's offsets, headers and control messages, long polls, 409s,
CORS, etags, and bad input answered with Electric's status codes and a JSON error body."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from electricctl._server.app import Server
from tests.server_fixtures import Env, running_server

Reply = tuple[int, dict[str, str], Any]


def request(
    url: str, token: str | None, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None
) -> Reply:
    h = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    req = urllib.request.Request(url, headers=h, method=method, data=body)
    try:
        with urllib.request.urlopen(req, timeout=40) as r:
            raw = r.read()
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(raw) if raw else None


async def get(server: Server, env: Env, token: str | None = "default", **params: str) -> Reply:
    url = f"http://127.0.0.1:{server.bound_port}/v1/shape?{urllib.parse.urlencode(params)}"
    return await asyncio.to_thread(request, url, env.token() if token == "default" else token)


async def test_offsets_headers_and_control_messages(server: Server, env: Env) -> None:
    status, h, body = await get(server, env, table="items", offset="-1")
    assert status == 200
    # the snapshot alone, ended by snapshot-end (Electric's -1 response: cacheable for long)
    assert [m["value"]["id"] for m in body if "key" in m] == ["a", "b"]
    assert body[-1]["headers"]["control"] == "snapshot-end" and "xmin" in body[-1]["headers"]
    assert h["electric-offset"] == "0_inf" and "electric-up-to-date" not in h
    assert json.loads(h["electric-schema"])["id"] == {"type": "text", "pk_index": 0, "not_null": True}
    assert "electric-handle" in h["access-control-expose-headers"]
    handle = h["electric-handle"]
    # then the log, up to date
    status, h, body = await get(server, env, table="items", offset="0_inf", handle=handle)
    assert status == 200 and body[-1]["headers"]["control"] == "up-to-date" and "electric-up-to-date" in h
    assert body[-1]["headers"]["global_last_seen_lsn"].isdigit()
    # etag: the same request again with If-None-Match is a 304
    url = f"http://127.0.0.1:{server.bound_port}/v1/shape?table=items&offset=0_inf&handle={handle}"
    status, _, _ = await asyncio.to_thread(request, url, env.token(), headers={"If-None-Match": h["etag"]})
    assert status == 304
    # live: a change ends the long poll; lsn and txids are JSON as the clients need them
    env.sql("UPDATE items SET n = 7 WHERE id = 'a'")
    status, h, body = await get(server, env, table="items", offset="0_inf", handle=handle, live="true", cursor="")
    change = body[0]
    assert change["headers"]["operation"] == "update" and change["value"] == {"id": "a", "n": "7"}
    assert change["headers"]["lsn"].isdigit() and isinstance(change["headers"]["txids"][0], int)
    assert h["electric-offset"] == f"{change['headers']['lsn']}_0" and h["electric-cursor"].isdigit()
    assert "electric-schema" not in h
    # now: no history, the current end
    status, h, body = await get(server, env, table="items", offset="now")
    assert status == 200 and [m["headers"]["control"] for m in body] == ["up-to-date"]
    assert h["electric-offset"] == f"{change['headers']['lsn']}_0"
    # a handle that is not the shape's current one: 409, with the current one
    status, h, body = await get(server, env, table="items", offset="0_inf", handle="123-456")
    assert status == 409 and body == [{"headers": {"control": "must-refetch"}}] and h["electric-handle"] == handle


async def test_a_live_request_waits_then_answers_up_to_date(env: Env) -> None:
    async with running_server(env, long_poll_seconds=1.0) as server:
        _, h, _ = await get(server, env, table="items", offset="-1")
        loop = asyncio.get_running_loop()
        began = loop.time()
        status, h2, body = await get(
            server, env, table="items", offset="0_inf", handle=h["electric-handle"], live="true"
        )
        assert status == 200 and body[-1]["headers"]["control"] == "up-to-date"
        assert 0.9 < loop.time() - began < 5 and h2["electric-offset"] == "0_inf"


async def test_a_declared_shape_by_name_and_cors(server: Server, env: Env) -> None:
    status, h, body = await get(server, env, table="positive_items", offset="-1")
    assert status == 200 and [m["value"]["id"] for m in body if "key" in m] == ["a"]
    url = f"http://127.0.0.1:{server.bound_port}/v1/shape?table=items&offset=-1"
    status, h, _ = await asyncio.to_thread(
        request, url, None, method="OPTIONS", headers={"Origin": "https://app.example"}
    )
    assert status == 204 and h["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in h["access-control-allow-headers"]


@pytest.mark.parametrize(
    ("params", "field", "text"),
    [
        ({"offset": "-1"}, "table", "can't be blank"),
        ({"table": "items"}, "offset", "can't be blank"),
        ({"table": "items", "offset": "12"}, "offset", "invalid format"),
        ({"table": "items", "offset": "1_x"}, "offset", "invalid format"),
        ({"table": "items", "offset": "0_0"}, "handle", "can't be blank"),
        ({"table": "items", "offset": "-1", "live": "true"}, "live", "can't be true"),
        ({"table": "nosuch", "offset": "-1"}, "table", "table not found"),
        ({"table": "items", "offset": "-1", "replica": "half"}, "replica", "must be one of"),
        ({"table": "items", "offset": "-1", "where": "n > (SELECT 1)"}, "where", "subqueries are not allowed"),
        ({"table": "items", "offset": "-1", "where": "n > $1"}, "where", "params[1]"),
        ({"table": "items", "offset": "-1", "where": "nosuch = 1"}, "where", "nosuch"),
        ({"table": "items", "offset": "-1", "columns": "n"}, "columns", "primary key"),
        ({"table": "items", "offset": "-1", "columns": "id,nope"}, "columns", "unknown column"),
    ],
)
async def test_bad_input_gets_400_with_the_field(
    server: Server, env: Env, params: dict[str, str], field: str, text: str
) -> None:
    status, h, body = await get(server, env, **params)
    assert status == 400, body
    assert body["message"] == "Invalid request" and text in body["errors"][field][0], body
    assert h["cache-control"] == "no-store"


async def test_auth_and_methods(server: Server, env: Env) -> None:
    status, h, body = await get(server, env, token=None, table="items", offset="-1")
    assert status == 401 and "Bearer" in body["message"] and "www-authenticate" in h
    status, _, body = await get(server, env, token="not-a-jwt", table="items", offset="-1")
    assert status == 401 and "invalid token" in body["message"]
    url = f"http://127.0.0.1:{server.bound_port}/v1/transactions"
    for payload, text in (
        (b"not json", "not JSON"),
        (b'{"mutations": []}', "at least one mutation"),
        (b'{"mutations": [{"type": "upsert", "table": "items"}]}', "type must be one of"),
        (b'{"mutations": [{"type": "insert", "table": "nosuch", "modified": {}}]}', "not an electrified table"),
        (b'{"mutations": [{"type": "insert", "table": "items", "modified": {"id": "x", "zz": 1}}]}', "no column 'zz'"),
        (b'{"mutations": [{"type": "insert", "table": "items", "modified": {"n": 1}}]}', "primary key column id"),
        (b'{"mutations": [{"type": "update", "table": "items", "modified": {"id": "a", "n": 1}}]}', "needs original"),
    ):
        status, _, body = await asyncio.to_thread(
            request, url, env.token(), method="POST", body=payload, headers={"Content-Type": "application/json"}
        )
        assert status == 400 and text in body["message"], (payload, body)
    status, _, _ = await asyncio.to_thread(request, url, env.token())
    assert status == 405
