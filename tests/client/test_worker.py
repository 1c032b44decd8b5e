"""The client's store thread: queued calls in order on one thread, and the poller it runs by itself."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from electricctl.client.worker import StoreThread


async def test_calls_run_in_order_on_one_thread_and_raise_to_the_caller() -> None:
    thread = StoreThread()
    try:
        seen: list[tuple[int, str]] = []
        await asyncio.gather(
            *(thread.call(lambda i=i: seen.append((i, threading.current_thread().name))) for i in range(50))
        )
        assert [i for i, _ in seen] == list(range(50))
        assert {name for _, name in seen} == {"electricctl-sqlite"}
        with pytest.raises(ZeroDivisionError):
            await thread.call(lambda: 1 // 0)
        assert await thread.call(int, "7") == 7  # still serving after a failed call
    finally:
        thread.shutdown()


async def test_the_poller_runs_between_calls_until_it_is_cleared() -> None:
    thread = StoreThread()
    ticks: list[float] = []
    try:
        thread.poll_with(lambda: ticks.append(time.monotonic()), 0.01)
        await asyncio.sleep(0.3)
        assert len(ticks) >= 5, ticks
        assert all(b - a >= 0.009 for a, b in itertools.pairwise(ticks))  # no busy loop
        # a steady stream of calls does not starve the poller
        before = len(ticks)
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            await thread.call(time.sleep, 0.002)
        assert len(ticks) > before + 3
        thread.poll_with(None)
        await thread.call(int)  # the thread has seen the change once it runs a later call
        stopped = len(ticks)
        await asyncio.sleep(0.1)
        assert len(ticks) == stopped
    finally:
        thread.shutdown()


async def test_a_failing_poller_is_tried_again() -> None:
    thread = StoreThread()
    calls: list[int] = []

    def poller() -> None:
        calls.append(1)
        raise OSError("disk busy")

    try:
        thread.poll_with(poller, 0.01)
        await asyncio.sleep(0.15)
        assert len(calls) >= 3
        assert await thread.call(int, "1") == 1
    finally:
        thread.shutdown()


async def test_shutdown_runs_the_calls_already_queued() -> None:
    thread = StoreThread()
    done: list[int] = []
    futures = [thread.submit(lambda i=i: done.append(i)) for i in range(10)]
    thread.shutdown()
    for f in futures:
        f.result(timeout=5)
    assert done == list(range(10))
    thread._thread.join(timeout=5)
    assert not thread._thread.is_alive()
