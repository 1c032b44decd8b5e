"""Plans in words and JSON: one-line summaries of changes, counts, and the plan's JSON document.

The planner says what changes and why; this module says it to a person (or to a program reading
``-o json``). A catalog rule's summary is written from its stored definition, so a deletion is
described from what the catalog held.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from electricctl._plan.changes import Action, Change, Plan, RuleEdit

FORMAT_VERSION = "1.0"
"""Version of the JSON documents ``plan -o json`` and ``status -o json`` print."""

_KIND = {
    "assignments": "assignment",
    "grants": "grant",
    "shapes": "shape",
    "sqlite_statements": "sqlite statement",
    "settings": "setting",
}


def summary(change: Change) -> str:
    """What ``change`` does, in one line."""
    return change.reason if change.rule is None else describe_rule(change.rule)


def describe_rule(rule: RuleEdit) -> str:
    """A one-line human summary of a catalog rule's definition."""
    d: Mapping[str, Any] = rule.definition
    match rule.catalog_table:
        case "assignments":
            role = f"{d['scope_table']}:{d['role']}" if d["scope_table"] else d["role"]
            scope = f" scoped by {d['scope_column']}" if d["scope_column"] else ""
            cond = f" if {d['if']}" if d["if"] else ""
            return f"assign {role} to {d['table']}.{d['user_column']}{scope}{cond}"
        case "grants":
            role = f"{d['scope_table']}:{d['role']}" if d["scope_table"] else d["role"]
            cols = f" ({', '.join(d['columns'])})" if d["columns"] else ""
            where = f" where {d['where']}" if d["where"] else ""
            return f"grant {', '.join(d['privileges'])}{cols} on {d['table']} to {role}{where}"
        case "shapes":
            return f"shape {rule.name}: {d['table']}" + (f" where {d['where']}" if d["where"] else "")
        case "sqlite_statements":
            return f"sqlite statement: {d['sql']}"
    return f"{_KIND[rule.catalog_table]} {rule.name} = {d.get('value', d)}"


def counts(plan: Plan) -> dict[str, int]:
    """How many changes create, update and delete something."""
    out = {a.value: 0 for a in Action}
    for change in plan.changes:
        out[change.action.value] += 1
    return out


def change_json(change: Change) -> dict[str, Any]:
    return {
        "address": change.address,
        "action": change.action.value,
        "summary": summary(change),
        "drift": change.drift,
        "destructive": change.destructive,
        "locks_table": change.locks_table,
        "sql": change.sql(),
    }


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "config_hash": plan.config_hash,
        "changes": [change_json(c) for c in plan.changes],
        "summary": counts(plan),
        "orphans": list(plan.orphans),
        "warnings": [w.as_json() for w in plan.warnings],
    }


def _md(text: str) -> str:
    """Text for a Markdown table cell (pipes escaped, on one line)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def plan_markdown(plan: Plan, *, database: str, file: str) -> str:
    """The plan as a pull-request comment: a summary line, a table of the changes, and every
    change's SQL in a collapsed block (GitHub and GitLab render ``<details>``)."""
    lines = [f"### electricctl plan: `{file}` against `{database}`", ""]
    if plan.empty:
        lines.append("**No changes.** The database matches the file.")
    else:
        n = counts(plan)
        lines += [
            f"**Plan: {n['create']} to create, {n['update']} to update, {n['delete']} to delete.**",
            "",
            "| | change | what it does | notes |",
            "|---|---|---|---|",
        ]
        symbol = {"create": "+", "update": "~", "delete": "-"}
        for c in plan.changes:
            notes = [x for x in ("drift" if c.drift else "", f"locks {c.locks_table}" if c.locks_table else "") if x]
            if c.destructive:
                notes.append("**destructive**")
            lines.append(
                f"| `{symbol.get(c.action.value, '?')}` | `{_md(c.address)}` | {_md(summary(c))} | {', '.join(notes)} |"
            )
        statements = [stmt for c in plan.changes for stmt in c.sql()]
        lines += ["", f"<details><summary>SQL ({len(statements)} statements)</summary>", "", "```sql"]
        lines += [stmt + ";" for stmt in statements]
        lines += ["```", "", "</details>"]
    if plan.orphans:
        lines += ["", "No longer declared in the file (removed only with `--prune`; user data is never dropped):", ""]
        lines += [f"- `{_md(o)}`" for o in plan.orphans]
    if plan.warnings:
        lines += ["", "Warnings:", ""]
        lines += [f"- {_md(w.format())}" for w in plan.warnings]
    return "\n".join(lines) + "\n"
