"""Per-client state on disk: saves are serialised, survive a cancelled caller, and read back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from electricctl._server.clients import ClientState, ClientStore, SubscriptionRecord

pytestmark = pytest.mark.asyncio


async def test_concurrent_and_cancelled_saves_never_collide(tmp_path: Path) -> None:
    store = ClientStore(tmp_path)
    state = ClientState("client-1", {"s": SubscriptionRecord("s", [{"request_id": "r", "table": "public.t"}], 5)}, 1)
    tasks = [asyncio.ensure_future(store.save_async(state)) for _ in range(20)]
    tasks[0].cancel()  # a connection torn down mid-save, as at server shutdown
    state.acked_lsn = 99
    await store.save_async(state)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results), results
    await asyncio.sleep(0.1)
    loaded = store.load("client-1")
    assert loaded.acked_lsn == 99 and loaded.subscriptions["s"].delivered_lsn == 5
    assert not list(tmp_path.glob("*.tmp"))
