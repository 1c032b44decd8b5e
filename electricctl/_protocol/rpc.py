"""The RPC layer shared by both ends: request ids, pending calls and response decoding.

Either side can call the other (../shared/reference/electric-legacy.md §1.1): the client numbers its calls from 1,
the server from 0. This module does no I/O: the caller sends the request it returns and feeds
every response it receives to :meth:`RpcCalls.resolve`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError, Message

from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb


class RpcError(Exception):
    """The other side answered with a SatErrorResp, or with a malformed response."""

    def __init__(self, error: pb.SatErrorResp) -> None:
        super().__init__(f"{pb.SatErrorResp.ErrorCode.Name(error.error_type)}: {error.message}")
        self.error = error


class RpcCalls:
    def __init__(self, first_id: int) -> None:
        self._next = first_id
        self._pending: dict[int, asyncio.Future[pb.SatRpcResponse]] = {}

    async def call(
        self,
        send: Callable[[Message], Awaitable[None]],
        method: str,
        body: Message,
        timeout: float,
    ) -> Message:
        """Send a request with ``send``, wait for its response, return the decoded response message."""
        request_id = self._next
        self._next += 1
        fut: asyncio.Future[pb.SatRpcResponse] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        try:
            await send(pb.SatRpcRequest(method=method, request_id=request_id, message=body.SerializeToString()))
            resp = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(request_id, None)
        if resp.HasField("error"):
            raise RpcError(resp.error)
        out = codec.RPC_METHODS[method][1]()
        try:
            out.ParseFromString(resp.message)
        except DecodeError:
            raise RpcError(
                pb.SatErrorResp(error_type=pb.SatErrorResp.INVALID_REQUEST, message=f"malformed response to {method}")
            ) from None
        return out

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """The connection is gone: every call still waiting raises ``error()`` (responses that
        arrived before are kept)."""
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error())

    def resolve(self, resp: pb.SatRpcResponse) -> bool:
        """Hand a response to its waiting call; False if no call is waiting for that request id."""
        fut = self._pending.pop(resp.request_id, None)
        if fut is None:
            return False
        if not fut.done():
            fut.set_result(resp)
        return True


def client_answer(req: pb.SatRpcRequest) -> tuple[pb.SatRpcResponse, bytes | None]:
    """How a client answers the server's calls (service ClientRoot, ../shared/reference/electric-legacy.md §1.2 item 3).

    Returns the response to send and, for ``startReplication``, the client LSN after which the
    client is to send its writes (empty: from the start); None for ``stopReplication`` or a method
    a client does not serve (answered with INVALID_REQUEST).
    """
    reply: Message
    lsn: bytes | None = None
    if req.method == "startReplication":
        body = pb.SatInStartReplicationReq()
        body.ParseFromString(req.message)
        lsn = body.lsn
        reply = pb.SatInStartReplicationResp()
    elif req.method == "stopReplication":
        reply = pb.SatInStopReplicationResp()
    else:
        err = pb.SatErrorResp(error_type=pb.SatErrorResp.INVALID_REQUEST)
        return pb.SatRpcResponse(method=req.method, request_id=req.request_id, error=err), None
    return pb.SatRpcResponse(method=req.method, request_id=req.request_id, message=reply.SerializeToString()), lsn
