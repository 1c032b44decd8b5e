"""Validation against the live schema returns typed rules (frozen dataclasses), not JSON dicts."""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import replace

import pytest

from electricctl._config.loader import load_text
from electricctl._config.model import ElectricConfig
from electricctl._model.table import TableRef
from electricctl._plan.rules import AssignmentRule, Direction, GrantRule, ScopeStep, ShapeRule
from electricctl._plan.validate import resolve
from electricctl.errors import PlanError
from tests.plan import fakes

USERS = fakes.table("users", "id:uuid", "name:text")
PROJECTS = fakes.table("projects", "id:uuid", "owner_id:uuid", "name:text")
ISSUES = fakes.table("issues", "id:uuid", "project_id:uuid", "title:text", "done:bool")
COMMENTS = fakes.table("comments", "id:uuid", "issue_id:uuid", "body:text")
FKS = (
    fakes.fk("projects", "owner_id", "users"),
    fakes.fk("issues", "project_id", "projects"),
    fakes.fk("comments", "issue_id", "issues"),
)
STATE = fakes.observed(USERS, PROJECTS, ISSUES, COMMENTS, fks=FKS)
U, P, ISS, C = (t.ref for t in (USERS, PROJECTS, ISSUES, COMMENTS))

CFG = """
version: 1
auth: {mode: insecure}
tables: [users, projects, issues, comments]
assignments:
  - {role: "projects:member", to: issues.id, scope: issues.project_id}
grants:
  - {privileges: [read, update], on: comments, to: "projects:member", columns: [id, body]}
  - {privileges: read, on: users, to: anyone, where: "name <> ''"}
shapes:
  - name: mine
    table: issues
    where: "done = false"
    include:
      - table: comments
      - table: projects
"""


def config(text: str = CFG) -> ElectricConfig:
    return load_text(textwrap.dedent(text).lstrip("\n"), "electric.yaml", env={})


def test_rules_come_back_typed_with_foreign_keys_resolved() -> None:
    rules = resolve(config(), STATE).rules
    assert rules.assignments == {
        "public.projects:member@public.issues.id": AssignmentRule("member", P, ISS, "id", "project_id", None)
    }
    comments, users = rules.grants.values()
    assert comments == GrantRule(
        ("select", "update"),
        C,
        "member",
        P,
        ("id", "body"),
        None,
        (ScopeStep(C, ("issue_id",), ISS, ("id",)), ScopeStep(ISS, ("project_id",), P, ("id",))),
    )
    assert users.scope_path is None and users.where == "name <> ''"
    shape = rules.shapes["mine"]
    assert isinstance(shape, ShapeRule) and shape.where == "done = FALSE"  # canonical text
    assert [(i.table, i.direction, i.foreign_key) for i in shape.include] == [
        (C, Direction.ONE_TO_MANY, "comments_issue_id_fkey"),
        (P, Direction.MANY_TO_ONE, "issues_project_id_fkey"),
    ]
    assert rules.settings["adhoc_shapes"].value == "deny"
    with pytest.raises(dataclasses.FrozenInstanceError):
        shape.where = None  # type: ignore[misc]


def test_a_granted_table_with_no_path_to_its_scope_is_an_error_at_the_grant() -> None:
    cut = fakes.observed(USERS, PROJECTS, ISSUES, COMMENTS, fks=(FKS[0], FKS[1]))  # comments -/-> issues
    with pytest.raises(PlanError) as info:
        resolve(config(), cut)
    (scope,) = [d for d in info.value.diagnostics if d.code == "db.scope_path"]
    assert (scope.location.line, scope.location.path) == (7, "grants[0]")
    assert "public.comments has no chain of foreign keys to public.projects" in scope.message


def test_warnings_do_not_stop_resolution() -> None:
    shape = CFG.replace('where: "done = false"', 'where: "title IS NOT NULL OR done"')
    resolved = resolve(config(shape), replace(STATE, wal_level="replica"))
    assert "db.wal_level" in [w.code for w in resolved.warnings]
    assert TableRef("public", "issues") == resolved.rules.shapes["mine"].table


def test_status_counts_a_wal_level_that_is_not_logical_as_a_problem() -> None:
    """`status` said "In sync" with wal_level=replica, though serve cannot run there (issue 16)."""
    from electricctl._apply.applier import Status
    from electricctl._plan.planner import plan

    cfg = config()
    good = Status(plan(cfg, STATE), STATE)
    assert good.problems == ()
    bad_state = replace(STATE, wal_level="replica")
    bad = Status(plan(cfg, bad_state), bad_state)
    (problem,) = bad.problems
    assert "wal_level is 'replica'" in problem and "ALTER SYSTEM SET wal_level = logical" in problem
