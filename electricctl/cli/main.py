"""The ``electricctl`` command line: thin click commands over service functions.

Exit codes (see :class:`electricctl.errors.ExitCode`): 0 success / no changes, 1 error,
2 changes or drift present (with ``--detailed-exitcode``), 3 lock timeout, 64 bad usage.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.markup import escape

from electricctl import __version__
from electricctl._apply import applier
from electricctl._config.loader import load_file, require_auth_key
from electricctl._config.model import ElectricConfig
from electricctl.cli import render, summaries
from electricctl.errors import ConfigError, DiagnosticsError, ElectricError, ExitCode

F = TypeVar("F", bound=Callable[..., Any])

OUTPUT = click.Choice(["human", "json"])


def file_option(f: F) -> F:
    return click.option(
        "-f",
        "--file",
        "file",
        default="electric.yaml",
        show_default=True,
        envvar="ELECTRICCTL_FILE",
        type=click.Path(dir_okay=False),
        help="The config file.",
    )(f)


def database_option(f: F) -> F:
    return click.option(
        "--database-url",
        default=None,
        help="PostgreSQL URL; overrides database.url in the file (which defaults to $DATABASE_URL).",
    )(f)


def output_option(f: F) -> F:
    return click.option("-o", "--output", type=OUTPUT, default="human", show_default=True, help="Output format.")(f)


def _load(file: str, database_url: str | None = None) -> ElectricConfig:
    return load_file(file, database_url=database_url)


def _json_errors(exc: ElectricError) -> None:
    """With ``-o json``, errors go to stdout as JSON too, so CI can parse every outcome."""
    if isinstance(exc, DiagnosticsError):
        render.print_json({"format_version": "1.0", "errors": [d.as_json() for d in exc.diagnostics]})
    else:
        render.print_json({"format_version": "1.0", "errors": [{"level": "error", "message": str(exc)}]})
    raise SystemExit(exc.exit_code) from None


def _url(config: ElectricConfig, override: str | None) -> str:
    url = applier.database_url(config, override)
    if not url:
        raise click.UsageError(
            f"no database: pass --database-url, set DATABASE_URL, or set database.url in {config.file}"
        )
    return url


def _database_name(url: str) -> str:
    return applier.redact(url)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="electricctl")
def cli() -> None:
    """Local-first sync for PostgreSQL.

    Declare what to sync in electric.yaml; `validate`, `plan` and `apply` reconcile it with Postgres.
    """


@cli.command()
@file_option
@output_option
@click.option(
    "--strict-env", is_flag=True, help="Fail when a variable the file reads is unset (as plan, apply and serve do)."
)
def validate(file: str, output: str, strict_env: bool) -> None:
    """Check the file without a database or secrets: schema, expressions, references, include trees.

    Exits 0 if valid, 1 if not. Each problem reads FILE:LINE:COL: message (at yaml.path). The
    environment variables the file reads are listed; unset ones pass (their values are not
    checked) unless --strict-env.
    """
    try:
        config = load_file(file, strict_env=strict_env)
    except ConfigError as exc:
        if output == "json":
            render.print_json(
                {"format_version": "1.0", "valid": False, "diagnostics": [d.as_json() for d in exc.diagnostics]}
            )
            raise SystemExit(ExitCode.ERROR) from None
        raise
    env = {"needed": list(config.env_refs), "unset": list(config.env_unset)}
    if output == "json":
        render.print_json(
            {
                "format_version": "1.0",
                "valid": True,
                "diagnostics": [d.as_json() for d in config.warnings],
                "env": env,
            }
        )
    else:
        render.diagnostics(render.console(stderr=True), config.warnings)
        n = len(config.tables)
        render.console().print(
            f"[green]{file} is valid:[/green] {n} table{'s' * (n != 1)}, {len(config.assignments)} assignments, "
            f"{len(config.grants)} grants, {len(config.shapes)} shapes, {len(config.sqlite)} sqlite statements."
        )
        if config.env_refs:
            names = ", ".join(f"{n}{' (not set)' if n in config.env_unset else ''}" for n in config.env_refs)
            render.console().print(f"It reads the environment: {names}.")


@cli.command()
@file_option
@database_option
@click.option(
    "-o",
    "--output",
    type=click.Choice(["human", "json", "markdown"]),
    default="human",
    show_default=True,
    help="Output format (markdown: for a pull-request comment).",
)
@click.option("--prune", is_flag=True, help="Also plan removing what the file no longer declares.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 for no changes, 2 for changes, 1 for errors.")
@click.option("--sql/--no-sql", "show_sql", default=True, show_default=True, help="Show the SQL of each change.")
def plan(
    file: str, database_url: str | None, output: str, prune: bool, detailed_exitcode: bool, show_sql: bool
) -> None:
    """Compare the file with the live database and print the changes `apply` would make."""
    try:
        config = _load(file, database_url)
        the_plan, _ = applier.load_plan(config, _url(config, database_url), prune=prune)
    except ElectricError as exc:
        if output == "json":
            _json_errors(exc)
        raise
    url = _url(config, database_url)
    if output == "json":
        render.print_json(summaries.plan_json(the_plan))
    elif output == "markdown":
        click.echo(summaries.plan_markdown(the_plan, database=_database_name(url), file=file), nl=False)
    else:
        render.plan(render.console(wide=True), the_plan, database=_database_name(url), show_sql=show_sql)
    if detailed_exitcode and not the_plan.empty:
        raise SystemExit(ExitCode.CHANGES)


@cli.command()
@file_option
@database_option
@output_option
@click.option("--prune", is_flag=True, help="Remove electrified tables, rules and shapes no longer in the file.")
@click.option("--allow-empty", is_flag=True, help="Allow --prune when the file declares no tables at all.")
@click.option("--dry-run", is_flag=True, help="Print the SQL and change nothing.")
@click.option(
    "--lock-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for a concurrent apply (or a lock on a table); then exit 3.",
)
@click.option("--sql/--no-sql", "show_sql", default=False, show_default=True, help="Show the SQL of each change.")
@click.option(
    "--watch",
    is_flag=True,
    help="Keep reconciling: apply again when the file changes, and every --interval (repairing drift). One log line a pass.",
)
@click.option("--once", is_flag=True, help="Apply once and exit (the default; for scripts that want to say so).")
@click.option("--interval", default="60s", show_default=True, help="With --watch: how often to look for drift.")
def apply(
    file: str,
    database_url: str | None,
    output: str,
    prune: bool,
    allow_empty: bool,
    dry_run: bool,
    lock_timeout: float,
    show_sql: bool,
    watch: bool,
    once: bool,
    interval: str,
) -> None:
    """Make the database match the file, in one transaction under an advisory lock."""
    if watch and once:
        raise click.UsageError("--watch and --once contradict each other")
    if watch:
        _reconcile(file, database_url, prune, allow_empty, lock_timeout, _seconds(interval))
        return
    try:
        config = _load(file, database_url)
        url = _url(config, database_url)
        result = applier.apply(
            config, url, prune=prune, dry_run=dry_run, lock_timeout=lock_timeout, allow_empty=allow_empty
        )
    except ElectricError as exc:
        if output == "json":
            _json_errors(exc)
        raise
    if output == "json":
        render.print_json({**summaries.plan_json(result.plan), "applied": result.applied, "dry_run": dry_run})
        return
    con = render.console(wide=True)
    render.plan(
        con,
        result.plan,
        database=_database_name(url),
        show_sql=show_sql or dry_run,
        verb="would make" if dry_run else "made",
    )
    if dry_run and not result.plan.empty:
        con.print("\n[bold]Dry run:[/bold] nothing was changed.")
    elif result.applied:
        con.print(f"\n[green]Applied.[/green] Recorded config {result.plan.config_hash}.")


@cli.command()
@file_option
@database_option
@output_option
@click.option(
    "--detailed-exitcode", is_flag=True, help="Exit 0 when in sync, 2 on drift or pending changes, 1 on errors."
)
@click.option(
    "--serve",
    "serve_url",
    default=None,
    metavar="URL",
    help=(
        "Also show a running serve's state (clients, lag, traffic, denials, errors, latency, the last error),"
        " read from URL/metrics and URL/health, e.g. http://127.0.0.1:5133. The database part is shown too"
        " when --database-url is given or the -f file exists and names a database (database.url or"
        " $DATABASE_URL); otherwise only the serve part. Exit 1 when serve cannot be reached."
    ),
)
@click.option(
    "--watch",
    is_flag=True,
    help="With --serve: refresh the serve part every --interval until Ctrl-C (-o json: one JSON line each time).",
)
@click.option("--interval", default="2s", show_default=True, help="With --watch: how often to refresh.")
@click.option(
    "--log",
    "log_url",
    default=None,
    metavar="nats://HOST:PORT/STREAM",
    help=(
        "Also list the serve instances sharing this JetStream log (serve --log): the leader, each one's"
        " address, clients and lag, read from NATS. Exit 1 when NATS cannot be reached."
    ),
)
def status(
    file: str,
    database_url: str | None,
    output: str,
    detailed_exitcode: bool,
    serve_url: str | None,
    watch: bool,
    interval: str,
    log_url: str | None,
) -> None:
    """What is applied against what the file says: drift, pending changes, replication slots; with
    --serve, a running serve's live state as well."""
    from electricctl.cli import serve_status

    if watch and serve_url is None:
        raise click.UsageError("--watch refreshes a serve's state: give it --serve URL")
    every = _seconds(interval)
    st: applier.Status | None = None
    served: dict[str, Any] | None = None
    cluster: dict[str, Any] | None = None
    try:
        elsewhere = serve_url is not None or log_url is not None
        if not elsewhere or database_url is not None or Path(file).is_file():
            config = _load(file, database_url)
            if not elsewhere or applier.database_url(config, database_url):
                st = applier.status(config, _url(config, database_url))
        if serve_url is not None:
            served = serve_status.read(serve_url)
        if log_url is not None:
            from electricctl.cli import cluster_status

            cluster = cluster_status.read(log_url)
    except ElectricError as exc:
        if output == "json":
            _json_errors(exc)
        raise
    if output == "json":
        doc: dict[str, Any] = (
            render.status_json(st, file_hash=st.plan.config_hash)
            if st is not None
            else {"format_version": summaries.FORMAT_VERSION}
        )
        if served is not None:
            doc["serve"] = served
        if cluster is not None:
            doc["instances"] = cluster
        if watch:  # JSON lines, one per refresh
            print(json.dumps(doc, default=str), flush=True)
        else:
            render.print_json(doc)
    else:
        con = render.console(wide=True)
        if st is not None:
            render.status_report(con, st, file_hash=st.plan.config_hash)
        if served is not None and not watch:
            if st is not None:
                con.print()
            con.print(render.serve_report(served))
        if cluster is not None:
            if st is not None or served is not None:
                con.print()
            con.print(render.instances_report(cluster))
    if watch and serve_url is not None and served is not None:
        _watch_serve(serve_url, served, every, as_json=output == "json")
    if detailed_exitcode and st is not None and (not st.in_sync or st.problems):
        raise SystemExit(ExitCode.CHANGES)


def _watch_serve(url: str, first: dict[str, Any], every: float, *, as_json: bool) -> None:
    """``status --serve --watch``: read the serve again every ``every`` seconds until Ctrl-C. A read
    that fails is shown (the last numbers stay) and retried."""
    from rich.live import Live

    from electricctl.cli import serve_status

    summary, at = first, time.monotonic()

    def refresh() -> str | None:
        nonlocal summary, at
        now = time.monotonic()
        try:
            summary = serve_status.read(url, previous=summary, elapsed=now - at)
        except serve_status.ServeUnreachable as exc:
            return str(exc)
        at = now
        return None

    try:
        if as_json:
            while True:
                time.sleep(every)
                problem = refresh()
                print(json.dumps({"serve": summary} if problem is None else {"error": problem}), flush=True)
        with Live(render.serve_report(summary), console=render.console(), auto_refresh=False) as live:
            while True:
                time.sleep(every)
                problem = refresh()
                live.update(render.serve_report(summary, problem=problem), refresh=True)
    except KeyboardInterrupt:
        return


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")


def _seconds(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 30m, 12h or 7d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _bytes(text: str, option: str) -> int:
    """``16KiB``, ``1MiB``, ``500`` (bytes) or ``2MB``; at least 1."""
    m = re.fullmatch(r"\s*(\d+)\s*(|B|KB|KiB|MB|MiB)\s*", text)
    if not m or int(m.group(1)) < 1:
        raise click.BadParameter(f"{text!r} is not a size like 16KiB or 1MiB", param_hint=option)
    scale = {"": 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2}[m.group(2)]
    return int(m.group(1)) * scale


@cli.command()
@file_option
@database_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", default=5133, show_default=True, type=int, help="Port to listen on (0: any free port).")
@click.option(
    "--data-dir",
    default=".electricctl",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the durable transaction log and client state live.",
)
@click.option("--slot", default="electricctl", show_default=True, help="Name of the replication slot to own.")
@click.option("--log-retention", default="7d", show_default=True, help="How long clients can stay away and resume.")
@click.option("--send-timeout", default="30s", show_default=True, help="Drop a client that has not read for this long.")
@click.option(
    "--unacked-window", default=300, show_default=True, help="Transactions a client may leave unacked (Electric: 30)."
)
@click.option(
    "--max-tree-rows",
    default=1_000_000,
    show_default=True,
    help=(
        "Rows one client's include trees may hold (the server keeps their keys in memory): a subscription"
        " over it is refused; live growth past it is served and logged."
    ),
)
@click.option(
    "--max-transaction-ops",
    default=100_000,
    show_default=True,
    help="Refuse client transactions with more operations than this (the client gets a clear error).",
)
@click.option(
    "--read-only", is_flag=True, help="Do not ask clients for their writes (they stay queued on the clients)."
)
@click.option(
    "--auth-timeout", default="10s", show_default=True, help="Close connections that have not authenticated by then."
)
@click.option(
    "--db-wait",
    default="10s",
    show_default=True,
    help=(
        "At startup, wait this long for a Postgres that is not up yet (refusing connections, starting up),"
        " and for NATS with --log nats://."
    ),
)
@click.option(
    "--slot-wait",
    default="15s",
    show_default=True,
    help="At startup, wait this long for a replication slot another process streams from, then stop with the reason.",
)
@click.option(
    "--max-pending-per-peer",
    default=64,
    show_default=True,
    help="Connections from one address still waiting to authenticate; more are refused (429).",
)
@click.option(
    "--max-connections-per-peer",
    default=4096,
    show_default=True,
    help="Open connections from one address (a proxy counts as one); more are refused (429).",
)
@click.option(
    "--log-cache-mb",
    default=64,
    show_default=True,
    help="Memory for the newest log transactions (clients that keep up are served from it).",
)
@click.option(
    "--snapshots-per-user",
    default=2,
    show_default=True,
    help="Subscription snapshots one user may hold at once (of 4 pooled connections).",
)
@click.option(
    "--min-send-rate",
    default="16KiB",
    show_default=True,
    help="Drop a client that reads subscription data slower than this per second (after --send-timeout).",
)
@click.option(
    "--watch/--no-watch",
    default=True,
    show_default=True,
    help=(
        "Hot reload: re-read the catalog as soon as `apply` commits (it notifies), and reassess connected"
        " clients whose grants or shapes changed (rows leave or arrive, no reconnect)."
    ),
)
@click.option(
    "--watch-interval",
    default="2s",
    show_default=True,
    help="With --watch: how often to look for an apply whose notification did not come (a pooler drops them).",
)
@click.option(
    "--long-poll",
    default="20s",
    show_default=True,
    help="HTTP Shape API: how long a live request (live=true) waits for a change before answering up-to-date.",
)
@click.option(
    "--shape-log-max",
    default="256MiB",
    show_default=True,
    help="HTTP Shape API: a shape's log past this size is rotated (its clients refetch a fresh snapshot).",
)
@click.option(
    "--drain-timeout",
    default="10s",
    show_default=True,
    help=(
        "On SIGTERM: stop accepting, finish writes in flight, confirm the log, close clients with 1012;"
        " exit after this long whatever is left."
    ),
)
@click.option(
    "--log",
    "log_url",
    default=None,
    metavar="nats://HOST:PORT[/STREAM]",
    help=(
        "Keep the transaction log on NATS JetStream (nats-server -js), shared by every serve given the same"
        " URL and --slot: one of them reads the slot, each serves its own clients. Default: the file log in"
        " --data-dir, for one serve."
    ),
)
@click.option(
    "--log-replicas", default=1, show_default=True, help="With --log nats://: JetStream replicas of the stream."
)
@click.option(
    "--lease",
    default="6s",
    show_default=True,
    help="With --log nats://: the leader lease; a leader that dies is replaced within this (SIGTERM hands over at once).",
)
@click.option("--no-fsync", is_flag=True, hidden=True, help="Testing only: do not fsync the log.")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning"]))
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="json: one object per line, with the client id, user, LSN and subscription id where they apply.",
)
def serve(
    file: str,
    database_url: str | None,
    host: str,
    port: int,
    data_dir: str,
    slot: str,
    log_retention: str,
    send_timeout: str,
    unacked_window: int,
    max_tree_rows: int,
    max_transaction_ops: int,
    read_only: bool,
    auth_timeout: str,
    db_wait: str,
    slot_wait: str,
    max_pending_per_peer: int,
    max_connections_per_peer: int,
    log_cache_mb: int,
    snapshots_per_user: int,
    min_send_rate: str,
    watch: bool,
    watch_interval: str,
    long_poll: str,
    shape_log_max: str,
    drain_timeout: str,
    log_url: str | None,
    log_replicas: int,
    lease: str,
    no_fsync: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Run the sync service: logical replication in, the Satellite protocol out on ws://HOST:PORT/ws."""
    import asyncio
    import logging
    import signal

    from electricctl._server.app import Server, tune_malloc
    from electricctl._server.options import ServeOptions

    config = _load(file, database_url)
    require_auth_key(config, "serve")
    url = _url(config, database_url)
    if log_url is not None:
        from electricctl._log.jetstream import NatsTarget

        try:
            NatsTarget.parse(log_url)
        except ValueError as exc:
            raise click.BadParameter(str(exc).removeprefix(f"--log {log_url!r}: "), param_hint="--log") from None
    if log_format == "json":
        from electricctl._logctx import use_json

        use_json(log_level)
    else:
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log_level.lower() == "info":
        # websockets logs every connect and close at info: the bulk of a busy server's log, and
        # nothing an operator acts on (errors still show); --log-level debug brings them back
        logging.getLogger("websockets").setLevel(logging.WARNING)
    tune_malloc()
    server = Server(
        config,
        url,
        ServeOptions(
            host=host,
            port=port,
            data_dir=Path(data_dir),
            slot=slot,
            retention_seconds=_seconds(log_retention),
            send_timeout=_seconds(send_timeout),
            unacked_window=unacked_window,
            max_tree_rows=max_tree_rows,
            fsync=not no_fsync,
            max_transaction_ops=max_transaction_ops,
            start_client_replication=not read_only,
            auth_timeout=_seconds(auth_timeout),
            db_wait=_seconds(db_wait),
            slot_wait=_seconds(slot_wait),
            max_pending_per_peer=max_pending_per_peer,
            max_connections_per_peer=max_connections_per_peer,
            log_cache_bytes=log_cache_mb << 20,
            snapshots_per_user=snapshots_per_user,
            min_send_rate=_bytes(min_send_rate, "--min-send-rate"),
            watch=watch,
            watch_interval=_seconds(watch_interval),
            drain_timeout=_seconds(drain_timeout),
            long_poll_seconds=_seconds(long_poll),
            shape_log_bytes=_bytes(shape_log_max, "--shape-log-max"),
            log_url=log_url,
            log_replicas=log_replicas,
            lease_seconds=_seconds(lease),
        ),
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.run(stop)

    asyncio.run(main())


def _reconcile(
    file: str, database_url: str | None, prune: bool, allow_empty: bool, lock_timeout: float, interval: float
) -> None:
    """The GitOps loop: apply now, again when the file changes, and every ``interval`` seconds
    (repairing drift made by hand). A pass that fails is logged and retried at the next one; the
    loop ends on SIGINT or SIGTERM."""
    import signal
    import threading
    import time as time_mod
    from pathlib import Path

    import watchfiles

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    def log(text: str) -> None:
        stamp = time_mod.strftime("%Y-%m-%dT%H:%M:%S%z")
        click.echo(f"{stamp} {text}", nl=True)
        sys.stdout.flush()

    def one_pass(why: str) -> None:
        try:
            config = _load(file, database_url)
            result = applier.apply(
                config, _url(config, database_url), prune=prune, lock_timeout=lock_timeout, allow_empty=allow_empty
            )
        except Exception as exc:  # a pass that fails for any reason is said, and retried at the next
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log(f"{why}: error: {first} (retrying at the next pass)")
            return
        n = summaries.counts(result.plan)
        drift = sum(1 for c in result.plan.changes if c.drift)
        if result.applied:
            log(
                f"{why}: applied {n['create']} to create, {n['update']} to update, {n['delete']} to delete"
                f"{f' ({drift} drift repaired)' if drift else ''}; config {result.plan.config_hash}"
            )
        else:
            log(f"{why}: no changes")

    log(f"reconciling {file} every {interval:g}s and on change (SIGINT or SIGTERM stops)")
    one_pass("start")
    path = Path(file)
    # one watcher for the whole loop: a change made during a pass is reported after it, not lost
    for changes in watchfiles.watch(
        path.parent, yield_on_timeout=True, rust_timeout=int(interval * 1000), stop_event=stop, debounce=300
    ):
        if stop.is_set():
            break
        if any(Path(p).name == path.name for _, p in changes):
            one_pass("file changed")
        elif not changes:
            one_pass("interval")
    log("stopped")


@cli.command()
@file_option
@click.option("--sub", required=True, help="The user id (the token's sub claim).")
@click.option("--claim", "claims", multiple=True, metavar="KEY=VALUE", help="An extra claim; repeatable.")
@click.option("--ttl", default="1h", show_default=True, help="How long the token is valid.")
def token(file: str, sub: str, claims: tuple[str, ...], ttl: str) -> None:
    """Mint a development token signed with the configured key (HS* algorithms, or insecure mode)."""
    from electricctl._auth.tokens import AuthError, mint

    config = _load(file)
    require_auth_key(config, "token")
    extra: dict[str, Any] = {}
    for item in claims:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--claim")
        extra[key] = value
    try:
        click.echo(mint(config.auth, sub, extra, int(_seconds(ttl))))
    except AuthError as exc:
        raise click.UsageError(str(exc)) from exc


@cli.command()
@click.argument("url")
@click.option("--db", "db", required=True, type=click.Path(dir_okay=False), help="The local SQLite file.")
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    required=True,
    metavar="NAME[:WHERE]",
    help="A shape declared in electric.yaml, or a table with an optional where clause; repeatable.",
)
@click.option("--token", envvar="ELECTRIC_TOKEN", help="The JWT to authenticate with (default: $ELECTRIC_TOKEN).")
@click.option("--once", is_flag=True, help="Exit once the shapes are synced and local writes are in Postgres.")
def sync(url: str, db: str, shapes: tuple[str, ...], token: str | None, once: bool) -> None:
    """Keep the SQLite file DB in sync with the server at URL (ws://HOST:PORT/ws), both ways."""
    import asyncio

    from electricctl.client import cli as sync_cli

    if not token:
        raise click.UsageError("a token is required: pass --token or set ELECTRIC_TOKEN (see `electricctl token`)")
    if not url.startswith(("ws://", "wss://")):
        raise click.BadParameter(f"{url!r} is not a ws:// or wss:// URL", param_hint="URL")
    parsed = []
    for item in shapes:
        name, sep, where = item.partition(":")
        parsed.append((name, where if sep and where.strip() else None))
    asyncio.run(sync_cli.run(render.console(), url, db, parsed, token, once=once))


@cli.command()
@file_option
@database_option
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="The package directory to write (created)."
)
@click.option(
    "--service",
    default=None,
    metavar="URL",
    help="Read the schema from a running service (http://host:port, or ws://host:port/ws) instead of the database.",
)
@click.option("--watch", is_flag=True, help="Regenerate when the schema changes (a migration, or the config file).")
@click.option("--interval", default="2s", show_default=True, help="With --watch: how often to look for a migration.")
def generate(file: str, database_url: str | None, out: str, service: str | None, watch: bool, interval: str) -> None:
    """Write a typed Python client package (tables, filters, includes, migrations) to OUT.

    Import it from your app: `from <package> import electrify`. Run it again after a migration
    (or keep --watch running): the same schema gives the same bytes.
    """
    from pathlib import Path

    from electricctl._codegen import GenerateError
    from electricctl._codegen import generate as run_generate

    console = render.console()
    config: ElectricConfig | None = None
    if not service or Path(file).exists():
        config = _load(file, database_url)
    url = None if service or config is None else _url(config, database_url)
    shapes = [s.name for s in config.shapes] if config is not None else []
    source = service or applier.redact(url or "")

    def once() -> None:
        try:
            result = run_generate(Path(out), database_url=url, service=service, shapes=shapes)
        except GenerateError as exc:
            if not watch:
                raise
            console.print(f"[red]error:[/] {exc}")
            return
        what = f"{len(result.tables)} tables at schema version {result.version}"
        if result.written:
            console.print(f"wrote {out} ({', '.join(result.written)}): {what}, from {source}")
        elif not watch:
            console.print(f"{out} is up to date: {what}, from {source}")

    once()
    if watch:
        import watchfiles

        watched = [p for p in (Path(file),) if p.exists()]
        console.print(f"watching {source}" + (f" and {file}" if watched else "") + " (Ctrl-C stops)")
        ms = int(_seconds(interval) * 1000)
        try:
            for changes in watchfiles.watch(
                *(watched or [Path(out)]), yield_on_timeout=True, rust_timeout=ms, debounce=200
            ):
                if changes and watched and not service:
                    try:
                        config = _load(file, database_url)
                        shapes[:] = [s.name for s in config.shapes]
                    except ElectricError as exc:
                        console.print(f"[red]error:[/] {exc}")
                        continue
                once()
        except KeyboardInterrupt:
            pass


@cli.command()
@file_option
@click.option(
    "--dir", "directory", default=".electric", show_default=True, help="Where the cluster and serve's data live."
)
@click.option(
    "--schema",
    "schema",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="SQL to run when the database is first made (your tables); repeatable.",
)
@click.option("--port", default=5133, show_default=True, type=int, help="The sync service's port.")
@click.option("--sub", default="dev", show_default=True, help="The user id of the printed development token.")
@click.option("--ready-file", default=None, help="Write the service URL and the token here once serving (scripts).")
def dev(file: str, directory: str, schema: tuple[str, ...], port: int, sub: str, ready_file: str | None) -> None:
    """Develop against a local stack: a PostgreSQL under --dir that keeps its data across restarts,
    the file applied, and the sync service on --port, with a development token. Ctrl-C stops it."""
    from electricctl.cli import dev as dev_mod

    dev_mod.run(render.console(), file, directory=directory, schema=schema, port=port, sub=sub, ready_file=ready_file)


@cli.command()
@click.option("--keep", is_flag=True, help="Keep Postgres running afterwards (until Ctrl-C).")
@click.option(
    "--data-dir", type=click.Path(file_okay=False), default=None, help="Keep the cluster here (default: a temp dir)."
)
def demo(keep: bool, data_dir: str | None) -> None:
    """Start a throwaway Postgres, create the demo schema and apply electric.yaml.example to it."""
    from electricctl.cli import demo as demo_mod

    demo_mod.run(render.console(), keep=keep, data_dir=data_dir)


def main(argv: list[str] | None = None) -> None:
    err = render.console(stderr=True)
    try:
        cli.main(args=argv, prog_name="electricctl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        err.print(f"[red]usage error:[/red] {escape(exc.format_message())}")
        if exc.ctx is not None:
            err.print(exc.ctx.get_usage())
        sys.exit(ExitCode.USAGE)
    except click.Abort:
        err.print("aborted")
        sys.exit(130)
    except DiagnosticsError as exc:
        render.diagnostics(err, exc.diagnostics)
        n = len([d for d in exc.diagnostics if d.level == "error"])
        args = sys.argv[1:] if argv is None else argv
        command = next((a for a in args if not a.startswith("-")), "")
        # only apply changes anything: saying "nothing was changed" after validate or plan misleads
        tail = "; nothing was changed" if command == "apply" else ""
        err.print(f"[red]{n} error{'s' * (n != 1)}{tail}.[/red]")
        sys.exit(exc.exit_code)
    except ElectricError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(exc.exit_code)
    sys.exit(ExitCode.OK)
