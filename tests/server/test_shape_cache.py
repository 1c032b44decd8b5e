"""Caching of the HTTP Shape API behind a shared cache that follows RFC 9111 (tests/http_cache.py):
rows are never served to another user than the one they were read for."""

from __future__ import annotations

import asyncio
import json

from electricctl._server.app import Server
from tests.http_cache import SharedCache
from tests.server_fixtures import Env


async def test_a_shape_every_user_shares_is_cached_per_token_never_across(server: Server, env: Env) -> None:
    cache = SharedCache()
    url = f"http://127.0.0.1:{server.bound_port}/v1/shape?table=items&offset=-1"
    one, two = env.token("user-1"), env.token("user-2")
    status, headers, body, hit = await asyncio.to_thread(cache.get, url, {"Authorization": f"Bearer {one}"})
    assert status == 200 and not hit
    assert headers["cache-control"].startswith("public") and "Authorization" in headers["vary"]
    # the same token again: served by the cache (it may cache this shape)
    assert (await asyncio.to_thread(cache.get, url, {"Authorization": f"Bearer {one}"}))[3] is True
    # another token, or none: the cache goes to serve, which checks it
    _, _, _, hit = await asyncio.to_thread(cache.get, url, {"Authorization": f"Bearer {two}"})
    assert hit is False
    status, _, _, hit = await asyncio.to_thread(cache.get, url, {})
    assert status == 401 and hit is False
    assert json.loads(body)[0]["value"]["id"] == "a"
