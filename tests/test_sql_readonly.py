"""Read-only sql steps decided by PostgreSQL's parser and catalog (runbook.steps.sql_readonly),
against the real server: a victim session that must survive and a table whose rows must not change."""

from __future__ import annotations

import json
import statistics
import time

import pytest
import yaml
from conftest import ROOT, book

from runbook.steps import sql_readonly as R
from runbook.steps.sql import RESET_SESSION

SETUP = """
CREATE TABLE t (id serial PRIMARY KEY, name text, n int DEFAULT 0);
INSERT INTO t (name) SELECT 'row' || g FROM generate_series(1, 20) g;
CREATE SEQUENCE s;
CREATE FUNCTION f_sql() RETURNS bigint LANGUAGE sql VOLATILE AS 'SELECT nextval(''s'')';
CREATE FUNCTION f_pl() RETURNS int LANGUAGE plpgsql AS $$BEGIN INSERT INTO t (name) VALUES ('planted'); RETURN 1; END$$;
CREATE FUNCTION f_stable(p int) RETURNS boolean LANGUAGE plpgsql STABLE AS $$BEGIN RETURN pg_terminate_backend(p); END$$;
CREATE FUNCTION f_op(a int, b int) RETURNS boolean LANGUAGE plpgsql AS $$BEGIN RETURN pg_terminate_backend(b); END$$;
CREATE OPERATOR public.!!! (LEFTARG = int, RIGHTARG = int, FUNCTION = f_op);
"""
STATE = """SELECT (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM t) AS md5, (SELECT count(*) FROM t) AS rows,
  (SELECT last_value FROM s) AS seq, (SELECT relfilenode FROM pg_class WHERE relname = 't') AS heap,
  (SELECT relfilenode FROM pg_class WHERE relname = 't_pkey') AS idx,
  (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) AS advisory,
  (SELECT count(*) FROM pg_largeobject_metadata) AS large_objects"""
KILL = "SELECT to_tsvector(pg_terminate_backend(pid)::text) FROM pg_stat_activity WHERE pid = "


@pytest.fixture
def world(pg, pg_db, write):
    """A database with the table, a victim session, and an inventory pointing at it."""
    with pg.connect(pg_db) as conn:
        conn.execute(SETUP)
    victim = pg.connect(pg_db, application_name="victim")
    pid = victim.info.backend_pid
    entry = {"host": pg.host, "port": pg.port, "dbname": pg_db, "user": pg.user, "connect_timeout": 5}
    inv = write("inv.yaml", "databases:\n  main: " + json.dumps(entry) + "\n")

    def state():
        with pg.connect(pg_db) as conn:
            return conn.execute(STATE).fetchone()

    before = state()
    yield type("World", (), {"pid": pid, "inv": inv, "victim": victim, "state": staticmethod(state), "before": before})
    victim.close()


def _read_step(query: str, args: dict | None = None) -> str:
    body = {"database": "main", "query": query, **({"args": args} if args else {})}
    return "  diagnose:\n    - id: attempt\n      sql: " + json.dumps(body) + "\n      readonly: true\n"


# (id, query (PID is the victim's pid, bound as a parameter), what the refusal says)
ATTEMPTS = [
    ("ts_stat", f"SELECT * FROM ts_stat('{KILL}' || %(pid)s)", "may not call ts_stat"),
    ("ts_stat-qualified", f"SELECT * FROM pg_catalog.ts_stat('{KILL}' || %(pid)s, 'ab')", "may not call ts_stat"),
    ("ts_stat-quoted", f"SELECT * FROM \"ts_stat\"('{KILL}' || %(pid)s)", "may not call ts_stat"),
    ("ts_stat-unicode-name", f"SELECT * FROM U&\"ts\\005fstat\"('{KILL}' || %(pid)s)", "may not call ts_stat"),
    ("ts_stat-in-cte", f"WITH x AS (SELECT * FROM ts_stat('{KILL}' || %(pid)s)) SELECT count(*) FROM x", "may not call ts_stat"),
    ("ts_stat-in-subquery", f"SELECT (SELECT count(*) FROM ts_stat('{KILL}' || %(pid)s)) AS n", "may not call ts_stat"),
    ("ts_rewrite", f"SELECT ts_rewrite('a'::tsquery, '{KILL}' || %(pid)s)", "may not call ts_rewrite"),
    ("query_to_xml", f"SELECT query_to_xml('{KILL}' || %(pid)s, true, false, '')", "may not call query_to_xml"),
    ("query_to_xml_and_xmlschema", f"SELECT query_to_xml_and_xmlschema('{KILL}' || %(pid)s, true, false, '')",
     "may not call query_to_xml_and_xmlschema"),
    ("terminate", "SELECT pg_terminate_backend(%(pid)s)", "may not use pg_terminate_backend"),
    ("set_config", "SELECT set_config('x.y', 'planted', false) AS pid_%(pid)s", None),
    ("advisory", "SELECT pg_advisory_lock(1), %(pid)s", "may not use pg_advisory_lock"),
    ("reindex", "REINDEX TABLE t", "may not run REINDEX"),
    ("cluster", "CLUSTER t USING t_pkey", "may not run CLUSTER"),
    ("checkpoint", "CHECKPOINT", "may not run CHECKPOINT"),
    ("analyze", "ANALYZE t", "may not run ANALYZE"),
    ("vacuum", "VACUUM FULL t", "may not run VACUUM"),
    ("lock", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "may not run LOCK"),
    ("for-update", "SELECT * FROM t FOR UPDATE", "may not lock rows"),
    ("for-share-in-subquery", "SELECT * FROM (SELECT * FROM t FOR SHARE) x", "may not lock rows"),
    ("for-no-key-update-in-cte", "WITH x AS (SELECT * FROM t FOR NO KEY UPDATE) SELECT 1", "may not lock rows"),
    ("create-temp", "CREATE TEMP TABLE x AS SELECT 1", "may not run CREATE TABLE AS"),
    ("select-into", "SELECT 1 INTO TEMP x", "may not SELECT … INTO"),
    ("notify", "NOTIFY c", "may not run NOTIFY"),
    ("listen", "LISTEN c", "may not run LISTEN"),
    ("declare-with-hold", "DECLARE c CURSOR WITH HOLD FOR SELECT 1", "may not run DECLARE CURSOR"),
    ("set", "SET application_name = 'planted'", "may not run SET"),
    ("set-local", "SET LOCAL statement_timeout = 0", "may not run SET"),
    ("copy-to-program", "COPY t TO PROGRAM 'cat > /dev/null'", "may not run COPY"),
    ("lo_import", "SELECT lo_import('/etc/hostname')", "may not use lo_import"),
    ("lo_export", "SELECT lo_export(1, '/tmp/rb-lo-export')", "may not use lo_export"),
    ("nextval", "SELECT nextval('s')", "may not use nextval"),
    ("delete-in-cte", "WITH d AS (DELETE FROM t RETURNING *) SELECT count(*) FROM d", "may not run DELETE"),
    ("explain-analyze", "EXPLAIN ANALYZE SELECT f_pl()", "may not run EXPLAIN ANALYZE"),
    ("two-statements", "SELECT 1; DELETE FROM t", "one statement per sql step"),
    ("do", "DO $$BEGIN DELETE FROM t; END$$", "may not run DO"),
    # only the catalog on the connection can tell these:
    ("volatile-sql-function", "SELECT f_sql()", "function f_sql() (LANGUAGE sql)"),
    ("plpgsql-function", "SELECT f_pl()", "function f_pl() (LANGUAGE plpgsql)"),
    ("stable-wrapper", "SELECT f_stable(%(pid)s)", "function f_stable(integer) (LANGUAGE plpgsql)"),
    ("user-operator", "SELECT 1 !!! %(pid)s::int", "operator !!!(integer,integer)"),
    ("volatile-builtin", "SELECT setseed(0.5)", "function setseed(double precision): it is VOLATILE"),
    ("volatile-in-subquery", "SELECT (SELECT pg_export_snapshot()) AS s", "function pg_export_snapshot(): it is VOLATILE"),
]


@pytest.mark.parametrize("layer", ["validate", "engine"])
@pytest.mark.parametrize("query,refusal", [a[1:] for a in ATTEMPTS], ids=[a[0] for a in ATTEMPTS])
def test_attempt_is_refused_and_changes_nothing(query, refusal, layer, world, write, main, monkeypatch):
    """Each attempt is refused by validate (before the run starts) and, with validate's SQL checks
    switched off, by the engine (parser, then the catalog on the connection) before the statement is sent."""
    if layer == "engine":
        monkeypatch.setattr("runbook.steps.sql.read_problems", lambda query: [])
    uses_pid = "%(pid)s" in query
    p = book(write, _read_step(query, {"pid": world.pid} if uses_pid else None))
    r = main("run", p, "--inventory", world.inv)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    if layer == "engine":
        assert "✗ failed" in out and "refused: " in out, out
        if refusal and "may not use" not in refusal:  # the name list is validate's; the catalog says VOLATILE
            assert refusal in out, out
    elif refusal:
        assert refusal in out, out
    assert world.victim.execute("SELECT 1").fetchone() == (1,)  # the victim session survived
    assert world.state() == world.before  # rows, md5, sequence, files, advisory locks, large objects


def test_validate_places_the_refusal_and_names_the_statement_type(write, main):
    p = book(write, """
  diagnose:
    - id: fine
      sql: {database: main, query: "SELECT count(*) AS n FROM pg_stat_activity WHERE state = %(s)s", args: {s: idle}}
      readonly: true
    - id: rebuild
      sql:
        database: main
        query: |
          -- looks harmless
          REINDEX TABLE t
      readonly: true
    - id: locks
      sql: {database: main, query: "SELECT id FROM t WHERE n > 0 FOR UPDATE"}
      readonly: true
""")
    r = main("validate", p)
    assert r.returncode == 1
    lines = [line for line in r.stdout.splitlines() if "error" in line]
    assert len(lines) == 2, r.stdout
    assert lines[0].startswith(f"{p}:12:") and "step 'rebuild' sql.query: a read-only step may not run REINDEX" in lines[0]
    assert "at line 2, column 1 of the query" in lines[0]
    assert lines[1].startswith(f"{p}:17:") and "may not lock rows (SELECT … FOR UPDATE/SHARE)" in lines[1]
    assert "at line 1, column 30 of the query" in lines[1]
    # a write step may do all of it: it is confirmed
    w = book(write, """
  mitigate:
    - id: rebuild
      sql: {database: main, query: "REINDEX TABLE t", autocommit: true}
      timeout: 5m
  verify:
    - id: done
      end: done
""", name="w.yaml")
    assert main("validate", w).returncode == 0


def test_readonly_role_is_refused_the_same(world, write, main, make_pg_role, pg, pg_db):
    role = make_pg_role()
    with pg.connect(pg_db) as conn:
        conn.execute(f'GRANT CONNECT ON DATABASE "{pg_db}" TO "{role}"; GRANT SELECT ON t TO "{role}"')
    inv = write("role.yaml", world.inv.read_text().rstrip().rstrip("}") + f', "readonly_role": "{role}"}}\n')
    for query in ("SELECT f_stable(%(pid)s)", "SELECT * FROM ts_stat('" + KILL + "' || %(pid)s)"):
        r = main("run", book(write, _read_step(query, {"pid": world.pid}), name="r.yaml"), "--inventory", inv)
        assert r.returncode != 0 and "may not call" in r.stdout + r.stderr, r.stdout + r.stderr
    assert world.victim.execute("SELECT 1").fetchone() == (1,)
    assert world.state() == world.before


def test_the_next_step_sees_a_clean_session(world, write, main):
    """What a (confirmed) write step leaves in the session is gone for the next step on that connection."""
    p = book(write, """
  mitigate:
    - id: plant
      sql: {database: main, query: "SELECT pg_backend_pid() AS pid, set_config('x.y', 'planted', false), pg_advisory_lock(1)"}
      timeout: 10s
    - id: listen
      sql: {database: main, query: "LISTEN planted"}
      timeout: 10s
    - id: hold
      sql: {database: main, query: "DECLARE planted CURSOR WITH HOLD FOR SELECT 1"}
      timeout: 10s
    - id: temp
      sql: {database: main, query: "CREATE TEMP TABLE planted AS SELECT 1 AS one"}
      timeout: 10s
  verify:
    - id: look
      sql:
        database: main
        query: >-
          SELECT pg_backend_pid() AS pid, coalesce(current_setting('x.y', true), '') AS xy,
          (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks,
          (SELECT count(*) FROM pg_listening_channels()) AS channels, (SELECT count(*) FROM pg_cursors WHERE is_holdable) AS cursors,
          (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temps
      readonly: true
    - id: again
      sql:
        database: main
        query: >-
          SELECT pg_backend_pid() AS pid, coalesce(current_setting('x.y', true), '') AS xy,
          (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks,
          (SELECT count(*) FROM pg_listening_channels()) AS channels, (SELECT count(*) FROM pg_cursors WHERE is_holdable) AS cursors,
          (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temps
      readonly: true
    - id: check
      choose:
        - when: "steps.look.rows[0] == steps.again.rows[0] and steps.look.rows[0].pid == steps.plant.rows[0].pid"
          goto: done
    - id: dirty
      end: {status: failed, message: "{{ steps.look.rows[0] }} vs {{ steps.again.rows[0] }}"}
    - id: done
      end: "clean {{ steps.look.rows[0] }}"
""")
    r = main("run", p, "--inventory", world.inv, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr  # the same query twice: psycopg forgot its prepared statement too
    assert "'xy': '', 'locks': 0, 'channels': 0, 'cursors': 0, 'temps': 0" in r.stdout, r.stdout


def _shipped_reads() -> list[tuple[str, str, dict]]:
    out = []
    for path in sorted((ROOT / "playbooks").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for stage in (doc.get("stages") or {}).values():
            for s in stage or []:
                if isinstance(s, dict) and "sql" in s and s.get("readonly"):
                    out.append((f"{path.stem}:{s['id']}", s["sql"]["query"], s["sql"].get("args") or {}))
    return out


SHIPPED = _shipped_reads()
EVERYDAY = [  # what on-call people read, besides the playbooks
    "SELECT now(), age(now(), pg_postmaster_start_time()), clock_timestamp(), random() AS r",
    "SELECT pg_size_pretty(pg_database_size(current_database())) AS size, pg_size_pretty(pg_total_relation_size('t')) AS t",
    "SELECT relname, pg_relation_size(oid) FROM pg_class WHERE relkind = 'r' ORDER BY 2 DESC LIMIT 5",
    "SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity WHERE cardinality(pg_blocking_pids(pid)) > 0",
    "SELECT pg_is_in_recovery(), pg_current_wal_lsn(), pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') AS bytes",
    "SELECT datname, age(datfrozenxid) FROM pg_database ORDER BY 2 DESC",
    "SELECT mode, count(*) FROM pg_locks GROUP BY 1",
    "SELECT * FROM pg_stat_replication",
    "TABLE pg_stat_database",
    "VALUES (1, 'a'), (2, 'b')",
    "SHOW max_connections",
    "EXPLAIN SELECT * FROM t WHERE id = 1",
    "EXPLAIN (ANALYZE false, COSTS off) SELECT count(*) FROM t",
    "SELECT count(*) FILTER (WHERE name LIKE 'row1%%') AS n FROM t WHERE id = ANY(%(ids)s) AND name IS DISTINCT FROM 'x'",
    "SELECT extract(epoch FROM now() - pg_postmaster_start_time()) AS up, substring(version() from 1 for 10) AS v",
]


@pytest.mark.parametrize("query,args", [q[1:] for q in SHIPPED] + [(q, {"ids": [1, 2]} if "%(ids)s" in q else {}) for q in EVERYDAY],
                         ids=[q[0] for q in SHIPPED] + [f"everyday-{i}" for i in range(len(EVERYDAY))])
def test_no_false_positives(query, args, world, pg, pg_db):
    """Every read of the shipped playbooks passes both checks against the real server (and runs, where
    the server has what it reads: pg_stat_statements is not installed here)."""
    assert query in "\n".join(q for _, q, _ in SHIPPED) or query in EVERYDAY
    from runbook.steps.sql import read_problems

    assert read_problems(query) == []
    stmt = R.parse(query)
    with pg.connect(pg_db) as conn:
        R.check(conn, stmt)
        if "pg_stat_statements" not in query:
            values = {k: (world.pid if not isinstance(v, list) else v) for k, v in args.items()} or None
            with conn.transaction():
                conn.execute("SET TRANSACTION READ ONLY")
                conn.execute(query, values)


def test_shipped_playbooks_have_reads():
    assert len(SHIPPED) >= 12, SHIPPED


def test_plan_shows_statement_type_and_functions(write, main):
    inv = write("inv.yaml", "databases:\n  main: {host: 127.0.0.1, port: 1, dbname: nowhere, user: nobody}\n")
    p = book(write, """
  diagnose:
    - id: q
      sql: {database: main, query: "SELECT count(*) AS n, now() - min(backend_start) AS age FROM pg_stat_activity WHERE pid <> pg_backend_pid()"}
      readonly: true
""")
    r = main("run", p, "--inventory", inv, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "-- read-only SELECT; functions checked in pg_proc before it runs: count, now, min, pg_backend_pid" in r.stdout


def test_validate_strict_wants_a_readonly_role_on_remote_databases(write, main):
    p = book(write, """
  diagnose:
    - id: q
      sql: {database: "{{ params.db }}", query: "SELECT 1 AS one"}
      readonly: true
""", head="params:\n  db: {default: main}\n")
    remote = write("remote.yaml", "databases:\n  main: {host: 127.0.0.1, port: 5432, dbname: postgres, user: postgres}\n"
                                  "  far: {host: db.example.internal, dbname: app, user: app}\n")
    r = main("validate", p, "--inventory", remote)
    assert r.returncode == 0 and "warning" in r.stdout and "database 'far'" in r.stdout and "[RB107]" in r.stdout
    assert "database 'main'" not in r.stdout  # local: a lab or a laptop
    r = main("validate", p, "--inventory", remote, "--strict")
    assert r.returncode == 1 and "has no readonly_role" in r.stdout and "pg_read_all_data + pg_monitor" in r.stdout
    fixed = write("fixed.yaml", remote.read_text().replace("user: app}", "user: app, readonly_role: runbook_ro}"))
    assert main("validate", p, "--inventory", fixed, "--strict").returncode == 0
    dsn = write("dsn.yaml", 'databases:\n  main: {dsn: "postgresql://app@db.example.internal/app"}\n')
    r = main("validate", p, "--inventory", dsn, "--strict")
    assert r.returncode == 1 and "[RB107]" in r.stdout


def test_warm_check_costs_under_5ms_per_step(world, pg, pg_db, capsys):
    """What the read-only check adds to a read step once warm: parse (cached), the catalog check
    (cached per connection: no round trip) and the session reset after it (one round trip)."""
    queries = [q for _, q, _ in SHIPPED]
    with pg.connect(pg_db) as conn:
        for q in queries:
            R.check(conn, R.parse(q))  # warm
        costs = []
        for _ in range(20):
            for q in queries:
                started = time.perf_counter()
                R.check(conn, R.parse(q))
                conn.execute(RESET_SESSION, prepare=False)
                costs.append(time.perf_counter() - started)
        cold = []
        for q in queries:
            R.parse.cache_clear()
            R.forget(conn)
            started = time.perf_counter()
            R.check(conn, R.parse(q))
            cold.append(time.perf_counter() - started)
    median, worst = statistics.median(costs) * 1000, max(costs) * 1000
    with capsys.disabled():
        print(f"\nread-only check per step, warm: median {median:.3f} ms, max {worst:.3f} ms "
              f"(cold: median {statistics.median(cold) * 1000:.2f} ms) over {len(costs)} steps")
    assert median < 5, (median, worst)
