"""Several `electricctl serve` instances sharing one JetStream log (`--log nats://...`): one leader
reads the slot, every instance serves its own clients; the leader is killed, NATS restarts, clients
move between instances. Real processes, a real nats-server of the test's own, real Postgres."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from electricctl.client import SyncClient
from tests.compat.conftest import Driver
from tests.nats_fixtures import NatsServer
from tests.server_fixtures import Env, ServeProcess, get_health


def instance(env: Env, log_url: str, tmp: Path, i: int) -> ServeProcess:
    """One serve of a cluster: the shared log, a short lease (failovers in tests take ~2 s), its own
    data dir."""
    return ServeProcess(
        env,
        *("--log", log_url, "--lease", "2s", "--drain-timeout", "5s"),
        log_dir=tmp,
        data_dir=tmp / f"instance-{i}",
    )


def electricctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "electricctl", *args], capture_output=True, text=True, timeout=60, check=False
    )


class Cluster:
    def __init__(self, env: Env, nats: NatsServer, tmp: Path, n: int = 3) -> None:
        self.env = env
        self.nats = nats
        self.instances = [instance(env, f"{nats.url}/cluster", tmp, i) for i in range(n)]

    def start(self) -> None:
        for inst in self.instances:
            inst.data_dir.mkdir(parents=True, exist_ok=True)
            inst.start()

    def alive(self) -> list[ServeProcess]:
        return [i for i in self.instances if i.proc is not None and i.proc.poll() is None]

    def roles(self) -> dict[int, str]:
        out = {}
        for inst in self.alive():
            _, body = get_health(inst.port)
            out[inst.port] = str(body.get("role"))
        return out

    def leader(self, timeout: float = 15) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while True:
            leaders = [i for i in self.alive() if get_health(i.port)[1].get("role") == "leader"]
            if len(leaders) == 1 and get_health(leaders[0].port)[0] == 200:
                return leaders[0]
            assert len(leaders) <= 1, f"two leaders at once: {self.roles()}"
            assert time.monotonic() < deadline, f"no leader after {timeout}s: {self.roles()}\n{self.logs()}"
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(f"--- {i.port}:\n{i.log_text()[-3000:]}" for i in self.instances)

    def stop(self) -> None:
        for inst in self.alive():
            assert inst.proc is not None
            os.kill(inst.proc.pid, signal.SIGKILL)
            inst.proc.wait()


@pytest.fixture
def cluster(env: Env, nats_server: NatsServer, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(env, nats_server, tmp_path)
    try:
        yield c
    finally:
        c.stop()


def _rows(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path, timeout=10)
    try:
        return {r[0]: r[1] for r in conn.execute("SELECT id, n FROM items")}
    finally:
        conn.close()


def _expected(env: Env) -> dict[str, Any]:
    return {str(r[0]): r[1] for r in env.sql("SELECT id, n FROM items")}


async def _converged(env: Env, paths: list[Path], cluster: Cluster, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        want = _expected(env)
        got = [_rows(p) for p in paths]
        if all(g == want for g in got):
            return
        if time.monotonic() > deadline:
            diffs = "\n".join(
                f"  {p.name}: {sorted(set(g.items()) ^ set(want.items()))[:10]}" for p, g in zip(paths, got)
            )
            raise AssertionError(f"clients did not converge with Postgres:\n{diffs}\n{cluster.logs()}")
        await asyncio.sleep(0.1)


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
        return doc


def _local_write(path: Path, sql: str, args: tuple[Any, ...]) -> None:
    conn = sqlite3.connect(path, timeout=10)
    try:
        with conn:
            conn.execute(sql, args)
    finally:
        conn.close()


async def test_one_leader_every_instance_serves_and_a_killed_leader_is_replaced(
    cluster: Cluster, env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="electricctl")
    cluster.start()
    leader = cluster.leader()
    roles = cluster.roles()
    assert sorted(roles.values()) == ["follower", "follower", "leader"], roles
    # every instance's /health lists them all, and `status --serve` shows it
    follower = next(i for i in cluster.instances if i is not leader)
    deadline = time.monotonic() + 10
    while True:
        listed = _status(follower.port).get("instances") or []
        if sorted(i["role"] for i in listed) == ["follower", "follower", "leader"]:
            break
        assert time.monotonic() < deadline, listed
        await asyncio.sleep(0.2)
    assert {i["address"] for i in listed} == {f"127.0.0.1:{i.port}" for i in cluster.instances}
    shown = electricctl("status", "--serve", f"http://127.0.0.1:{follower.port}", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    served = json.loads(shown.stdout)["serve"]
    assert served["role"] == "follower" and len(served["instances"]) == 3
    # and `status --log` reads the same from NATS, without asking any instance
    shown = electricctl("status", "--log", f"{cluster.nats.url}/cluster", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)["instances"]
    assert doc["leader"]["address"] == f"127.0.0.1:{leader.port}"
    assert sorted(i["role"] for i in doc["instances"]) == ["follower", "follower", "leader"]
    text = electricctl("status", "--log", f"{cluster.nats.url}/cluster")
    assert text.returncode == 0 and f"127.0.0.1:{leader.port}" in text.stdout, text.stdout + text.stderr
    missing = electricctl("status", "--log", f"{cluster.nats.url}/nosuch")
    assert missing.returncode == 1 and "no stream 'nosuch'" in missing.stderr, missing.stderr
    # a client on every instance, each subscribed to the whole table
    clients: list[SyncClient] = []
    paths = []
    for i, inst in enumerate(cluster.instances):
        path = tmp_path / f"client-{i}.db"
        cl = SyncClient(str(path), inst.url, env.token(f"user-{i}"), poll_interval=0.01)
        await cl.start()
        await cl.synced(await cl.subscribe("items"))
        clients.append(cl)
        paths.append(path)
    try:
        env.psql("INSERT INTO items (id, n) SELECT 'p' || g, g FROM generate_series(1, 50) g")
        for i in range(len(clients)):  # and writes from clients on followers and on the leader
            _local_write(paths[i], "INSERT INTO items (id, n) VALUES (?, ?)", (f"c{i}", i))
        await _converged(env, paths, cluster)

        # kill -9 the leader mid-stream: another instance takes the slot and nothing is lost
        writer = asyncio.create_task(asyncio.to_thread(_write_storm, env, "w", 200))
        await asyncio.sleep(0.3)
        assert leader.proc is not None
        killed_at = time.monotonic()
        os.kill(leader.proc.pid, signal.SIGKILL)
        leader.proc.wait()
        await writer
        successor = cluster.leader(timeout=15)
        took = time.monotonic() - killed_at
        assert successor is not leader
        assert took < 10, f"the new leader took {took:.1f}s"
        survivors = [i for i, inst in enumerate(cluster.instances) if inst is not leader]
        await _converged(env, [paths[i] for i in survivors], cluster, timeout=30)

        # the client of the dead instance moves to a surviving one and resumes without a resync
        gone = cluster.instances.index(leader)
        old = clients[gone]
        await old.stop()
        target = cluster.instances[survivors[0]]
        moved = SyncClient(str(paths[gone]), target.url, env.token(f"user-{gone}"), poll_interval=0.01)
        await moved.start()
        clients[gone] = moved
        _local_write(paths[gone], "UPDATE items SET n = -1 WHERE id = ?", ("p1",))
        await _converged(env, paths, cluster, timeout=30)
        resumed = [r.getMessage() for r in caplog.records if "cannot resume" in r.getMessage()]
        assert not resumed, resumed
    finally:
        for cl in clients:
            await cl.stop()


def _write_storm(env: Env, prefix: str, n: int) -> None:
    for k in range(n):
        env.sql("INSERT INTO items (id, n) VALUES (%s, %s)", (f"{prefix}{k}", k))
        time.sleep(0.005)


async def test_sigterm_hands_over_nats_restarts_and_a_client_moves_mid_write(
    cluster: Cluster, env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture, node_modules: Path
) -> None:
    """The npm client on one instance, ours on another; the leader is stopped with SIGTERM (it
    hands the slot over at once), NATS restarts, and our client moves between instances while it
    writes. Every client ends equal to Postgres; nothing lost, nothing twice."""
    caplog.set_level("WARNING", logger="electricctl")
    cluster.start()
    leader = cluster.leader()
    a, b = [i for i in cluster.instances if i is not leader]
    ours = tmp_path / "ours.db"
    cl = SyncClient(str(ours), a.url, env.token("ours"), poll_interval=0.01)
    await cl.start()
    await cl.synced(await cl.subscribe("items"))
    npm = await asyncio.to_thread(Driver, b.url.replace("ws://", "http://").removesuffix("/ws"), env.token("npm"))
    try:
        await asyncio.to_thread(npm.call, "subscribe", table="items")

        def npm_rows() -> dict[str, Any]:
            return {r["id"]: r["n"] for r in npm.rows("items")}

        async def converged(timeout: float = 40) -> None:
            deadline = time.monotonic() + timeout
            while True:
                want = _expected(env)
                got = [_rows(ours), await asyncio.to_thread(npm_rows)]
                if all(g == want for g in got):
                    return
                if time.monotonic() > deadline:
                    diffs = [sorted(set(g.items()) ^ set(want.items()))[:10] for g in got]
                    raise AssertionError(f"clients did not converge: ours {diffs[0]}, npm {diffs[1]}\n{cluster.logs()}")
                await asyncio.sleep(0.1)

        # SIGTERM on the leader during writes from Postgres and from both clients
        storm = asyncio.create_task(asyncio.to_thread(_write_storm, env, "t", 100))
        for k in range(10):
            _local_write(ours, "INSERT INTO items (id, n) VALUES (?, ?)", (f"o{k}", k))
            await asyncio.to_thread(npm.call, "exec", sql="INSERT INTO items (id, n) VALUES (?, ?)", args=[f"j{k}", k])
            if k == 3:
                assert leader.stop(signal.SIGTERM) == 0
                t0 = time.monotonic()
                successor = cluster.leader(timeout=10)
                handover = time.monotonic() - t0
                assert successor in (a, b)
                # handed over as it stopped (measured: 0.01 s), not when its 2 s lease ran out
                assert handover < 1.0, f"the slot was handed over {handover:.1f}s after the leader exited"
        await storm
        await converged()

        # NATS restarts while Postgres and the clients write
        storm = asyncio.create_task(asyncio.to_thread(_write_storm, env, "n", 60))
        await asyncio.sleep(0.1)
        await asyncio.to_thread(cluster.nats.restart)
        for k in range(5):
            _local_write(ours, "UPDATE items SET n = ? WHERE id = ?", (100 + k, f"o{k}"))
        await storm
        await converged(timeout=60)

        # our client moves from a to b in the middle of its writes
        for k in range(5):
            _local_write(ours, "UPDATE items SET n = ? WHERE id = ?", (200 + k, f"o{k}"))
        await cl.stop()
        cl = SyncClient(str(ours), b.url, env.token("ours"), poll_interval=0.01)
        await cl.start()
        for k in range(5, 10):
            _local_write(ours, "UPDATE items SET n = ? WHERE id = ?", (200 + k, f"o{k}"))
        await cl.flush(timeout=60)
        await converged()
        assert {k: v for k, v in _expected(env).items() if k.startswith("o")} == {f"o{k}": 200 + k for k in range(10)}
        resumed = [r.getMessage() for r in caplog.records if "cannot resume" in r.getMessage()]
        assert not resumed, resumed
    finally:
        await cl.stop()
        await asyncio.to_thread(npm.close)


async def test_a_tree_client_whose_instance_is_killed_between_saves_resumes_elsewhere(
    cluster: Cluster, env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The keys an include tree gives a client are shared before they are sent, not only with the
    state saved (at most once a second): the instance it moves to knows it holds them."""
    caplog.set_level("WARNING", logger="electricctl")
    env.sql("INSERT INTO parents VALUES ('p1', 'one')")
    env.sql("INSERT INTO children VALUES ('c0', 'p1', 0)")
    cluster.start()
    leader = cluster.leader()
    a, b = [i for i in cluster.instances if i is not leader]
    path = tmp_path / "tree.db"

    def children() -> set[str]:
        conn = sqlite3.connect(path, timeout=10)
        try:
            return {r[0] for r in conn.execute("SELECT id FROM children")}
        finally:
            conn.close()

    async def until(check: Any, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"{what}: children {children()}\n{cluster.logs()}"
            await asyncio.sleep(0.05)

    cl = SyncClient(str(path), a.url, env.token("tree"), poll_interval=0.01)
    await cl.start()
    try:
        await cl.synced(await cl.subscribe("parents", "id = 'p1'", include={"children": True}))
        await asyncio.sleep(1.5)  # its state, with c0, is saved (saves come at most once a second)
        env.sql("INSERT INTO children VALUES ('c1', 'p1', 1)")
        await until(lambda: "c1" in children(), "c1 arriving live")
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGKILL)  # before its next save
        a.proc.wait()
        await cl.stop()
        env.sql("DELETE FROM children WHERE id = 'c1'")  # while the client is away
        cl = SyncClient(str(path), b.url, env.token("tree"), poll_interval=0.01)
        await cl.start()
        await until(lambda: children() == {"c0"}, "c1 leaving after the client moved")
        env.sql("INSERT INTO children VALUES ('c2', 'p1', 2)")
        await until(lambda: children() == {"c0", "c2"}, "the tree staying live on the new instance")
        resumed = [r.getMessage() for r in caplog.records if "cannot resume" in r.getMessage()]
        assert not resumed, resumed
    finally:
        await cl.stop()
