"""The control plane as a Python API: typed results with the CLI's exit meaning, the project's errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import electricctl
from electricctl.errors import CatalogError, ConfigError

EXAMPLE = Path(__file__).parents[1] / "electric.yaml.example"


def test_validate_needs_nothing_but_the_file() -> None:
    checked = electricctl.validate(EXAMPLE, env={})
    assert checked.exit_code == electricctl.OK and len(checked.config.tables) == 6
    assert checked.env_needed == ("AUTH_JWT_KEY", "DATABASE_URL") and checked.env_unset == checked.env_needed
    with pytest.raises(ConfigError, match="environment variable DATABASE_URL is not set"):
        electricctl.validate(EXAMPLE, env={}, strict_env=True)


def test_plan_apply_status_against_a_real_database(demo_db: str, write_config) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import DEMO_CONFIG

    cfg = write_config(DEMO_CONFIG)
    planned = electricctl.plan(cfg, database_url=demo_db)
    assert planned.exit_code == electricctl.CHANGES and planned.summary["create"] == len(planned.changes) > 0
    before = electricctl.status(cfg, database_url=demo_db)
    assert not before.in_sync and before.exit_code == electricctl.CHANGES and before.pending
    dry = electricctl.apply(cfg, database_url=demo_db, dry_run=True)
    assert not dry.applied and dry.plan.changes
    done = electricctl.apply(cfg, database_url=demo_db)
    assert done.applied and done.exit_code == electricctl.OK
    assert electricctl.plan(cfg, database_url=demo_db).exit_code == electricctl.OK
    after = electricctl.status(cfg, database_url=demo_db)
    assert after.in_sync and after.exit_code == electricctl.OK and not after.drift
    with pytest.raises(CatalogError, match="cannot connect"):
        electricctl.plan(cfg, database_url="postgresql://nobody@127.0.0.1:1/none")
