"""recipes/todo, headless: two copies of the app on one list, through a real `electricctl serve`,
update each other live, keep working while the server is down, and merge when it is back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.server_fixtures import Env, ServeProcess, applied_env

pytestmark = pytest.mark.asyncio

RECIPE = Path(__file__).parents[2] / "recipes" / "todo"
KEY = "recipe-secret-recipe-secret-recipe"


class App:
    """One copy of todo.py, fed commands on stdin; ``lists`` are the lists it printed."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.lists: list[list[str]] = []
        self.output: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        block: list[str] | None = None
        while line := (await self.proc.stdout.readline()).decode():
            self.output.append(line)
            text = line.rstrip("\n")
            if text.startswith("--- ") and block is None:
                block = []
            elif text == "---" and block is not None:
                self.lists.append(block)
                block = None
            elif block is not None:
                block.append(text.split(". ", 1)[1])

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()

    async def shows(self, items: set[str], timeout: float = 20) -> list[str]:
        deadline = asyncio.get_running_loop().time() + timeout
        while not (self.lists and set(self.lists[-1]) == items):
            if asyncio.get_running_loop().time() > deadline:
                last = self.lists[-1] if self.lists else None
                raise AssertionError(
                    f"{self.name} shows {last}, expected {sorted(items)}:\n{''.join(self.output)[-2000:]}"
                )
            await asyncio.sleep(0.05)
        return self.lists[-1]

    async def quit(self) -> None:
        await self.send("quit")
        await asyncio.wait_for(self.proc.wait(), 30)
        await self.reader


async def test_two_copies_share_a_list_live_offline_and_after_reconnect(db_url: str, tmp_path: Path) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute((RECIPE / "schema.sql").read_text())
    config = (RECIPE / "electric.yaml").read_text().replace("${DATABASE_URL}", db_url).replace("${AUTH_JWT_KEY}", KEY)
    env: Env = applied_env(db_url, tmp_path, config)
    env.data_dir.mkdir(parents=True, exist_ok=True)
    gen = tmp_path / "gen"
    done = subprocess.run(
        [sys.executable, "-m", "electricctl", "generate", "-f", str(env.config_path), "--out", str(gen / "todo_db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    serve = ServeProcess(env).start()
    apps: list[App] = []
    try:
        for name in ("alice", "bob"):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(RECIPE / "todo.py"),
                "--db",
                str(tmp_path / f"{name}.db"),
                "--url",
                serve.url,
                "--token",
                env.token(name),
                "--list",
                "groceries",
                "--headless",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(gen), str(RECIPE.parents[1])])},
            )
            apps.append(App(proc, name))
        alice, bob = apps
        await alice.shows(set())
        await alice.send("add milk")
        await bob.shows({"[ ] milk"})  # live, through the server
        await bob.send("done 1")
        await alice.shows({"[x] milk"})

        serve.stop()  # offline: each keeps working on its own file
        await alice.send("add eggs")
        await bob.send("add bread")
        await alice.shows({"[x] milk", "[ ] eggs"})
        await bob.shows({"[x] milk", "[ ] bread"})
        serve.start()  # back: both merge
        await alice.shows({"[x] milk", "[ ] eggs", "[ ] bread"}, timeout=40)
        await bob.shows({"[x] milk", "[ ] eggs", "[ ] bread"}, timeout=40)
        rows = env.sql("SELECT title, done FROM todos WHERE list_id = 'groceries' ORDER BY title")
        assert rows == [("bread", False), ("eggs", False), ("milk", True)]
        for app in apps:
            await app.quit()
    finally:
        for app in apps:
            if app.proc.returncode is None:
                app.proc.kill()
                await app.proc.wait()
        if serve.proc is not None and serve.proc.poll() is None:
            serve.stop()
