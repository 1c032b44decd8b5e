"""The current Electric clients over the HTTP Shape API: ``@electric-sql/client`` (ShapeStream + Shape)
and TanStack DB's Electric collection, installed from tests/compat/http/package-lock.json and driven
through tests/compat/http/shape-driver.mjs (its header lists every command).

A test starts one driver process and opens any number of streams and collections in it, each
under an id of its own::

    def test_live_update(shape_driver: ShapeDriver, ...) -> None:
        url = f"http://127.0.0.1:{port}/v1/shape"
        shape_driver.stream("s1", url, {"table": "items", "where": "n > $1", "params": {"1": "5"}}, token=token)
        ...  # write in Postgres
        rows = shape_driver.wait_rows("s1", lambda rows: any(r["n"] == 7 for r in rows))
        assert shape_driver.events("s1")["counts"].get("must-refetch", 0) == 0

        shape_driver.collection("c1", url, {"table": "items"}, token=token,
                                write_url=f"http://127.0.0.1:{port}/v1/transactions", table="items")
        shape_driver.insert("c1", {"id": 9, "n": 1})           # returns once the txid came back in the stream
        err = shape_driver.insert("c1", {"id": 10}, check=False)  # {"ok": False, "status": 403, "body": {...}}
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "shape-driver.mjs"
MAX_SAFE_INTEGER = 2**53 - 1


def install_node_modules() -> None:
    """``npm ci`` in tests/compat/http unless node_modules matches package-lock.json already
    (scripts/bootstrap does the same; both stamp node_modules/.electricctl-lock)."""
    lock = HERE / "package-lock.json"
    stamp = HERE / "node_modules" / ".electricctl-lock"
    if stamp.exists() and stamp.read_bytes() == lock.read_bytes():
        return
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the HTTP Shape API client tests (install Node.js 20 with npm)")
    # one install at a time, should several pytest processes get here together
    digest = hashlib.sha256(str(HERE).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"electricctl-npm-ci-{digest}.lock", "w") as lockfile:
        fcntl.flock(lockfile, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_bytes() == lock.read_bytes():
            return
        proc = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"npm ci in {HERE} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        shutil.copyfile(lock, stamp)


def to_js(value: Any) -> Any:
    """Python values for a command: an int past JavaScript's safe range becomes ``{"$bigint": "..."}``,
    which the driver reads as a BigInt (an int8 key, say), instead of a float that lost digits."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) > MAX_SAFE_INTEGER:
        return {"$bigint": str(value)}
    if isinstance(value, dict):
        return {k: to_js(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_js(v) for v in value]
    return value


class ShapeDriver:
    """tests/compat/http/shape-driver.mjs as a subprocess speaking JSON lines.

    ``call`` sends one command and returns its answer; it raises AssertionError (with the driver's
    stderr and, for a stream or collection, the requests it made) when the answer is not ``ok``,
    unless ``check=False``. A command that waits in the driver (``stream``, ``collection``, writes,
    ``snapshot``) is given the call's timeout, less a margin, so the driver answers before
    Python gives up.
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            ["node", str(DRIVER)],
            cwd=HERE,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            text=True,
        )
        self.log: collections.deque[str] = collections.deque(maxlen=300)
        """The newest lines the driver (and the npm clients) wrote to stderr, for failure messages."""
        self._numbers = itertools.count(1)
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        ready = self.read(timeout=60)
        assert ready.get("ready"), ready
        self.versions: dict[str, str] = ready["versions"]
        """The npm packages' versions, as installed."""

    # -- the process ------------------------------------------------------------------------------

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(list(self.log)[-lines:])

    def read(self, timeout: float = 30) -> dict[str, Any]:
        """The next answer line (a JSON object)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                answer: dict[str, Any] = json.loads(line)
                return answer
            if self.proc.poll() is not None:
                break
        if self.proc.poll() is not None:
            self._drain.join(5)
        raise AssertionError(
            f"the shape driver did not answer in {timeout} s (exit {self.proc.poll()}):\n{self.log_tail()}"
        )

    def call(self, cmd: str, timeout: float = 30, check: bool = True, **args: Any) -> dict[str, Any]:
        """Send one command and return its answer (see shape-driver.mjs for the commands)."""
        assert self.proc.stdin is not None
        n = next(self._numbers)
        command = {"cmd": cmd, "n": n, "timeout": int(max(timeout - 2, timeout * 0.8) * 1000), **to_js(args)}
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.proc.wait(timeout=10)
            self._drain.join(5)  # stderr is read by the drain thread: its lines are in the log
            raise AssertionError(
                f"the shape driver exited ({self.proc.returncode}) before {cmd!r}:\n{self.log_tail()}"
            ) from None
        deadline = time.monotonic() + timeout
        while True:
            answer = self.read(max(0.1, deadline - time.monotonic()))
            if answer.get("n") == n:
                break
            # the late answer of an earlier command that timed out here: not ours
        if check and not answer.get("ok"):
            raise AssertionError(self._failure(cmd, args, answer))
        return answer

    def _failure(self, cmd: str, args: dict[str, Any], answer: dict[str, Any]) -> str:
        text = f"{cmd} {json.dumps(args)[:500]} failed: {json.dumps(answer)[:3000]}"
        ident = args.get("id")
        if ident is not None and cmd not in ("events", "close", "exit") and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                events = self.call("events", timeout=10, check=False, id=ident).get("events", {})
                requests = [
                    f"  {r.get('method')} {r.get('url')} -> {r.get('status', r.get('error', 'pending'))}"
                    for r in events.get("requests", [])[-15:]
                ]
                text += "\nrequests (last 15):\n" + "\n".join(requests)
                if events.get("errors"):
                    text += f"\nerrors: {json.dumps(events['errors'])[:2000]}"
        return f"{text}\nthe driver's log:\n{self.log_tail()}"

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                self.call("exit", timeout=15)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._drain.join(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> ShapeDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- ShapeStream + Shape ------------------------------------------------------------------------

    def stream(
        self,
        ident: str,
        url: str,
        params: dict[str, Any],
        token: str | None = None,
        timeout: float = 30,
        check: bool = True,
        **options: Any,
    ) -> dict[str, Any]:
        """Start a ShapeStream and its Shape; returns once the first up-to-date arrived (or with the
        error when ``check=False``). ``params``: table, where, params, columns, replica and log (the
        stream's log mode). ``options``: offset, handle, headers, liveSse, retry, backoff, subscribe..."""
        if token is not None:
            options["token"] = token
        return self.call("stream", timeout=timeout, check=check, id=ident, url=url, params=params, **options)

    def shape_rows(self, ident: str) -> dict[str, dict[str, Any]]:
        """The Shape's rows by Electric key (``"public"."items"/"1"``)."""
        rows: dict[str, dict[str, Any]] = self.call("rows", id=ident)["rows"]
        return rows

    def events(self, ident: str, **since: int) -> dict[str, Any]:
        """What a stream (or collection) saw: requests, controls and their counts, change messages,
        errors, offset and handle (``since=``: skip the first N of a list, e.g. ``requests=3``)."""
        args: dict[str, Any] = {"since": since} if since else {}
        answer = self.call("events", id=ident, **args)
        events: dict[str, Any] = answer["events"]
        return events

    def snapshot(
        self,
        ident: str,
        subset: dict[str, Any],
        method: str = "GET",
        via: str | None = None,
        check: bool = True,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """A subset snapshot: ``stream.requestSnapshot`` (changes_only streams: the rows join the
        Shape) or ``stream.fetchSnapshot`` (``via="fetch"``; the default on full streams)."""
        args: dict[str, Any] = {"id": ident, "subset": subset, "method": method}
        if via is not None:
            args["via"] = via
        return self.call("snapshot", timeout=timeout, check=check, **args)

    def set_token(self, ident: str, token: str) -> None:
        """The bearer token of that stream's or collection's later requests."""
        self.call("token", id=ident, token=token)

    # -- TanStack DB collection ---------------------------------------------------------------------

    def collection(
        self,
        ident: str,
        url: str,
        params: dict[str, Any],
        token: str | None = None,
        write_url: str | None = None,
        table: str | None = None,
        key: str = "id",
        timeout: float = 30,
        check: bool = True,
        **options: Any,
    ) -> dict[str, Any]:
        """A TanStack DB Electric collection, preloaded (eager sync unless ``syncMode=``). Its writes
        POST to ``write_url``. ``options``: updateBody ("full" or "changes"), txidTimeout (ms),
        syncMode, headers, writeHeaders, retry, backoff."""
        if token is not None:
            options["token"] = token
        if write_url is not None:
            options["writeUrl"] = write_url
        return self.call(
            "collection",
            timeout=timeout,
            check=check,
            id=ident,
            url=url,
            params=params,
            table=table or params.get("table"),
            key=key,
            **options,
        )

    def insert(
        self, ident: str, row: dict[str, Any] | list[dict[str, Any]], check: bool = True, **options: Any
    ) -> dict[str, Any]:
        """Insert through the collection; returns when TanStack has the server's txid back in the
        stream (``isPersisted``), or with ``{"ok": False, "status", "body"}`` when ``check=False``."""
        rows = {"rows": row} if isinstance(row, list) else {"row": row}
        return self.call("insert", check=check, id=ident, **rows, **options)

    def update(
        self, ident: str, key: Any, changes: dict[str, Any], check: bool = True, **options: Any
    ) -> dict[str, Any]:
        """Update the row(s) with that key (a list: one transaction over several rows)."""
        keys = {"keys": key} if isinstance(key, list) else {"key": key}
        return self.call("update", check=check, id=ident, changes=changes, **keys, **options)

    def delete(self, ident: str, key: Any, check: bool = True, **options: Any) -> dict[str, Any]:
        """Delete the row(s) with that key (a list: one transaction over several rows)."""
        keys = {"keys": key} if isinstance(key, list) else {"key": key}
        return self.call("delete", check=check, id=ident, **keys, **options)

    def await_txid(self, ident: str, txid: int, within: float = 5, check: bool = True) -> dict[str, Any]:
        """TanStack's ``awaitTxId``: ok once the collection saw that Postgres txid (a change carrying it
        in ``headers.txids``, or a ``snapshot-end`` it is visible in) within ``within`` seconds."""
        return self.call("awaitTxId", timeout=within + 10, check=check, id=ident, txid=txid, within=int(within * 1000))

    def collection_rows(self, ident: str, virtual: bool = False) -> list[dict[str, Any]]:
        """The collection's rows (optimistic state included; ``virtual=True`` adds ``$synced`` and
        ``$origin``)."""
        rows: list[dict[str, Any]] = self.call("rows", id=ident, virtual=virtual)["rows"]
        return rows

    # -- both -----------------------------------------------------------------------------------------

    def rows(self, ident: str, sort_by: str | None = "id") -> list[dict[str, Any]]:
        """The rows of a stream's Shape or of a collection, sorted by ``sort_by`` when given."""
        answer = self.call("rows", id=ident)
        raw = answer["rows"]
        rows: list[dict[str, Any]] = list(raw.values()) if isinstance(raw, dict) else raw
        if sort_by is not None:
            rows.sort(key=lambda r: (r.get(sort_by) is None, r.get(sort_by)))
        return rows

    def wait_rows(
        self,
        ident: str,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 20,
        sort_by: str | None = "id",
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        rows = self.rows(ident, sort_by)
        while not predicate(rows):
            if time.monotonic() > deadline:
                raise AssertionError(self._failure("wait_rows", {"id": ident}, {"rows": rows}))
            time.sleep(0.05)
            rows = self.rows(ident, sort_by)
        return rows

    def wait_events(
        self, ident: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        events = self.events(ident)
        while not predicate(events):
            if time.monotonic() > deadline:
                raise AssertionError(self._failure("wait_events", {"id": ident}, {"events": events}))
            time.sleep(0.05)
            events = self.events(ident)
        return events

    def close_id(self, ident: str) -> None:
        """Stop one stream or collection."""
        self.call("close", id=ident)


@pytest.fixture(scope="session")
def http_node_modules() -> Path:
    """tests/compat/http/node_modules, installed with ``npm ci`` when missing or stale (skips the test
    when node or npm is not installed)."""
    install_node_modules()
    return HERE / "node_modules"


@pytest.fixture
def shape_drivers(http_node_modules: Path) -> Iterator[list[ShapeDriver]]:
    """A list to append started drivers to (more than one process, or one restarted): all closed after
    the test."""
    started: list[ShapeDriver] = []
    yield started
    for d in started:
        d.close()


@pytest.fixture
def shape_driver(shape_drivers: list[ShapeDriver]) -> ShapeDriver:
    """One started driver process, closed after the test."""
    driver = ShapeDriver()
    shape_drivers.append(driver)
    return driver
