"""``GET /metrics`` and ``electricctl status --serve``: a real serve and Postgres, scraped and parsed
with prometheus_client's own parser, through a scripted session whose every step moves known
counters by known amounts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from electricctl._embedded.postgres import free_port
from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.app import Server
from electricctl._server.common import NATIVE_HEADER
from electricctl._server.options import ServeOptions
from electricctl.cli.serve_status import base_url, quantile, summarize
from tests.satellite_client import RpcError, SatelliteClient
from tests.server.test_writes import Writer, insert
from tests.server_fixtures import Env, applied_env, running_server, ws_url

SCHEMA = """
CREATE TABLE notes (id text PRIMARY KEY, body text);
CREATE TABLE readonly (id text PRIMARY KEY, body text);
CREATE TABLE secret (id text PRIMARY KEY, body text);
INSERT INTO secret VALUES ('s1', 'hidden');
"""

CONFIG = """
version: 1
auth:
  mode: secure
  jwt: {alg: HS256, key: test-secret-test-secret-test-secret}
tables: [notes, readonly, secret]
adhoc_shapes: deny
shapes:
  - name: notes
    table: notes
  - name: secret
    table: secret
grants:
  - privileges: [select, insert, update]
    on: notes
    to: authenticated
  - privileges: [select]
    on: readonly
    to: authenticated
"""

NOTES = pb.SatRelation(
    schema_name="public",
    table_name="notes",
    relation_id=1,
    columns=[pb.SatRelationColumn(name=c, type="text") for c in ("id", "body")],
)
READONLY = pb.SatRelation(
    schema_name="public",
    table_name="readonly",
    relation_id=2,
    columns=[pb.SatRelationColumn(name=c, type="text") for c in ("id", "body")],
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Env:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(SCHEMA)
    return applied_env(db_url, tmp_path, CONFIG)


@pytest_asyncio.fixture
async def server(env: Env) -> AsyncIterator[Server]:
    async with running_server(env) as srv:
        yield srv


def _get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


async def scrape(server: Server) -> Samples:
    """Every sample of ``/metrics``, parsed by prometheus_client's parser."""
    content_type, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{server.bound_port}/metrics")
    assert content_type.startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("electricctl_"), family.name  # the server's own registry only
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def errors_of(samples: Samples, method: str) -> float:
    """Errors sent in answer to ``method``, whatever their code."""
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "electricctl_errors_sent_total" and ("method", method) in labels
    )


def moved(before: Samples, after: Samples) -> Callable[..., float]:
    """How much a sample changed between two scrapes."""

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    return delta


async def until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("condition not met in time")


async def test_metrics_follow_a_scripted_session(server: Server, env: Env) -> None:
    m0 = await scrape(server)
    assert value(m0, "electricctl_connections") == 0 and value(m0, "electricctl_replication_up") == 1
    assert value(m0, "electricctl_build_info", version=_build_version(m0), server_id=server.server_id) == 1
    assert value(m0, "electricctl_snapshot_pool_size") == server.options.snapshot_connections

    # a client connects and subscribes
    cl = SatelliteClient(ws_url(server), headers={NATIVE_HEADER: "1"})
    await cl.connect()
    await cl.authenticate(env.token("alice"))
    await cl.start()
    await cl.wait_for(lambda: cl.outbound_lsn is not None)
    await cl.subscribe("notes")
    conn = next(iter(server.connections))
    await until(lambda: conn.engine is not None and conn.engine.live)
    m1 = await scrape(server)
    d = moved(m0, m1)
    assert value(m1, "electricctl_connections") == 1 and value(m1, "electricctl_clients") == 1
    assert value(m1, "electricctl_subscriptions") == 1 and value(m1, "electricctl_shapes") == 1
    assert d("electricctl_subscriptions_delivered_total") == 1
    assert d("electricctl_transactions_sent_total") == 0

    # a transaction of three rows made with psql streams to it
    await asyncio.to_thread(env.psql, "INSERT INTO notes VALUES ('p1', 'a'), ('p2', 'b'), ('p3', 'c')")
    await cl.wait_for(lambda: len(cl.table("notes")) == 3)
    m2 = await scrape(server)
    d = moved(m1, m2)
    assert d("electricctl_transactions_sent_total") == 1
    assert d("electricctl_rows_sent_total") == 3
    assert d("electricctl_commit_to_send_seconds_count") == 1
    assert 0 <= d("electricctl_commit_to_send_seconds_sum") < 5
    assert d("electricctl_transactions_logged_total") >= 1
    assert value(m2, "electricctl_log_size_bytes") > value(m0, "electricctl_log_size_bytes")
    assert value(m2, "electricctl_log_last_lsn") == server.log.last_lsn > 0
    assert value(m2, "electricctl_postgres_wal_lsn") > 0 and value(m2, "electricctl_replication_confirmed_lsn") > 0

    # the client writes a row, then one its grants refuse
    w = Writer(cl)
    await w.echo(await w.send(NOTES, insert(NOTES, "c1", "from the client")))
    await w.send(READONLY, insert(READONLY, "r1", "not allowed"))
    await cl.wait_for(lambda: len(cl.errors) == 1)
    assert cl.errors[0].error_type == pb.SatErrorResp.PERMISSION_DENIED
    m3 = await scrape(server)
    d = moved(m2, m3)
    assert d("electricctl_client_transactions_total", outcome="applied") == 1
    assert d("electricctl_client_transactions_total", outcome="denied") == 1
    for outcome in ("duplicate", "refused", "invalid", "failed"):
        assert d("electricctl_client_transactions_total", outcome=outcome) == 0, outcome
    assert d("electricctl_client_operations_total") == 1
    assert d("electricctl_client_write_apply_seconds_count") == 2
    assert d("electricctl_permission_denials_total", path="write") == 1
    assert d("electricctl_errors_sent_total", method="none", code="PERMISSION_DENIED") == 1
    assert d("electricctl_transactions_sent_total") >= 1  # the client's own write, echoed

    # subscriptions: one not declared while adhoc_shapes is deny, one to a table it may not read
    with pytest.raises(RpcError):
        await cl.subscribe("readonly")
    await cl.subscribe("secret")
    assert cl.table("secret") == {}  # served empty
    m4 = await scrape(server)
    d = moved(m3, m4)
    assert d("electricctl_permission_denials_total", path="subscribe") == 1
    assert d("electricctl_permission_denials_total", path="read") == 1
    assert errors_of(m4, "subscribe") - errors_of(m3, "subscribe") == 1  # whatever its code
    assert value(m4, "electricctl_subscriptions") == 2 and value(m4, "electricctl_shapes") == 2

    # a connection that breaks the protocol is closed with 1007 and an error frame
    ws = await connect(ws_url(server), subprotocols=["electric.0.12"], compression=None)  # type: ignore[list-item]
    await ws.send("not a frame")
    await ws.wait_closed()
    assert ws.close_code == 1007
    m5 = await scrape(server)
    d = moved(m4, m5)
    assert d("electricctl_connections_closed_total", code="1007") == 1
    assert d("electricctl_errors_sent_total", method="none", code="INVALID_REQUEST") == 1

    # nothing holds a snapshot now; the lag is read from Postgres and is small
    await server.caught_up()
    m6 = await scrape(server)
    assert value(m6, "electricctl_snapshots_in_use") == 0 and value(m6, "electricctl_snapshots_waiting") == 0
    assert value(m6, "electricctl_replication_lag_bytes") >= 0
    assert 0 <= value(m6, "electricctl_replication_lag_seconds") < 30
    assert value(m6, "electricctl_log_horizon_lsn") == server.log.horizon

    await cl.close()
    await until(lambda: not server.connections)
    m7 = await scrape(server)
    assert value(m7, "electricctl_connections") == 0 and value(m7, "electricctl_subscriptions") == 0


def _build_version(samples: Samples) -> str:
    for name, labels in samples:
        if name == "electricctl_build_info":
            return dict(labels)["version"]
    raise AssertionError("no electricctl_build_info")


async def test_each_server_has_its_own_registry(server: Server, env: Env, tmp_path: Path) -> None:
    other = Server(env.config, env.url, ServeOptions(port=0, data_dir=tmp_path / "other", slot="unused"))
    assert other.metrics.registry is not server.metrics.registry
    other.metrics.write_done("applied", 0.01)
    samples = await scrape(server)
    assert value(samples, "electricctl_client_transactions_total", outcome="applied") == 0
    assert value(samples, "electricctl_client_write_apply_seconds_count") == 0


def electricctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "electricctl", *args], capture_output=True, text=True, timeout=60, check=False
    )


async def test_status_serve_json_reads_the_running_serve(server: Server, env: Env, tmp_path: Path) -> None:
    cl = await SatelliteClient(ws_url(server)).connect()
    await cl.authenticate(env.token("alice"))
    await cl.start()
    await cl.subscribe("notes")
    try:
        url = f"ws://127.0.0.1:{server.bound_port}/ws"  # the client's URL works too
        # no config file here: the serve part only
        proc = await asyncio.to_thread(
            electricctl, "status", "--serve", url, "-o", "json", "-f", str(tmp_path / "none.yaml")
        )
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert "in_sync" not in doc
        s = doc["serve"]
        assert s["url"] == f"http://127.0.0.1:{server.bound_port}"
        assert s["ready"] is True and s["last_error"] is None and s["server_id"] == server.server_id
        assert s["clients"] == {"connections": 1, "authenticated": 1, "catching_up": 0}
        assert s["subscriptions"] == 1 and s["shapes"] == 1
        assert s["out"]["subscriptions_delivered"] == 1
        assert s["writes"]["applied"] == 0 and s["denials"] == {"write": 0, "subscribe": 0, "read": 0}
        assert s["replication"]["up"] is True and s["replication"]["lag_bytes"] >= 0
        assert s["snapshots"]["size"] == server.options.snapshot_connections
        assert s["log"]["last_lsn"] == f"{server.log.last_lsn >> 32:X}/{server.log.last_lsn & 0xFFFFFFFF:X}"
        assert set(s["latency"]) == {"commit_to_send", "write_apply"}

        # with the file and a database: the Postgres part as well, and the human screen
        proc = await asyncio.to_thread(
            electricctl, "status", "--serve", url, "-o", "json", "-f", str(env.config_path), "--database-url", env.url
        )
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["in_sync"] is True and doc["serve"]["clients"]["authenticated"] == 1
        proc = await asyncio.to_thread(
            electricctl, "status", "--serve", url, "-f", str(env.config_path), "--database-url", env.url
        )
        assert proc.returncode == 0, proc.stderr
        assert "In sync" in proc.stdout and "replication" in proc.stdout and "last error" in proc.stdout
    finally:
        await cl.close()


def test_status_serve_unreachable_is_one_line_and_exit_1(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}"
    proc = electricctl("status", "--serve", url, "-f", str(tmp_path / "none.yaml"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "cannot reach serve" in lines[0], proc.stderr
    proc = electricctl("status", "--serve", url, "-o", "json", "-f", str(tmp_path / "none.yaml"))
    assert proc.returncode == 1
    assert url in json.loads(proc.stdout)["errors"][0]["message"]
    proc = electricctl("status", "--watch", "-f", str(tmp_path / "none.yaml"))
    assert proc.returncode == 64 and "--serve" in proc.stderr


def test_summary_quantiles_from_buckets() -> None:
    buckets = [(0.01, 50.0), (0.1, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.7, buckets) == pytest.approx(0.01 + 0.09 * 20 / 40)
    assert quantile(0.99, buckets) == pytest.approx(0.1 + 0.9 * 9 / 10)
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(0.1, 1.0), (float("inf"), 10.0)]) == 0.1  # in +Inf: the highest bound
    assert base_url("127.0.0.1:5133") == "http://127.0.0.1:5133"
    assert base_url("wss://sync.example.com/ws") == "https://sync.example.com"
    assert base_url("http://h:1/metrics/") == "http://h:1"


def test_summary_of_a_page() -> None:
    page = "\n".join(
        [
            'electricctl_build_info{version="1.2.3",server_id="s"} 1',
            "electricctl_clients 2",
            "# TYPE electricctl_client_transactions counter",
            'electricctl_client_transactions_total{outcome="applied"} 7',
            'electricctl_client_transactions_total{outcome="denied"} 1',
            "# TYPE electricctl_errors_sent counter",
            'electricctl_errors_sent_total{method="none",code="PERMISSION_DENIED"} 1',
            'electricctl_errors_sent_total{method="subscribe",code="TABLE_NOT_FOUND"} 0',
            "# TYPE electricctl_transactions_sent counter",
            "electricctl_transactions_sent_total 10",
            "# TYPE electricctl_commit_to_send_seconds histogram",
            'electricctl_commit_to_send_seconds_bucket{le="0.01"} 3',
            'electricctl_commit_to_send_seconds_bucket{le="+Inf"} 4',
            "electricctl_commit_to_send_seconds_count 4",
            "electricctl_commit_to_send_seconds_sum 2.5",
            "electricctl_replication_confirmed_lsn 4294967297",
            "",
        ]
    )
    health = {"status": "error", "ready": False, "reasons": ["replication: down"], "replication": {"error": "x"}}
    s = summarize(page, health, url="http://h", previous={"out": {"transactions": 4}}, elapsed=2.0)
    assert s["version"] == "1.2.3" and s["clients"]["authenticated"] == 2
    assert s["writes"]["applied"] == 7 and s["writes"]["denied"] == 1 and s["writes"]["failed"] == 0
    assert s["errors"] == [{"method": "none", "code": "PERMISSION_DENIED", "count": 1}]
    assert s["latency"]["commit_to_send"]["count"] == 4
    assert s["latency"]["commit_to_send"]["p50_seconds"] == pytest.approx(0.01 * 2 / 3)
    assert s["replication"]["confirmed_lsn"] == "1/1"
    assert s["last_error"] == "replication: down" and s["ready"] is False
    assert s["rates"]["transactions_out_per_second"] == 3.0


async def test_http_shapes_and_writes_are_counted(server: Server, env: Env) -> None:
    from tests.server.test_shape_api import get, request

    before = await scrape(server)
    assert value(before, "electricctl_http_shape_logs") == 0
    status, _, _ = await get(server, env, table="notes", offset="-1")
    assert status == 200
    url = f"http://127.0.0.1:{server.bound_port}/v1/transactions"
    body = b'{"mutations": [{"type": "insert", "table": "notes", "modified": {"id": "m1", "body": "x"}}]}'
    status, _, answer = await asyncio.to_thread(
        request, url, env.token(), method="POST", body=body, headers={"Content-Type": "application/json"}
    )
    assert status == 200, answer
    after = await scrape(server)
    delta = moved(before, after)
    assert value(after, "electricctl_http_shape_logs") == 1
    assert value(after, "electricctl_http_shape_log_bytes") > 0
    assert delta("electricctl_client_transactions_total", outcome="applied") == 1
    # a write the grants refuse is a denial, as on the Satellite path
    body = b'{"mutations": [{"type": "insert", "table": "readonly", "modified": {"id": "r1"}}]}'
    status, _, _ = await asyncio.to_thread(
        request, url, env.token(), method="POST", body=body, headers={"Content-Type": "application/json"}
    )
    assert status == 403
    denied = moved(after, await scrape(server))
    assert denied("electricctl_permission_denials_total", path="write") == 1
