"""How the CLI words a plan (electricctl.cli.summaries): rule summaries, counts and the JSON document."""

from __future__ import annotations

from electricctl._plan.changes import Action, Change, Plan, RuleEdit
from electricctl._sql import render
from electricctl.cli.summaries import FORMAT_VERSION, change_json, counts, describe_rule, plan_json, summary
from electricctl.errors import Diagnostic, Location


def test_rules_are_described_from_their_catalog_definition() -> None:
    assignment = {
        "role": "member",
        "scope_table": "public.projects",
        "table": "public.memberships",
        "user_column": "user_id",
        "scope_column": "project_id",
        "if": "this.active",
    }
    assert describe_rule(RuleEdit("assignments", "x", assignment)) == (
        "assign public.projects:member to public.memberships.user_id scoped by project_id if this.active"
    )
    grant = {
        "privileges": ["select", "update"],
        "table": "public.issues",
        "role": "anyone",
        "scope_table": None,
        "columns": ["id", "title"],
        "where": None,
        "scope_path": None,
    }
    assert (
        describe_rule(RuleEdit("grants", "g", grant)) == "grant select, update (id, title) on public.issues to anyone"
    )
    shape = {"table": "public.projects", "where": "owner_id = auth.sub", "include": []}
    assert describe_rule(RuleEdit("shapes", "mine", shape)) == "shape mine: public.projects where owner_id = auth.sub"
    assert describe_rule(RuleEdit("settings", "adhoc_shapes", {"value": "deny"})) == "setting adhoc_shapes = deny"


def test_a_change_is_summarised_by_its_rule_or_its_reason() -> None:
    upsert = Change(
        "settings.adhoc_shapes",
        Action.UPDATE,
        "",
        (render.upsert_rule("settings", "adhoc_shapes", {"value": "allow"}),),
        rule=RuleEdit("settings", "adhoc_shapes", {"value": "allow"}),
    )
    table = Change("table.public.users", Action.CREATE, "electrify public.users", ())
    assert summary(upsert) == "setting adhoc_shapes = allow"
    assert summary(table) == "electrify public.users"
    assert change_json(upsert)["summary"] == "setting adhoc_shapes = allow"
    assert change_json(upsert)["sql"] == upsert.sql()


def test_plan_json_counts_every_action_and_keeps_orphans_and_warnings() -> None:
    warning = Diagnostic(Location("e.yaml", 1, 1, "<root>"), "w", "db.wal_level", "warning")
    p = Plan(
        (
            Change("a", Action.CREATE, "a", ()),
            Change("b", Action.CREATE, "b", ()),
            Change("c", Action.DELETE, "c", (), drift=True),
        ),
        "sha256:00",
        orphans=("shapes.old",),
        warnings=(warning,),
    )
    assert counts(p) == {"create": 2, "update": 0, "delete": 1}
    doc = plan_json(p)
    assert doc["format_version"] == FORMAT_VERSION and doc["config_hash"] == "sha256:00"
    assert doc["summary"] == counts(p) and doc["orphans"] == ["shapes.old"]
    assert doc["warnings"] == [warning.as_json()]
    assert [c["address"] for c in doc["changes"]] == ["a", "b", "c"] and doc["changes"][2]["drift"] is True
    assert counts(Plan((), "sha256:00")) == {"create": 0, "update": 0, "delete": 0}
