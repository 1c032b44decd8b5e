"""The real electric-sql@0.12.1 npm client, installed from tests/compat/package-lock.json."""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import select
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# the HTTP Shape API clients (@electric-sql/client, TanStack DB): fixtures for tests/compat and below
from tests.compat.http.driver import http_node_modules, shape_driver, shape_drivers  # noqa: F401

HERE = Path(__file__).resolve().parent


def ensure_node_modules() -> None:
    """scripts/bootstrap installs the npm client (`npm ci`); fail clearly if it has not."""
    stamp = HERE / "node_modules" / ".electricctl-lock"
    if not stamp.exists() or stamp.read_bytes() != (HERE / "package-lock.json").read_bytes():
        raise RuntimeError(f"the npm client is not installed in {HERE}: run scripts/bootstrap (it runs npm ci)")


@pytest.fixture(scope="session")
def node_modules() -> Path:
    ensure_node_modules()
    return HERE / "node_modules"


def bundled_migrations(ws_url: str, timeout: float = 20) -> list[dict[str, Any]]:
    """What ``electric-sql generate`` bundles with an app: every migration's ``metadata.json``
    from the server's ``/api/migrations?dialect=sqlite`` zip, oldest first."""
    parts = urllib.parse.urlsplit(ws_url)
    url = urllib.parse.urlunsplit(
        ("https" if parts.scheme == "wss" else "http", parts.netloc, "/api/migrations", "dialect=sqlite", "")
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = resp.read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    if not body:
        return []
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith("/metadata.json"))
        return [json.loads(zf.read(n)) for n in names]


class Driver:
    """tests/compat/electrify-driver.mjs as a subprocess speaking JSON lines.

    Its app bundles the migrations the server has when it starts (as an app built with
    ``electric-sql generate`` against that server would); later ones arrive in the stream.
    """

    def __init__(
        self,
        url: str,
        token: str,
        sqlite_file: str = ":memory:",
        tables: str | None = None,
        migrations: list[dict[str, Any]] | None = None,
        relations: str | None = None,
    ) -> None:
        self.migrations = bundled_migrations(url) if migrations is None else migrations
        """The app's bundle (pass it to a restarted driver: an app restarts with the bundle it has)."""
        self.proc = subprocess.Popen(
            ["node", str(HERE / "electrify-driver.mjs")],
            cwd=HERE,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={
                **os.environ,
                "ELECTRIC_URL": url,
                "ELECTRIC_TOKEN": token,
                "SQLITE_FILE": sqlite_file,
                "ELECTRIC_MIGRATIONS": json.dumps(self.migrations),
                **({"ELECTRIC_TABLES": tables} if tables else {}),
                **({"ELECTRIC_RELATIONS": relations} if relations else {}),
            },
            text=True,
        )
        self.log: collections.deque[str] = collections.deque(maxlen=300)
        """The newest lines the npm client wrote to stderr (its log), for failure messages."""
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        ready = self.read(timeout=60)
        assert ready.get("ready"), ready

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(list(self.log)[-lines:])

    def read(self, timeout: float = 30) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                return json.loads(line)
            if self.proc.poll() is not None:
                break
        if self.proc.poll() is not None:
            self._drain.join(5)
        raise AssertionError(f"the npm client did not answer (exit {self.proc.poll()}): {self.log_tail()}")

    def call(self, cmd: str, timeout: float = 30, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.proc.wait(timeout=10)
            self._drain.join(5)  # stderr is read by the drain thread: its lines are in the log
            raise AssertionError(
                f"the npm client exited ({self.proc.returncode}) before {cmd!r}: {self.log_tail()}"
            ) from None
        answer = self.read(timeout)
        assert answer.get("ok"), answer
        return answer

    def rows(self, table: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.call("rows", table=table)["rows"]
        return rows

    def wait_rows(self, table: str, predicate: Any, timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        rows = self.rows(table)
        while not predicate(rows):
            if time.monotonic() > deadline:
                raise AssertionError(f"rows never matched: {rows}\nthe npm client's log:\n{self.log_tail()}")
            time.sleep(0.1)
            rows = self.rows(table)
        return rows

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("exit", timeout=10)
            except AssertionError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._drain.join(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                # stdin may still hold a command the dead process never read: closing flushes it and
                # fails, and must not leave the other pipes open (their ResourceWarnings fail a later test)
                with contextlib.suppress(OSError):
                    stream.close()


@pytest.fixture
def drivers(node_modules: Path) -> Iterator[list[Driver]]:
    started: list[Driver] = []
    yield started
    for d in started:
        d.close()
