"""electric.yaml → JSON Schema check → one validator per section → :class:`ElectricConfig`.

The loader only orchestrates. :mod:`~electricctl._config.yamlsrc` parses the YAML and remembers
where each node came from, :mod:`~electricctl._config.schema` checks the shape of the data, and
then each section's validator (:mod:`electricctl._config.sections`) builds its part of the model,
reporting into one shared :class:`~electricctl._config.diagnostics.DiagnosticSink`.

Every check here works without a database: the schema, expression parsing and whitelisting,
references between declarations, acyclic include trees and unique names. Checks that need the
live schema (columns exist, foreign keys exist, types are supported) live in the planner.
All problems are collected, not just the first, and each names ``file:line:col`` and the path.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from electricctl._config import yamlsrc
from electricctl._config.diagnostics import DiagnosticSink, by_position
from electricctl._config.model import ElectricConfig
from electricctl._config.references import DeclaredTables
from electricctl._config.schema import json_schema, schema_diagnostics
from electricctl._config.sections.assignments import validate_assignments
from electricctl._config.sections.auth import validate_auth
from electricctl._config.sections.grants import validate_grants
from electricctl._config.sections.settings import validate_settings
from electricctl._config.sections.shapes import validate_shapes
from electricctl._config.sections.sqlite import validate_sqlite
from electricctl._config.sections.tables import validate_tables
from electricctl.errors import ConfigError, Diagnostic, Location

__all__ = ["json_schema", "load_file", "load_text", "require_auth_key", "validate"]


def load_file(
    path: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    database_url: str | None = None,
    strict_env: bool = True,
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
    return load_text(text, str(p), env=env, database_url=database_url, strict_env=strict_env)


def load_text(
    text: str,
    file: str,
    *,
    env: Mapping[str, str] | None = None,
    database_url: str | None = None,
    strict_env: bool = True,
) -> ElectricConfig:
    """Validate ``text`` (the contents of ``file``); raise :class:`ConfigError` with every problem found.

    ``env`` defaults to the process environment; ``database_url`` overrides ``database.url``.
    Findings that are not errors come back in :attr:`ElectricConfig.warnings`. With
    ``strict_env`` False (``validate`` without secrets), an unset variable is no error, and neither
    is what its empty value would make wrong: the values are not checked, the rest is.
    """
    env = os.environ if env is None else env
    skip = ("database.url",) if database_url else ()
    src, diags = yamlsrc.load(text, file, env, skip_env_errors=skip, strict_env=strict_env)
    unresolved = set(src.env_unset)

    def resolved(found: list[Diagnostic]) -> list[Diagnostic]:
        if strict_env or not unresolved:
            return found
        return [d for d in found if not _under(d.location.path, unresolved)]

    if src.data is None and not diags:
        diags.append(
            Diagnostic(Location(file, 1, 1, "<root>"), "the file is empty; it needs at least `version: 1`", "empty")
        )
    if diags:
        raise ConfigError(diags)
    if database_url and isinstance(src.data, dict) and isinstance(src.data.get("database"), dict):
        src.data["database"]["url"] = database_url  # the override wins, even over an unset ${VAR}
    diags.extend(resolved(schema_diagnostics(src)))
    if diags:
        raise ConfigError(by_position(diags))
    sink = DiagnosticSink(src, text)
    config = validate(sink, database_url)
    items = resolved(list(sink.items))
    if any(d.level == "error" for d in items):
        raise ConfigError(by_position(items))
    unset = tuple(sorted({n for names in src.env_unset.values() for n in names}))
    return dataclasses.replace(config, warnings=tuple(by_position(items)), env_unset=unset)


def _under(path: str, roots: set[str]) -> bool:
    """Is ``path`` one of ``roots`` or inside one (``auth.jwt.key`` is inside ``auth.jwt``)?"""
    return any(path == r or path.startswith((r + ".", r + "[")) for r in roots)


def validate(sink: DiagnosticSink, database_url: str | None = None) -> ElectricConfig:
    """Run every section's validator over schema-valid data; what they find goes to ``sink``.

    The returned config holds only the declarations that are valid: check ``sink.has_errors``.
    """
    data = sink.src.data
    specs = validate_tables(data.get("tables"), sink)
    tables = DeclaredTables(sink, specs)
    named: set[str] = set()
    assignments = validate_assignments(data.get("assignments"), tables, named)
    grants = validate_grants(data.get("grants"), tables, named)
    shapes = validate_shapes(data.get("shapes"), tables)
    sqlite = validate_sqlite(data.get("sqlite"), sink)
    settings = validate_settings(data, database_url)
    auth = validate_auth(data.get("auth"), sink)
    env_refs = sorted({name for names in sink.src.env_refs.values() for name in names})
    return ElectricConfig(
        file=sink.file,
        version=settings.version,
        database_url=settings.database_url,
        auth=auth,
        tables=specs,
        assignments=assignments,
        grants=grants,
        shapes=shapes,
        adhoc_shapes=settings.adhoc_shapes,
        sqlite=sqlite,
        env_refs=tuple(env_refs),
    )


def require_auth_key(config: ElectricConfig, command: str) -> None:
    """``serve`` and ``token`` verify and sign tokens: in secure mode they need the key, which
    loading only warns about (validate, plan and apply run without it). ConfigError if it is missing."""
    missing = [d for d in config.warnings if d.code == "auth.key_missing"]
    if missing:
        d = missing[0]
        raise ConfigError(
            [dataclasses.replace(d, message=f"{d.message}; `{command}` cannot run without it", level="error")]
        )
