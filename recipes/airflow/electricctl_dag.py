"""An Airflow DAG that reconciles electric.yaml with Postgres: plan, then apply when there are changes.

Put this file (and electric.yaml) where your scheduler reads DAGs, with electricctl installed in the
workers' environment. DATABASE_URL comes from an Airflow connection's URI or the environment.
``ElectricctlApplyOperator`` is built on electricctl's Python API (``electricctl.plan`` / ``apply``),
so a failure is the project's error (a located config finding, a lock timeout), not a shell's exit code.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from airflow import DAG
from airflow.models import BaseOperator
from airflow.operators.python import ShortCircuitOperator

import electricctl

CONFIG = os.path.join(os.path.dirname(__file__), "electric.yaml")


class ElectricctlApplyOperator(BaseOperator):
    """Apply electric.yaml (one transaction, under electricctl's advisory lock); returns the summary."""

    template_fields = ("file", "database_url")

    def __init__(
        self,
        *,
        file: str,
        database_url: str | None = None,
        lock_timeout: float = 120.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.file = file
        self.database_url = database_url
        self.lock_timeout = lock_timeout

    def execute(self, context: Any) -> dict[str, int]:
        done = electricctl.apply(
            self.file, database_url=self.database_url, lock_timeout=self.lock_timeout
        )
        self.log.info("electricctl apply: %s (applied: %s)", done.summary, done.applied)
        return done.summary


def has_changes(file: str, database_url: str | None = None) -> bool:
    """The plan's detailed exit code: CHANGES means there is something to apply."""
    planned = electricctl.plan(file, database_url=database_url)
    return planned.exit_code == electricctl.CHANGES


with DAG(
    dag_id="electricctl_reconcile",
    start_date=dt.datetime(2026, 1, 1),
    schedule="@hourly",
    catchup=False,
    tags=["electricctl"],
) as dag:
    validate = ShortCircuitOperator(
        task_id="validate",
        python_callable=lambda: (
            electricctl.validate(CONFIG).exit_code == electricctl.OK
        ),
    )
    plan = ShortCircuitOperator(
        task_id="plan", python_callable=has_changes, op_kwargs={"file": CONFIG}
    )
    apply = ElectricctlApplyOperator(task_id="apply", file=CONFIG)
    validate >> plan >> apply
