"""TanStack DB's Electric collection against a real `electricctl serve`: it reads over the HTTP Shape
API and writes through POST /v1/transactions, awaiting each write's txid in the stream."""

from __future__ import annotations

from tests.compat.http.driver import ShapeDriver
from tests.compat.http.test_shape_clients import shape_url
from tests.server_fixtures import Env, ServeProcess


def write_url(serve: ServeProcess) -> str:
    return f"http://127.0.0.1:{serve.port}/v1/transactions"


def test_a_collection_writes_through_serve_and_sees_its_txids(
    serve_process: ServeProcess, env: Env, shape_driver: ShapeDriver
) -> None:
    serve_process.start()
    url = shape_url(serve_process)
    shape_driver.collection("c", url, {"table": "items"}, token=env.token(), write_url=write_url(serve_process))
    assert [r["id"] for r in shape_driver.rows("c")] == ["a", "b"]
    done = shape_driver.insert("c", {"id": "t1", "n": 5, "flag": True, "doc": {"x": [1, 2]}})
    assert isinstance(done["txid"], int)
    assert env.sql("SELECT n, flag, doc FROM items WHERE id = 't1'") == [(5, True, {"x": [1, 2]})]
    shape_driver.update("c", "t1", {"n": 6})
    assert env.sql("SELECT n, flag FROM items WHERE id = 't1'") == [(6, True)]
    shape_driver.update("c", ["a", "b"], {"price": 2.5})  # one transaction over two rows
    assert env.sql("SELECT id, price FROM items WHERE id IN ('a', 'b') ORDER BY id") == [("a", 2.5), ("b", 2.5)]
    shape_driver.delete("c", "t1")
    assert env.sql("SELECT count(*) FROM items WHERE id = 't1'") == [(0,)]
    # a write made in Postgres reaches the collection too
    env.psql("INSERT INTO items (id, n) VALUES ('p1', 9)")
    shape_driver.wait_rows("c", lambda rows: [r["id"] for r in rows] == ["a", "b", "p1"])
    # bad input is refused whole, with the reason, and the optimistic row rolled back
    bad = shape_driver.insert("c", {"id": "t2", "n": "not a number"}, check=False)
    assert bad["ok"] is False and bad["status"] == 400
    assert "not an integer" in bad["body"]["message"]
    assert env.sql("SELECT count(*) FROM items WHERE id = 't2'") == [(0,)]
    shape_driver.wait_rows("c", lambda rows: "t2" not in [r["id"] for r in rows])
