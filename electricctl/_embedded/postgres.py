"""A throwaway PostgreSQL cluster started from the machine's own binaries.

Used by ``electricctl demo``, by ``serve``'s embedded default and by the test suite. It runs
``initdb`` and ``pg_ctl`` as the ``postgres`` OS user when we are root, because both refuse to
run as root (../shared/reference/measured-limits.md §1), and it always sets ``wal_level=logical`` so that logical
replication works.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from electricctl.errors import EmbeddedPostgresError

MIN_MAJOR = 15

# Settings that make a cluster usable for sync; `durable=False` adds the ones that trade crash
# safety for speed (fine for tests and the demo, never for real data).
BASE_SETTINGS: Mapping[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "listen_addresses": "127.0.0.1",
}
FAST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
}


def find_bindir() -> Path:
    """The newest PostgreSQL ``bin`` directory with a major version of at least 15."""
    candidates: list[tuple[int, Path]] = []
    env = os.environ.get("ELECTRICCTL_PG_BINDIR")
    if env:
        return Path(env)
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        for child in root.iterdir():
            if child.name.isdigit() and (child / "bin" / "initdb").exists():
                candidates.append((int(child.name), child / "bin"))
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir", "--version"], capture_output=True, text=True)
        lines = out.stdout.split("\n")
        if out.returncode == 0 and len(lines) >= 2:
            bindir = Path(lines[0].strip())
            major = int(lines[1].split()[1].split(".")[0])
            if (bindir / "initdb").exists():
                candidates.append((major, bindir))
    usable = sorted(c for c in candidates if c[0] >= MIN_MAJOR)
    if not usable:
        raise EmbeddedPostgresError(
            f"no PostgreSQL {MIN_MAJOR}+ server binaries found (looked in /usr/lib/postgresql/*/bin "
            "and pg_config). Install them, e.g. `apt-get install postgresql`, or set ELECTRICCTL_PG_BINDIR."
        )
    return usable[-1][1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedPostgres:
    """Start and stop a private cluster on a free loopback port.

    >>> with EmbeddedPostgres() as pg:          # doctest: +SKIP
    ...     psycopg.connect(pg.url("postgres"))
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        port: int | None = None,
        durable: bool = False,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._owns_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="electricctl-pg-"))
        self.port = port or free_port()
        self.bindir = find_bindir()
        self._settings = dict(BASE_SETTINGS)
        if not durable:
            self._settings.update(FAST_SETTINGS)
        self._settings.update(settings or {})
        self._running = False

    # -- paths -------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.base_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "log" / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    # -- lifecycle ---------------------------------------------------------------------------
    def _as_postgres(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        runuser = shutil.which("runuser")
        if runuser is None:
            raise EmbeddedPostgresError("running as root needs `runuser` to start PostgreSQL as `postgres`")
        return [runuser, "-u", "postgres", "--"]

    def _prepare_dirs(self) -> None:
        for d in (self.base_dir, self.data_dir.parent, self.socket_dir, self.log_file.parent):
            d.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise EmbeddedPostgresError(
                    "running as root, but there is no `postgres` OS user to run the cluster as"
                ) from exc
            # postgres must own its data, socket and log dirs and reach them through every ancestor
            for d in (self.base_dir, self.socket_dir, self.log_file.parent):
                os.chown(d, pw.pw_uid, pw.pw_gid)
            if self.data_dir.exists():
                os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
            for parent in self.base_dir.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)

    def _run(self, args: list[str], what: str) -> None:
        proc = subprocess.run([*self._as_postgres(), *args], capture_output=True, text=True)
        if proc.returncode != 0:
            log = ""
            if self.log_file.exists():
                log = "\n" + "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
            raise EmbeddedPostgresError(
                f"{what} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}{log}"
            )

    def start(self) -> EmbeddedPostgres:
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ],
                "initdb",
            )
        opts = [f"-c port={self.port}", f"-c unix_socket_directories={self.socket_dir}"]
        opts += [f"-c {k}={v}" for k, v in self._settings.items()]
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                "60",
                "-o",
                " ".join(opts),
                "start",
            ],
            "pg_ctl start",
        )
        self._running = True
        return self

    def stop(self, *, cleanup: bool | None = None) -> None:
        if self._running:
            self._run(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"], "pg_ctl stop"
            )
            self._running = False
        if cleanup if cleanup is not None else self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
