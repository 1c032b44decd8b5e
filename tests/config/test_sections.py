"""Each section validator on its own, with the diagnostics it reports (file, line, column, path).

The validators take a section's data and a DiagnosticSink built from YAML text, so a section can
be checked without the rest of the file and without the JSON Schema step.
"""

from __future__ import annotations

import textwrap

from electricctl._config.diagnostics import DiagnosticSink, by_position
from electricctl._config.model import Role
from electricctl._config.references import DeclaredTables
from electricctl._config.sections.assignments import validate_assignments
from electricctl._config.sections.auth import validate_auth
from electricctl._config.sections.grants import expand_privileges, validate_grants
from electricctl._config.sections.settings import validate_settings
from electricctl._config.sections.shapes import validate_shapes
from electricctl._config.sections.sqlite import validate_sqlite
from electricctl._config.sections.tables import validate_tables
from electricctl._model.table import TableRef

ISSUES = TableRef("public", "issues")
PROJECTS = TableRef("public", "projects")


def sink(text: str) -> DiagnosticSink:
    s = DiagnosticSink.for_text(textwrap.dedent(text).lstrip("\n"), "e.yaml")
    assert not s.items, s.items
    return s


def found(s: DiagnosticSink) -> list[tuple[str, int, int, str, str]]:
    """(level, line, column, path, code) of everything reported, in file order."""
    return [(d.level, d.location.line, d.location.col, d.location.path, d.code) for d in by_position(s.items)]


def col(s: DiagnosticSink, line: int, needle: str) -> int:
    """The 1-based column where ``needle`` first occurs on ``line`` of the sink's text."""
    return s.src_line(line).index(needle) + 1


def declared(s: DiagnosticSink, *names: str) -> DeclaredTables:
    return DeclaredTables(s, validate_tables(list(names), s))


def test_tables_keeps_the_first_of_a_duplicate_and_refuses_the_electric_schema() -> None:
    s = sink("""
        tables:
          - issues
          - electric.shadow
          - public.issues
          - projects
        """)
    specs = validate_tables(s.value("tables"), s)
    assert [t.ref for t in specs] == [ISSUES, PROJECTS]
    assert specs[0].location.line == 2 and specs[1].location.path == "tables[3]"
    assert found(s) == [
        ("error", 3, 5, "tables[1]", "table.reserved"),
        ("error", 4, 5, "tables[2]", "table.duplicate"),
    ]
    assert "first at line 2" in s.items[1].message


def test_table_names_resolve_to_public_first_and_report_ambiguity_where_used() -> None:
    s = sink("grants: [{on: a}, {on: b}, {on: x.a}, {on: c}]\n")
    tables = declared(s, "x.b", "y.b", "x.a", "public.a")
    assert tables.resolve("a", "grants[0].on") == TableRef("public", "a")
    assert tables.resolve("x.a", "grants[2].on") == TableRef("x", "a")
    assert tables.resolve("b", "grants[1].on") is None
    assert tables.resolve("c", "grants[3].on") is None
    assert found(s) == [
        ("error", 1, col(s, 1, "b}"), "grants[1].on", "table.ambiguous"),
        ("error", 1, col(s, 1, "c}"), "grants[3].on", "table.undeclared"),
    ]
    assert "(x.b, y.b); qualify it with its schema" in s.items[0].message
    # built-in roles are case-insensitive; a scoped role resolves its scope table
    assert tables.role("Anyone", "r") == Role("anyone")
    assert tables.role("x.a:member", "r") == Role("member", TableRef("x", "a"))


def test_assignments_report_scope_mistakes_at_the_field_concerned() -> None:
    s = sink("""
        assignments:
          - {role: "projects:member", to: issues.user_id}
          - {role: admin, to: issues.user_id, scope: issues.project_id}
          - {role: "projects:member", to: issues.user_id, scope: projects.id}
          - {role: authenticated, to: issues.user_id}
          - {role: "projects:member", to: issues.user_id, scope: issues.project_id, if: "this.active"}
          - {role: "projects:member", to: issues.user_id, scope: issues.project_id}
        """)
    tables = declared(s, "projects", "issues")
    (ok,) = validate_assignments(s.value("assignments"), tables)
    assert ok.role == Role("member", PROJECTS) and ok.scope_column == "project_id"
    assert ok.condition is not None and ok.condition.location.col == col(s, 6, "this.active")  # inside the quotes
    assert found(s) == [
        ("error", 2, 5, "assignments[0]", "assign.scope_missing"),
        ("error", 3, col(s, 3, "issues.project_id"), "assignments[1].scope", "assign.scope_global"),
        ("error", 4, col(s, 4, "projects.id"), "assignments[2].scope", "assign.scope_table"),
        ("error", 5, col(s, 5, "authenticated"), "assignments[3].role", "assign.builtin"),
        ("error", 7, 5, "assignments[5]", "assign.duplicate"),
    ]
    assert "first at line 6" in by_position(s.items)[-1].message


def test_grants_need_an_assigned_role_and_overlap_nowhere() -> None:
    s = sink("""
        grants:
          - {privileges: [read, delete], on: issues, to: admin, where: "new.owner = auth.sub"}
          - {privileges: write, on: issues, to: admin}
          - {privileges: read, on: issues, to: ghost}
          - {privileges: read, on: issues, to: anyone, columns: [id, title, id]}
          - {privileges: read, on: issues, to: anyone, where: "projects.id = 1"}
        """)
    tables = declared(s, "issues", "projects")
    (grant,) = validate_grants(s.value("grants"), tables, assigned_roles={"admin"})
    assert grant.privileges == ("select", "delete") and grant.where is not None
    assert found(s) == [
        ("error", 3, 5, "grants[1]", "grant.duplicate"),
        ("error", 4, col(s, 4, "ghost"), "grants[2].to", "grant.role_undeclared"),
        ("error", 5, col(s, 5, "[id"), "grants[3].columns", "grant.column_duplicate"),
        ("error", 6, col(s, 6, "projects.id"), "grants[4].where", "expr.qualifier"),
    ]
    assert by_position(s.items)[0].message.startswith("delete on public.issues is granted to admin twice")
    assert expand_privileges(["write", "select"]) == ("select", "insert", "update", "delete")


def test_shapes_warn_that_include_trees_are_not_served_and_refuse_cycles() -> None:
    s = sink("""
        shapes:
          - name: tree
            table: projects
            include:
              - table: issues
                foreign_key: [project_id]
          - name: loop
            table: projects
            include: [{table: issues, include: [{table: projects}]}]
          - name: tree
            table: issues
          - name: flat
            table: issues
            where: "done"
        """)
    tables = declared(s, "projects", "issues")
    shapes = validate_shapes(s.value("shapes"), tables)
    assert [sh.name for sh in shapes] == ["tree", "flat"]
    assert shapes[0].include[0].foreign_key == ("project_id",)
    assert found(s) == [
        ("error", 9, col(s, 9, "projects}"), "shapes[1].include[0].include[0].table", "shape.cycle"),
        ("error", 10, col(s, 10, "tree"), "shapes[2].name", "shape.duplicate"),
    ]


def test_sqlite_statements_are_normalised_and_checked() -> None:
    s = sink("""
        sqlite:
          - "CREATE INDEX a ON t(x);"
          - "  CREATE INDEX a ON t(x)  "
          - "CREATE INDEX b ON t(y); DROP TABLE t"
          - "CREAT INDEX c ON t(z)"
        """)
    (stmt,) = validate_sqlite(s.value("sqlite"), s)
    assert stmt.sql == "CREATE INDEX a ON t(x)"
    assert found(s) == [
        ("error", 3, 5, "sqlite[1]", "sqlite.duplicate"),
        ("error", 4, 5, "sqlite[2]", "sqlite.invalid"),
        ("error", 5, 5, "sqlite[3]", "sqlite.invalid"),
    ]
    empty = sink("sqlite: []\n")
    assert validate_sqlite([], empty) == () and not empty.items


def test_auth_key_problems_point_at_the_key_or_the_section() -> None:
    missing = sink("auth:\n  mode: secure\n")
    assert validate_auth(missing.value("auth"), missing).jwt.alg == "HS256"
    assert found(missing) == [("warning", 2, 3, "auth", "auth.key_missing")]

    pem = sink("auth:\n  jwt: {alg: ES256, key: plain}\n")
    validate_auth(pem.value("auth"), pem)
    assert found(pem) == [("error", 2, 26, "auth.jwt.key", "auth.key_format")]

    b64 = sink("auth:\n  jwt: {key: 'a b', key_is_base64: true}\n")
    validate_auth(b64.value("auth"), b64)
    assert [d.message for d in b64.items] == ["key_is_base64 is true but the key is not valid base64"]

    insecure = sink("auth: {mode: insecure}\n")
    assert validate_auth(insecure.value("auth"), insecure).mode == "insecure" and not insecure.items


def test_settings_default_and_the_command_line_url_wins() -> None:
    assert validate_settings({"version": 1}) == validate_settings({"version": 1, "adhoc_shapes": "deny"})
    data = {"version": 1, "database": {"url": "pg://file"}, "adhoc_shapes": "allow"}
    assert validate_settings(data).database_url == "pg://file"
    assert validate_settings(data, "pg://flag").database_url == "pg://flag"
    assert validate_settings({"version": 1, "database": {"url": ""}}).database_url is None


def test_warnings_alone_are_not_errors() -> None:
    s = sink("sqlite: ['CREATE INDEX a ON t(x)']\n")
    validate_sqlite(s.value("sqlite"), s)
    assert not s.items  # a valid statement: nothing to say
    s.warn("sqlite", "a warning", "test")
    assert s.items and not s.has_errors
    s.error("sqlite[0]", "boom", "test")
    assert s.has_errors
