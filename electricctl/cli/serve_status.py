"""``electricctl status --serve URL``: a running ``serve``'s state, read from its ``/metrics`` (and
``/health``, for the last error).

:func:`fetch` does the HTTP; :func:`summarize` (the page and the health document to one summary)
and :func:`quantile` are pure, so tests call them without a server. Rendering is in :mod:`.render`.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from electricctl._replication import lsn as lsnmod
from electricctl._server.metrics import DENIAL_PATHS, WRITE_OUTCOMES
from electricctl.errors import ElectricError

LATENCIES = {
    "commit_to_send": "electricctl_commit_to_send_seconds",
    "write_apply": "electricctl_client_write_apply_seconds",
}


class ServeUnreachable(ElectricError):
    """``/metrics`` could not be read."""


def base_url(url: str) -> str:
    """The service's HTTP root from what a user may pass: ``host:port``, ``http://host:port``, the
    client's ``ws://host:port/ws``, or the ``/metrics`` or ``/health`` URL itself."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    scheme, _, rest = url.partition("://")
    scheme = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme.lower())
    for suffix in ("/ws", "/metrics", "/health", "/api/status"):
        if rest.endswith(suffix):
            rest = rest[: -len(suffix)]
            break
    return f"{scheme}://{rest.rstrip('/')}"


def fetch(url: str, timeout: float = 5.0) -> tuple[str, dict[str, Any] | None]:
    """The ``/metrics`` page and the ``/health`` document (None if that cannot be read) of the
    serve at ``url``; ServeUnreachable, naming the URL, when ``/metrics`` cannot be read."""
    base = base_url(url)
    if not base.startswith(("http://", "https://")):
        raise ServeUnreachable(
            f"cannot read serve at {url}: give an http:// (or ws://) URL, like http://127.0.0.1:5133"
        )
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=timeout) as resp:  # noqa: S310 - http(s) only, checked above
            text = resp.read().decode()
    except urllib.error.HTTPError as exc:
        raise ServeUnreachable(
            f"cannot read {base}/metrics: HTTP {exc.code} {exc.reason}: is {base} an electricctl serve"
            " (its --host and --port)?"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise ServeUnreachable(
            f"cannot reach serve at {base}: {reason}; check the URL (serve's --host and --port) and that serve is"
            " running"
        ) from None
    if not text.strip():
        raise ServeUnreachable(f"{base}/metrics is empty: is {base} an electricctl serve?")
    return text, _health(base, timeout)


def _health(base: str, timeout: float) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(base + "/health", timeout=timeout) as resp:  # noqa: S310 - http(s) only (fetch)
            body = resp.read()
    except urllib.error.HTTPError as exc:  # 503 while not ready: the body says why
        body = exc.read()
    except (urllib.error.URLError, OSError, ValueError):
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class _Samples:
    """The samples of a parsed page, by sample name."""

    def __init__(self, text: str) -> None:
        self.by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
        try:
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    self.by_name.setdefault(s.name, []).append((s.labels, s.value))
        except ValueError as exc:
            raise ServeUnreachable(f"the /metrics page does not parse as Prometheus text: {exc}") from None

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` that have ``labels`` (0 if there are none)."""
        return sum(v for ls, v in self.by_name.get(name, []) if all(ls.get(k) == want for k, want in labels.items()))

    def count(self, name: str, **labels: str) -> int:
        return int(self.value(name, **labels))

    def labelled(self, name: str, *keys: str) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {}
        for ls, v in self.by_name.get(name, []):
            key = tuple(ls.get(k, "") for k in keys)
            out[key] = out.get(key, 0.0) + v
        return out

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """A histogram's cumulative buckets, (upper bound, count), by bound."""
        return sorted((float(ls["le"]), v) for ls, v in self.by_name.get(name + "_bucket", []) if "le" in ls)


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram's cumulative buckets, interpolated linearly within the
    bucket it falls in (Prometheus' ``histogram_quantile``); None without observations. In the
    +Inf bucket it is the highest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _lsn(value: float) -> str:
    return lsnmod.format(int(value))


def summarize(
    text: str,
    health: Mapping[str, Any] | None = None,
    *,
    url: str = "",
    previous: Mapping[str, Any] | None = None,
    elapsed: float | None = None,
) -> dict[str, Any]:
    """What ``status --serve`` shows, from a ``/metrics`` page and the ``/health`` document.

    With ``previous`` (the summary of the scrape ``elapsed`` seconds before), rates per second too.
    """
    m = _Samples(text)
    if not m.by_name.get("electricctl_build_info"):
        raise ServeUnreachable(
            f"{url or 'the page'} is not an electricctl serve's /metrics (no electricctl_build_info)"
        )
    info = m.by_name["electricctl_build_info"][0][0]
    latency: dict[str, Any] = {}
    for key, name in LATENCIES.items():
        buckets = m.buckets(name)
        p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
        latency[key] = {
            "count": m.count(name + "_count"),
            "sum_seconds": m.value(name + "_sum"),
            "p50_seconds": p50,
            "p99_seconds": p99,
        }
    errors = [
        {"method": method, "code": code, "count": int(v)}
        for (method, code), v in sorted(m.labelled("electricctl_errors_sent_total", "method", "code").items())
        if v
    ]
    closes = {
        code: int(v) for (code,), v in sorted(m.labelled("electricctl_connections_closed_total", "code").items()) if v
    }
    health = health or {}
    replication = health.get("replication") or {}
    reasons = [str(r) for r in health.get("reasons") or []]
    last_error = reasons[0] if reasons else replication.get("error") or (health.get("log") or {}).get("error")
    summary: dict[str, Any] = {
        "url": url,
        "version": info.get("version", ""),
        "server_id": info.get("server_id", ""),
        "status": health.get("status"),
        "ready": health.get("ready"),
        "role": health.get("role"),
        "instances": [dict(i) for i in health.get("instances") or []],
        "clients": {
            "connections": m.count("electricctl_connections"),
            "authenticated": m.count("electricctl_clients"),
            "catching_up": m.count("electricctl_clients_catching_up"),
        },
        "subscriptions": m.count("electricctl_subscriptions"),
        "shapes": m.count("electricctl_shapes"),
        "replication": {
            "up": m.value("electricctl_replication_up") == 1,
            "lag_bytes": m.count("electricctl_replication_lag_bytes"),
            "lag_seconds": m.value("electricctl_replication_lag_seconds"),
            "confirmed_lsn": _lsn(m.value("electricctl_replication_confirmed_lsn")),
            "restarts": m.count("electricctl_replication_restarts_total"),
            "transactions_logged": m.count("electricctl_transactions_logged_total"),
        },
        "out": {
            "transactions": m.count("electricctl_transactions_sent_total"),
            "rows": m.count("electricctl_rows_sent_total"),
            "migrations": m.count("electricctl_migrations_sent_total"),
            "subscriptions_delivered": m.count("electricctl_subscriptions_delivered_total"),
        },
        "writes": {o: m.count("electricctl_client_transactions_total", outcome=o) for o in WRITE_OUTCOMES},
        "write_operations": m.count("electricctl_client_operations_total"),
        "write_retries": m.count("electricctl_client_write_retries_total"),
        "denials": {p: m.count("electricctl_permission_denials_total", path=p) for p in DENIAL_PATHS},
        "errors": errors,
        "errors_total": sum(e["count"] for e in errors),
        "closes": closes,
        "log": {
            "size_bytes": m.count("electricctl_log_size_bytes"),
            "horizon_lsn": _lsn(m.value("electricctl_log_horizon_lsn")),
            "last_lsn": _lsn(m.value("electricctl_log_last_lsn")),
        },
        "snapshots": {
            "in_use": m.count("electricctl_snapshots_in_use"),
            "size": m.count("electricctl_snapshot_pool_size"),
            "waiting": m.count("electricctl_snapshots_waiting"),
        },
        "latency": latency,
        "last_error": last_error,
        "warnings": [str(w) for w in health.get("warnings") or []],
    }
    if previous is not None and elapsed is not None and elapsed > 0:
        summary["rates"] = {
            "transactions_out_per_second": _rate(summary, previous, elapsed, "out", "transactions"),
            "rows_out_per_second": _rate(summary, previous, elapsed, "out", "rows"),
            "writes_applied_per_second": _rate(summary, previous, elapsed, "writes", "applied"),
        }
    return summary


def _rate(now: Mapping[str, Any], before: Mapping[str, Any], elapsed: float, section: str, key: str) -> float:
    """Per second since ``before``; a counter that went down (serve restarted) counts from 0."""
    current, earlier = float(now[section][key]), float(before.get(section, {}).get(key, 0))
    return (current - earlier if current >= earlier else current) / elapsed


def read(url: str, previous: Mapping[str, Any] | None = None, elapsed: float | None = None) -> dict[str, Any]:
    """Fetch and summarize the serve at ``url`` (ServeUnreachable if it cannot be read)."""
    text, health = fetch(url)
    return summarize(text, health, url=base_url(url), previous=previous, elapsed=elapsed)
