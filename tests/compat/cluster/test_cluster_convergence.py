"""The randomized convergence test (../test_convergence.py) with instances as a new
dimension: two `serve` instances share one JetStream log; our two clients move between them as they
come back online (and on ``move`` steps), the npm client stays on one; ``server`` steps kill -9 or
SIGTERM the leader, or start what is down. After quiescence every client equals Postgres restricted
to its shape, each instance's mirror holds every transaction once in commit order, and the stream
holds each transaction (each part of it) once."""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from pathlib import Path

import nats
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from electricctl._log.filelog import FileLog
from electricctl.client import SyncClient
from tests.compat.cluster.test_instances import instance
from tests.compat.test_convergence import STEP, Scenario, Step, _settings, run_steps
from tests.conftest import Server, fresh_database
from tests.nats_fixtures import NatsServer
from tests.server_fixtures import Env, ServeProcess, build_env, get_health

CLUSTER_STEP = st.one_of(STEP, st.tuples(st.just("move"), st.integers(0, 1)))


class ClusterScenario(Scenario):
    def __init__(self, env: Env, tmp: Path, nats_server: NatsServer) -> None:
        super().__init__(env, tmp)
        self.nats = nats_server
        self.instances = [instance(env, f"{nats_server.url}/conv", tmp, i) for i in range(2)]
        self.serve = self.instances[1]  # the npm client's; ours move between both
        self.home = [0, 1]

    def running(self, inst: ServeProcess) -> bool:
        return inst.proc is not None and inst.proc.poll() is None

    async def start_serve(self) -> None:
        for inst in self.instances:
            if not self.running(inst):
                inst.data_dir.mkdir(parents=True, exist_ok=True)
                await asyncio.to_thread(inst.start)
        self.up = True

    async def start_client(self, i: int, first: bool = False) -> None:
        if not first:
            self.home[i] = 1 - self.home[i]  # back online: on the other instance
        inst = self.instances[self.home[i]]
        if not self.running(inst):
            self.home[i] = 1 - self.home[i]
            inst = self.instances[self.home[i]]
        self.history.append(f"  (client{i} connects to instance {self.home[i]})")
        cl = SyncClient(str(self.path(i)), inst.url, self.env.token(f"user-{i}"), poll_interval=0.01)
        await cl.start()
        self.ours[i] = cl
        if first:
            sub = await cl.subscribe("items", None if i == 0 else "this.n >= 0")
            await cl.synced(sub)

    def _leader(self, timeout: float = 10) -> ServeProcess | None:
        """The leader, once there is one (a failover takes up to the 2 s lease)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for inst in self.instances:
                if self.running(inst) and get_health(inst.port)[1].get("role") == "leader":
                    return inst
            time.sleep(0.1)
        return None

    async def step(self, step: Step) -> None:
        if step[0] != "server":
            await super().step(step)
            return
        if step[1] == "start":
            if not all(self.running(i) for i in self.instances):
                self.history.append("start the instances that are down")
                await self.start_serve()
                if self.npm_crashed:
                    await asyncio.to_thread(self._restart_npm)
            return
        alive = [i for i in self.instances if self.running(i)]
        if len(alive) < 2:
            return  # one instance is left: it keeps serving
        leader = await asyncio.to_thread(self._leader)
        assert leader is not None, "no instance took the lease"
        n = self.instances.index(leader)
        self.history.append(f"{step[1]} the leader (instance {n})")
        await asyncio.to_thread(leader.stop, signal.SIGKILL if step[1] == "kill" else signal.SIGTERM)

    async def other_step(self, step: Step) -> None:
        if step[0] == "move":
            cl = self.ours[step[1]]
            if cl is not None:
                await cl.stop()
                self.ours[step[1]] = None
                await self.start_client(step[1])

    async def quiesce(self) -> None:
        await self.start_serve()
        if self.npm_crashed:
            await asyncio.to_thread(self._restart_npm)
        await super().quiesce()

    async def check_log(self) -> None:
        for inst in self.instances:
            if self.running(inst):
                await asyncio.to_thread(inst.stop)
        self.up = False
        for inst in self.instances:
            mirror = FileLog(inst.data_dir / "log", cache_size=1).open()
            lsns = [t.lsn for t in mirror.read_after(0, 1_000_000)]
            mirror.close()
            assert lsns == sorted(set(lsns)), f"{inst.data_dir.name}'s mirror holds a transaction twice or out of order"
        nc = await nats.connect(self.nats.url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("conv")
            seen: set[tuple[str, str]] = set()
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                h = (await js.get_msg("conv", seq)).headers or {}
                if "Electric-Lsn" in h:
                    key = (h["Electric-Lsn"], h.get("Electric-Part", "1/1"))
                    assert key not in seen, f"the stream holds {key} twice"
                    seen.add(key)
        finally:
            await nc.close()

    async def close(self) -> None:
        await super().close()
        for inst in self.instances:
            if self.running(inst):
                inst.stop(signal.SIGKILL)


async def run_cluster_scenario(steps: list[Step], pg_server: Server, tmp: Path) -> None:
    nats_server = NatsServer(tmp / "nats-store").start()
    try:
        with fresh_database(pg_server) as url:
            await run_steps(ClusterScenario(build_env(url, tmp), tmp, nats_server), steps)
    finally:
        nats_server.stop()


# every run covers each dimension at least once, whatever hypothesis draws
FAILOVERS: list[Step] = [
    ("write", 0, "upsert", "k1", True),
    ("pg", "upsert", "k2", True),
    ("server", "kill"),
    ("write", 1, "upsert", "k1", False),
    ("move", 0),
    ("write", 2, "upsert", "k3", True),
    ("offline", 1),
    ("write", 1, "delete", "k1", True),
    ("server", "start"),
    ("online", 1),
    ("server", "term"),
    ("pg", "delete", "k2", True),
    ("write", 0, "upsert", "k2", True),
    ("move", 1),
    ("server", "start"),
    ("write", 1, "upsert", "k4", True),
]


@pytest.mark.timeout(600)
@functools.partial(_settings, examples=1)  # and the explicit example: ~20 s each
@example(steps=FAILOVERS)
@given(steps=st.lists(CLUSTER_STEP, min_size=12, max_size=24))
def test_clients_converge_across_instances_with_failovers(
    steps: list[Step], pg_server: Server, node_modules: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    asyncio.run(run_cluster_scenario(steps, pg_server, tmp_path_factory.mktemp("cluster-convergence")))
