"""`electricctl serve` that cannot start says why in one line, with no traceback (issue 11, errors)."""

from __future__ import annotations

import socket
import subprocess
import sys

from electricctl._embedded.postgres import free_port
from tests.server_fixtures import Env


def _serve(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "electricctl", "serve", "-f", str(env.config_path), "--slot", env.slot, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_port_in_use_is_one_line(env: Env) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(env, "--database-url", env.url, "--port", str(port), "--data-dir", str(env.data_dir))
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "pick another --port" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_database_is_one_line(env: Env) -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    done = _serve(env, "--database-url", url, "--port", "0", "--data-dir", str(env.data_dir))
    assert done.returncode == 1
    assert "cannot connect to the database" in done.stderr and "check --database-url" in done.stderr
    assert "Traceback" not in done.stderr
