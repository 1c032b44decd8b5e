"""The generator on a schema with every supported type and foreign keys both ways: golden files
(set ELECTRICCTL_UPDATE_GOLDEN=1 to rewrite them after a deliberate change), mypy --strict and
ruff over the result, and the names and errors it chooses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from electricctl._codegen import write_package
from electricctl._codegen.build import GenerateError, build_schema, class_names, identifier
from electricctl._codegen.render import render
from tests.dal.schemas import EVERY_TYPE_ENUMS, EVERY_TYPE_MIGRATIONS, col, create

GOLDEN = Path(__file__).parent / "golden"


DEFAULTS = {
    ("posts", "flag"): "false",
    ("posts", "n"): "0",
    ("posts", "price"): "1.50",
    ("posts", "body"): "'hello'::text",
    ("posts", "mood"): "'happy'::mood",
    ("posts", "created_at"): "now()",
    ("posts", "seen"): "CURRENT_TIMESTAMP",
    ("posts", "day"): "CURRENT_DATE",
    ("posts", "ns"): "'{}'::integer[]",
    ("posts", "doc"): "'{}'::jsonb",
    ("posts", "big"): "nextval('posts_big_seq'::regclass)",  # not computable by a client: stays None
    ("users", "id"): "gen_random_uuid()",
}


def rendered() -> dict[str, str]:
    return render(build_schema(EVERY_TYPE_MIGRATIONS, EVERY_TYPE_ENUMS, ["posts_by_day", "mine"], DEFAULTS))


def test_the_generated_package_matches_its_golden_files() -> None:
    files = rendered()
    if os.environ.get("ELECTRICCTL_UPDATE_GOLDEN"):
        write_package(GOLDEN / "blog", files)
    for name, text in files.items():
        assert (GOLDEN / "blog" / name).read_text() == text, f"{name} differs from its golden file"
    assert rendered() == files  # deterministic


def test_the_golden_package_passes_mypy_strict_and_ruff(tmp_path: Path) -> None:
    write_package(tmp_path / "blog", rendered())
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "blog"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert mypy.returncode == 0, mypy.stdout
    ruff = Path(sys.executable).parent / "ruff"
    for args in (["check", "--isolated"], ["format", "--isolated", "--check"]):
        done = subprocess.run([ruff, *args, "blog"], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stdout
    # a program using it wrongly is caught by mypy: the types mean something
    (tmp_path / "use.py").write_text(
        "import uuid\n"
        "from blog import Post, PostWhere, PostInclude\n"
        "w: PostWhere = {'n': {'gt': 'three'}}\n"
        "i: PostInclude = {'users_by_author_id': {'include': {'nope': True}}}\n"
        "p = Post.__init__\n"
        "ok: PostWhere = {'mood': 'sad', 'OR': [{'price': None}, {'day': {'is_null': True}}]}\n"
    )
    use = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "use.py"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    errors = [line for line in use.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2 and "use.py:3:" in errors[0] and "use.py:4:" in errors[1], use.stdout


def test_relations_follow_foreign_keys_both_ways_and_name_ambiguous_ones_by_their_columns() -> None:
    schema = build_schema(EVERY_TYPE_MIGRATIONS, EVERY_TYPE_ENUMS)
    posts = {r.name: (r.table, r.direction, r.foreign_key) for r in schema.tables["posts"].relations}
    assert posts == {
        "teams": ("teams", "many_to_one", ("team_id",)),
        "users_by_author_id": ("users", "many_to_one", ("author_id",)),
        "users_by_reviewer_id": ("users", "many_to_one", ("reviewer_id",)),
    }
    users = {r.name: (r.table, r.direction, r.foreign_key) for r in schema.tables["users"].relations}
    assert users == {
        "posts_by_author_id": ("posts", "one_to_many", ("author_id",)),
        "posts_by_reviewer_id": ("posts", "one_to_many", ("reviewer_id",)),
    }
    # each version is what a client applies: whole tables, and the local statements
    assert [m.version for m in schema.migrations] == ["20260101", "20260102", "20260103", "20260104"]
    assert schema.migrations[2].tables[0].columns[-1].name == "extra"
    assert schema.migrations[3].statements == ("CREATE INDEX posts_day ON posts (day);",)
    assert schema.version == "20260104"


def test_names_are_python_identifiers_and_clashes_are_refused() -> None:
    assert identifier("class") == "class_" and identifier("2x") == "_2x" and identifier("my-col") == "my_col"
    assert class_names(["projects", "categories", "boxes", "status", "data"]) == {
        "projects": "Project",
        "categories": "Category",
        "boxes": "Box",
        "status": "Status",
        "data": "Data",
    }
    assert class_names(["item", "items"]) == {"item": "Item", "items": "Items"}
    clash = [
        create("1", "project_creates", (col("id", "int4", True),)),
        create("1", "projects", (col("id", "int4", True),)),
    ]
    with pytest.raises(GenerateError, match="generated names clash: ProjectCreate"):
        render(build_schema(clash))
    odd = [create("1", "t", (col("id", "int4", True), col("x", "money")))]
    with pytest.raises(GenerateError, match=r"t.x has type money, which the typed client does not map"):
        build_schema(odd)
