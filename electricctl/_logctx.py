"""Who and where a log line is about: the client, its user, the stream position, the subscription.

Connections set these context variables as they learn them (asyncio copies the context into the
tasks a connection starts, so its stream's lines carry them too), and ``--log-format json`` writes
one JSON object per line with every one that is set. The audit logger's own fields are kept.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging

CLIENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("electricctl_client", default=None)
USER: contextvars.ContextVar[str | None] = contextvars.ContextVar("electricctl_user", default=None)
LSN: contextvars.ContextVar[int | None] = contextvars.ContextVar("electricctl_lsn", default=None)
SUBSCRIPTION: contextvars.ContextVar[str | None] = contextvars.ContextVar("electricctl_subscription", default=None)

_FIELDS = (("client_id", CLIENT), ("user", USER), ("lsn", LSN), ("subscription_id", SUBSCRIPTION))
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context that is set, any
    ``extra`` fields a caller passed (the audit logger's), and the exception if there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, var in _FIELDS:
            value = var.get()
            if value is not None:
                doc[name] = value
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in doc and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def use_json(level: str) -> None:
    """Log JSON lines to stderr at ``level`` (replacing the handlers basicConfig would add)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
