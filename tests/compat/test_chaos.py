"""Chaos: the randomized convergence run (our two clients, the npm client, direct Postgres writers,
clients offline, serve stopped and SIGKILLed) with two real faults injected at random points: the
data dir's disk fills up (a small tmpfs taken by a ballast file, freed later), and Postgres
restarts (a private cluster, so the shared test cluster stays up). It must end with every client
equal to Postgres and the log holding each transaction once: nothing lost, nothing duplicated.

Derandomized like the convergence test; ``ELECTRICCTL_CHAOS_EXAMPLES`` runs more examples and
``ELECTRICCTL_CONVERGENCE_SEED`` explores other histories.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st

from electricctl._embedded.postgres import EmbeddedPostgres
from tests.compat.test_convergence import _SEED, STEP, Scenario, Step, run_steps
from tests.faults import Tmpfs, tmpfs
from tests.server_fixtures import build_env, get_health

CHAOS_STEP = st.one_of(
    STEP,
    st.tuples(st.just("disk"), st.sampled_from(["full", "free"])),
    st.tuples(st.just("postgres"), st.just("restart")),
)


class ChaosScenario(Scenario):
    def __init__(self, pg: EmbeddedPostgres, fs: Tmpfs, tmp: Path) -> None:
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE app")
        env = dataclasses.replace(build_env(pg.url("app"), tmp), data_dir=fs.path / "data")
        super().__init__(env, tmp)
        self.pg = pg
        self.fs = fs
        self.ballast: Path | None = None

    async def start_serve(self) -> None:
        # with the disk full, serve starts but is not ready (503) until there is room: do not wait
        await asyncio.to_thread(self.serve.start, self.ballast is None)
        self.up = True

    async def other_step(self, step: Step) -> None:
        if step == ("disk", "full") and self.ballast is None:
            self.history.append("disk full")
            self.ballast = await asyncio.to_thread(self.fs.fill)
        elif step == ("disk", "free") and self.ballast is not None:
            self.history.append("disk freed")
            self.ballast.unlink()
            self.ballast = None
        elif step == ("postgres", "restart"):
            self.history.append("postgres restart")
            await asyncio.to_thread(self.pg.stop, cleanup=False)
            await asyncio.to_thread(self.pg.start)

    async def quiesce(self) -> None:
        if self.ballast is not None:
            self.history.append("disk freed")
            self.ballast.unlink()
            self.ballast = None
        if not self.up:
            await self.start_serve()
        deadline = time.monotonic() + 60
        health: object = None
        while True:  # the log is writable again, replication runs
            assert self.serve.proc is not None and self.serve.proc.poll() is None, "serve exited"
            try:
                health = get_health(self.serve.port)
            except OSError as exc:  # not listening yet
                health = exc
            if isinstance(health, tuple) and health[0] == 200:
                break
            assert time.monotonic() < deadline, f"serve did not recover: {health}"
            await asyncio.sleep(0.1)
        await super().quiesce()


async def run_chaos(steps: list[Step], tmp: Path) -> None:
    with tmpfs(tmp, "24m") as fs:
        pg = EmbeddedPostgres(tmp / "pg").start()
        try:
            await run_steps(ChaosScenario(pg, fs, tmp), steps)
        finally:
            await asyncio.to_thread(pg.stop, cleanup=True)


def _settings(f: object) -> object:
    f = settings(
        max_examples=int(os.environ.get("ELECTRICCTL_CHAOS_EXAMPLES", "2")),
        deadline=None,
        derandomize=_SEED is None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )(f)  # type: ignore[call-overload]
    if _SEED is not None:
        f = seed(int(_SEED))(f)
    return f


# every fault at a bad moment: writes from every kind of client while the disk is full, serve
# SIGKILLed and started again while it is full, Postgres restarted around writes
WORST: list[Step] = [
    ("write", 0, "upsert", "k0", True),
    ("disk", "full"),
    ("pg", "upsert", "k1", True),
    ("write", 1, "upsert", "k2", True),
    ("write", 2, "upsert", "k3", True),
    ("settle",),
    ("postgres", "restart"),
    ("pg", "delete", "k0", False),
    ("server", "kill"),
    ("write", 2, "upsert", "k1", False),
    ("server", "start"),
    ("write", 0, "delete", "k1", True),
    ("settle",),
    ("disk", "free"),
    ("postgres", "restart"),
    ("write", 2, "upsert", "k0", False),
    ("pg", "upsert", "k4", True),
    ("write", 1, "upsert", "k4", True),
]


@pytest.mark.timeout(900)
@_settings  # type: ignore[misc]
@example(steps=WORST)
@given(steps=st.lists(CHAOS_STEP, min_size=12, max_size=24))
def test_clients_converge_through_full_disks_and_postgres_restarts(
    steps: list[Step], node_modules: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    asyncio.run(run_chaos(steps, tmp_path_factory.mktemp("chaos")))
