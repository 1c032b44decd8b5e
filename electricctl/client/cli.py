"""``electricctl sync``: keep a SQLite file in sync from the command line.

A progress display while each shape's initial data arrives, then one status line (connected,
lag, pending local writes) until Ctrl-C. ``--once`` exits when the shapes are synced and every
local write has reached Postgres, for scripts and CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from electricctl.client.sync import Status, SyncClient
from electricctl.errors import ConnectionLost, ElectricError, SyncError, Timeout

_T = TypeVar("_T")


class SyncCommandError(ElectricError):
    """The sync command cannot go on; the message says why."""


def _failed(failure: Exception) -> SyncCommandError:
    if isinstance(failure, SyncError):
        return SyncCommandError(str(failure))
    return SyncCommandError(f"sync failed: {type(failure).__name__}: {failure}")


def status_line(status: Status) -> Text:
    dot = ("● connected", "green") if status.connected else ("○ reconnecting", "yellow")
    lag = "-" if status.lag_ms is None else f"{status.lag_ms:.0f} ms"
    line = Text.assemble(
        (dot[0], dot[1]),
        f"  lag {lag}  pending local writes {status.pending}",
        f"  refused {status.refused}" if status.refused else "",
        f"  lsn {status.server_lsn or '-'}",
    )
    return line


async def run(
    console: Console,
    url: str,
    db: str,
    shapes: Sequence[tuple[str, str | None]],
    token: str,
    *,
    once: bool,
    connect_timeout: float = 30.0,
) -> None:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=None),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def on_progress(sub_id: str, rows: int) -> None:
        task = tasks.get(sub_id)
        if task is not None:
            progress.update(task, completed=rows)

    def on_refused(message: str) -> None:
        console.print(f"[red]refused by the server:[/red] {message}")

    client = SyncClient(db, url, token, on_progress=on_progress, on_refused=on_refused)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    async def unless_failed(awaitable: Awaitable[_T]) -> _T:
        """``awaitable``, unless the client fails meanwhile: then the failure is the error."""
        work = asyncio.ensure_future(awaitable)
        failed = asyncio.ensure_future(client.failed.wait())
        try:
            await asyncio.wait({work, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        if client.failure is not None:
            raise _failed(client.failure)
        return work.result()

    await client.start()
    try:
        try:
            await unless_failed(client.wait_connected(connect_timeout))
        except Timeout:
            raise SyncCommandError(
                f"could not connect to {url} within {connect_timeout:.0f}s; is the server running?"
            ) from None
        with progress:
            subs = []
            for shape, where in shapes:
                label = shape + (f" where {where}" if where else "")
                try:
                    sub = await client.subscribe(shape, where)
                except SyncError as exc:
                    raise SyncCommandError(f"shape {label!r}: {exc}") from None
                tasks[sub.id] = progress.add_task(label, total=None)
                subs.append(sub)
            for sub in subs:
                try:
                    await unless_failed(client.synced(sub, timeout=3600))
                except SyncError as exc:
                    raise SyncCommandError(str(exc)) from None
                task = tasks[sub.id]
                done = progress.tasks[task].completed
                progress.update(task, total=max(done, 1), completed=max(done, 1))
        if once:
            try:
                # a resumed client's subscriptions were synced already: it must also have what
                # changed while it was away
                await unless_failed(client.caught_up(timeout=3600))
            except (Timeout, ConnectionLost) as exc:
                raise SyncCommandError(f"the client did not catch up with the server: {exc}") from None
            except SyncError as exc:
                console.print(f"[yellow]warning:[/] {exc}; changes made while this client was away may be missing")
            try:
                await unless_failed(client.flush(timeout=connect_timeout))
            except Timeout as exc:
                raise SyncCommandError(
                    f"local writes did not reach Postgres within {connect_timeout:.0f}s: {exc}"
                ) from None
            if client.failure is not None:
                raise _failed(client.failure)
            console.print(status_line(client.status()))
            return
        with Live(status_line(client.status()), console=console, refresh_per_second=4) as live:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.25)
                live.update(status_line(client.status()))
    finally:
        await client.stop()
