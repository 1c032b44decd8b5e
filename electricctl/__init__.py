"""electricctl: local-first sync for PostgreSQL.

The control plane is also a Python API (:mod:`electricctl.api`): ``electricctl.validate``,
``plan``, ``apply`` and ``status``, imported on first use.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("electricctl")
except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from electricctl.api import CHANGES, OK, Applied, Planned, StatusReport, Validated, apply, plan, status, validate

_API = ("CHANGES", "OK", "Applied", "Planned", "StatusReport", "Validated", "apply", "plan", "status", "validate")


def __getattr__(name: str) -> object:
    # the API pulls in psycopg and the planner: only when it is used, not for `import electricctl.client`
    if name in _API:
        from electricctl import api

        return getattr(api, name)
    raise AttributeError(f"module 'electricctl' has no attribute {name!r}")


__all__ = [
    "CHANGES",
    "OK",
    "Applied",
    "Planned",
    "StatusReport",
    "Validated",
    "__version__",
    "apply",
    "plan",
    "status",
    "validate",
]
