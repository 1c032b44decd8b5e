"""The one diagnostics sink every electric.yaml validator reports into.

A validator names the YAML node it is talking about by its dotted path (``grants[0].where``);
the sink turns that path into ``file:line:col`` through the :class:`~electricctl._config.yamlsrc.Source`
and keeps errors and warnings in the order they were found. The loader sorts them by position
when it hands them to the user. The sink also answers the two questions about the source text
that locating a finding needs: what value sits at a path, and whether its scalar is quoted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from electricctl._config import yamlsrc
from electricctl.errors import Diagnostic, Location


class DiagnosticSink:
    """Collects located errors and warnings about one source file."""

    def __init__(self, src: yamlsrc.Source, text: str) -> None:
        self.src = src
        self._lines = text.splitlines()
        self._items: list[Diagnostic] = []

    @classmethod
    def for_text(cls, text: str, file: str) -> DiagnosticSink:
        """A sink over ``text`` parsed without environment variables (for validators used on their own)."""
        src, diags = yamlsrc.load(text, file, {})
        sink = cls(src, text)
        sink._items.extend(diags)
        return sink

    @property
    def file(self) -> str:
        return self.src.file

    @property
    def items(self) -> tuple[Diagnostic, ...]:
        """Everything reported so far, in the order it was reported."""
        return tuple(self._items)

    @property
    def has_errors(self) -> bool:
        return any(d.level == "error" for d in self._items)

    def at(self, path: str, *, key: bool = False) -> Location:
        """Where the node at ``path`` (or its key) starts."""
        return self.src.at(path, key=key)

    def error(self, path: str, message: str, code: str, *, key: bool = False, shift: int = 0) -> None:
        """Report an error at the node at ``path``, ``shift`` columns into it."""
        self._items.append(Diagnostic(self.at(path, key=key).shifted(shift), message, code))

    def warn(self, path: str, message: str, code: str, *, key: bool = False) -> None:
        """Report something valid but worth knowing; warnings never make loading fail."""
        self._items.append(Diagnostic(self.at(path, key=key), message, code, level="warning"))

    def value(self, path: str) -> Any:
        """The parsed value at ``path``, or None if there is none."""
        node: Any = self.src.data
        for part in path.replace("[", ".[").split("."):
            if not part:
                continue
            if part.startswith("["):
                node = node[int(part[1:-1])] if isinstance(node, list) else None
            else:
                node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                return None
        return node

    def src_line(self, line: int) -> str:
        """Line ``line`` (1-based) of the source text, or "" past its end."""
        return self._lines[line - 1] if 0 < line <= len(self._lines) else ""

    def quoted(self, path: str) -> bool:
        """Whether the scalar at ``path`` starts with a quote (its text then starts one column later)."""
        loc = self.src.loc(path)
        line = self.src_line(loc.line)
        return line[loc.col - 1 : loc.col] in ("'", '"')


def by_position(diags: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Diagnostics in the order a reader meets them in the file."""
    return sorted(diags, key=lambda d: (d.location.line, d.location.col, d.message))
