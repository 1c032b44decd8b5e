"""The transaction log on NATS JetStream, so that several ``serve`` instances share one stream.

``serve --log nats://HOST:4222[/STREAM]`` selects it. One instance at a time (the leader, see
:mod:`electricctl._server.leader`) reads the replication slot and appends each committed transaction
to the stream; every instance, the leader included, follows the stream into a local mirror (a
:class:`~electricctl._log.filelog.FileLog` under ``<data-dir>/log``) and serves its clients from it.
Reads stay local and synchronous; the stream is the one durable, shared copy, so mirrors are not
fsynced (one that lost its tail to a power loss reads the stream again).

Layout, chosen deliberately (docs/scaling.md says why at more length):

- **One stream per deployment**, named ``STREAM`` (default ``electricctl``), with one subject,
  ``electricctl.<STREAM>.tx``: the log is totally ordered, so one subject and one sequence.
  File storage; ``--log-replicas`` (default 1; 3 on a NATS cluster) sets ``num_replicas``.
- **One message per transaction.** Its body is self-contained: the definitions of the relations it
  touches, then the transaction, in the file log's record format (:mod:`~electricctl._log.records`),
  so a reader may start at any message. Headers: ``Electric-Lsn`` (the commit LSN), ``Electric-Prev``
  (the LSN of the transaction before it in the stream: a reader that starts here knows exactly what
  it lacks), ``Electric-Epoch`` (the leader's lease revision) and ``Electric-Part: i/n``.
- **Deduplication**: ``Nats-Msg-Id`` is ``<lsn hex>.<part>``, so a transaction that Postgres sends
  again (the slot is confirmed only after JetStream acknowledged) is stored once inside the
  stream's duplicate window; past it, the writer skips every LSN at or below the stream's last one.
- **Fencing**: every append carries ``Nats-Expected-Last-Sequence``. A leader that was paused while
  another took over finds the stream moved on, its append is refused, and it steps down: it never
  appends after its successor.
- **Size limits**: a transaction whose body is larger than the server's ``max_payload`` less 8 KiB
  (so 1 MiB less 8 KiB on a default server) is split into parts of that size, published in order
  with ``Part: i/n`` and reassembled by readers; never dropped.
- **Retention**: the stream's ``max_age`` is ``--log-retention``; each mirror prunes by the same
  window. A client older than the oldest retained transaction gets ``BEHIND_WINDOW`` and resyncs.
- **Horizon**: persisted in the key-value bucket ``electricctl_<STREAM>`` (key ``horizon``), and a
  gap (a replication slot created again) travels in the stream itself as a message with
  ``Electric-Gap: <lsn>`` and no body, so every mirror applies it in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from electricctl._log import records
from electricctl._log.filelog import FileLog, approx_size
from electricctl._model.rows import RelationDef, Transaction
from electricctl.errors import ElectricError

log = logging.getLogger("electricctl.server")

T = TypeVar("T")

_HEADROOM = 8 << 10
"""Bytes of a message left for its headers and NATS' framing."""
_WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code for a failed ``Nats-Expected-Last-Sequence`` (the stream moved on)."""
_ACK_TIMEOUT = 10.0
_INLINE_BYTES = 256 << 10
"""Batches smaller than this go into the mirror on the event loop, larger ones in a worker thread."""


class LogUnavailable(ElectricError):
    """NATS or its JetStream stream cannot be reached or refused an append; nothing was confirmed
    to Postgres past what JetStream acknowledged, so the slot sends it again."""


class LeadershipLost(ElectricError):
    """Another instance appended to the stream: this one is no longer the leader and must stop
    reading the replication slot."""


@dataclass(frozen=True, slots=True)
class NatsTarget:
    """Where the log is: ``nats://HOST:PORT[/STREAM]`` (``tls://`` too; user:password@ allowed)."""

    servers: tuple[str, ...]
    stream: str

    @classmethod
    def parse(cls, url: str) -> NatsTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ValueError(f"--log {url!r}: expected nats://HOST:PORT[/STREAM]")
        stream = parts.path.strip("/") or "electricctl"
        if not all(c.isalnum() or c in "-_" for c in stream):
            raise ValueError(f"--log {url!r}: a stream name has letters, digits, - and _ only")
        netloc = parts.netloc
        return cls((f"{parts.scheme}://{netloc}",), stream)

    @property
    def subject(self) -> str:
        return f"electricctl.{self.stream}.tx"

    @property
    def bucket(self) -> str:
        return f"electricctl_{self.stream}"

    def redacted(self) -> str:
        server = self.servers[0]
        if "@" in server:
            scheme, rest = server.split("://", 1)
            server = f"{scheme}://***@{rest.split('@', 1)[1]}"
        return f"{server}/{self.stream}"


def encode(tx: Transaction) -> bytes:
    """The message body of ``tx``: the definitions of its relations, then the transaction."""
    buf = bytearray()
    seen: set[int] = set()
    for ch in tx.changes:
        rel = ch.relation
        if rel.relid not in seen:
            seen.add(rel.relid)
            buf += records.frame(records.encode_relation(rel))
    buf += records.frame(records.encode_transaction(tx))
    return bytes(buf)


def decode(body: bytes) -> Transaction:
    relations: dict[int, RelationDef] = {}
    tx: Transaction | None = None
    for _, _, payload in records.iter_records(body):
        item = records.decode(payload, relations)
        if isinstance(item, Transaction):
            tx = item
    if tx is None:
        raise records.CorruptRecord("a log message without a transaction")
    return tx


@dataclass(slots=True)
class _View:
    """What the writer knows of the stream's end."""

    seq: int = 0
    lsn: int = 0
    """The newest complete transaction (or gap) in the stream."""
    partial: tuple[int, int] = (0, 0)
    """(lsn, parts stored) of a transaction whose parts were not all stored (a writer died midway)."""
    done_seq: int = 0
    """The sequence of the message that completed the newest transaction (a mirror reaches no further
    before the unfinished one is finished)."""


class JetStreamLog:
    """A :class:`~electricctl._log.base.TransactionLog` on a JetStream stream, read through a local
    mirror. :meth:`connect` (async) must run before the stream is followed or written."""

    shared = True

    def __init__(
        self,
        target: NatsTarget,
        mirror_dir: Path,
        *,
        retention_seconds: float = 7 * 86400,
        cache_bytes: int = 64 << 20,
        replicas: int = 1,
        part_bytes: int | None = None,
        duplicate_window: float = 120.0,
    ) -> None:
        self.target = target
        self.retention_seconds = retention_seconds
        self.replicas = replicas
        self.duplicate_window = duplicate_window
        self._part_bytes = part_bytes
        # the stream is the durable copy: the mirror is not fsynced (what a power loss takes from it
        # is read from the stream again, see _follow_once)
        self.mirror = FileLog(mirror_dir, retention_seconds=retention_seconds, fsync=False, cache_bytes=cache_bytes)
        self._verified = False
        self._seq_path = Path(mirror_dir) / "jetstream.json"
        self.on_published: Callable[[list[Transaction]], None] | None = None
        """Called on the event loop with each batch the mirror took in, in order."""
        self.on_gap: Callable[[int], None] | None = None
        """Called when the stream says it has a gap before an LSN (clients before it must resync)."""
        self.on_marker: Callable[[bytes], None] | None = None
        """Called when a caught-up marker (:meth:`store_marker`) has been mirrored: every
        transaction committed before it was emitted is readable here."""
        self.nc: NatsClient | None = None
        self.js: JetStreamContext | None = None
        self.kv: KeyValue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self._mirror_seq = 0
        self._stream_created = ""
        self._has_horizon = False
        self.epoch = 0
        """The lease revision this instance writes under (0: not the leader)."""
        self._view: _View | None = None
        self._write_lock = asyncio.Lock()
        self.following_error: str | None = None
        """Why following the stream stopped, until it works again."""
        self.stream_last_seq = 0
        """The stream's last sequence, as last seen (lag = this less the mirror's)."""
        self._caught_up = asyncio.Event()
        self._last_nats_error: str | None = None
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._acks_sub: Any = None
        self._ack_prefix = ""
        self._ack_n = 0

    # -- the TransactionLog reading side: the local mirror --------------------------------------
    @property
    def last_lsn(self) -> int:
        return self.mirror.last_lsn

    @property
    def mirror_seq(self) -> int:
        return self._mirror_seq

    def open(self) -> JetStreamLog:
        self.mirror.open()
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
            doc = json.loads(self._seq_path.read_text())
            self._mirror_seq, self._stream_created = int(doc["seq"]), str(doc["created"])
        return self

    def close(self) -> None:
        self.mirror.close()

    def read_after(self, lsn: int, limit: int = 1000) -> list[Transaction]:
        return self.mirror.read_after(lsn, limit)

    def covers(self, lsn: int) -> bool:
        return self.mirror.covers(lsn)

    @property
    def horizon(self) -> int:
        return self.mirror.horizon

    @property
    def has_horizon(self) -> bool:
        return self._has_horizon

    @property
    def size_bytes(self) -> int:
        return self.mirror.size_bytes

    def prune(self, now: float | None = None) -> int:
        # the stream drops what is older than max_age itself; the mirror keeps the same window
        return self.mirror.prune(now)

    # -- the horizon (called from a worker thread while the slot is prepared) -------------------
    def set_horizon(self, lsn: int) -> None:
        self._blocking(self._put_horizon(lsn))

    def mark_gap(self, lsn: int) -> None:
        """The stream resumes at ``lsn`` with a gap before it: a message in the stream says so, so
        every instance's mirror applies it in order."""
        self._blocking(self._append_gap(lsn))

    def _blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise LogUnavailable("the JetStream log is not connected")
        if threading.get_ident() == getattr(loop, "_thread_id", None):
            coro.close()
            raise RuntimeError("a blocking JetStream call on the event loop's thread")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=_ACK_TIMEOUT * 2)

    async def _put_horizon(self, lsn: int) -> None:
        assert self.kv is not None
        current = await self._read_horizon()
        await self.kv.put("horizon", str(max(current, lsn)).encode())
        self._has_horizon = True

    async def _read_horizon(self) -> int:
        assert self.kv is not None
        try:
            entry = await self.kv.get("horizon")
        except nats.js.errors.KeyNotFoundError:
            return 0
        self._has_horizon = True
        return int(entry.value or b"0")

    # -- connecting ------------------------------------------------------------------------------
    async def connect(self, timeout: float = 30.0) -> None:
        """Connect to NATS (retrying until ``timeout``), make the stream and bucket if missing, and
        start following the stream into the mirror."""
        self._loop = asyncio.get_running_loop()
        self._caught_up = asyncio.Event()
        deadline = time.monotonic() + timeout
        while True:
            try:
                # (with reconnects allowed nats-py retries a first connection forever: bound it here)
                self.nc = await asyncio.wait_for(
                    nats.connect(
                        servers=list(self.target.servers),
                        name="electricctl serve",
                        connect_timeout=2,
                        reconnect_time_wait=0.5,
                        max_reconnect_attempts=-1,
                        allow_reconnect=True,
                        ping_interval=5,
                        max_outstanding_pings=3,
                        error_cb=self._nats_error,
                        disconnected_cb=self._nats_disconnected,
                        reconnected_cb=self._nats_reconnected,
                    ),
                    max(0.5, min(5.0, deadline - time.monotonic())),
                )
                break
            except (OSError, nats.errors.Error, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise LogUnavailable(
                        f"cannot reach NATS at {self.target.redacted()}: {exc or type(exc).__name__}"
                        " (is nats-server running with -js?)"
                    ) from None
                await asyncio.sleep(0.5)
        self.js = self.nc.jetstream(timeout=_ACK_TIMEOUT)
        try:
            await self._ensure_stream()
            self.kv = await self._bucket()
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError):
            await self.aclose()
            raise LogUnavailable(
                f"NATS at {self.target.redacted()} answers, but without JetStream: start nats-server with -js"
                " (or `jetstream {}` in its configuration)"
            ) from None
        except nats.js.errors.APIError as exc:
            await self.aclose()
            raise LogUnavailable(
                f"NATS at {self.target.redacted()} refused the log's stream: {exc.description}"
            ) from None
        horizon = await self._read_horizon()
        if horizon > self.mirror.horizon:
            self.mirror.mark_gap(horizon)
        self._follow_task = asyncio.create_task(self._follow(), name="jetstream-follow")

    # nats-py reports through these (its default logs each error with a traceback)
    async def _nats_error(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if text != self._last_nats_error and self.nc is not None:  # before the first connection: retried above
            log.warning("NATS at %s: %s", self.target.redacted(), text)
        self._last_nats_error = text

    async def _nats_disconnected(self) -> None:
        if self.nc is not None:
            log.warning("disconnected from NATS at %s; reconnecting", self.target.redacted())

    async def _nats_reconnected(self) -> None:
        self._last_nats_error = None
        log.info("reconnected to NATS at %s", self.target.redacted())

    @property
    def part_bytes(self) -> int:
        if self._part_bytes is not None:
            return self._part_bytes
        limit = self.nc.max_payload if self.nc is not None else 1 << 20
        return max(64 << 10, limit - _HEADROOM)

    async def _ensure_stream(self) -> None:
        assert self.js is not None
        config = StreamConfig(
            name=self.target.stream,
            subjects=[self.target.subject],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=self.retention_seconds,
            num_replicas=self.replicas,
            duplicate_window=min(self.duplicate_window, self.retention_seconds),
        )
        try:
            info = await self.js.stream_info(self.target.stream)
        except nats.js.errors.NotFoundError:
            info = await self.js.add_stream(config)
        else:
            if info.config.max_age != config.max_age or info.config.num_replicas != config.num_replicas:
                info = await self.js.update_stream(config)
        self._stream_created = str(info.created) if getattr(info, "created", None) else self._stream_created

    async def _bucket(self) -> KeyValue:
        assert self.js is not None
        try:
            return await self.js.key_value(self.target.bucket)
        except nats.js.errors.BucketNotFoundError:
            return await self.js.create_key_value(bucket=self.target.bucket, history=1, replicas=self.replicas)

    async def aclose(self) -> None:
        task, self._follow_task = self._follow_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        nc, self.nc = self.nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), 5)
            with contextlib.suppress(Exception):
                await nc.close()

    # -- writing (the leader) --------------------------------------------------------------------
    async def take_over(self, epoch: int, timeout: float = 30.0) -> None:
        """Become the writer under lease revision ``epoch``: learn the stream's end, then wait until
        the mirror holds all of it (the slot resumes from there)."""
        self.epoch = epoch
        self._view = await self._read_view()
        await self.wait_mirrored(self._view.done_seq, timeout)

    def step_down(self) -> None:
        self.epoch = 0
        self._view = None

    async def wait_mirrored(self, seq: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self._mirror_seq < seq:
            if time.monotonic() > deadline:
                raise LogUnavailable(
                    f"the local mirror did not catch up with the stream (at {self._mirror_seq} of {seq})"
                    + (f": {self.following_error}" if self.following_error else "")
                )
            self._caught_up.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._caught_up.wait(), 0.2)

    async def _read_view(self) -> _View:
        """The stream's end as stored: its last sequence, the last complete LSN, and any
        transaction whose parts were not all stored."""
        assert self.js is not None
        info = await self.js.stream_info(self.target.stream)
        last = info.state.last_seq
        view = _View(seq=last)
        seq = last
        while seq >= max(1, info.state.first_seq):
            try:
                msg = await self.js.get_msg(self.target.stream, seq)
            except nats.js.errors.NotFoundError:
                seq -= 1
                continue
            h = msg.headers or {}
            if "Electric-Marker" in h:
                view.done_seq = view.done_seq or seq
                seq -= 1
                continue
            if "Electric-Gap" in h:
                view.lsn, view.done_seq = int(h["Electric-Gap"]), view.done_seq or seq
                break
            i, n = (int(x) for x in h.get("Electric-Part", "1/1").split("/"))
            lsn = int(h["Electric-Lsn"])
            if i == n:
                view.lsn, view.done_seq = lsn, view.done_seq or seq
                break
            # an unfinished transaction at the end: count its stored parts, and the LSN before it
            view.partial = (lsn, i)
            view.lsn, view.done_seq = int(h.get("Electric-Prev", "0")), seq - i
            break
        return view

    async def store(self, txns: Sequence[Transaction]) -> list[Transaction]:
        """Append ``txns`` to the stream in order and wait for JetStream's acknowledgements; when
        this returns they are durable there and the slot may be confirmed past them. Transactions
        at or below the stream's end are skipped. Raises :class:`LeadershipLost` if another
        instance appended meanwhile, :class:`LogUnavailable` if NATS failed (the caller retries
        from the slot; the view of the stream's end is read again first)."""
        async with self._write_lock:
            if self._view is None or self.js is None or self.epoch == 0:
                raise LeadershipLost("this instance is not the leader")
            view = self._view
            todo = [t for t in txns if t.lsn > view.lsn]
            if not todo:
                return []
            pending: list[tuple[int, asyncio.Future[dict[str, Any]]]] = []
            # the first message of a stream names the history its writer's mirror holds (a serve
            # that moved from the file log to this one): a mirror without it knows what it lacks
            seq, prev = view.seq, view.lsn if view.seq else max(view.lsn, self.mirror.last_lsn)
            try:
                for tx in todo:
                    body = encode(tx)
                    size = self.part_bytes
                    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
                    for i, part in enumerate(parts, 1):
                        if view.partial[0] == tx.lsn and i <= view.partial[1]:
                            continue  # stored before its writer died
                        headers = {
                            "Nats-Msg-Id": f"{tx.lsn:x}.{i}",
                            "Nats-Expected-Last-Sequence": str(seq),
                            "Electric-Lsn": str(tx.lsn),
                            "Electric-Prev": str(prev),
                            "Electric-Epoch": str(self.epoch),
                            "Electric-Part": f"{i}/{len(parts)}",
                        }
                        seq += 1
                        pending.append((seq, await self._send(part, headers)))
                    prev = tx.lsn
                results = await asyncio.wait_for(asyncio.gather(*(f for _, f in pending)), _ACK_TIMEOUT)
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                await self._reread_view()
                raise LogUnavailable(f"JetStream did not acknowledge the append: {exc or type(exc).__name__}") from None
            finally:
                for _, fut in pending:
                    fut.cancel()
            for (expected, _), ack in zip(pending, results, strict=True):
                error = ack.get("error")
                if error is not None and error.get("err_code") == _WRONG_LAST_SEQUENCE:
                    self.step_down()
                    raise LeadershipLost("another instance appended to the log: this one steps down")
                if error is not None:
                    await self._reread_view()
                    raise LogUnavailable(f"JetStream refused the append: {error.get('description', error)}")
                if ack.get("seq") != expected:
                    await self._reread_view()
                    raise LogUnavailable(f"JetStream stored an append at {ack.get('seq')}, not {expected}")
            self._view = _View(seq=seq, lsn=prev, done_seq=seq)
            self.stream_last_seq = max(self.stream_last_seq, seq)
            return todo

    async def _send(self, body: bytes, headers: dict[str, str]) -> asyncio.Future[dict[str, Any]]:
        """Publish one message to the stream, its acknowledgement to come on the future. Messages
        sent one after another on the connection reach JetStream in that order, so appends are
        pipelined rather than waiting for each acknowledgement in turn."""
        nc = self.nc
        assert nc is not None
        if self._acks_sub is None:
            self._ack_prefix = nc.new_inbox()
            self._acks_sub = await nc.subscribe(self._ack_prefix + ".*", cb=self._on_ack)
        self._ack_n += 1
        reply = f"{self._ack_prefix}.{self._ack_n}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[reply] = fut
        fut.add_done_callback(lambda _: self._acks.pop(reply, None))
        await nc.publish(self.target.subject, body, reply=reply, headers=headers)
        return fut

    async def _on_ack(self, msg: Any) -> None:
        fut = self._acks.pop(msg.subject, None)
        if fut is None or fut.done():
            return
        status = (msg.headers or {}).get("Status")
        if status == "503":
            fut.set_result({"error": {"description": "no JetStream stream answers (503 no responders)"}})
            return
        try:
            fut.set_result(json.loads(msg.data))
        except ValueError:
            fut.set_result({"error": {"description": f"an unreadable acknowledgement: {msg.data[:200]!r}"}})

    async def _reread_view(self) -> None:
        with contextlib.suppress(Exception):
            if self._view is not None:
                self._view = await self._read_view()

    async def _append_gap(self, lsn: int) -> None:
        await self._append_control({"Nats-Msg-Id": f"gap.{lsn:x}", "Electric-Gap": str(lsn)}, lsn)
        await self._put_horizon(lsn)

    async def store_marker(self, token: bytes) -> None:
        """Append a caught-up marker after what was stored so far: each instance's
        :attr:`on_marker` hears of it once its mirror holds everything before it."""
        await self._append_control({"Nats-Msg-Id": f"m.{token.hex()}", "Electric-Marker": token.hex()}, 0)

    async def _append_control(self, headers: dict[str, str], lsn: int) -> None:
        async with self._write_lock:
            if self._view is None or self.js is None:
                raise LeadershipLost("this instance is not the leader")
            headers = {
                **headers,
                "Nats-Expected-Last-Sequence": str(self._view.seq),
                "Electric-Epoch": str(self.epoch),
            }
            try:
                ack = await self.js.publish(self.target.subject, b"", headers=headers)
            except nats.js.errors.APIError as exc:
                if exc.err_code == _WRONG_LAST_SEQUENCE:
                    self.step_down()
                    raise LeadershipLost("another instance appended to the log: this one steps down") from None
                await self._reread_view()
                raise LogUnavailable(f"JetStream refused the append: {exc}") from None
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                await self._reread_view()
                raise LogUnavailable(f"JetStream did not acknowledge the append: {exc or type(exc).__name__}") from None
            self._view = _View(seq=ack.seq, lsn=max(self._view.lsn, lsn), done_seq=ack.seq)

    # -- following (every instance) -------------------------------------------------------------
    async def _follow(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._follow_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.following_error = f"{type(exc).__name__}: {exc}"
                log.warning("following the JetStream log stopped (%s); again in %.1fs", self.following_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                delay = 0.2

    async def _follow_once(self) -> None:
        js = self.js
        assert js is not None
        info = await js.stream_info(self.target.stream)
        created = str(info.created) if getattr(info, "created", None) else ""
        if created and self._stream_created and created != self._stream_created:
            log.warning("the JetStream stream %s was created again: the mirror reads it from its start", self.target)
            self._mirror_seq = 0
        self._stream_created = created or self._stream_created
        self.stream_last_seq = info.state.last_seq
        if self._mirror_seq and not self._verified:
            # the mirror is not fsynced: after a power loss it may lack what its sequence file says
            # it took in. Then it is read again from the stream's start (it skips what it holds)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                last = await js.get_msg(self.target.stream, self._mirror_seq)
                lsn = int((last.headers or {}).get("Electric-Lsn", "0"))
                if lsn > self.mirror.last_lsn:
                    log.warning("the log's mirror lacks what it had taken in (a power loss?): reading the stream again")
                    self._mirror_seq = 0
        self._verified = True
        start = self._mirror_seq + 1
        if info.state.messages and start < info.state.first_seq:
            start = info.state.first_seq  # what the mirror lacks left the stream (retention)
        if info.state.messages and start <= info.state.last_seq:
            # the first message to read says which transaction came before it: if the mirror does
            # not hold that one (retention dropped it, or the stream began after history this
            # mirror never saw), clients positioned before it must resync
            with contextlib.suppress(nats.js.errors.NotFoundError):
                first = await js.get_msg(self.target.stream, start)
                before = int((first.headers or {}).get("Electric-Prev", "0"))
                if before > self.mirror.last_lsn:
                    self.mirror.mark_gap(before)
                    if self.on_gap is not None:
                        self.on_gap(before)
        if self._mirror_seq >= info.state.last_seq:
            self._caught_up.set()
        sub = await js.subscribe(
            self.target.subject,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            config=nats.js.api.ConsumerConfig(opt_start_seq=start),
            idle_heartbeat=2.0,
            flow_control=True,
            pending_bytes_limit=256 << 20,
        )
        self.following_error = None
        parts: list[bytes] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=None)
                batch: list[Any] = [msg]
                while len(batch) < 1000 and sub.pending_msgs > 0:
                    batch.append(await sub.next_msg(timeout=1))
                txns: list[Transaction] = []
                done = self._mirror_seq
                for m in batch:
                    seq = m.metadata.sequence.stream
                    h = m.headers or {}
                    if "Electric-Marker" in h:
                        await self._take_in(txns, done)
                        txns, parts = [], []
                        done = seq
                        if self.on_marker is not None:
                            self.on_marker(bytes.fromhex(h["Electric-Marker"]))
                        continue
                    if "Electric-Gap" in h:
                        await self._take_in(txns, done)
                        txns, parts = [], []
                        gap = int(h["Electric-Gap"])
                        self.mirror.mark_gap(gap)
                        self._has_horizon = True
                        if self.on_gap is not None:
                            self.on_gap(gap)
                        done = seq
                        continue
                    i, n = (int(x) for x in h.get("Electric-Part", "1/1").split("/"))
                    if i == 1:
                        parts = []
                    parts.append(m.data)
                    if i == n:
                        if len(parts) == n:
                            txns.append(decode(b"".join(parts)))
                        else:
                            log.error("the transaction ending at stream sequence %d lacks parts: skipped", seq)
                        parts = []
                        done = seq
                    self.stream_last_seq = max(self.stream_last_seq, seq)
                await self._take_in(txns, done)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _take_in(self, txns: list[Transaction], seq: int) -> None:
        if txns:
            # the mirror is not fsynced: a small batch is one os.write, cheaper than a thread hop
            small = sum(approx_size(t) for t in txns) < _INLINE_BYTES
            written = self.mirror.write(txns) if small else await asyncio.to_thread(self.mirror.write, txns)
            self.mirror.publish(written)
            if written and self.on_published is not None:
                self.on_published(written)
        if seq > self._mirror_seq:
            self._mirror_seq = seq
            doc = json.dumps({"seq": seq, "created": self._stream_created})
            with contextlib.suppress(OSError):
                self._seq_path.write_text(doc)
        self._caught_up.set()

    async def stream_state(self) -> dict[str, int]:
        assert self.js is not None
        info = await self.js.stream_info(self.target.stream)
        return {
            "messages": info.state.messages,
            "bytes": info.state.bytes,
            "first_seq": info.state.first_seq,
            "last_seq": info.state.last_seq,
        }
