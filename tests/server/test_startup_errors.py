"""`electricctl serve` that cannot start says why in one line, with no traceback (issue 11, errors)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from electricctl._embedded.postgres import free_port
from tests.nats_fixtures import nats_server_binary
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
    started = time.monotonic()
    done = _serve(env, "--database-url", url, "--port", "0", "--data-dir", str(env.data_dir), "--db-wait", "1s")
    assert done.returncode == 1
    # it waited (Postgres may have been starting), then said so in one line
    assert time.monotonic() - started >= 1.0
    assert "waiting up to 1s for Postgres" in done.stderr
    assert "cannot connect to the database" in done.stderr and "within 1s" in done.stderr
    assert "check --database-url" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_wrong_database_name_fails_at_once_without_waiting(env: Env) -> None:
    url = env.url.rsplit("/", 1)[0] + "/no_such_database"
    done = _serve(env, "--database-url", url, "--port", "0", "--data-dir", str(env.data_dir), "--db-wait", "60s")
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "waiting" not in done.stderr
    assert "Traceback" not in done.stderr


def _serve_until_exit(env: Env, url: str) -> subprocess.CompletedProcess[str]:
    return _serve(env, "--database-url", url, "--port", "0", "--data-dir", str(env.data_dir))


def test_a_slot_with_another_plugin_stops_serve_with_one_line(env: Env) -> None:
    env.sql("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", [env.slot])
    done = _serve_until_exit(env, env.url)
    assert done.returncode == 1
    assert f"replication slot {env.slot} exists but uses the plugin test_decoding" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_user_without_the_replication_privilege_stops_serve_with_one_line(env: Env) -> None:
    role = "norepl_" + env.slot[-8:]
    env.sql(f"CREATE ROLE {role} LOGIN")
    env.sql(f"GRANT USAGE ON SCHEMA electric TO {role}")
    env.sql(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA electric TO {role}")
    url = env.url.replace("postgres@", f"{role}@")
    try:
        done = _serve_until_exit(env, url)
    finally:
        env.sql(f"DROP OWNED BY {role}")
        env.sql(f"DROP ROLE {role}")
    assert done.returncode == 1
    assert "needs the REPLICATION privilege" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_publication_stops_serve_with_one_line(env: Env) -> None:
    import time

    env.sql("DROP PUBLICATION electric_publication")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "electricctl", "serve", "-f", str(env.config_path), "--slot", env.slot,
            "--database-url", env.url, "--port", "0", "--data-dir", str(env.data_dir),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        i = 0
        while proc.poll() is None and time.monotonic() < deadline:
            i += 1
            env.sql("INSERT INTO other VALUES (%s, 'x')", [i])  # pgoutput notices when it decodes a change
            time.sleep(0.2)
        assert proc.poll() == 1
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert 'publication "electric_publication" does not exist: run `electricctl apply`' in err, err
    assert "Traceback" not in err


def test_a_slot_another_serve_streams_from_stops_serve_after_slot_wait(env: Env) -> None:
    """Two databases of one server, or two serves of one database, with the same slot name: the
    second said 'slot is active for PID' and retried forever. It now waits --slot-wait (a previous
    serve's walsender may linger), then stops with the reason and the fix."""
    from tests.server_fixtures import ServeProcess

    first = ServeProcess(env).start()
    try:
        started = time.monotonic()
        other_dir = env.data_dir.parent / "second"
        done = _serve(env, "--database-url", env.url, "--port", "0", "--data-dir", str(other_dir), "--slot-wait", "1s")
        assert done.returncode == 1, done.stderr
        assert time.monotonic() - started >= 1.0
        assert "is active for PID" in done.stderr and "give each serve its own --slot" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        first.stop()


def test_serve_says_when_the_file_has_changes_that_are_not_applied(env: Env) -> None:
    from tests.server_fixtures import ServeProcess

    text = env.config_path.read_text()
    env.config_path.write_text(text.replace("shapes:\n", "shapes:\n  - name: unapplied\n    table: other\n", 1))
    serve = ServeProcess(env).start()
    try:
        log = serve.log_text()
        assert "has changes that are not applied (1 to create, 0 to update, 0 to delete)" in log, log
        assert "run `electricctl apply`" in log
    finally:
        serve.stop()
        env.config_path.write_text(text)


def test_json_logs_carry_the_client_and_user_on_every_line_about_them(env: Env) -> None:
    import asyncio
    import json

    from tests.satellite_client import SatelliteClient
    from tests.server_fixtures import ServeProcess

    serve = ServeProcess(env, "--log-format", "json").start()
    try:

        async def misbehave() -> str:
            cl = await SatelliteClient(serve.url).connect()
            await cl.authenticate(env.token("ada"))
            assert cl.ws is not None
            await cl.ws.send(b"\x07\x00")  # an unknown message type: the server logs it, and closes
            await cl.wait_for(lambda: cl.closed_with is not None)
            return cl.client_id

        client_id = asyncio.run(misbehave())
        deadline = time.monotonic() + 10
        while "broke the protocol" not in serve.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        serve.stop()
    lines = [json.loads(line) for line in serve.log_text().splitlines() if line.strip()]  # every line is JSON
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    (broke,) = [line for line in lines if "broke the protocol" in line["msg"]]
    assert broke["client_id"] == client_id and broke["user"] == "ada" and broke["level"] == "info"


def test_an_unreachable_nats_log_is_one_line(env: Env) -> None:
    log = f"nats://127.0.0.1:{free_port()}/prod"
    args = ("--database-url", env.url, "--port", "0", "--data-dir", str(env.data_dir), "--db-wait", "1s")
    done = _serve(env, *args, "--log", log)
    assert done.returncode == 1
    assert f"cannot reach NATS at {log}" in done.stderr and "nats-server running with -js" in done.stderr
    assert "Traceback" not in done.stderr
    done = _serve(env, *args, "--log", "http://127.0.0.1:4222")
    assert done.returncode == 64 and "expected nats://HOST:PORT[/STREAM]" in done.stderr  # a usage error


def test_nats_without_jetstream_is_one_line(env: Env, tmp_path: Path) -> None:
    port = free_port()
    plain = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        done = _serve(
            env,
            *("--database-url", env.url, "--port", "0", "--data-dir", str(tmp_path / "d"), "--db-wait", "2s"),
            *("--log", f"nats://127.0.0.1:{port}/prod"),
        )
    finally:
        plain.terminate()
        plain.wait(10)
    assert done.returncode == 1
    assert "answers, but without JetStream: start nats-server with -js" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
