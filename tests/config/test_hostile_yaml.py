"""Issue 10, points 9 and 10a: hostile or broken electric.yaml files end in a normal error at
file:line:col, quickly and in little memory: alias bombs, huge files, deep nesting, recursive
aliases. Run through the real CLI (`electricctl validate`) as a subprocess, with a time limit."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from electricctl._config import yamlsrc
from electricctl._expr.parse import MAX_DEPTH, ExprError, parse

BASE = "version: 1\nauth: {mode: insecure}\ntables: [items]\n"


def validate(path: Path) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "electricctl", "validate", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def _laughs(levels: int = 9) -> str:
    """The billion laughs: each level's anchor is a list of ten of the previous level's aliases."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "electric.yaml"
    path.write_text(BASE + "x-bomb:\n" + "".join("  " + line + "\n" for line in _laughs().splitlines()))
    assert len(path.read_bytes()) < 1000
    code, out, took = validate(path)
    assert code == 1
    assert f"{path}:" in out and "expands to more than 100,000 YAML nodes" in out, out
    assert "Traceback" not in out
    assert took < 20  # it ran for 120 s and took 4-5 GB before


def test_a_huge_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "electric.yaml"
    with open(path, "w") as fh:
        fh.write(BASE)
        fh.write("# padding\n" * ((12 << 20) // 10))  # 12 MB
        fh.write("unknown_key: 1\n")
    code, out, took = validate(path)
    assert code == 1
    assert f"{path}:1:1" in out and "may be at most 1,048,576 bytes" in out, out
    assert took < 20


def test_deep_nesting_is_a_normal_error(tmp_path: Path) -> None:
    """An include tree 3,000 levels deep raised RecursionError."""
    path = tmp_path / "electric.yaml"
    tree = "{table: items}"
    for _ in range(3000):
        tree = "{table: items, include: [" + tree + "]}"
    path.write_text(BASE + "shapes:\n  - {name: deep, table: items, include: [" + tree + "]}\n")
    code, out, _ = validate(path)
    assert code == 1
    assert f"nested more than {yamlsrc.MAX_DEPTH} levels deep" in out and f"{path}:" in out, out
    assert "Traceback" not in out and "RecursionError" not in out


def test_an_alias_that_contains_itself_is_a_normal_error(tmp_path: Path) -> None:
    path = tmp_path / "electric.yaml"
    path.write_text(BASE + "x-loop: &loop [1, *loop]\n")
    code, out, _ = validate(path)
    assert code == 1
    assert "Traceback" not in out and f"{path}:" in out, out


def test_plain_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "electric.yaml"
    path.write_text(
        "version: 1\nauth: {mode: insecure}\ntables: [items, other]\nadhoc_shapes: deny\n"
        "shapes:\n  - {name: a, table: items, where: &positive 'n > 0'}\n  - {name: b, table: other, where: *positive}\n"
    )
    code, out, _ = validate(path)
    assert code == 0, out


@pytest.mark.parametrize(
    "text",
    ["NOT " * 500 + "true", "n" + " + 1" * 300 + " > 0", "(" * 200 + "NOT " * 200 + "true" + ")" * 200],
    ids=["not-chain", "plus-chain", "parens-and-nots"],
)
def test_deep_expressions_are_a_normal_error(text: str) -> None:
    with pytest.raises(ExprError, match=f"nested more than {MAX_DEPTH} levels deep"):
        parse(text)
    parse("NOT " * 20 + "true")  # ordinary nesting is fine
