"""electric.yaml → JSON Schema check → semantic checks → :class:`ElectricConfig`.

Every check here works without a database: the schema, expression parsing and whitelisting,
references between declarations, acyclic include trees and unique names. Checks that need the
live schema (columns exist, foreign keys exist, types are supported) live in the planner.
All problems are collected, not just the first, and each names ``file:line:col`` and the path.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import sqlite3
from collections.abc import Collection, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, cast

import jsonschema

from electricctl._config import yamlsrc
from electricctl._config.model import (
    BUILTIN_ROLES,
    PRIVILEGE_ALIASES,
    PRIVILEGES,
    Assignment,
    AuthConfig,
    ElectricConfig,
    Expression,
    Grant,
    Include,
    JwtConfig,
    Role,
    Shape,
    SqliteStatement,
    TableSpec,
)
from electricctl._expr import ast
from electricctl._expr.parse import ExprError, is_boolean_shaped, parse
from electricctl._model.table import TableRef
from electricctl._resources import resource
from electricctl.errors import ConfigError, Diagnostic, Location


@cache
def json_schema() -> dict[str, Any]:
    with open(resource("schemas/electric.schema.json"), encoding="utf-8") as fh:
        schema: dict[str, Any] = json.load(fh)
    return schema


def load_file(
    path: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    database_url: str | None = None,
) -> ElectricConfig:
    """Read and validate ``path``; raise :class:`ConfigError` with every problem found."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > yamlsrc.MAX_BYTES:
            raise ConfigError([Diagnostic(Location(str(p), 1, 1, "<root>"), yamlsrc.too_big(size), "yaml.too_big")])
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [Diagnostic(Location(str(p), 1, 1, "<root>"), f"cannot read file: {exc.strerror}", "io")]
        ) from exc
    return load_text(text, str(p), env=env, database_url=database_url)


def load_text(
    text: str,
    file: str,
    *,
    env: Mapping[str, str] | None = None,
    database_url: str | None = None,
) -> ElectricConfig:
    env = os.environ if env is None else env
    skip = ("database.url",) if database_url else ()
    src, diags = yamlsrc.load(text, file, env, skip_env_errors=skip)
    if src.data is None and not diags:
        diags.append(
            Diagnostic(Location(file, 1, 1, "<root>"), "the file is empty; it needs at least `version: 1`", "empty")
        )
    if diags:
        raise ConfigError(diags)
    if database_url and isinstance(src.data, dict) and isinstance(src.data.get("database"), dict):
        src.data["database"]["url"] = database_url  # the override wins, even over an unset ${VAR}
    diags.extend(_schema_diagnostics(src))
    if diags:
        raise ConfigError(_sorted(diags))
    builder = _Builder(src, text)
    config = builder.build(database_url)
    if any(d.level == "error" for d in builder.diags):
        raise ConfigError(_sorted(builder.diags))
    return dataclasses.replace(config, warnings=tuple(_sorted(builder.diags)))


def _sorted(diags: Iterable[Diagnostic]) -> list[Diagnostic]:
    return sorted(diags, key=lambda d: (d.location.line, d.location.col, d.message))


# -- JSON Schema ---------------------------------------------------------------------------------


def _path_of(parts: Iterable[str | int]) -> str:
    path = ""
    for part in parts:
        path = yamlsrc.join_path(path, part)
    return path


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _schema_diagnostics(src: yamlsrc.Source) -> list[Diagnostic]:
    validator = jsonschema.Draft202012Validator(json_schema())
    out: list[Diagnostic] = []
    for error in validator.iter_errors(src.data):
        path = _path_of(error.absolute_path)
        out.extend(_describe(src, error, path))
    return out


def _describe(src: yamlsrc.Source, error: jsonschema.ValidationError, path: str) -> list[Diagnostic]:
    schema = error.schema if isinstance(error.schema, dict) else {}
    validator = error.validator
    value = error.instance
    if validator == "additionalProperties" and isinstance(value, dict):
        allowed = sorted(schema.get("properties", {}))
        return [
            Diagnostic(
                src.at(yamlsrc.join_path(path, key), key=True),
                f"unknown key {key!r}; allowed keys here: {', '.join(allowed)}",
                "schema.unknown_key",
            )
            for key in value
            if key not in allowed
        ]
    loc = src.at(path)
    if validator == "required":
        return [Diagnostic(loc, error.message.replace("is a required property", "is required"), "schema.required")]
    if validator == "type":
        expected = error.validator_value
        expected_s = " or ".join(expected) if isinstance(expected, list) else str(expected)
        expected_s = expected_s.replace("array", "list").replace("object", "mapping")
        return [Diagnostic(loc, f"expected {expected_s}, got {_type_name(value)}", "schema.type")]
    if validator == "enum":
        options = ", ".join(str(v) for v in cast(list[Any], error.validator_value))
        return [Diagnostic(loc, f"must be one of {options}; got {value!r}", "schema.enum")]
    if validator == "const":
        return [Diagnostic(loc, f"must be {error.validator_value!r}; got {value!r}", "schema.const")]
    if validator == "pattern":
        what = schema.get("description") or f"a value matching {error.validator_value}"
        return [Diagnostic(loc, f"invalid value {value!r}: expected {what}", "schema.pattern")]
    if validator in ("oneOf", "anyOf") and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        if best is not None:
            return _describe(src, best, _path_of(best.absolute_path) or path)
    if validator in ("minItems", "minLength"):
        return [Diagnostic(loc, "must not be empty", "schema.empty")]
    return [Diagnostic(loc, error.message, f"schema.{validator}")]


# -- semantic checks -----------------------------------------------------------------------------


class _Builder:
    """Builds the model from schema-valid data, collecting semantic diagnostics."""

    def __init__(self, src: yamlsrc.Source, text: str) -> None:
        self.src = src
        self.lines = text.splitlines()
        self.data: dict[str, Any] = src.data
        self.diags: list[Diagnostic] = []
        self.declared: dict[TableRef, TableSpec] = {}

    def error(self, path: str, message: str, code: str, *, key: bool = False, shift: int = 0) -> None:
        self.diags.append(Diagnostic(self.src.at(path, key=key).shifted(shift), message, code))

    def warn(self, path: str, message: str, code: str, *, key: bool = False) -> None:
        self.diags.append(Diagnostic(self.src.at(path, key=key), message, code, level="warning"))

    def build(self, database_url: str | None) -> ElectricConfig:
        tables = self._tables()
        assignments = self._assignments()
        roles = {a.role.key for a in assignments}
        grants = self._grants(roles)
        shapes = self._shapes()
        sqlite_stmts = self._sqlite()
        db = self.data.get("database") or {}
        env_refs = sorted({name for names in self.src.env_refs.values() for name in names})
        return ElectricConfig(
            file=self.src.file,
            version=int(self.data["version"]),
            database_url=database_url or db.get("url") or None,
            auth=self._auth(),
            tables=tables,
            assignments=assignments,
            grants=grants,
            shapes=shapes,
            adhoc_shapes=str(self.data.get("adhoc_shapes", "deny")),
            sqlite=sqlite_stmts,
            env_refs=tuple(env_refs),
        )

    # -- tables ------------------------------------------------------------------------------
    def _tables(self) -> tuple[TableSpec, ...]:
        out: list[TableSpec] = []
        for i, name in enumerate(self.data.get("tables") or []):
            path = f"tables[{i}]"
            ref = TableRef.parse(name)
            if ref in self.declared:
                first = self.declared[ref].location.line
                self.error(path, f"table {ref} is declared twice (first at line {first})", "table.duplicate")
                continue
            if ref.schema == "electric":
                self.error(
                    path,
                    "the electric schema belongs to electricctl; its tables cannot be electrified",
                    "table.reserved",
                )
                continue
            spec = TableSpec(ref, self.src.at(path))
            self.declared[ref] = spec
            out.append(spec)
        return tuple(out)

    def resolve(self, name: str, path: str) -> TableRef | None:
        """Resolve a table name used elsewhere in the file against ``tables``."""
        if "." in name:
            ref = TableRef.parse(name)
            if ref in self.declared:
                return ref
        else:
            matches = [r for r in self.declared if r.name == name]
            if len(matches) == 1:
                return matches[0]
            public = [r for r in matches if r.schema == "public"]
            if public:
                return public[0]
            if len(matches) > 1:
                options = ", ".join(str(m) for m in sorted(matches))
                self.error(
                    path, f"table name {name!r} is ambiguous ({options}); qualify it with its schema", "table.ambiguous"
                )
                return None
        self.error(
            path, f"table {name!r} is not declared under `tables`; add it there to electrify it", "table.undeclared"
        )
        return None

    def _column_ref(self, text: str, path: str) -> tuple[TableRef, str] | None:
        table, _, column = text.rpartition(".")
        ref = self.resolve(table, path)
        return (ref, column) if ref else None

    # -- expressions -------------------------------------------------------------------------
    def expression(
        self,
        path: str,
        *,
        table: TableRef,
        qualifiers: Collection[str],
        allow_auth: bool,
    ) -> Expression | None:
        """Parse the expression at ``path`` and check which names it may use."""
        node = self.data_at(path)
        if node is None:
            return None
        text = str(node)
        # column of the expression's first character inside the YAML line, for quoted scalars
        lead = 1 if self._quoted(path) else 0
        try:
            parsed = parse(text)
        except ExprError as exc:
            self.error(path, f"invalid expression: {exc.message}", "expr.invalid", shift=lead + (exc.offset or 0))
            return None
        ok = True
        for col in ast.columns(parsed.expr):
            q = col.qualifier
            if q == "auth":
                if not allow_auth:
                    self.error(path, "auth.<claim> cannot be used here", "expr.auth", shift=lead + col.offset)
                    ok = False
                continue
            if q is not None and q not in qualifiers:
                allowed = ", ".join(sorted(f"{x}.<column>" for x in qualifiers))
                hint = f"; use {allowed}" + (" or auth.<claim>" if allow_auth else "")
                self.error(
                    path,
                    f"{q}.{col.name} does not refer to table {table}{hint}",
                    "expr.qualifier",
                    shift=lead + col.offset,
                )
                ok = False
        if is_boolean_shaped(parsed.expr) is False:
            self.error(path, "the expression must be a boolean condition", "expr.not_boolean", shift=lead)
            ok = False
        if not ok:
            return None
        return Expression(text, parsed.canonical, parsed.expr, self.src.at(path).shifted(lead))

    def data_at(self, path: str) -> Any:
        node: Any = self.data
        for part in path.replace("[", ".[").split("."):
            if not part:
                continue
            if part.startswith("["):
                node = node[int(part[1:-1])]
            else:
                node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                return None
        return node

    def _quoted(self, path: str) -> bool:
        loc = self.src.loc(path)
        line = self.lines[loc.line - 1] if loc.line <= len(self.lines) else ""
        return line[loc.col - 1 : loc.col] in ("'", '"')

    # -- roles and assignments ---------------------------------------------------------------
    def role(self, text: str, path: str) -> Role | None:
        scope_name, sep, name = text.rpartition(":")
        if not sep:
            lowered = text.lower()
            return Role(lowered if lowered in BUILTIN_ROLES else text)
        scope = self.resolve(scope_name, path)
        return Role(name, scope) if scope else None

    def _assignments(self) -> tuple[Assignment, ...]:
        out: list[Assignment] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(self.data.get("assignments") or []):
            path = f"assignments[{i}]"
            role = self.role(item["role"], f"{path}.role")
            to = self._column_ref(item["to"], f"{path}.to")
            if role is None or to is None:
                continue
            table, user_column = to
            if role.builtin:
                self.error(f"{path}.role", f"{role} is a built-in role and cannot be assigned", "assign.builtin")
                continue
            scope_column = None
            if "scope" in item:
                scope = self._column_ref(item["scope"], f"{path}.scope")
                if scope is None:
                    continue
                if scope[0] != table:
                    self.error(
                        f"{path}.scope",
                        f"scope column must be on the same table as `to` ({table}), not {scope[0]}",
                        "assign.scope_table",
                    )
                    continue
                scope_column = scope[1]
                if role.scope is None:
                    self.error(
                        f"{path}.scope",
                        f"role {role} is global; write it as '<scope_table>:{role.name}' to scope it, or drop `scope`",
                        "assign.scope_global",
                    )
                    continue
            elif role.scope is not None:
                self.error(
                    path,
                    f"scoped role {role} needs `scope: {table.name}.<column referencing {role.scope.name}>`",
                    "assign.scope_missing",
                    key=False,
                )
                continue
            condition = None
            if "if" in item:
                condition = self.expression(
                    f"{path}.if", table=table, qualifiers={"this", table.name, str(table)}, allow_auth=False
                )
                if condition is None:
                    continue
            assignment = Assignment(role, table, user_column, scope_column, condition, self.src.at(path))
            if assignment.address in seen:
                self.error(
                    path,
                    f"role {role} is assigned to {table}.{user_column} twice (first at line {seen[assignment.address]})",
                    "assign.duplicate",
                )
                continue
            seen[assignment.address] = assignment.location.line
            out.append(assignment)
        return tuple(out)

    # -- grants ------------------------------------------------------------------------------
    def _grants(self, assigned_roles: set[str]) -> tuple[Grant, ...]:
        out: list[Grant] = []
        seen: dict[tuple[TableRef, str, str], int] = {}
        for i, item in enumerate(self.data.get("grants") or []):
            path = f"grants[{i}]"
            raw = item["privileges"]
            names = [raw] if isinstance(raw, str) else list(raw)
            privileges = sorted({p for n in names for p in PRIVILEGE_ALIASES.get(n, (n,))}, key=PRIVILEGES.index)
            table = self.resolve(item["on"], f"{path}.on")
            role = self.role(item["to"], f"{path}.to")
            if table is None or role is None:
                continue
            if not role.builtin and role.key not in assigned_roles:
                self.error(
                    f"{path}.to",
                    f"role {role} is not assigned by any entry under `assignments`; declare who holds it",
                    "grant.role_undeclared",
                )
                continue
            columns = item.get("columns")
            if columns is not None:
                dupes = sorted({c for c in columns if columns.count(c) > 1})
                if dupes:
                    self.error(f"{path}.columns", f"column {dupes[0]} is listed twice", "grant.column_duplicate")
                    continue
            where = None
            if "where" in item:
                where = self.expression(
                    f"{path}.where", table=table, qualifiers={"this", "new", table.name, str(table)}, allow_auth=True
                )
                if where is None:
                    continue
            grant = Grant(tuple(privileges), table, role, tuple(columns) if columns else None, where, self.src.at(path))
            clash = False
            for privilege in privileges:
                key = (table, role.key, privilege)
                if key in seen:
                    self.error(
                        path,
                        f"{privilege} on {table} is granted to {role} twice (first at line {seen[key]}); "
                        "merge the two grants",
                        "grant.duplicate",
                    )
                    clash = True
                    break
                seen[key] = grant.location.line
            if not clash:
                out.append(grant)
        return tuple(out)

    # -- shapes ------------------------------------------------------------------------------
    def _shapes(self) -> tuple[Shape, ...]:
        out: list[Shape] = []
        names: dict[str, int] = {}
        for i, item in enumerate(self.data.get("shapes") or []):
            path = f"shapes[{i}]"
            name = item["name"]
            if name in names:
                self.error(
                    f"{path}.name",
                    f"shape name {name!r} is used twice (first at line {names[name]})",
                    "shape.duplicate",
                )
                continue
            names[name] = self.src.at(path).line
            table = self.resolve(item["table"], f"{path}.table")
            if table is None:
                continue
            where = None
            if "where" in item:
                where = self.expression(
                    f"{path}.where", table=table, qualifiers={"this", table.name, str(table)}, allow_auth=True
                )
                if where is None:
                    continue
            includes = self._includes(item.get("include") or [], f"{path}.include", (table,))
            if includes:
                self.warn(
                    f"{path}.include",
                    f"shape {name!r}: include trees are validated and stored, but serve does not serve them yet;"
                    " it refuses a subscription to this shape rather than send its root table alone",
                    "not_enforced.include",
                    key=True,
                )
            if includes is None:
                continue
            out.append(Shape(name, table, where, includes, self.src.at(path)))
        return tuple(out)

    def _includes(self, items: list[Any], path: str, ancestors: tuple[TableRef, ...]) -> tuple[Include, ...] | None:
        out: list[Include] = []
        ok = True
        for j, item in enumerate(items):
            ipath = f"{path}[{j}]"
            table = self.resolve(item["table"], f"{ipath}.table")
            if table is None:
                ok = False
                continue
            if table in ancestors:
                cycle = " -> ".join(str(t.name) for t in (*ancestors, table))
                self.error(
                    f"{ipath}.table",
                    f"cyclic include: {cycle}; a table may appear only once on each path of the tree",
                    "shape.cycle",
                )
                ok = False
                continue
            where = None
            if "where" in item:
                where = self.expression(
                    f"{ipath}.where", table=table, qualifiers={"this", table.name, str(table)}, allow_auth=True
                )
                if where is None:
                    ok = False
                    continue
            children = self._includes(item.get("include") or [], f"{ipath}.include", (*ancestors, table))
            if children is None:
                ok = False
                continue
            fk = item.get("foreign_key")
            out.append(Include(table, tuple(fk) if fk else None, where, children, self.src.at(ipath)))
        return tuple(out) if ok else None

    # -- sqlite ------------------------------------------------------------------------------
    def _sqlite(self) -> tuple[SqliteStatement, ...]:
        out: list[SqliteStatement] = []
        seen: dict[str, int] = {}
        probe = sqlite3.connect(":memory:")
        try:
            for i, stmt in enumerate(self.data.get("sqlite") or []):
                path = f"sqlite[{i}]"
                text = stmt.strip().rstrip(";").strip()
                problem = _sqlite_problem(probe, text)
                if problem:
                    self.error(path, problem, "sqlite.invalid")
                    continue
                if text in seen:
                    self.error(path, f"this statement is listed twice (first at line {seen[text]})", "sqlite.duplicate")
                    continue
                seen[text] = self.src.at(path).line
                out.append(SqliteStatement(text, self.src.at(path)))
        finally:
            probe.close()
        if out:
            self.warn(
                "sqlite",
                "sqlite statements are validated and stored, but clients do not receive them yet"
                " (they arrive with migrations in the stream, a later release)",
                "not_enforced.sqlite",
                key=True,
            )
        return tuple(out)

    # -- auth --------------------------------------------------------------------------------
    def _auth(self) -> AuthConfig:
        raw = self.data.get("auth") or {}
        jwt_raw = raw.get("jwt") or {}
        jwt = JwtConfig(
            alg=jwt_raw.get("alg", "HS256"),
            key=jwt_raw.get("key") or None,
            key_is_base64=bool(jwt_raw.get("key_is_base64", False)),
            issuer=jwt_raw.get("issuer"),
            audience=jwt_raw.get("audience"),
            namespace=jwt_raw.get("namespace"),
        )
        mode = raw.get("mode", "secure")
        if mode == "secure":
            if not jwt.key:
                self.error(
                    "auth.jwt.key" if "jwt" in raw else "auth",
                    "secure mode needs auth.jwt.key (the HS secret or the RS/ES public key)",
                    "auth.key_missing",
                )
            elif jwt.alg.startswith(("RS", "ES")) and "-----BEGIN" not in jwt.key:
                self.error("auth.jwt.key", f"{jwt.alg} needs a PEM-encoded public key", "auth.key_format")
            elif jwt.key_is_base64:
                try:
                    base64.b64decode(jwt.key, validate=True)
                except binascii.Error:
                    self.error(
                        "auth.jwt.key", "key_is_base64 is true but the key is not valid base64", "auth.key_format"
                    )
        return AuthConfig(mode=mode, jwt=jwt)


def _sqlite_problem(probe: sqlite3.Connection, text: str) -> str | None:
    """Why ``text`` is not exactly one SQLite statement, or None if it is."""
    for i, ch in enumerate(text):
        if ch == ";" and sqlite3.complete_statement(text[: i + 1]) and text[i + 1 :].strip():
            return "must be exactly one SQLite statement; put each statement in its own list item"
    try:
        probe.execute("EXPLAIN " + text)
    except sqlite3.Error as exc:
        message = str(exc)
        # the statement refers to tables that exist only on clients: that is fine here
        if "syntax error" in message or "incomplete input" in message or "unrecognized token" in message:
            return f"invalid SQLite statement: {message}"
    return None
