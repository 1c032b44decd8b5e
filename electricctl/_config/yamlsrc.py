"""Load YAML into plain Python data while remembering where every node came from.

PyYAML's ``compose`` keeps a mark on each node; we walk the node graph ourselves so that every
value, and every mapping key, can be traced back to ``file:line:col`` by its dotted path
(``grants[0].where``). ``${VAR}`` references in string scalars are interpolated from the
environment here, so an undefined variable is reported at the scalar that uses it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from electricctl.errors import Diagnostic, Location

# ${NAME}, ${NAME:-default}; $${ escapes a literal ${
_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_STR_TAG = "tag:yaml.org,2002:str"
_BOOL_TAG = "tag:yaml.org,2002:bool"


MAX_BYTES = 1 << 20
"""Largest config file read (a real electric.yaml is a few KB; a huge one is a mistake or an attack)."""
MAX_DEPTH = 64
"""Deepest nesting of YAML collections (an include tree nests about two levels per include)."""
MAX_NODES = 100_000
"""Most YAML nodes after aliases are expanded (a few hundred bytes of nested aliases can otherwise
expand to billions of nodes)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (only true/false, so `on:`, `yes` and `no` stay strings),
    and a limit on nesting (PyYAML composes nodes recursively)."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"the YAML is nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def join_path(base: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if base else key


@dataclass(slots=True)
class Source:
    """Parsed YAML data plus the location of every node, by path."""

    file: str
    data: Any
    values: dict[str, Location] = field(default_factory=dict)
    keys: dict[str, Location] = field(default_factory=dict)
    env_refs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Environment variables each scalar referenced, by path."""
    env_unset: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Variables each scalar referenced that are not set (and have no default), by path."""

    def loc(self, path: str, *, key: bool = False) -> Location:
        """The location of the node at ``path``, falling back to its nearest ancestor."""
        table = self.keys if key else self.values
        probe = path
        while True:
            if probe in table:
                return table[probe]
            if key and probe in self.values:
                return self.values[probe]
            if not probe:
                return Location(self.file, 1, 1, path or "<root>")
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[: max(cut, 0)]

    def at(self, path: str, *, key: bool = False) -> Location:
        """Like :meth:`loc`, but the location's path is ``path`` itself."""
        found = self.loc(path, key=key)
        return Location(found.file, found.line, found.col, path or "<root>")


def _location(file: str, node: Node, path: str) -> Location:
    mark = node.start_mark
    return Location(file, mark.line + 1, mark.column + 1, path or "<root>")


def load(
    text: str,
    file: str,
    env: Mapping[str, str],
    *,
    skip_env_errors: Collection[str] = (),
    strict_env: bool = True,
) -> tuple[Source, list[Diagnostic]]:
    """Parse ``text``; return the data with locations, and every problem found on the way.

    ``skip_env_errors`` lists paths whose undefined variables are not an error (for example
    ``database.url`` when ``--database-url`` overrides it); with ``strict_env`` False none is (an
    unset variable reads as empty, and :attr:`Source.env_unset` records it).
    """
    diags: list[Diagnostic] = []
    if len(text) > MAX_BYTES:
        diags.append(Diagnostic(Location(file, 1, 1, "<root>"), too_big(len(text)), "yaml.too_big"))
        return Source(file, None), diags
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or str(exc)
        diags.append(Diagnostic(Location(file, line, col, "<root>"), f"YAML syntax error: {problem}", "yaml"))
        return Source(file, None), diags
    finally:
        loader.dispose()

    src = Source(file, None)
    if root is None:
        return src, diags
    ctor = SafeConstructor()

    def interpolate(node: ScalarNode, path: str) -> str:
        raw = str(node.value)
        used: list[str] = []

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            used.append(name)
            if name in env:
                return env[name]
            if default is not None:
                return default
            unset.append(name)
            if strict_env and path not in skip_env_errors:
                loc = _location(file, node, path)
                if node.style in (None, "") and node.start_mark.line == node.end_mark.line:
                    loc = loc.shifted(m.start())
                diags.append(
                    Diagnostic(
                        loc,
                        f"environment variable {name} is not set; export it, or write ${{{name}:-default}}",
                        "env.undefined",
                    )
                )
            return ""

        unset: list[str] = []
        out = _ENV_RE.sub(sub, raw)
        if used:
            src.env_refs[path] = tuple(used)
        if unset:
            src.env_unset[path] = tuple(unset)
        return out

    nodes = 0

    def walk(node: Node, path: str, depth: int = 1) -> Any:
        nonlocal nodes
        nodes += 1
        if nodes > MAX_NODES:
            raise _Refused(
                Diagnostic(
                    _location(file, node, path),
                    f"the file expands to more than {MAX_NODES:,} YAML nodes (aliases are expanded where"
                    " they are used): write the values out, or use fewer aliases",
                    "yaml.too_many_nodes",
                )
            )
        if depth > MAX_DEPTH:
            raise _Refused(
                Diagnostic(
                    _location(file, node, path),
                    f"the YAML is nested more than {MAX_DEPTH} levels deep (an alias that contains itself?)",
                    "yaml.too_deep",
                )
            )
        src.values[path] = _location(file, node, path)
        if isinstance(node, MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag != _STR_TAG:
                    diags.append(
                        Diagnostic(_location(file, key_node, path), "mapping keys must be plain strings", "yaml.key")
                    )
                    continue
                key = str(key_node.value)
                child = join_path(path, key)
                if key in out:
                    diags.append(
                        Diagnostic(
                            _location(file, key_node, child),
                            f"duplicate key {key!r} (first at line {src.keys[child].line})",
                            "yaml.duplicate_key",
                        )
                    )
                    continue
                src.keys[child] = _location(file, key_node, child)
                out[key] = walk(value_node, child, depth + 1)
            return out
        if isinstance(node, SequenceNode):
            return [walk(item, join_path(path, i), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        if node.tag == _STR_TAG:
            return interpolate(node, path)
        try:
            return ctor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            diags.append(Diagnostic(_location(file, node, path), f"invalid value: {exc.problem}", "yaml.value"))
            return None

    try:
        src.data = walk(root, "")
    except _Refused as refused:
        return Source(file, None), [*diags, refused.diagnostic]
    return src, diags


class _Refused(Exception):
    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def too_big(size: int) -> str:
    return f"the file is {size:,} bytes; electric.yaml may be at most {MAX_BYTES:,} bytes (is this the right file?)"
