"""Laying out generated code as ``ruff format`` would (pure), so that a generated package is
already formatted: a bracketed expression stays on one line if it fits in 88 columns; else its
contents go on one line of their own between the brackets, if that fits; else one item per line,
each laid out the same way, with a trailing comma."""

from __future__ import annotations

import json
from dataclasses import dataclass

WIDTH = 88


def literal(text: str) -> str:
    """A Python string literal of ``text``, double-quoted as ruff format writes them, every control
    character escaped (a tab or carriage return in an enum label must not break the line)."""
    return json.dumps(text, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Group:
    """``head`` + ``open`` + items + ``close``: a call, a literal, a subscript, a signature."""

    head: str
    items: tuple[Node, ...]
    open: str = "("
    close: str = ")"
    one_tuple: bool = False
    """A tuple: one item keeps its comma on one line too."""


Node = str | Group


def group(head: str, *items: Node, open: str = "(", close: str = ")") -> Group:
    return Group(head, tuple(items), open, close)


def tuple_(*items: Node) -> Group:
    return Group("", tuple(items), "(", ")", one_tuple=True)


def flat(node: Node) -> str:
    if isinstance(node, str):
        return node
    inner = ", ".join(flat(i) for i in node.items)
    if node.one_tuple and len(node.items) == 1:
        inner += ","
    return f"{node.head}{node.open}{inner}{node.close}"


def layout(node: Node, indent: str = "", prefix: str = "", suffix: str = "") -> str:
    """The lines of ``prefix + node + suffix`` at ``indent`` (no final newline)."""
    one = f"{indent}{prefix}{flat(node)}{suffix}"
    if len(one) <= WIDTH or isinstance(node, str) or not node.items:
        return one
    start = f"{indent}{prefix}{node.head}{node.open}"
    end = f"{indent}{node.close}{suffix}"
    inner = indent + "    "
    hugged = inner + ", ".join(flat(i) for i in node.items)
    if node.one_tuple and len(node.items) == 1:
        hugged += ","
    if len(hugged) <= WIDTH:
        return f"{start}\n{hugged}\n{end}"
    body = "\n".join(layout(i, inner, "", ",") for i in node.items)
    return f"{start}\n{body}\n{end}"


def keyed(key: str, value: Node) -> Group | str:
    """A dict item ``key: value`` (the value laid out like any node)."""
    if isinstance(value, str):
        return f"{key}: {value}"
    return Group(f"{key}: {value.head}", value.items, value.open, value.close, value.one_tuple)
