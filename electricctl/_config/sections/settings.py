"""The top-level settings of electric.yaml: ``version``, ``database`` and ``adhoc_shapes``.

The JSON Schema already pins their types and values, so nothing here can fail; this is where
``--database-url`` takes precedence over ``database.url``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Settings:
    version: int
    database_url: str | None
    adhoc_shapes: str


def validate_settings(data: dict[str, Any], database_url: str | None = None) -> Settings:
    """The settings from the root mapping; ``database_url`` (the command line's) wins over the file's."""
    db = data.get("database") or {}
    return Settings(
        version=int(data["version"]),
        database_url=database_url or db.get("url") or None,
        adhoc_shapes=str(data.get("adhoc_shapes", "deny")),
    )
