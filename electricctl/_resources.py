"""Find the files that ship beside the package: the JSON Schema, recipes, the example config.

In a source checkout (and an editable install) they live at the repository root; a wheel carries
copies under ``electricctl/_data`` (see ``[tool.hatch.build.targets.wheel.force-include]``).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource(relative: str) -> Path:
    """The path of a shipped file, e.g. ``resource("schemas/electric.schema.json")``."""
    for base in (_PACKAGE / "_data", _PACKAGE.parent):
        candidate = base / relative
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{relative} is missing from this installation of electricctl")
