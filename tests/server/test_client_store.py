"""Per-client state on disk: saves are serialised, survive a cancelled caller, and read back."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from electricctl._server.clients import ClientState, ClientStore, SubscriptionRecord
from tests.faults import tmpfs

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
    await store.drain()  # the cancelled caller's save still runs to the end
    loaded = store.load("client-1")
    assert loaded.acked_lsn == 99 and loaded.subscriptions["s"].delivered_lsn == 5
    assert not list(tmp_path.glob("*.tmp"))


async def test_a_cancelled_older_save_never_lands_after_a_newer_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller of the older save is cancelled while its thread is still writing; a newer save
    then runs. The newer state must be the one left on disk."""
    store = ClientStore(tmp_path)
    real_save = store.save
    slow_once = [True]
    older_done = threading.Event()
    older_started = threading.Event()

    def save(state: ClientState) -> None:
        if slow_once[0]:
            slow_once[0] = False
            older_started.set()
            time.sleep(0.3)  # a slow disk, in the worker thread: the caller is cancelled meanwhile
            real_save(state)
            older_done.set()
            return
        real_save(state)

    monkeypatch.setattr(store, "save", save)
    state = ClientState("client-1", {}, 1)
    older = asyncio.ensure_future(store.save_async(state))
    assert await asyncio.to_thread(older_started.wait, 10)  # its thread is writing
    older.cancel()
    state.acked_lsn = 2
    await store.save_async(state)
    assert await asyncio.to_thread(older_done.wait, 10)
    assert store.load("client-1").acked_lsn == 2


async def test_a_full_disk_keeps_client_state_and_reports_it(tmp_path: Path) -> None:
    with tmpfs(tmp_path, "64k") as fs:
        store = ClientStore(fs.path)
        state = ClientState("client-1", {}, 1)
        await store.save_async(state)
        ballast = fs.fill()
        state.acked_lsn = 7
        state.subscriptions["s"] = SubscriptionRecord("s", [{"request_id": "r", "table": "public.t"}], 6)
        await store.save_async(state)  # does not raise: the state waits in memory
        assert store.error is not None and "No space left on device" in store.error
        assert store.load("client-1").acked_lsn == 7  # a reconnecting client gets the newest state
        assert ClientStore(fs.path).load("client-1").acked_lsn == 1  # on disk: the last one that fit
        await store.retry_failed()
        assert store.error is not None
        ballast.unlink()
        await store.retry_failed()
        assert store.error is None
        on_disk = ClientStore(fs.path).load("client-1")
        assert on_disk.acked_lsn == 7 and "s" in on_disk.subscriptions
        assert not list(fs.path.glob("*.tmp"))


async def test_a_state_being_saved_is_what_the_next_connection_reads(tmp_path: Path) -> None:
    """A client that reconnects while its last connection's state is still being written resumes
    from that state, not the older one on disk (its include trees' rows are in it)."""
    store = ClientStore(tmp_path)
    state = ClientState("client-1", {}, 1, {"public.t": {(b"k1",)}})
    await store.save_async(state)
    state.acked_lsn = 7
    state.tree_rows["public.t"].add((b"k2", None))
    saving = asyncio.ensure_future(store.save_async(state))
    await asyncio.sleep(0)  # the save has started, and not written anything yet
    loaded = store.load("client-1")
    assert loaded.acked_lsn == 7 and loaded.tree_rows == {"public.t": {(b"k1",), (b"k2", None)}}
    await saving
    again = ClientStore(tmp_path).load("client-1")
    assert again.acked_lsn == 7 and again.tree_rows == {"public.t": {(b"k1",), (b"k2", None)}}


async def test_tree_keys_are_written_only_when_they_change_and_appended_durably(tmp_path: Path) -> None:
    store = ClientStore(tmp_path)
    state = ClientState("client-1", {}, 1, {"public.t": {(b"k1",)}})
    await store.save_async(state)
    (trees,) = tmp_path.glob("*.trees.json")
    written = trees.stat().st_mtime_ns
    state.acked_lsn = 2  # an ack: the state is saved again, the tree keys are the same
    await store.save_async(state)
    assert trees.stat().st_mtime_ns == written and store.load("client-1").acked_lsn == 2
    # keys about to be sent are appended to the key log, durably, with no save of the state
    state.tree_rows["public.t"].add((b"k2", None))
    await store.append_tree_keys("client-1", state.tree_epoch, {"public.t": {(b"k2", None)}})
    assert ClientStore(tmp_path).load("client-1").tree_rows == {"public.t": {(b"k1",), (b"k2", None)}}
    # the next save writes them whole and the log they were appended to goes
    await store.save_async(state)
    assert not list(tmp_path.glob("*.trees.*.log"))
    again = ClientStore(tmp_path).load("client-1")
    assert again.tree_rows == {"public.t": {(b"k1",), (b"k2", None)}}
