"""validate / plan / apply / status against a real PostgreSQL, through the real CLI entry point."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import psycopg
import pytest

from electricctl._model import wire
from electricctl._sql import names
from tests.conftest import DEMO_CONFIG


def one(url: str, query: str, params: Any = None) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row and len(row) == 1 else row


def triggers(url: str, table: str) -> set[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tgname, tgenabled::text FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
            [table],
        ).fetchall()
    return {(r[0], r[1]) for r in rows}


def publication(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = %s", [wire.PUBLICATION])
        return {r[0] for r in rows.fetchall()}


@pytest.fixture
def cfg(write_config):  # type: ignore[no-untyped-def]
    return write_config(DEMO_CONFIG)


def test_apply_installs_everything_and_replan_is_empty(run_cli, demo_db, cfg) -> None:  # type: ignore[no-untyped-def]
    plan = run_cli("plan", "-f", str(cfg), "--database-url", demo_db, "--detailed-exitcode")
    assert plan.code == 2, plan.err
    assert "+ catalog.electric" in plan.out and "CREATE PUBLICATION" in plan.out

    applied = run_cli("apply", "-f", str(cfg), "--database-url", demo_db)
    assert applied.code == 0, applied.err
    assert "Applied." in applied.out

    assert publication(demo_db) == {"users", "projects", "issues", "comments"}
    assert one(demo_db, "SELECT relreplident::text FROM pg_class WHERE oid = 'issues'::regclass") == "f"
    assert triggers(demo_db, "issues") == {("electric_stamp_row", "A"), ("electric_stamp_truncate", "A")}
    assert triggers(demo_db, "audit_log") == set()
    assert one(demo_db, "SELECT relreplident::text FROM pg_class WHERE oid = 'audit_log'::regclass") == "d"

    rows = one(demo_db, "SELECT count(*) FROM electric.applied_configs")
    assert rows == 1
    hash_, version, age = one(
        demo_db,
        "SELECT config_hash, electricctl_version, now() - applied_at < interval '1 minute' FROM electric.applied_configs",
    )
    plan_json = json.loads(run_cli("plan", "-f", str(cfg), "--database-url", demo_db, "-o", "json").out)
    assert plan_json["format_version"] == "1.0"
    assert plan_json["changes"] == [] and hash_ == plan_json["config_hash"]
    from electricctl import __version__

    assert version == __version__ and age is True
    shape = one(demo_db, "SELECT definition FROM electric.shapes WHERE name = 'projects'")
    assert shape["where"] == "owner_id = auth.sub"
    assert shape["include"][0]["direction"] == "one_to_many" and shape["include"][0]["columns"] == ["project_id"]
    grant = one(demo_db, "SELECT definition FROM electric.grants")
    assert grant["privileges"] == ["select", "insert", "update", "delete"]

    again = run_cli("plan", "-f", str(cfg), "--database-url", demo_db, "--detailed-exitcode")
    assert again.code == 0 and "No changes." in again.out
    second = run_cli("apply", "-f", str(cfg), "--database-url", demo_db)
    assert second.code == 0 and "No changes." in second.out
    assert one(demo_db, "SELECT count(*) FROM electric.applied_configs") == 1  # a no-op apply records nothing

    status = run_cli("status", "-f", str(cfg), "--database-url", demo_db, "--detailed-exitcode")
    assert status.code == 0 and "In sync" in status.out


def test_dry_run_changes_nothing(run_cli, demo_db, cfg) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("apply", "-f", str(cfg), "--database-url", demo_db, "--dry-run")
    assert result.code == 0, result.err
    assert "Dry run" in result.out and "CREATE TRIGGER" in result.out
    assert one(demo_db, "SELECT to_regnamespace('electric')") is None
    assert one(demo_db, "SELECT count(*) FROM pg_publication") == 0
    assert triggers(demo_db, "issues") == set()


def test_direct_writes_are_stamped(run_cli, demo_db, cfg) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("apply", "-f", str(cfg), "--database-url", demo_db).code == 0
    uid = "00000000-0000-0000-0000-000000000001"

    def shadow() -> Any:
        return one(
            demo_db,
            "SELECT row_tags, col_tags, deleted FROM electric.shadow WHERE table_name = 'users' AND pk = %s",
            [[uid]],
        )

    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, name) VALUES (%s, 'Ada')", [uid])
    row_tags, col_tags, deleted = shadow()
    assert len(row_tags) == 1 and row_tags[0][1] is None and not deleted
    inserted_at = row_tags[0][0]
    assert set(col_tags) == {"name", "email"} and col_tags["name"] == [inserted_at, None]
    assert abs(inserted_at - time.time() * 1000) < 60_000

    time.sleep(0.01)
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("UPDATE users SET email = 'a@x' WHERE id = %s", [uid])
    row_tags, col_tags, _ = shadow()
    assert row_tags[0][0] > inserted_at
    assert col_tags["name"] == [inserted_at, None]  # unchanged column keeps its tag
    assert col_tags["email"] == [row_tags[0][0], None]

    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("DELETE FROM users WHERE id = %s", [uid])
    row_tags, _, deleted = shadow()
    assert row_tags == [] and deleted is True

    # the sync worker marks its own writes, which it tags itself: the trigger leaves them alone
    other = "00000000-0000-0000-0000-000000000002"
    with psycopg.connect(demo_db) as conn:
        conn.execute("SET LOCAL electric.writer = 'sync'")
        conn.execute("INSERT INTO users (id, name) VALUES (%s, 'Bob')", [other])
    assert one(demo_db, "SELECT count(*) FROM electric.shadow WHERE pk = %s", [[other]]) == 0

    # a primary key update tombstones the old key and tags the new one
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, name) VALUES (%s, 'Cy')", [uid])
        third = "00000000-0000-0000-0000-000000000003"
        conn.execute("UPDATE users SET id = %s WHERE id = %s", [third, uid])
    assert shadow()[2] is True
    assert one(demo_db, "SELECT deleted FROM electric.shadow WHERE pk = %s", [[third]]) is False

    # TRUNCATE is refused (clients could not learn which rows are gone); nothing changes
    with pytest.raises(psycopg.errors.FeatureNotSupported, match=r"cannot truncate electrified table public\.users"):
        with psycopg.connect(demo_db, autocommit=True) as conn:
            conn.execute("TRUNCATE users CASCADE")
    assert one(demo_db, "SELECT count(*) FROM users") == 2


def test_drift_is_reported_and_repaired(run_cli, demo_db, cfg) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("apply", "-f", str(cfg), "--database-url", demo_db).code == 0
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("DROP TRIGGER electric_stamp_row ON issues")
        conn.execute(f"ALTER PUBLICATION {wire.PUBLICATION} DROP TABLE comments")
        conn.execute("ALTER TABLE projects DISABLE TRIGGER electric_stamp_truncate")

    status = run_cli("status", "-f", str(cfg), "--database-url", demo_db, "--detailed-exitcode")
    assert status.code == 2, status.err
    assert "Drift" in status.out
    doc = json.loads(run_cli("status", "-f", str(cfg), "--database-url", demo_db, "-o", "json").out)
    assert doc["in_sync"] is False and doc["pending"] == []
    assert sorted(d["address"] for d in doc["drift"]) == [
        "table.public.comments.publication",
        "table.public.issues.trigger.electric_stamp_row",
        "table.public.projects.trigger.electric_stamp_truncate",
    ]

    assert run_cli("apply", "-f", str(cfg), "--database-url", demo_db).code == 0
    assert ("electric_stamp_row", "A") in triggers(demo_db, "issues")
    assert ("electric_stamp_truncate", "A") in triggers(demo_db, "projects")
    assert "comments" in publication(demo_db)
    assert run_cli("status", "-f", str(cfg), "--database-url", demo_db, "--detailed-exitcode").code == 0


def test_a_column_added_later_is_tagged_like_any_other_with_no_drift(run_cli, demo_db, cfg) -> None:  # type: ignore[no-untyped-def]
    """Issue 12: the stamp function names only the key, so an added column needs no new function."""
    assert run_cli("apply", "-f", str(cfg), "--database-url", demo_db).code == 0
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE issues ADD COLUMN due date")
    status = run_cli("status", "-f", str(cfg), "--database-url", demo_db, "--detailed-exitcode")
    assert status.code == 0, status.out  # in sync: nothing to apply after the DDL
    # the guard turned on the function's generic path in the DDL's transaction
    source = one(demo_db, "SELECT prosrc FROM pg_proc WHERE proname = 'stamp__public__issues'")
    assert names.STAMP_GENERIC in source and names.STAMP_FAST not in source
    issue = "00000000-0000-0000-0000-00000000000c"
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("INSERT INTO users VALUES ('00000000-0000-0000-0000-00000000000a', 'u', NULL)")
        conn.execute(
            "INSERT INTO projects VALUES ('00000000-0000-0000-0000-00000000000b', 'p',"
            " '00000000-0000-0000-0000-00000000000a', now())"
        )
        conn.execute(
            "INSERT INTO issues (id, project_id, title, status, due) VALUES"
            " (%s, '00000000-0000-0000-0000-00000000000b', 't', 'open', '2029-01-01')",
            [issue],
        )
    inserted = one(demo_db, "SELECT col_tags FROM electric.shadow WHERE table_name = 'issues'")
    assert (
        set(inserted) == {"project_id", "title", "status", "priority", "data", "due"}
        and inserted["due"] == inserted["title"]
    )
    time.sleep(0.01)
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("UPDATE issues SET due = '2030-01-01', title = title")  # only due changes value
    updated = one(demo_db, "SELECT col_tags FROM electric.shadow WHERE table_name = 'issues'")
    assert updated["due"][0] > inserted["due"][0] and updated["title"] == inserted["title"]
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("DELETE FROM issues")
    tombstone = one(demo_db, "SELECT tombstone FROM electric.shadow WHERE table_name = 'issues'")
    assert tombstone == {
        "project_id": "00000000-0000-0000-0000-00000000000b",
        "title": "t",
        "status": "open",
        "priority": None,
        "data": None,
        "due": "2030-01-01",
    }


def test_prune_removes_sync_objects_but_never_data(run_cli, demo_db, cfg, write_config) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("apply", "-f", str(cfg), "--database-url", demo_db).code == 0
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE comments REPLICA IDENTITY DEFAULT")  # drift that prune must not trip over
        conn.execute("INSERT INTO users VALUES ('00000000-0000-0000-0000-000000000001', 'u', NULL)")
    smaller = write_config(DEMO_CONFIG.split("tables:")[0] + "tables:\n  - users\n", "smaller.yaml")
    plan = run_cli("plan", "-f", str(smaller), "--database-url", demo_db)
    assert plan.code == 0
    assert "removed only with --prune" in plan.out and "table.public.issues" in plan.out
    kept = run_cli("apply", "-f", str(smaller), "--database-url", demo_db)
    assert kept.code == 0
    assert publication(demo_db) == {"users", "projects", "issues", "comments"}  # nothing removed by default
    assert one(demo_db, "SELECT count(*) FROM electric.grants") == 1

    pruned = run_cli("apply", "-f", str(smaller), "--database-url", demo_db, "--prune")
    assert pruned.code == 0, pruned.err
    assert publication(demo_db) == {"users"}
    for table in ("projects", "issues", "comments"):
        assert triggers(demo_db, table) == set()
        assert one(demo_db, "SELECT relreplident::text FROM pg_class WHERE oid = %s::regclass", [table]) == "d"
        assert one(demo_db, "SELECT count(*) FROM electric.electrified WHERE table_name = %s", [table]) == 0
        assert one(demo_db, "SELECT to_regprocedure(%s)", [f"electric.stamp__public__{table}()"]) is None
    assert one(demo_db, "SELECT count(*) FROM electric.grants") == 0
    assert one(demo_db, "SELECT count(*) FROM electric.shapes") == 0
    assert one(demo_db, "SELECT count(*) FROM users") == 1  # user data untouched
    assert run_cli("plan", "-f", str(smaller), "--database-url", demo_db, "--prune", "--detailed-exitcode").code == 0

    empty = write_config("version: 1\nauth: {mode: insecure}\n", "empty.yaml")
    refused = run_cli("apply", "-f", str(empty), "--database-url", demo_db, "--prune")
    assert refused.code == 1 and "--allow-empty" in refused.err
    assert publication(demo_db) == {"users"}
    allowed = run_cli("apply", "-f", str(empty), "--database-url", demo_db, "--prune", "--allow-empty")
    assert allowed.code == 0 and publication(demo_db) == set()


def test_a_concurrent_apply_waits_then_times_out_with_its_own_exit_code(run_cli, demo_db, cfg) -> None:  # type: ignore[no-untyped-def]
    holder = psycopg.connect(demo_db)
    holder.execute("SELECT pg_advisory_xact_lock(%s)", [names.ADVISORY_LOCK_KEY])
    try:
        started = time.monotonic()
        result = run_cli("apply", "-f", str(cfg), "--database-url", demo_db, "--lock-timeout", "0.5")
        waited = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert result.code == 3, result.err
    assert "timed out after 0.5s waiting for a lock" in result.err
    assert waited >= 0.5
    assert one(demo_db, "SELECT to_regnamespace('electric')") is None

    # a lock released within the timeout: the second apply waits for it, then succeeds
    holder = psycopg.connect(demo_db)
    holder.execute("SELECT pg_advisory_xact_lock(%s)", [names.ADVISORY_LOCK_KEY])
    release = threading.Timer(0.5, holder.rollback)
    release.start()
    try:
        result = run_cli("apply", "-f", str(cfg), "--database-url", demo_db, "--lock-timeout", "30")
    finally:
        release.join()
        holder.close()
    assert result.code == 0, result.err
    assert one(demo_db, "SELECT count(*) FROM electric.applied_configs") == 1


def test_two_applies_racing_serialise(demo_db, cfg) -> None:  # type: ignore[no-untyped-def]
    from electricctl._apply import applier
    from electricctl._config.loader import load_file

    config = load_file(cfg, database_url=demo_db)
    results: list[Any] = []

    def go() -> None:
        results.append(applier.apply(config, demo_db, lock_timeout=30))

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.applied for r in results) == [False, False, True]
    assert one(demo_db, "SELECT count(*) FROM electric.applied_configs") == 1


def test_failed_apply_rolls_everything_back(run_cli, demo_db, cfg) -> None:  # type: ignore[no-untyped-def]
    # An event trigger of the user's that refuses triggers on comments: the apply fails part-way.
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute(
            """
            CREATE FUNCTION refuse_comment_triggers() RETURNS event_trigger LANGUAGE plpgsql AS $$
            DECLARE r record;
            BEGIN
              FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
                IF r.command_tag = 'CREATE TRIGGER' AND r.object_identity LIKE '%comments%' THEN
                  RAISE EXCEPTION 'no triggers on comments, please';
                END IF;
              END LOOP;
            END $$;
            CREATE EVENT TRIGGER guard ON ddl_command_end EXECUTE FUNCTION refuse_comment_triggers();
            """
        )
    result = run_cli("apply", "-f", str(cfg), "--database-url", demo_db)
    assert result.code == 1
    assert "applying table.public.comments.trigger.electric_stamp_row failed: no triggers on comments" in result.err
    assert "nothing was applied" in result.err
    assert one(demo_db, "SELECT to_regnamespace('electric')") is None
    assert one(demo_db, "SELECT count(*) FROM pg_publication") == 0
    assert triggers(demo_db, "users") == set()
    assert one(demo_db, "SELECT relreplident::text FROM pg_class WHERE oid = 'users'::regclass") == "d"


def test_bad_live_schema_is_refused_with_locations(run_cli, demo_db, write_config) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE nopk (a text)")
        conn.execute("CREATE TABLE money (id uuid PRIMARY KEY, amount money, tags jsonb[])")
    bad = write_config(
        """
        version: 1
        auth: {mode: insecure}
        tables: [users, nopk, money, missing]
        shapes:
          - name: s
            table: users
            where: "nickname = auth.sub"
            include:
              - table: money
        """
    )
    result = run_cli("plan", "-f", str(bad), "--database-url", demo_db)
    assert result.code == 1
    err = result.err
    assert f"{bad}:3:17: table public.nopk has no primary key" in err
    assert "column money.amount has an unsupported type: money" in err
    assert "column money.tags has an unsupported type: jsonb[] is an array of a type clients cannot hold" in err
    assert f"{bad}:3:30: table public.missing does not exist" in err
    assert f"{bad}:7:13: column 'nickname' does not exist in public.users" in err
    assert "no foreign key joins public.money to public.users" in err
    assert "nothing was changed" not in err  # plan never changes anything: it does not say so
    applied = run_cli("apply", "-f", str(bad), "--database-url", demo_db)
    assert applied.code == 1 and "nothing was changed" in applied.err
    assert one(demo_db, "SELECT to_regnamespace('electric')") is None
    doc = json.loads(run_cli("plan", "-f", str(bad), "--database-url", demo_db, "-o", "json").out)
    assert {e["code"] for e in doc["errors"]} >= {"db.no_primary_key", "db.unsupported_type", "db.table_missing"}


def test_status_reports_replication_slot_lag(run_cli, demo_db, cfg) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("apply", "-f", str(cfg), "--database-url", demo_db).code == 0
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('electricctl_test', 'pgoutput')")
        conn.execute("INSERT INTO users SELECT gen_random_uuid(), 'user ' || i FROM generate_series(1, 200) i")
    doc = json.loads(run_cli("status", "-f", str(cfg), "--database-url", demo_db, "-o", "json").out)
    (slot,) = [s for s in doc["slots"] if s["name"] == "electricctl_test"]
    assert slot["plugin"] == "pgoutput" and slot["active"] is False
    assert slot["lag_bytes"] > 10_000
    human = run_cli("status", "-f", str(cfg), "--database-url", demo_db)
    assert "electricctl_test" in human.out and "replication slots" in human.out


def test_connection_errors_are_clear(run_cli, cfg) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("plan", "-f", str(cfg), "--database-url", "postgresql://nobody:s3cret@127.0.0.1:1/x")
    assert result.code == 1
    assert "cannot connect to postgresql://nobody:***@127.0.0.1:1/x" in result.err
    assert "s3cret" not in result.err
    missing = run_cli("plan", "-f", str(cfg))
    assert missing.code == 64 and "no database" in missing.err


def test_json_output_carries_errors_for_ci(run_cli, demo_db, cfg, write_config) -> None:  # type: ignore[no-untyped-def]
    bad = write_config("version: 1\nauth: {mode: insecure}\ntables: [nowhere]\n", "bad.yaml")
    for command in ("plan", "apply", "status"):
        result = run_cli(command, "-f", str(bad), "--database-url", demo_db, "-o", "json")
        assert result.code == 1, command
        (error,) = json.loads(result.out)["errors"]
        assert error["code"] == "db.table_missing" and error["line"] == 3
    invalid = write_config("version: 1\nauth: {mode: insecure}\ntables: [1nvalid]\n", "invalid.yaml")
    result = run_cli("plan", "-f", str(invalid), "--database-url", demo_db, "-o", "json")
    assert result.code == 1 and json.loads(result.out)["errors"][0]["path"] == "tables[0]"


def test_status_before_any_apply_lists_everything_as_pending(run_cli, demo_db, cfg) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("status", "-f", str(cfg), "--database-url", demo_db, "--detailed-exitcode")
    assert result.code == 2
    assert "last apply: never" in result.out and "Pending" in result.out
    doc = json.loads(run_cli("status", "-f", str(cfg), "--database-url", demo_db, "-o", "json").out)
    assert doc["last_applied"] is None and doc["drift"] == [] and len(doc["pending"]) > 20
