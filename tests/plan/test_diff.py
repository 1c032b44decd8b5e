"""The diff on its own: typed desired state and a hand-built observed state, no config file, no database."""

from __future__ import annotations

from dataclasses import replace

import pytest

from electricctl._catalog.observed import TriggerInfo
from electricctl._model.table import TableRef
from electricctl._plan.changes import Action, RuleEdit
from electricctl._plan.diff import Desired, diff
from electricctl._plan.rules import (
    AssignmentRule,
    Direction,
    GrantRule,
    IncludeRule,
    ResolvedRules,
    ScopeStep,
    SettingRule,
    ShapeRule,
    SqliteRule,
)
from electricctl._sql import names
from tests.plan import fakes

USERS = fakes.table("users", "id:uuid", "name:text")
PROJECTS = fakes.table("projects", "id:uuid", "owner_id:uuid")
ISSUES = fakes.table("issues", "id:uuid", "project_id:uuid", "done:bool")
U, P, ISS = USERS.ref, PROJECTS.ref, ISSUES.ref

MEMBER = AssignmentRule("member", P, ISS, "id", "project_id", None)
GRANT = GrantRule(("select",), ISS, "member", P, None, "NOT done", (ScopeStep(ISS, ("project_id",), P, ("id",)),))
SHAPE = ShapeRule(
    P,
    "owner_id = auth.sub",
    (IncludeRule(ISS, Direction.ONE_TO_MANY, "issues_project_id_fkey", ("project_id",), ("id",), None),),
)
SQLITE = SqliteRule("CREATE INDEX a ON issues(done)", 0)
RULES = ResolvedRules(
    assignments={"projects:member@issues.id": MEMBER},
    grants={"public.issues/member/select": GRANT},
    shapes={"p": SHAPE},
    sqlite_statements={SQLITE.key: SQLITE},
    settings={"adhoc_shapes": SettingRule("deny")},
)
DESIRED = Desired((U, P, ISS), RULES)


def applied(rules: ResolvedRules = RULES):  # type: ignore[no-untyped-def]
    """Everything in DESIRED applied, with ``rules`` in the catalog (as the catalog returns them: JSON)."""
    return fakes.applied(fakes.observed(USERS, PROJECTS, ISSUES), rules.definitions())


def test_a_fresh_database_gets_catalog_publication_tables_then_rules() -> None:
    changes = diff(DESIRED, fakes.observed(USERS, PROJECTS, ISSUES)).changes
    kinds = [c.address.split(".")[0] for c in changes]
    assert kinds[:2] == ["catalog", "publication"]
    first_rule = kinds.index("assignments")
    assert set(kinds[2:first_rule]) == {"table", "function"}
    assert kinds[first_rule:] == ["assignments", "grants", "shapes", "sqlite_statements", "settings"]
    tables_in_order = [c.address for c in changes if c.address.count(".") == 2 and c.address.startswith("table.")]
    assert tables_in_order == ["table.public.users", "table.public.projects", "table.public.issues"]
    assert all(c.action is Action.CREATE and not c.drift for c in changes)


def test_rule_changes_carry_the_catalog_json_of_the_typed_rule() -> None:
    changes = {c.address: c for c in diff(DESIRED, fakes.observed(USERS, PROJECTS, ISSUES)).changes}
    grant = changes["grants.public.issues/member/select"]
    assert grant.rule == RuleEdit(
        "grants",
        "public.issues/member/select",
        {
            "privileges": ["select"],
            "table": "public.issues",
            "role": "member",
            "scope_table": "public.projects",
            "columns": None,
            "where": "NOT done",
            "scope_path": [
                {
                    "table": "public.issues",
                    "columns": ["project_id"],
                    "references": "public.projects",
                    "references_columns": ["id"],
                }
            ],
        },
    )
    assert '"scope_path":[{"columns":["project_id"]' in grant.sql()[0]  # canonical JSON: sorted keys
    shape = changes["shapes.p"].rule
    assert shape is not None and shape.definition["include"][0]["direction"] == "one_to_many"
    assert changes[f"sqlite_statements.{SQLITE.key}"].rule == RuleEdit(
        "sqlite_statements", SQLITE.key, {"sql": SQLITE.sql, "position": 0}
    )


def test_applied_state_diffs_to_nothing_and_a_changed_rule_is_an_update() -> None:
    assert diff(DESIRED, applied()).changes == () and diff(DESIRED, applied()).orphans == ()
    narrower = replace(GRANT, where="NOT done AND id IS NOT NULL")
    changed = Desired(DESIRED.tables, replace(RULES, grants={"public.issues/member/select": narrower}))
    (change,) = diff(changed, applied()).changes
    assert (change.address, change.action) == ("grants.public.issues/member/select", Action.UPDATE)
    assert change.rule is not None and change.rule.definition["where"] == "NOT done AND id IS NOT NULL"


def test_a_rule_no_longer_wanted_is_an_orphan_until_prune_deletes_it_by_its_stored_definition() -> None:
    fewer = Desired(DESIRED.tables, replace(RULES, shapes={}))
    kept = diff(fewer, applied())
    assert kept.changes == () and kept.orphans == ("shapes.p",)
    (delete,) = diff(fewer, applied(), prune=True).changes
    assert delete.action is Action.DELETE and delete.sql() == ['DELETE FROM "electric"."shapes" WHERE name = \'p\'']
    assert delete.rule == RuleEdit("shapes", "p", SHAPE.definition())


def test_a_table_dropped_from_the_desired_state_is_unelectrified_only_with_prune() -> None:
    fewer = Desired((U, P), replace(RULES, assignments={}, grants={}, shapes={}))
    state = applied(fewer.rules)
    assert diff(fewer, state).orphans == ("table.public.issues",)
    (drop,) = diff(fewer, state, prune=True).changes
    assert (drop.address, drop.action, drop.locks_table) == ("table.public.issues", Action.DELETE, "public.issues")
    sql = " ".join(drop.sql())
    assert "DROP TRIGGER" in sql and "DROP FUNCTION" in sql and "REPLICA IDENTITY DEFAULT" in sql


def test_triggers_that_drifted_are_repaired_in_place() -> None:
    state = applied()
    triggers = dict(state.triggers)
    triggers[(ISS, names.ROW_TRIGGER)] = TriggerInfo(ISS, names.ROW_TRIGGER, "A", "somebody_elses")
    triggers[(U, names.TRUNCATE_TRIGGER)] = TriggerInfo(U, names.TRUNCATE_TRIGGER, "D", names.TRUNCATE_FUNCTION)
    changes = diff(DESIRED, replace(state, triggers=triggers)).changes
    assert [(c.address, c.action, c.drift) for c in changes] == [
        ("table.public.users.trigger.electric_stamp_truncate", Action.UPDATE, True),
        ("table.public.issues.trigger.electric_stamp_row", Action.UPDATE, True),
    ]
    assert "is disabled; enable it ALWAYS" in changes[0].reason
    assert changes[1].sql()[0].startswith("DROP TRIGGER") and len(changes[1].statements) > 1


def test_an_unmanaged_table_in_the_publication_is_removed_only_with_prune() -> None:
    stray = TableRef("public", "audit_log")
    state = replace(applied(), publication=applied().publication | {stray})  # type: ignore[operator]
    assert diff(DESIRED, state).orphans == ("table.public.audit_log.publication",)
    (change,) = diff(DESIRED, state, prune=True).changes
    assert (change.address, change.action, change.drift) == ("table.public.audit_log.publication", Action.DELETE, True)


def test_a_desired_table_the_database_does_not_have_is_refused() -> None:
    with pytest.raises(ValueError, match=r"public\.issues.*validate first"):
        diff(DESIRED, fakes.observed(USERS, PROJECTS))


def test_scope_path_none_and_empty_are_different_definitions() -> None:
    unscoped = replace(GRANT, scope_table=None, scope_path=None).definition()
    same_table = replace(GRANT, scope_path=()).definition()
    assert unscoped["scope_path"] is None and same_table["scope_path"] == []
