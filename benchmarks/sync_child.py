"""One initial sync through the shipped ``SyncClient``, alone in its own process (for its peak RSS).

    python -m benchmarks.sync_child <sqlite path> <ws url> <token> <table> <timeout s>

Prints one JSON line: ``seconds`` (constructor -> ``synced`` returned: start + subscribe + synced),
``subscribe_seconds`` (``subscribe`` called -> ``synced`` returned), ``rows`` (count(*) of the table
in the file afterwards, on a separate connection), ``cpu_seconds`` (this process, every thread),
``rss_before_kb`` (VmRSS after the imports, before the client started) and ``peak_rss_kb`` (VmHWM
from /proc/self/status after the sync: the process's peak resident set, interpreter included).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from pathlib import Path

from electricctl.client import SyncClient


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


async def sync(path: str, url: str, token: str, table: str, timeout: float) -> dict[str, float]:
    rss_before = status_kb("VmRSS")
    cpu0 = time.process_time()
    start = time.perf_counter()
    client = SyncClient(path, url, token)
    await client.start()
    t_sub = time.perf_counter()
    sub = await client.subscribe(table)
    await client.synced(sub, timeout=timeout)
    end = time.perf_counter()
    cpu = time.process_time() - cpu0
    await client.stop()
    conn = sqlite3.connect(path)
    try:
        row = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    finally:
        conn.close()
    return {
        "seconds": end - start,
        "subscribe_seconds": end - t_sub,
        "rows": int(row[0]),
        "cpu_seconds": cpu,
        "rss_before_kb": rss_before,
        "peak_rss_kb": status_kb("VmHWM"),
    }


def main() -> None:
    path, url, token, table, timeout = sys.argv[1:6]
    print(json.dumps(asyncio.run(sync(path, url, token, table, float(timeout)))))


if __name__ == "__main__":
    main()
