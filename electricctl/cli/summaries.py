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
