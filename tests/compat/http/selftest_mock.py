"""Self-test of the HTTP Shape API harness (shape-driver.mjs + ShapeDriver) against the mock Electric
server of ../shared/compat/http-shape/mock-electric-server.mjs, not against electricctl. Not collected
by pytest (the file name does not match test_*.py); run it by hand after changing the driver:

    .venv/bin/python -m tests.compat.http.selftest_mock        # ELECTRIC_MOCK_SERVER=PATH for another mock

It checks the read path (initial rows, live changes, where/params/columns/replica in the URL,
must-refetch after a 409, errors, subset snapshots, the bearer token) with ShapeStream + Shape, and
TanStack DB's collection with writes through a stand-in for POST /v1/transactions
(selftest-mock-server.mjs) that commits on the mock and answers its txid.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.compat.http.driver import HERE, ShapeDriver, install_node_modules

REPO = HERE.parents[2]
MOCK = Path(
    os.environ.get(
        "ELECTRIC_MOCK_SERVER", REPO.parent / "shared" / "compat" / "http-shape" / "mock-electric-server.mjs"
    )
)


class Mock:
    """selftest-mock-server.mjs: mock shape servers, each with a /v1/transactions stand-in."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["node", str(HERE / "selftest-mock-server.mjs")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "MOCK_SERVER": str(MOCK)},
        )

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        assert answer.get("ok"), answer
        return answer

    def close(self) -> None:
        self.call("exit")
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


KEY1 = '"public"."items"/"1"'


def check(what: str, condition: bool, detail: Any = "") -> None:
    print(f"{'ok  ' if condition else 'FAIL'} {what}" + ("" if condition else f": {detail}"))
    if not condition:
        raise SystemExit(1)


def read_path(d: ShapeDriver, mock: Mock) -> None:
    a = mock.call("start", name="a", opts={"liveTimeoutMs": 800})
    first = d.stream("s1", a["url"], {"table": "items"}, token="tok-a")
    check("stream answers at the first up-to-date with the rows", first["rows"] == 2 and first["handle"], first)

    rows = d.shape_rows("s1")
    check(
        "values as the client parsed them: int4 number, bool, int8 exact past 2**53",
        rows[KEY1] == {"id": 1, "title": "first", "done": False, "big": 9007199254740993},
        rows[KEY1],
    )
    check("rows() sorts by id", [r["id"] for r in d.rows("s1")] == [1, 2])

    d.wait_events("s1", lambda e: any(r["query"].get("live") == "true" for r in e["requests"]))
    txn = mock.call("txn", name="a", changes=[{"op": "update", "id": "1", "set": {"title": "edited", "done": "t"}}])
    rows_after = d.wait_rows("s1", lambda rows: rows[0]["title"] == "edited")
    check("a live update reaches the Shape", rows_after[0]["done"] is True, rows_after)

    events = d.events("s1")
    change = events["messages"][-1]
    check(
        "events: the change message with its txids and lsn",
        change["headers"]["txids"] == [txn["xid"]] and change["headers"]["lsn"] == str(txn["lsn"]),
        change,
    )
    check("events: up-to-date counted", events["counts"].get("up-to-date", 0) >= 2, events["counts"])
    urls = [r["url"] for r in events["requests"]]
    check(
        "events: the request URLs (offset=-1, then live)",
        "offset=-1" in urls[0] and any("live=true" in u for u in urls[1:]),
        urls,
    )
    check("events: offset and handle", events["offset"] == f"{txn['lsn']}_0" and events["handle"] == first["handle"])
    check("every request carried the token", all(r["auth"] for r in events["requests"]))
    seen = mock.call("seen", name="a")["requests"]
    check("the server saw Authorization: Bearer tok-a", {r["authorization"] for r in seen} == {"Bearer tok-a"}, seen)

    d.set_token("s1", "tok-b")
    mock.call("txn", name="a", changes=[{"op": "update", "id": "2", "set": {"title": "second (b)"}}])
    d.wait_rows("s1", lambda rows: rows[1]["title"] == "second (b)")
    d.wait_events("s1", lambda e: len(e["requests"]) > len(events["requests"]) + 1)
    seen = mock.call("seen", name="a")["requests"]
    check("token: later requests carry the new token", seen[-1]["authorization"] == "Bearer tok-b", seen[-3:])

    # params reach the URL as the client sends them (the mock ignores where/columns)
    d.stream(
        "s2",
        a["url"],
        {"table": "items", "where": "id > $1", "params": {"1": "0"}, "columns": ["id", "title"], "replica": "full"},
        token="tok-a",
    )
    q = d.events("s2")["requests"][0]["query"]
    check(
        "where, params[n], columns (quoted), replica and log in the query",
        q.get("where") == "id > $1"
        and q.get("params[1]") == "0"
        and q.get("columns") == '"id","title"'
        and q.get("replica") == "full"
        and q.get("log") == "full",
        q,
    )

    # subset snapshots: a changes_only stream from now, then GET and POST requestSnapshot
    d.stream("s3", a["url"], {"table": "items", "log": "changes_only"}, token="tok-a", offset="now")
    check("changes_only from now: no rows", d.shape_rows("s3") == {})
    got = d.snapshot("s3", {"where": "id = $1", "params": {"1": "1"}, "limit": 10, "orderBy": "id"})
    check(
        "snapshot (GET requestSnapshot): the subset rows and metadata",
        [m["key"] for m in got["data"]] == [KEY1] and "xmin" in got["metadata"],
        got,
    )
    got = d.snapshot("s3", {"where": "id = ANY($1)", "params": {"1": "{1,2}"}}, method="POST")
    check("snapshot (POST requestSnapshot)", len(got["data"]) == 2, got)
    check("the subset rows joined the Shape", len(d.shape_rows("s3")) == 2)
    reqs = d.events("s3")["requests"]
    gets = [r for r in reqs if "subset__where" in r["query"]]
    posts = [r for r in reqs if r["method"] == "POST"]
    check(
        "subset__* params on GET, a JSON body on POST",
        gets[0]["query"]["subset__where"] == "id = $1"
        and json.loads(gets[0]["query"]["subset__params"]) == {"1": "1"}
        and json.loads(posts[0]["body"])["where"] == "id = ANY($1)",
        reqs,
    )
    got = d.snapshot("s1", {"where": "id = $1", "params": {"1": "2"}})
    check(
        "snapshot on a full stream: fetchSnapshot",
        len(got["data"]) == 1 and got["responseHandle"] == first["handle"],
        got,
    )

    # 409 must-refetch with a new handle on the first live request
    b = mock.call("start", name="b", opts={"liveTimeoutMs": 800, "rotateOnFirstLive": True})
    d.stream("r1", b["url"], {"table": "items"}, token="tok-a")
    events = d.wait_events("r1", lambda e: e["counts"].get("must-refetch", 0) >= 1 and e["isUpToDate"])
    rotated = [r for r in events["requests"] if r.get("status") == 409]
    after = events["requests"][events["requests"].index(rotated[0]) + 1]
    check(
        "must-refetch: a 409, then offset=-1 with the new handle, cache-buster and expired_handle",
        after["query"].get("offset") == "-1"
        and after["query"].get("handle") == rotated[0]["handle"]
        and "cache-buster" in after["query"]
        and "expired_handle" in after["query"],
        events["requests"],
    )
    check("must-refetch: the rows were synced again", len(d.shape_rows("r1")) == 2)
    mock.call("txn", name="b", changes=[{"op": "delete", "id": "2"}])
    d.wait_rows("r1", lambda rows: [r["id"] for r in rows] == [1])
    check("must-refetch: live again after the re-sync (a delete arrived)", True)

    # a 400 stops the stream: the answer carries the status and the JSON body
    c = mock.call("start", name="c", opts={"failFirst": 1, "failStatus": 400, "failHeaders": {}})
    err = d.stream("e1", c["url"], {"table": "items"}, token="tok-a", check=False)
    check(
        "an error answer: FetchError status and body",
        not err["ok"] and err["status"] == 400 and "message" in err["body"],
        err,
    )
    check("the error is in events", d.events("e1")["errors"][0]["status"] == 400)

    # a stream that never gets up to date: the driver gives up before Python does, and answers
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.monotonic()
    late = d.stream("t1", f"http://127.0.0.1:{port}/v1/shape", {"table": "items"}, timeout=4, check=False)
    check("the driver's own timeout", not late["ok"] and "timed out" in late["error"], late)
    check("... within the call's timeout", time.monotonic() - t0 < 4, time.monotonic() - t0)
    check("... and the driver still answers", d.call("ping")["ok"])
    for ident in ("s1", "s2", "s3", "r1", "e1", "t1"):
        d.close_id(ident)


def tanstack(d: ShapeDriver, mock: Mock) -> None:
    m = mock.call("start", name="t", opts={"liveTimeoutMs": 800})
    ready = d.collection("c1", m["url"], {"table": "items"}, token="tok-t", write_url=m["writeUrl"])
    check("collection preloaded", ready["size"] == 2 and ready["status"] == "ready", ready)
    check("awaitTxId of a txid before the snapshot (snapshot-end)", d.await_txid("c1", 700, within=2)["ok"])

    upd = d.update("c1", 1, {"title": "edited via TanStack"})
    check("update: persisted with the server's txid", isinstance(upd["txid"], int), upd)
    check("update: synced", d.rows("c1")[0]["title"] == "edited via TanStack")
    ins = d.insert("c1", {"id": 3, "title": "third", "done": False, "big": 5})
    rows = d.rows("c1")
    check("insert: persisted and synced", [r["id"] for r in rows] == [1, 2, 3] and rows[2]["big"] == 5, (ins, rows))
    d.delete("c1", 3)
    check("delete: persisted and synced", [r["id"] for r in d.rows("c1")] == [1, 2])

    d.insert(
        "c1", [{"id": 5, "title": "five", "done": False, "big": 0}, {"id": 6, "title": "six", "done": False, "big": 0}]
    )
    d.update("c1", [5, 6], {"done": True})
    check("several rows in one transaction", [r["done"] for r in d.rows("c1")[2:]] == [True, True])
    d.delete("c1", [5, 6])
    multi = [len(w["body"]["mutations"]) for w in d.events("c1")["writes"][-3:]]
    check("... one POST each, with every mutation", multi == [2, 2, 2], multi)
    check("... and gone", [r["id"] for r in d.rows("c1")] == [1, 2])

    denied = d.update("c1", 2, {"title": "forbidden"}, check=False)
    check(
        "a refused write: status and JSON error",
        not denied["ok"] and denied["status"] == 403 and denied["body"]["rule"],
        denied,
    )
    check("a refused write is rolled back", d.rows("c1")[1]["title"] == "second")

    pending = d.insert("c1", {"id": 4, "title": "fourth", "done": True, "big": 1}, wait=False)
    check("wait=False answers at once", pending["ok"] and pending["tx"], pending)
    settled = d.call("tx", id="c1", tx=pending["tx"], wait=True)
    check("tx waits for it", settled["state"] == "completed" and settled["settled"], settled)

    writes = d.events("c1")["writes"]
    body = writes[0]["body"]["mutations"][0]
    check(
        "the POST body: type, table, modified, original",
        set(body) == {"type", "table", "modified", "original"}
        and body["type"] == "update"
        and body["table"] == "items"
        and body["modified"]["title"] == "edited via TanStack"
        and body["original"]["title"] == "first",
        body,
    )
    seen = mock.call("seen", name="t")["writes"]
    check("the write endpoint saw the bearer token", all(w["authorization"] == "Bearer tok-t" for w in seen), seen)

    d.collection("c2", m["url"], {"table": "items"}, token="tok-t", write_url=m["writeUrl"], updateBody="changes")
    d.update("c2", 1, {"done": True})
    sent = d.events("c2")["writes"][0]["body"]["mutations"][0]["modified"]
    check('updateBody="changes": the key and the changed columns', sent == {"id": 1, "done": True}, sent)
    check("the other collection sees it", d.wait_rows("c1", lambda rows: rows[0]["done"] is True)[0]["done"])

    d.collection("c3", m["url"], {"table": "items"}, token="tok-t", write_url=m["writeUrl"], txidTimeout=500)
    lost = d.update("c3", 2, {"title": "lost-txid"}, check=False)
    check(
        "a txid that never shows in the stream: the write times out in awaitTxId",
        not lost["ok"] and "TimeoutWaitingForTxId" in lost["error"],
        lost,
    )
    for ident in ("c1", "c2", "c3"):
        d.close_id(ident)


def main() -> None:
    if not MOCK.exists():
        raise SystemExit(f"no mock server at {MOCK} (set ELECTRIC_MOCK_SERVER)")
    install_node_modules()
    mock = Mock()
    try:
        with ShapeDriver() as d:
            print(f"driver up: {d.versions}")
            read_path(d, mock)
            tanstack(d, mock)
            if os.environ.get("SELFTEST_VERBOSE"):
                print(d.log_tail(200))
    finally:
        mock.close()
    print("selftest: all passed")


if __name__ == "__main__":
    main()
