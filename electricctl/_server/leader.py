"""Which ``serve`` instance reads the replication slot, when several share a JetStream log.

A lease in a JetStream key-value bucket (``electricctl_<STREAM>_lease``, key ``leader``) whose entries
expire ``ttl`` seconds after they were written (the bucket's ``max_age``):

- **acquire**: ``create`` the key, which only succeeds when nobody holds it; its revision is the
  leader's *epoch*, written into every message it appends;
- **keep**: ``update`` it with the revision last written, every ``ttl / 3``: if that fails (another
  instance holds it now, or NATS cannot be reached for longer than the lease) the leader stops
  reading the slot at once;
- **release**: on a graceful stop, delete it, so another instance takes over within its poll
  interval rather than after the lease expired.

The lease decides who should write; the stream itself fences: every append names the sequence it
expects to follow (``Nats-Expected-Last-Sequence``), so a leader that was paused past its lease
and wakes up cannot append after its successor did (see :mod:`electricctl._log.jetstream`).

Instances also register in ``electricctl_<STREAM>_instances`` (entries expire after ``3 * ttl``)
so that ``status`` and ``/health`` can list them, the leader and each one's clients and lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

log = logging.getLogger("electricctl.server")

KEY = "leader"


async def _bucket(js: JetStreamContext, name: str, ttl: float, replicas: int) -> KeyValue:
    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(bucket=name, history=1, ttl=ttl, replicas=replicas)


class LeaderLease:
    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        instance: dict[str, Any],
        ttl: float,
        replicas: int,
        servers: Sequence[str],
    ) -> None:
        self.js = js
        self.servers = tuple(servers)
        self.stream = stream
        self.instance = instance
        self.ttl = ttl
        self.replicas = replicas
        self.kv: KeyValue | None = None
        self.revision = 0

    async def _kv(self) -> KeyValue:
        if self.kv is None:
            self.kv = await _bucket(self.js, f"electricctl_{self.stream}_lease", self.ttl, self.replicas)
        return self.kv

    def _value(self) -> bytes:
        return json.dumps({**self.instance, "at": time.time()}).encode()

    async def try_acquire(self) -> int | None:
        """The epoch, when this instance now holds the lease; None when another one does."""
        kv = await self._kv()
        try:
            self.revision = await kv.create(KEY, self._value())
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
            return None
        return self.revision

    async def keep(self, lost: asyncio.Event) -> None:
        """Renew the lease until cancelled; set ``lost`` (and return) when it cannot be.

        The renewals run in a thread of their own, on a NATS connection of their own: a burst of
        work on serve's event loop (thousands of clients disconnecting at once, say) must not let
        the lease lapse while the leader is merely busy. The thread still watches the event loop:
        one that has not turned for ``hung_after`` seconds is taken to be stuck, and the lease is
        let go so that another instance takes over."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        beat = [time.monotonic()]

        async def heartbeat() -> None:
            while True:
                beat[0] = time.monotonic()
                await asyncio.sleep(0.25)

        def signal_lost() -> None:
            loop.call_soon_threadsafe(lost.set)

        beating = asyncio.create_task(heartbeat())
        try:
            await asyncio.to_thread(asyncio.run, self._renew(stop, beat, signal_lost))
        finally:
            stop.set()
            beating.cancel()

    async def _renew(self, stop: threading.Event, beat: list[float], signal_lost: Callable[[], None]) -> None:
        """(In the keeper's thread.) Renew every ``ttl / 3`` until ``stop``."""
        hung_after = max(30.0, self.ttl * 5)

        async def quiet(exc: Exception) -> None:  # nats-py logs each error with a traceback otherwise
            log.debug("the lease's NATS connection: %s", exc)

        try:
            nc = await asyncio.wait_for(
                nats.connect(
                    servers=list(self.servers),
                    name="electricctl lease",
                    connect_timeout=2,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.2,
                    error_cb=quiet,
                ),
                self.ttl * 2 / 3,
            )
        except Exception as exc:
            log.error("cannot reach NATS to keep the leader lease (%s): this one stops reading the slot", exc)
            signal_lost()
            return
        try:
            kv = await nc.jetstream(timeout=self.ttl / 3).key_value(f"electricctl_{self.stream}_lease")
            last_ok = time.monotonic()
            while not stop.is_set():
                deadline = time.monotonic() + self.ttl / 3
                while not stop.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                if stop.is_set():
                    return
                if time.monotonic() - beat[0] > hung_after:
                    log.error("serve's event loop has not turned for %.0fs: letting the leader lease go", hung_after)
                    signal_lost()
                    return
                try:
                    self.revision = await asyncio.wait_for(
                        kv.update(KEY, self._value(), last=self.revision), self.ttl / 3
                    )
                    last_ok = time.monotonic()
                except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
                    log.error("the leader lease was taken by another instance: this one stops reading the slot")
                    signal_lost()
                    return
                except (nats.errors.Error, TimeoutError, OSError) as exc:
                    # NATS unreachable: keep trying while the lease may still be ours, then give up (it
                    # expires for everyone else at the same time)
                    if time.monotonic() - last_ok > self.ttl * 2 / 3:
                        log.error(
                            "the leader lease could not be renewed (%s): this one stops reading the slot",
                            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                        )
                        signal_lost()
                        return
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    async def release(self) -> None:
        if self.revision == 0:
            return
        kv = await self._kv()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(kv.delete(KEY, last=self.revision), 5)
        self.revision = 0


class Registry:
    """Each instance's status, under its id, expiring unless refreshed."""

    def __init__(self, js: JetStreamContext, stream: str, ttl: float, replicas: int) -> None:
        self.js = js
        self.name = f"electricctl_{stream}_instances"
        self.ttl = ttl
        self.replicas = replicas
        self.kv: KeyValue | None = None

    async def _kv(self) -> KeyValue:
        if self.kv is None:
            self.kv = await _bucket(self.js, self.name, self.ttl, self.replicas)
        return self.kv

    async def put(self, instance_id: str, doc: dict[str, Any]) -> None:
        kv = await self._kv()
        await kv.put(instance_id, json.dumps({**doc, "at": time.time()}).encode())

    async def remove(self, instance_id: str) -> None:
        kv = await self._kv()
        with contextlib.suppress(Exception):
            await kv.purge(instance_id)

    async def all(self) -> list[dict[str, Any]]:
        return await _entries(await self._kv())


async def _entries(kv: KeyValue) -> list[dict[str, Any]]:
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return []
    out = []
    for key in keys:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            entry = await kv.get(key)
            if entry.value:
                out.append(json.loads(entry.value))
    return sorted(out, key=lambda d: str(d.get("id")))


async def read_instances(js: JetStreamContext, stream: str) -> list[dict[str, Any]]:
    """Every registered instance of ``stream``'s log, as last announced (for ``status --log``:
    reads only, makes no bucket)."""
    try:
        kv = await js.key_value(f"electricctl_{stream}_instances")
    except nats.js.errors.BucketNotFoundError:
        return []
    return await _entries(kv)


async def read_leader(js: JetStreamContext, stream: str) -> dict[str, Any] | None:
    """The lease holder of ``stream``'s log with its epoch, or None (reads only)."""
    try:
        entry = await (await js.key_value(f"electricctl_{stream}_lease")).get(KEY)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
        return None
    if not entry.value:
        return None
    return {**json.loads(entry.value), "epoch": entry.revision}
