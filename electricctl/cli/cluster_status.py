"""``electricctl status --log nats://HOST:PORT/STREAM``: the serve instances sharing a JetStream log,
read from NATS itself (their registry and the leader lease), without asking any one of them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from electricctl.errors import ElectricError


class LogUnreachable(ElectricError):
    """NATS, or the log's buckets, could not be read."""


async def _read(url: str, timeout: float) -> dict[str, Any]:
    import nats
    import nats.js.errors

    from electricctl._log.jetstream import NatsTarget
    from electricctl._server.leader import read_instances, read_leader

    target = NatsTarget.parse(url)
    try:
        nc = await nats.connect(servers=list(target.servers), connect_timeout=timeout, allow_reconnect=False)
    except Exception as exc:
        raise LogUnreachable(f"cannot reach NATS at {target.redacted()}: {exc or type(exc).__name__}") from None
    try:
        js = nc.jetstream(timeout=timeout)
        try:
            info = await js.stream_info(target.stream)
        except nats.js.errors.NotFoundError:
            raise LogUnreachable(
                f"NATS at {target.redacted()} has no stream {target.stream!r}: no serve has used this log yet"
            ) from None
        instances = await read_instances(js, target.stream)
        leader = await read_leader(js, target.stream)
        now = time.time()
        for inst in instances:
            inst["seen_seconds_ago"] = round(max(0.0, now - float(inst.pop("at", now))), 1)
        return {
            "log": target.redacted(),
            "stream": {
                "messages": info.state.messages,
                "bytes": info.state.bytes,
                "first_seq": info.state.first_seq,
                "last_seq": info.state.last_seq,
            },
            "leader": None if leader is None else {k: leader[k] for k in ("id", "address", "epoch") if k in leader},
            "instances": sorted(instances, key=lambda i: str(i.get("id"))),
        }
    finally:
        await nc.close()


def read(url: str, timeout: float = 5.0) -> dict[str, Any]:
    try:
        return asyncio.run(_read(url, timeout))
    except ValueError as exc:
        raise LogUnreachable(str(exc)) from None
