"""The sql step against a real PostgreSQL (the local server, or a throwaway cluster)."""

from __future__ import annotations

import json
import time

import pytest

from conftest import book
from runbook import audit


@pytest.fixture
def inv(write, pg, pg_db):
    """inv(**database fields) -> an inventory file with database `main` on pg_db."""

    def _inv(**fields):
        entry = {"host": pg.host, "port": pg.port, "dbname": pg_db, "user": pg.user, "connect_timeout": 5, **fields}
        return write("inv.yaml", "databases:\n  main: " + json.dumps(entry) + "\n")

    return _inv


@pytest.fixture
def table(pg, pg_db):
    with pg.connect(pg_db) as conn:
        conn.execute("CREATE TABLE t (id serial PRIMARY KEY, name text, n int DEFAULT 0)")
        conn.execute("INSERT INTO t (name) SELECT 'row' || g FROM generate_series(1, 5) g")
    return "t"


def test_readonly_step_reads_rows_usable_in_conditions(write, main, inv, table):
    p = book(write, """
  diagnose:
    - id: count
      sql: {database: main, query: "SELECT count(*) AS n, max(name) AS last FROM t"}
      readonly: true
    - id: decide
      choose:
        - when: "steps.count.rows[0].n == 5 and steps.count.rowcount == 1"
          goto: five
    - id: other
      end: {status: failed, message: "not five"}
    - id: five
      end: "five rows, last {{ steps.count.rows[0].last }}"
""")
    r = main("run", p, "--inventory", inv())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "five rows, last row5" in r.stdout
    assert "n  last" in r.stdout and "(1 row)" in r.stdout  # the result table


def test_readonly_update_is_refused_by_the_server(write, main, inv, table, pg, pg_db):
    p = book(write, """
  diagnose:
    - id: sneaky
      sql: {database: main, query: "UPDATE t SET n = 1"}
      readonly: true
""")
    r = main("run", p, "--inventory", inv())
    assert r.returncode == 1
    # refused by PostgreSQL's parser before it is sent (the READ ONLY transaction is the next layer)
    assert "a read-only step may not run UPDATE" in r.stdout + r.stderr
    with pg.connect(pg_db) as conn:
        assert conn.execute("SELECT sum(n) FROM t").fetchone()[0] == 0


def test_side_effect_functions_are_refused_in_readonly_steps(write, main, inv):
    p = book(write, """
  diagnose:
    - id: kill
      sql: {database: main, query: "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE false"}
      readonly: true
    - id: fine
      sql: {database: main, query: "SELECT 'pg_terminate_backend(1)' AS just_text -- pg_cancel_backend(2)"}
      readonly: true
""")
    r = main("validate", p)
    assert r.returncode == 1
    assert "step 'kill' sql.query: a read-only step may not use pg_terminate_backend" in r.stdout
    assert "step 'fine'" not in r.stdout
    # the engine refuses too (rule checks can be bypassed by editing the config; this cannot)
    from runbook.steps import sql

    assert sql.side_effects("select SetVal('s', 1), \"nextval\"('x')") == ["setval", "nextval"]
    assert sql.side_effects("COPY t TO PROGRAM 'rm -rf /'") == ["COPY … PROGRAM"]
    assert sql.side_effects("SELECT $$pg_reload_conf()$$, 'lo_unlink(1)'") == []
    # ways around a name list that a reviewer found, each closed
    assert sql.side_effects("SELECT E'\\'' AS q, pg_terminate_backend(1)") == ["pg_terminate_backend"]
    assert sql.side_effects("SELECT 1 AS a$$, pg_terminate_backend(1), 2 AS b$$") == ["pg_terminate_backend"]
    assert sql.side_effects('SELECT U&"pg_terminate\\005fbackend"(1)') == ["U& escaped names"]
    assert sql.side_effects("DO $$BEGIN PERFORM 1; END$$") == ["DO"]
    assert sql.side_effects("call kick(1)") == ["CALL"]
    assert sql.side_effects("SELECT query_to_xml('select 1', true, false, '')") == ["query_to_xml"]
    assert sql.side_effects("SET application_name = 'psql'") == ["SET"]
    assert sql.side_effects("SELECT pg_catalog . pg_cancel_backend (1)") == ["pg_cancel_backend"]


def test_statement_timeout_cancels_a_long_query(write, main, inv):
    p = book(write, """
  diagnose:
    - id: slow
      sql: {database: main, query: "SELECT pg_sleep(60)", statement_timeout: 1s}
      readonly: true
""")
    started = time.monotonic()
    r = main("run", p, "--inventory", inv())
    assert r.returncode == 1
    assert "statement timeout: cancelled by the server after 1s (SQLSTATE 57014)" in r.stdout
    assert time.monotonic() - started < 15


def test_injection_attempt_is_stored_literally(write, main, inv, table, pg, pg_db):
    p = book(write, """
  mitigate:
    - id: insert
      sql:
        database: main
        query: "INSERT INTO t (name) VALUES (%(name)s)"
        args: {name: "{{ params.name }}"}
      timeout: 30s
  verify:
    - id: check
      sql: {database: main, query: "SELECT count(*) AS n FROM t"}
      readonly: true
""", head="params:\n  name: {}\n")
    evil = "'; DROP TABLE t; --"
    r = main("run", p, "--inventory", inv(), "--yes", "-p", f"name={evil}")
    assert r.returncode == 0, r.stdout + r.stderr
    with pg.connect(pg_db) as conn:
        assert conn.execute("SELECT count(*) FROM t WHERE name = %s", (evil,)).fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 6


def test_templates_in_sql_text_are_refused(write, main):
    p = book(write, """
  diagnose:
    - id: bad
      sql: {database: main, query: "SELECT * FROM t WHERE name = '{{ params.name }}'"}
      readonly: true
    - id: missing
      sql: {database: main, query: "SELECT %(a)s, %(b)s", args: {a: 1, c: 2}}
      readonly: true
""", head="params:\n  name: {default: x}\n")
    r = main("validate", p)
    assert r.returncode == 1
    assert "the SQL text may not contain templates" in r.stdout
    assert "placeholder %(b)s has no value under args" in r.stdout
    assert "args.c is not used by the query" in r.stdout


def test_expect_rows_rolls_back(write, main, inv, table, pg, pg_db):
    p = book(write, """
  mitigate:
    - id: bump
      sql: {database: main, query: "UPDATE t SET n = n + 1", expect_rows: {max: 3}}
      timeout: 30s
  verify:
    - id: check
      sql: {database: main, query: "SELECT 1 AS one"}
      readonly: true
""")
    r = main("run", p, "--inventory", inv(), "--yes")
    assert r.returncode == 1
    assert "expected at most 3 rows, the statement touched 5; rolled back" in r.stdout
    with pg.connect(pg_db) as conn:
        assert conn.execute("SELECT sum(n) FROM t").fetchone()[0] == 0
    p2 = book(write, """
  mitigate:
    - id: bump
      sql: {database: main, query: "UPDATE t SET n = n + 1", expect_rows: 5}
      timeout: 30s
  verify:
    - id: check
      sql: {database: main, query: "SELECT 1 AS one"}
      readonly: true
""", name="b2.yaml")
    assert main("run", p2, "--inventory", inv(), "--yes").returncode == 0
    with pg.connect(pg_db) as conn:
        assert conn.execute("SELECT sum(n) FROM t").fetchone()[0] == 5


def test_write_needs_confirmation_and_terminate_ends_a_real_session(write, main, inv, pg, pg_db):
    victim = pg.connect(pg_db)
    pid = victim.info.backend_pid
    p = book(write, """
  mitigate:
    - id: kill
      sql:
        database: main
        query: "SELECT pg_terminate_backend(%(pid)s) AS terminated"
        args: {pid: "{{ params.pid }}"}
      timeout: 30s
  verify:
    - id: gone
      sql:
        database: main
        query: "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = %(pid)s"
        args: {pid: "{{ params.pid }}"}
      readonly: true
      until: "rows[0].n == 0"
      every: 0.2s
      timeout: 10s
""", head="params:\n  pid: {type: integer}\n")
    r = main("run", p, "--inventory", inv(), "-p", f"pid={pid}")
    assert r.returncode == 3 and "SELECT pg_terminate_backend(%(pid)s)" in r.stdout and f"pid={pid}" in r.stdout
    assert victim.execute("SELECT 1").fetchone() == (1,)  # untouched without approval
    r = main("run", p, "--inventory", inv(), "-p", f"pid={pid}", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    import psycopg

    with pytest.raises(psycopg.OperationalError):
        victim.execute("SELECT 1")
    victim.close()


def test_one_connection_per_run_with_application_name_and_readonly_role(write, main, inv, make_pg_role, pg, pg_db, audit_dir):
    role = make_pg_role()
    with pg.connect(pg_db) as conn:
        conn.execute(f'GRANT CONNECT ON DATABASE "{pg_db}" TO "{role}"')
    p = book(write, """
  diagnose:
    - id: first
      sql: {database: main, query: "SELECT pg_backend_pid() AS pid, current_user AS who, current_setting('application_name') AS app"}
      readonly: true
    - id: second
      sql: {database: main, query: "SELECT pg_backend_pid() AS pid"}
      readonly: true
    - id: same
      choose:
        - when: "steps.first.rows[0].pid == steps.second.rows[0].pid"
          goto: ok
    - id: different
      end: {status: failed, message: "two connections"}
    - id: ok
      end: "who={{ steps.first.rows[0].who }} app={{ steps.first.rows[0].app }}"
""")
    r = main("run", p, "--inventory", inv(readonly_role=role))
    assert r.returncode == 0, r.stdout + r.stderr
    run_id = list(audit.read_records(audit_dir / "audit.jsonl"))[0]["run"]
    assert f"who={role} app=runbook:{run_id}" in r.stdout


def test_dry_run_contacts_nothing_and_shows_bound_values(write, main, tmp_path):
    inv = write("inv.yaml", "databases:\n  main: {host: 127.0.0.1, port: 1, dbname: nowhere, user: nobody}\n")
    p = book(write, """
  mitigate:
    - id: kill
      sql:
        database: main
        query: "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %(user)s"
        args: {user: "{{ params.user }}"}
      timeout: 30s
  verify:
    - id: ok
      end: done
""", head="params:\n  user: {default: app}\n")
    r = main("run", p, "--inventory", inv, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "WHERE usename = %(user)s" in r.stdout and "-- args: user='app'" in r.stdout
    assert "database main (nobody@127.0.0.1:1/nowhere)" in r.stdout
    r = main("run", p, "--dry-run")  # no inventory at all
    assert r.returncode == 1 and "a sql step needs an inventory with database 'main'" in r.stderr
    r = main("validate", p, "--inventory", write("other.yaml", "databases:\n  mian: {host: x}\n"))
    assert r.returncode == 1 and "database 'main' is not in" in r.stdout and "did you mean 'mian'" in r.stdout


def test_clear_errors_for_connection_and_syntax_problems(write, main, inv, pg, pg_password, audit_dir):
    p = book(write, """
  diagnose:
    - id: q
      sql:
        database: main
        query: |
          SELECT 1
          FROM nowhere WHERE WHERE
      readonly: true
""")
    r = main("run", p, "--inventory", inv())  # a read: PostgreSQL's parser finds it before anything is sent
    assert 'SQL syntax error: syntax error at or near "WHERE"' in r.stdout + r.stderr
    assert "at line 2, column 20 of the query" in r.stdout + r.stderr
    w = write("w.yaml", p.read_text().replace("readonly: true", "timeout: 5s").replace("diagnose:", "mitigate:")
              + "  verify:\n    - {id: done, end: done}\n")
    r = main("run", w, "--inventory", inv(), "--yes")  # a write: the server's error, placed the same way
    assert "SQL syntax error at line 2, column 20" in r.stdout and "SQLSTATE 42601" in r.stdout
    ok = book(write, """
  diagnose:
    - id: q
      sql: {database: main, query: "SELECT 1 AS one"}
      readonly: true
""", name="ok.yaml")
    r = main("run", ok, "--inventory", inv(port=1))
    assert r.returncode == 1 and f"cannot connect to database 'main' at {pg.host}:1: connection refused" in r.stdout
    r = main("run", ok, "--inventory", inv(dbname="no_such_db"))
    assert "the server at" in r.stdout and "has no database 'no_such_db'" in r.stdout
    # a password in a DSN never reaches the screen or the audit log
    wrong = f"postgresql://postgres:Wr0ngPw-123@{pg_password.host}:{pg_password.port}/postgres"
    inv_dsn = write("dsn.yaml", "databases:\n  main: {dsn: " + json.dumps(wrong) + "}\n")
    r = main("run", ok, "--inventory", inv_dsn)
    assert r.returncode == 1 and "password authentication failed for user" in r.stdout
    right = f"postgresql://postgres:{pg_password.password}@{pg_password.host}:{pg_password.port}/postgres"
    inv_dsn = write("dsn.yaml", "databases:\n  main: {dsn: " + json.dumps(right) + "}\n")
    r = main("run", ok, "--inventory", inv_dsn)
    assert r.returncode == 0, r.stdout + r.stderr
    log = (audit_dir / "audit.jsonl").read_text()
    for secret in ("Wr0ngPw-123", pg_password.password):
        assert secret not in r.stdout + r.stderr and secret not in log


def test_password_from_the_environment(write, main, pg_password):
    p = book(write, """
  diagnose:
    - id: q
      sql: {database: main, query: "SELECT current_user AS who"}
      readonly: true
    - id: done
      end: "{{ steps.q.rows[0].who }}"
""")
    inv = write("inv.yaml", f"databases:\n  main: {{host: {pg_password.host}, port: {pg_password.port}, dbname: postgres, "
                            f"user: postgres, password: {{env: PG_TEST_PW}}}}\n")
    r = main("run", p, "--inventory", inv)
    assert r.returncode == 1 and "environment variable PG_TEST_PW is not set" in r.stdout
    r = main("run", p, "--inventory", inv, env={"PG_TEST_PW": pg_password.password})
    assert r.returncode == 0 and "resolved" in r.stdout, r.stdout


def test_wide_and_long_results_stay_readable(write, main, inv):
    p = book(write, """
  diagnose:
    - id: many
      sql: {database: main, query: "SELECT g AS id, repeat('x', 500) AS wide FROM generate_series(1, 300) g"}
      readonly: true
      outputs:
        more: {regex: '… (\\d+) more rows', type: integer}
""")
    r = main("run", p, "--inventory", inv())
    assert r.returncode == 0, r.stdout
    assert "x" * 59 + "…" in r.stdout and "x" * 61 not in r.stdout
    from runbook.steps.sql import _table

    text = _table({"columns": ["id"], "rows": [{"id": i} for i in range(60)], "truncated": 40})
    assert text.splitlines()[-1] == "… 50 more rows not shown (100 in all)"


def test_pool_exhaustion_playbook_end_to_end(main, pg, pg_db, write, audit_dir):
    from conftest import ROOT

    idle = [pg.connect(pg_db) for _ in range(30)]
    try:
        time.sleep(1.2)
        inv = write("inv.yaml", f"databases:\n  main: {{host: {pg.host}, port: {pg.port}, dbname: {pg_db}, user: {pg.user}}}\n")
        book = ROOT / "playbooks" / "db-connection-pool-exhaustion.yaml"
        # more idle sessions than max_terminate: escalated, nothing terminated
        r = main("run", book, "--inventory", inv, "--yes", "--answer", "remedy=terminate-idle",
                "-p", "threshold=10", "-p", "idle_seconds=1", "-p", "max_terminate=20", timeout=120)
        assert r.returncode == 1 and "30 idle sessions, more than 20" in r.stdout, r.stdout + r.stderr
        assert all(c.execute("SELECT 1").fetchone() == (1,) for c in idle)
        # the database has room (threshold 100): not "resolved" from the database's count alone
        r = main("run", book, "--inventory", inv, "--yes", "--answer", "app-pool=escalate",
                "-p", "threshold=100", "-p", "idle_seconds=1", timeout=120)
        assert r.returncode == 1 and "run escalated" in r.stdout and "→ app-pool because" in r.stdout, r.stdout + r.stderr
        # cancel-long-running: the query is cancelled (its session stays), bounded by max_cancel
        import threading

        def _run_catching(conn, sql: str) -> str:
            try:
                conn.execute(sql)
                return "finished"
            except Exception as exc:  # noqa: BLE001 - the test reads why the statement stopped
                return str(exc)

        slow = pg.connect(pg_db, application_name="slow-report")
        got: list = []
        t = threading.Thread(target=lambda: got.append(_run_catching(slow, "SELECT pg_sleep(60)")), daemon=True)
        t.start()
        time.sleep(1.5)
        r = main("run", book, "--inventory", inv, "--yes", "--answer", "app-pool=cancel-long-running",
                "-p", "threshold=100", "-p", "long_running_seconds=1", "-p", "max_cancel=1", timeout=120)
        t.join(10)
        assert got and "canceling statement due to user request" in got[0], (got, r.stdout)
        res = {x["step"]: x for x in audit.read_records(audit_dir / "audit.jsonl") if x["type"] == "step_result"}
        assert res["cancel-long-running"]["status"] == "ok" and res["long-gone"]["status"] == "ok"
        assert slow.execute("SELECT 1").fetchone() == (1,)  # cancelled, not terminated
        slow.close()
        assert r.returncode == 1 and res["pool-alert-clear"]["status"] == "failed"  # no Prometheus here: the pool's alert is unknown
        r = main("run", book, "--inventory", inv, "--yes", "--answer", "remedy=terminate-idle",
                "-p", "threshold=10", "-p", "idle_seconds=1", timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Connections are back under 10" in r.stdout
        with pg.connect(pg_db) as conn:
            left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
                                (pg_db,)).fetchone()[0]
        assert left <= 10
        dead = 0
        for c in idle:
            try:
                c.execute("SELECT 1")
            except Exception:  # noqa: BLE001 - terminated by the runbook
                dead += 1
        assert dead == 30
        recs = [x for x in audit.read_records(audit_dir / "audit.jsonl")]
        kill = [x for x in recs if x.get("step") == "terminate-idle"]
        assert [x["type"] for x in kill] == ["decision", "step_intent", "step_result"]
        assert kill[0]["approved"] is True and kill[0]["how"] == "--yes"
        assert kill[2]["status"] == "ok" and "(30 rows)" in kill[2]["output_excerpt"]
    finally:
        for c in idle:
            c.close()


def test_reviewed_edge_cases(write, main, inv, pg, pg_db, make_pg_role, audit_dir):
    """Types read as text, duplicate columns, intervals as seconds, secrets bound as args, dead connections."""
    role = make_pg_role()
    with pg.connect(pg_db) as conn:
        conn.execute(f'GRANT CONNECT ON DATABASE "{pg_db}" TO "{role}"')
    p = book(write, """
  diagnose:
    - id: types
      sql:
        database: main
        query: "SELECT 'pg_class'::regclass AS rel, 1 AS dup, 2 AS dup, interval '90 seconds' AS age, 2.50::numeric AS n, %(s)s::text AS s"
        args: {s: "{{ params.token }}"}
      readonly: true
    - id: check
      choose:
        - when: "steps.types.rows[0].rel == 'pg_class' and steps.types.rows[0].dup_2 == 2 and steps.types.rows[0].age > 60 and steps.types.rows[0].n * 2 == 5"
          goto: kill-my-session
    - id: bad
      end: {status: failed, message: "types: {{ steps.types.rows[0] }}"}
  mitigate:
    - id: kill-my-session
      sql:
        database: main
        query: "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %(role)s"
        args: {role: "{{ params.role }}"}
      timeout: 30s
  verify:
    - id: again
      sql: {database: main, query: "SELECT current_user AS who"}
      readonly: true
    - id: done
      end: "again as {{ steps.again.rows[0].who }}"
""", head="params:\n  token: {secret: true}\n  role: {}\n")
    r = main("run", p, "--inventory", inv(readonly_role=role), "--yes", "-p", f"role={role}",
            env={"RUNBOOK_PARAM_TOKEN": "s3cret-arg"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"again as {role}" in r.stdout  # the read-only connection was ended, and replaced
    assert "s3cret-arg" not in r.stdout and b"s3cret-arg" not in (audit_dir / "audit.jsonl").read_bytes()


def test_write_step_timeout_is_a_timeout_and_autocommit_guards(write, main, inv):
    p = book(write, """
  mitigate:
    - id: slow
      sql: {database: main, query: "SELECT pg_sleep(10)"}
      timeout: 1s
  verify:
    - id: ok
      end: done
""")
    r = main("run", p, "--inventory", inv(), "--yes")
    assert r.returncode == 1 and "step 'slow' timeout" in r.stdout
    p = book(write, """
  mitigate:
    - id: vac
      sql: {database: main, query: "VACUUM", autocommit: true, expect_rows: 0}
      timeout: 1m
    - id: kill
      sql: {database: main, query: "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE false", expect_rows: {max: 5}}
      timeout: 1m
  verify:
    - id: ok
      end: done
""", name="b2.yaml")
    r = main("validate", p)
    assert "expect_rows cannot roll back an autocommit statement" in r.stdout
    assert "expect_rows cannot undo pg_terminate_backend" in r.stdout


def test_a_dsn_that_cannot_be_parsed_is_not_echoed(write, main):
    inv = write("inv.yaml", 'databases:\n  main: {dsn: "postgresql://postgres:Pa%zz55word@127.0.0.1:1/x"}\n')
    p = book(write, """
  diagnose:
    - id: q
      sql: {database: main, query: "SELECT 1 AS one"}
      readonly: true
""")
    r = main("run", p, "--inventory", inv)
    assert r.returncode == 1 and "its dsn cannot be parsed" in r.stdout
    assert "Pa%zz55word" not in r.stdout + r.stderr
    r = main("run", p, "--inventory", inv, "--dry-run")
    assert "Pa%zz55word" not in r.stdout and "postgres@127.0.0.1:1/x" in r.stdout
