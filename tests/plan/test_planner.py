"""The pure planner: live-schema checks, change ordering, drift and prune. No database."""

from __future__ import annotations

import textwrap
from dataclasses import replace

import pytest

from electricctl._config.loader import load_text
from electricctl._config.model import ElectricConfig
from electricctl._model.table import TableRef
from electricctl._plan.planner import Action, plan
from electricctl._sql import names
from electricctl.errors import PlanError
from tests.plan import fakes

USERS = fakes.table("users", "id:uuid", "name:text")
PROJECTS = fakes.table("projects", "id:uuid", "owner_id:uuid", "name:text")
ISSUES = fakes.table("issues", "id:uuid", "project_id:uuid", "title:text", "status:text", "done:bool")
FKS = (fakes.fk("projects", "owner_id", "users"), fakes.fk("issues", "project_id", "projects"))


def config(text: str) -> ElectricConfig:
    return load_text(textwrap.dedent(text).lstrip("\n"), "electric.yaml", env={})


CFG = """
version: 1
auth: {mode: insecure}
tables: [users, projects, issues]
assignments:
  - {role: "projects:member", to: issues.id, scope: issues.project_id}
grants:
  - {privileges: read, on: issues, to: "projects:member", where: "status <> 'x'"}
shapes:
  - name: p
    table: projects
    where: "owner_id = auth.sub"
    include:
      - table: issues
      - table: users
"""


def errors(cfg: str, state: object) -> list[str]:
    with pytest.raises(PlanError) as info:
        plan(config(cfg), state)  # type: ignore[arg-type]
    return [d.format() for d in info.value.diagnostics]


def test_fresh_database_plan_is_ordered() -> None:
    p = plan(config(CFG), fakes.observed(USERS, PROJECTS, ISSUES, fks=FKS))
    addresses = [c.address for c in p.changes]
    assert addresses[0] == "catalog.electric"
    assert addresses[1] == "publication.electric_publication"
    assert addresses[2:8] == [
        "table.public.users",
        "table.public.users.replica_identity",
        "function.electric.stamp__public__users",
        "table.public.users.trigger.electric_stamp_row",
        "table.public.users.trigger.electric_stamp_truncate",
        "table.public.users.publication",
    ]
    rules = [a for a in addresses if a.split(".")[0] in ("assignments", "grants", "shapes", "settings")]
    assert addresses[-len(rules) :] == rules  # rules come after every table
    assert all(c.action is Action.CREATE and not c.drift for c in p.changes)
    assert p.config_hash.startswith("sha256:")


def test_include_edges_resolve_in_both_directions() -> None:
    p = plan(config(CFG), fakes.observed(USERS, PROJECTS, ISSUES, fks=FKS))
    (shape,) = [c for c in p.changes if c.address == "shapes.p"]
    sql = shape.sql()[0]
    assert '"direction":"one_to_many"' in sql and '"direction":"many_to_one"' in sql
    (grant,) = [c for c in p.changes if c.address.startswith("grants.")]
    assert (
        '"scope_path":[{"columns":["project_id"],"references":"public.projects",'
        '"references_columns":["id"],"table":"public.issues"}]' in grant.sql()[0]
    )


def test_applied_state_plans_nothing_and_drift_is_flagged() -> None:
    fresh = fakes.observed(USERS, PROJECTS, ISSUES, fks=FKS)
    first = plan(config(CFG), fresh)
    rules: dict[str, dict[str, object]] = {}
    for change in first.changes:
        kind, _, name = change.address.partition(".")
        if kind in ("assignments", "grants", "shapes", "sqlite_statements", "settings"):
            import json

            definition = change.sql()[0].split("VALUES (", 1)[1].split(", '", 1)[1].rsplit("'::jsonb)", 1)[0]
            rules.setdefault(kind, {})[name] = json.loads(definition.replace("''", "'"))
    done = fakes.applied(fresh, rules)
    assert plan(config(CFG), done).empty

    ref = TableRef("public", "issues")
    triggers = dict(done.triggers)
    del triggers[(ref, names.ROW_TRIGGER)]
    broken = replace(done, triggers=triggers, publication=done.publication - {ref})  # type: ignore[operator]
    p = plan(config(CFG), broken)
    assert [(c.address, c.action, c.drift) for c in p.changes] == [
        ("table.public.issues.trigger.electric_stamp_row", Action.CREATE, True),
        ("table.public.issues.publication", Action.CREATE, True),
    ]


def test_dropping_a_table_from_the_file_is_an_orphan_until_prune() -> None:
    fresh = fakes.observed(USERS, PROJECTS, ISSUES, fks=FKS)
    done = fakes.applied(fresh)
    smaller = "version: 1\nauth: {mode: insecure}\ntables: [users]\n"
    p = plan(config(smaller), done)
    assert "table.public.issues" in p.orphans and "table.public.projects" in p.orphans
    assert all(c.action is not Action.DELETE for c in p.changes)
    pruned = plan(config(smaller), done, prune=True)
    deletes = [c for c in pruned.changes if c.action is Action.DELETE]
    assert [c.address for c in deletes] == ["table.public.issues", "table.public.projects"]
    sql = " ".join(deletes[0].sql())
    assert "DROP TRIGGER" in sql and "ALTER PUBLICATION" in sql and "REPLICA IDENTITY DEFAULT" in sql
    assert not any(stmt.startswith(("DROP TABLE", "TRUNCATE", 'DELETE FROM "public"')) for stmt in deletes[0].sql())


def test_live_schema_errors_point_at_the_yaml() -> None:
    no_pk = fakes.table("users", "id:uuid", "name:text", pk=())
    bad_types = fakes.table("projects", "id:uuid", "owner_id:uuid", "price:money", "doc:json", "tags:_json", "ok:_int4")
    errs = errors(CFG, fakes.observed(no_pk, bad_types, fks=FKS))
    assert "electric.yaml:3:10: table public.users has no primary key" in errs[0]
    joined = "\n".join(errs)
    assert "column projects.price has an unsupported type: money: money depends on lc_monetary" in joined
    assert "column projects.doc has an unsupported type: json: use jsonb" in joined
    assert "column projects.tags has an unsupported type: json[] is an array of a type clients cannot hold" in joined
    assert "projects.ok" not in joined  # an array of a supported type is fine
    assert "table public.issues does not exist in database test" in joined


def test_unknown_columns_and_missing_foreign_keys() -> None:
    cfg = CFG.replace("owner_id = auth.sub", "ownr = auth.sub").replace("status <> 'x'", "done AND state = 1")
    errs = errors(cfg, fakes.observed(USERS, PROJECTS, ISSUES, fks=FKS[:1]))
    joined = "\n".join(errs)
    assert "electric.yaml:11:13: column 'ownr' does not exist in public.projects" in joined
    assert "column 'state' does not exist in public.issues" in joined
    assert "no foreign key joins public.issues to public.projects" in joined
    assert "scope column issues.project_id must be a foreign key to public.projects" in joined


def test_fk_to_a_table_that_is_not_electrified() -> None:
    cfg = "version: 1\nauth: {mode: insecure}\ntables: [projects]\n"
    errs = errors(cfg, fakes.observed(USERS, PROJECTS, fks=FKS[:1]))
    assert errs == [
        "electric.yaml:3:10: public.projects references public.users (foreign key projects_owner_id_fkey), which is "
        "not electrified; add it to `tables` so clients can keep the reference intact (at tables[0])"
    ]


def test_ambiguous_include_needs_foreign_key() -> None:
    issues = fakes.table("issues", "id:uuid", "project_id:uuid", "origin_id:uuid")
    fks = (*FKS[:1], fakes.fk("issues", "project_id", "projects"), fakes.fk("issues", "origin_id", "projects"))
    cfg = """
    version: 1
    auth: {mode: insecure}
    tables: [users, projects, issues]
    shapes:
      - {name: p, table: projects, include: [{table: issues}]}
    """
    errs = errors(cfg, fakes.observed(USERS, PROJECTS, issues, fks=fks))
    assert "several foreign keys join public.issues to public.projects" in errs[0]
    ok = plan(
        config(cfg.replace("{table: issues}", "{table: issues, foreign_key: [origin_id]}")),
        fakes.observed(USERS, PROJECTS, issues, fks=fks),
    )
    assert any(c.address == "shapes.p" for c in ok.changes)


def test_non_boolean_column_condition() -> None:
    cfg = CFG.replace("status <> 'x'", "title")
    errs = errors(cfg, fakes.observed(USERS, PROJECTS, ISSUES, fks=FKS))
    assert "the expression must be a boolean condition, but title is text" in errs[0]
    assert plan(config(CFG.replace("status <> 'x'", "done")), fakes.observed(USERS, PROJECTS, ISSUES, fks=FKS))


def test_foreign_electric_schema_is_refused() -> None:
    state = replace(fakes.observed(USERS), electric_schema_objects=3)
    errs = errors("version: 1\nauth: {mode: insecure}\ntables: [users]\n", state)
    assert "schema electric exists but was not created by electricctl" in errs[0]


def test_long_table_names_get_short_function_names() -> None:
    long = "t" * 60
    assert len(names.stamp_function(TableRef("public", long))) <= 63
    assert names.stamp_function(TableRef("public", long)) != names.stamp_function(TableRef("other", long))
