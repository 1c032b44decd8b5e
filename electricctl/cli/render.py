"""Human and JSON rendering for the CLI: diagnostics, plans, status. Only this module and ``main`` print.

What a change is called in words, and the plan's JSON document, come from :mod:`electricctl.cli.summaries`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from electricctl._apply.applier import Status
from electricctl._plan.changes import Action, Change, Plan
from electricctl.cli.summaries import FORMAT_VERSION, change_json, counts, summary
from electricctl.errors import Diagnostic

_SYMBOL = {Action.CREATE: ("+", "green"), Action.UPDATE: ("~", "yellow"), Action.DELETE: ("-", "red")}


def console(stderr: bool = False, *, wide: bool = False) -> Console:
    """The console to print to. ``wide``: output that must never be wrapped or cut when it is not
    going to a terminal (a plan's SQL in a CI log): rich would lay it out for 80 columns."""
    con = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if wide and not con.is_terminal:
        con = Console(stderr=stderr, highlight=False, soft_wrap=True, width=100_000)
    return con


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def diagnostics(con: Console, diags: Iterable[Diagnostic]) -> None:
    for d in diags:
        style = "red" if d.level == "error" else "yellow"
        con.print(f"[{style}]{escape(d.format())}[/{style}]")


def change(con: Console, c: Change, *, show_sql: bool) -> None:
    symbol, color = _SYMBOL[c.action]
    flags = []
    if c.drift:
        flags.append("[magenta]drift[/magenta]")
    if c.locks_table:
        flags.append(f"[dim]locks {escape(c.locks_table)}[/dim]")
    extra = f"  ({', '.join(flags)})" if flags else ""
    con.print(f"  [{color}]{symbol} {escape(c.address)}[/{color}]  {escape(summary(c))}{extra}")
    if show_sql:
        for stmt in c.sql():
            con.print(
                Syntax(stmt + ";", "sql", theme="ansi_dark", background_color="default", word_wrap=True), style="dim"
            )


def plan(con: Console, p: Plan, *, database: str, show_sql: bool = True, verb: str = "would make") -> None:
    diagnostics(con, p.warnings)
    if p.empty:
        con.print(f"[green]No changes.[/green] Database {escape(database)} matches the file.")
    else:
        con.print(f"electricctl {verb} these changes to database [bold]{escape(database)}[/bold]:\n")
        for c in p.changes:
            change(con, c, show_sql=show_sql)
        n = counts(p)
        con.print(
            f"\nPlan: [green]{n['create']} to create[/green], [yellow]{n['update']} to update[/yellow],"
            f" [red]{n['delete']} to delete[/red]."
        )
    if p.orphans:
        con.print(
            "\nNo longer declared in the file (removed only with [bold]--prune[/bold]; user data is never dropped):"
        )
        for o in p.orphans:
            con.print(f"  [dim]? {escape(o)}[/dim]")


def status_report(con: Console, st: Status, *, file_hash: str) -> None:
    last = st.observed.catalog.last_applied if st.observed.catalog else None
    con.print(
        f"database: [bold]{escape(st.observed.database)}[/bold]  (PostgreSQL {st.observed.server_version // 10000},"
        f" wal_level={escape(st.observed.wal_level)})"
    )
    if last:
        con.print(
            f"last apply: {escape(last.applied_at)} by {escape(last.applied_by)} with electricctl "
            f"{escape(last.electricctl_version)}\n  applied config: {escape(last.config_hash)}"
        )
    else:
        con.print("last apply: [yellow]never[/yellow]")
    con.print(f"  file config:    {escape(file_hash)}")
    if st.in_sync:
        con.print("[green]In sync:[/green] the database matches the file.")
    for problem in st.problems:
        con.print(f"[red]Problem:[/red] {escape(problem)}")
    if st.drift:
        con.print("\n[magenta]Drift[/magenta] (changed outside electricctl; `electricctl apply` repairs it):")
        for c in st.drift:
            change(con, c, show_sql=False)
    if st.pending:
        con.print("\n[yellow]Pending[/yellow] (in the file, not applied yet; `electricctl apply --prune` applies all):")
        for c in st.pending:
            change(con, c, show_sql=False)
    table = Table(title="replication slots", title_justify="left")
    for column in ("slot", "plugin", "type", "active", "lag (bytes)", "wal status"):
        table.add_column(column)
    for s in st.slots:
        table.add_row(
            s.name,
            s.plugin or "",
            s.slot_type,
            "yes" if s.active else "no",
            "" if s.lag_bytes is None else f"{s.lag_bytes:,}",
            s.wal_status or "",
        )
    if st.slots:
        con.print(table)
    else:
        con.print("replication slots: none")
    for s in st.slots:
        if s.last_gap_at is not None:
            con.print(
                f"[yellow]warning:[/yellow] slot {escape(s.name)} was missing and `serve` created it again at"
                f" {escape(s.last_gap_at)}: changes committed while it was missing were not streamed, and clients"
                " from before were sent to resync"
            )


def status_json(st: Status, *, file_hash: str) -> dict[str, Any]:
    last = st.observed.catalog.last_applied if st.observed.catalog else None
    return {
        "format_version": FORMAT_VERSION,
        "database": st.observed.database,
        "in_sync": st.in_sync,
        "file_config_hash": file_hash,
        "last_applied": None
        if last is None
        else {
            "config_hash": last.config_hash,
            "applied_at": last.applied_at,
            "electricctl_version": last.electricctl_version,
            "applied_by": last.applied_by,
        },
        "drift": [change_json(c) for c in st.drift],
        "pending": [change_json(c) for c in st.pending],
        "problems": list(st.problems),
        "slots": [
            {
                "name": s.name,
                "plugin": s.plugin,
                "type": s.slot_type,
                "active": s.active,
                "lag_bytes": s.lag_bytes,
                "wal_status": s.wal_status,
                "last_gap_at": s.last_gap_at,
            }
            for s in st.slots
        ],
    }


# -- status --serve ------------------------------------------------------------------------------
def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"  # pragma: no cover - GiB ends the loop


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def serve_report(s: dict[str, Any], *, problem: str | None = None) -> Table:
    """A running serve's state (a summary from :func:`electricctl.cli.serve_status.summarize`), as
    one screen; ``problem``: why the last refresh failed (``--watch`` keeps the last numbers)."""
    state = "[green]ready[/green]" if s.get("ready") else f"[red]{escape(str(s.get('status') or 'unknown'))}[/red]"
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    role = f"  {escape(str(s['role']))}" if s.get("role") not in (None, "single") else ""
    grid.title = f"serve {escape(s['url'])}  {state}{role}  (electricctl {escape(s['version'])})"
    grid.title_justify = "left"
    c, r, out, w = s["clients"], s["replication"], s["out"], s["writes"]
    rates = s.get("rates")
    grid.add_row(
        "clients",
        f"{_n(c['authenticated'], 'client')} ({_n(c['connections'], 'connection')} open, {c['catching_up']} catching"
        f" up), {_n(s['subscriptions'], 'subscription')}, {_n(s['shapes'], 'shape')}",
    )
    lag_style = "green" if r["lag_bytes"] == 0 else "yellow" if r["lag_seconds"] < 10 else "red"
    grid.add_row(
        "replication",
        ("[green]up[/green]" if r["up"] else "[red]down[/red]")
        + f", lag [{lag_style}]{_size(r['lag_bytes'])}, {_duration(r['lag_seconds'])}[/{lag_style}],"
        f" confirmed {r['confirmed_lsn']}, {r['transactions_logged']:,} transactions logged, {r['restarts']} restarts",
    )
    line = (
        f"{out['transactions']:,} transactions, {out['rows']:,} rows, {out['migrations']:,} migrations,"
        f" {out['subscriptions_delivered']:,} subscriptions delivered"
    )
    if rates:
        line += (
            f"  [dim]({rates['transactions_out_per_second']:,.1f} tx/s,"
            f" {rates['rows_out_per_second']:,.1f} rows/s)[/dim]"
        )
    grid.add_row("out", line)
    line = (
        ", ".join(f"{n:,} {k}" for k, n in w.items())
        + f"; {s['write_operations']:,} operations, {s['write_retries']:,} retries"
    )
    if rates:
        line += f"  [dim]({rates['writes_applied_per_second']:,.1f} applied/s)[/dim]"
    grid.add_row("writes in", line)
    denials = s["denials"]
    grid.add_row(
        "denials",
        ("[yellow]" if any(denials.values()) else "[green]")
        + ", ".join(f"{k} {n:,}" for k, n in denials.items())
        + ("[/yellow]" if any(denials.values()) else "[/green]"),
    )
    errors = s["errors"]
    grid.add_row(
        "errors sent",
        ", ".join(escape(f"{e['method']}:{e['code']} {e['count']:,}") for e in errors)
        if errors
        else "[green]none[/green]",
    )
    if s["closes"]:
        grid.add_row("closed by serve", ", ".join(f"{code}: {n:,}" for code, n in s["closes"].items()))
    log = s["log"]
    grid.add_row("log", f"{_size(log['size_bytes'])}, horizon {log['horizon_lsn']}, last {log['last_lsn']}")
    snaps = s["snapshots"]
    grid.add_row("snapshots", f"{snaps['in_use']}/{snaps['size']} in use, {snaps['waiting']} waiting")
    names = {"commit_to_send": "commit → sent", "write_apply": "write applied"}
    grid.add_row(
        "latency",
        "; ".join(
            f"{names.get(k, k)} p50 {_duration(v['p50_seconds'])}, p99 {_duration(v['p99_seconds'])} (n={v['count']:,})"
            for k, v in s["latency"].items()
        ),
    )
    for inst in s.get("instances") or []:
        grid.add_row(
            "instance",
            escape(
                f"{inst.get('id')} {inst.get('address')} {inst.get('role')}: {_n(int(inst.get('clients') or 0), 'client')},"
                f" log at {inst.get('log_last_lsn')}, {int(inst.get('lag_messages') or 0):,} messages behind the stream"
            ),
        )
    last = s.get("last_error")
    grid.add_row("last error", f"[red]{escape(str(last))}[/red]" if last else "[green]none[/green]")
    for warning in s.get("warnings") or []:
        grid.add_row("warning", f"[yellow]{escape(str(warning))}[/yellow]")
    if problem:
        grid.add_row("refresh", f"[red]{escape(problem)}[/red] [dim](the numbers above are from the last read)[/dim]")
    return grid


def instances_report(c: dict[str, Any]) -> Table:
    """``status --log``: the instances sharing a JetStream log (from :mod:`.cluster_status`)."""
    table = Table(title=f"instances of {escape(c['log'])}", title_justify="left")
    for name in ("instance", "address", "role", "clients", "log position", "behind the stream", "seen"):
        table.add_column(name)
    for inst in c["instances"]:
        role = str(inst.get("role"))
        table.add_row(
            escape(str(inst.get("id"))),
            escape(str(inst.get("address"))),
            f"[bold]{role}[/bold]" if role == "leader" else role,
            f"{int(inst.get('clients') or 0):,}",
            escape(str(inst.get("log_last_lsn"))),
            f"{int(inst.get('lag_messages') or 0):,} messages",
            f"{inst.get('seen_seconds_ago')} s ago",
        )
    leader = c.get("leader")
    stream = c["stream"]
    table.caption = (
        f"leader: {escape(str(leader['id']))} at {escape(str(leader.get('address')))} (epoch {leader.get('epoch')})"
        if leader
        else "[red]no leader holds the lease[/red]"
    ) + f"; stream: {stream['messages']:,} messages, {_size(stream['bytes'])}"
    table.caption_justify = "left"
    return table
