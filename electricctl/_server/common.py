"""What a connection's parts share: the protocol's error and close codes, protocol violations,
and logging an unexpected error without letting a client flood the log."""

from __future__ import annotations

import logging

from electricctl._protocol import satellite_pb2 as pb

log = logging.getLogger("electricctl.server")

ERR = pb.SatErrorResp
NATIVE_HEADER = "X-Electricctl-Client"
"""Sent by our own client: it understands refusals as top-level errors that keep the connection open."""
CLOSE_PROTOCOL_ERROR = 1007
CLOSE_POLICY = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_JWT_EXPIRED = 4000


class ProtocolViolation(Exception):
    """The client broke the protocol: it gets an error frame and the connection is closed (1007)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_LOGGED: set[tuple[str, str, int]] = set()


def log_once(exc: BaseException, what: str) -> None:
    """An unexpected error: its traceback the first time it happens at that place, one line after
    that (a client that can trigger it must not be able to flood the log)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = (type(exc).__name__, tb.tb_frame.f_code.co_filename if tb else "", tb.tb_lineno if tb else 0)
    if where in _LOGGED:
        log.error("%s: %s: %s", what, type(exc).__name__, first_line(exc))
        return
    if len(_LOGGED) < 1000:
        _LOGGED.add(where)
    log.error("%s", what, exc_info=exc)
