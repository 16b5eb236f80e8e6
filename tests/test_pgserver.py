"""The real-PostgreSQL fixtures of tests/pgserver.py work (and clean up after themselves)."""

from __future__ import annotations

import os
import socket
import time

import psycopg
import pytest

import pgserver


def _database_exists(pg, name: str) -> bool:
    with pg.connect() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _role_exists(srv, name: str) -> bool:
    with srv.connect() as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def no_client_password(monkeypatch, tmp_path):
    """Make sure libpq finds no password in the environment or a ~/.pgpass."""
    for var in ("PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))


@pytest.fixture
def gone_afterwards(pg):
    """Request before pg_db / pg_role: its teardown runs after theirs and checks that what the
    test recorded in it (("db"|"role", name) pairs) no longer exists."""
    record: list[tuple[str, str]] = []
    closers: list = []
    yield record, closers
    for c in closers:
        c.close()
    for kind, name in record:
        exists = _database_exists(pg, name) if kind == "db" else _role_exists(pg, name)
        assert not exists, f"{kind} {name} still exists after fixture teardown"


def test_pg_answers_select_1_as_superuser(pg):
    with pg.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.autocommit
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (True,)
        assert conn.info.host == "127.0.0.1" and conn.info.port == pg.port
    assert pg.host == "127.0.0.1" and pg.user
    if not pg.throwaway:
        assert (pg.port, pg.user, pg.password) == (5432, "postgres", None)
    # The conninfo string works with plain psycopg too (what the sql step will receive).
    with psycopg.connect(pg.dsn()) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("postgres",)
    with psycopg.connect(pg.url()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (pg.user,)


def test_dsn_and_url_shapes():
    srv = pgserver.PgServer("127.0.0.1", 6543, "postgres", password="p w'x")
    dsn = srv.dsn("app", sslmode="disable")
    parsed = psycopg.conninfo.conninfo_to_dict(dsn)
    assert parsed == {"host": "127.0.0.1", "port": "6543", "user": "postgres", "dbname": "app",
                      "password": "p w'x", "sslmode": "disable"}
    assert "password" not in psycopg.conninfo.conninfo_to_dict(srv.dsn(password=None))
    assert srv.url("app") == "postgresql://postgres:p%20w%27x@127.0.0.1:6543/app"
    assert psycopg.conninfo.conninfo_to_dict(srv.url("app"))["password"] == "p w'x"


def test_pg_db_is_fresh_and_dropped_even_with_open_sessions(gone_afterwards, pg, pg_db):
    record, closers = gone_afterwards
    record.append(("db", pg_db))
    assert pg_db.startswith("rbtest_")
    conn = pg.connect(pg_db)
    closers.append(conn)  # left open on purpose: teardown must terminate it and still drop the db
    assert conn.execute("SELECT current_database()").fetchone() == (pg_db,)
    user_tables = conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'"
    ).fetchone()
    assert user_tables == (0,)
    conn.execute("CREATE TABLE t (id int)")


def test_pg_db_names_are_unique(pg_db, pg):
    other = pgserver.create_database(pg)
    try:
        assert other != pg_db and _database_exists(pg, other)
    finally:
        pgserver.drop_database(pg, other)
    assert not _database_exists(pg, other)


def test_pg_role_logs_in_to_pg_db_and_is_read_only(gone_afterwards, pg, pg_db, pg_role):
    record, closers = gone_afterwards
    record.append(("role", pg_role))
    with pg.connect() as admin:
        row = admin.execute(
            "SELECT rolcanlogin, rolsuper, pg_has_role(rolname, 'pg_monitor', 'MEMBER') "
            "FROM pg_roles WHERE rolname = %s", (pg_role,)).fetchone()
    assert row == (True, False, True)
    # Give it something it owns in pg_db too, so teardown has to REASSIGN/DROP OWNED.
    with pg.connect(pg_db) as admin:
        admin.execute(f'CREATE SCHEMA s AUTHORIZATION "{pg_role}"')
    conn = pg.connect(pg_db, user=pg_role, password=None)
    closers.append(conn)  # still open at teardown: the role must be dropped anyway
    assert conn.execute("SELECT current_user, current_database()").fetchone() == (pg_role, pg_db)
    assert conn.execute("SELECT count(*) > 0 FROM pg_stat_activity").fetchone() == (True,)
    if conn.info.server_version >= 150000:  # PG 15+: PUBLIC may no longer create in schema public
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.nope (id int)")


def test_make_pg_role_gives_distinct_roles(pg, make_pg_role):
    a, b = make_pg_role(), make_pg_role(grants=())
    assert a != b and _role_exists(pg, a) and _role_exists(pg, b)
    with pg.connect() as admin:
        assert admin.execute("SELECT pg_has_role(%s, 'pg_monitor', 'MEMBER')", (b,)).fetchone() == (False,)


def test_pg_password_requires_the_right_password(pg, pg_password, no_client_password):
    assert pg_password.throwaway and pg_password.password
    assert (pg_password.host, pg_password.user) == ("127.0.0.1", "postgres")
    assert pg_password.port != pg.port
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_password.dsn(password="wrong-" + pg_password.password))
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(pg_password.dsn(password=None))
    with psycopg.connect(pg_password.dsn()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    with pg_password.connect() as conn:
        assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)


def test_pg_password_role_with_its_own_password(pg_password, make_pg_role, no_client_password):
    role = make_pg_role(password="r0le-pw", server=pg_password)
    with pytest.raises(psycopg.OperationalError, match=f'password authentication failed for user "{role}"'):
        pg_password.connect(user=role, password="nope")
    with pg_password.connect(user=role, password="r0le-pw") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)


def test_throwaway_cluster_starts_and_is_removed():
    """The fallback used when nothing answers on 5432: exercised even when something does."""
    t0 = time.monotonic()
    srv = pgserver.start_throwaway(trust=True)
    elapsed = time.monotonic() - t0
    try:
        base, data = srv.base_dir, srv.data_dir
        assert srv.throwaway and srv.password is None and srv.host == "127.0.0.1"
        assert srv.port != 5432 and data.is_dir()
        assert srv.run_as == ("postgres" if os.geteuid() == 0 else None)
        with srv.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            assert conn.execute("SHOW unix_socket_directories").fetchone() == (str(base),)
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (True,)
        name = pgserver.create_database(srv)
        pgserver.drop_database(srv, name)
        pid = pgserver._postmaster_pid(data)
        assert pid and pgserver._pid_alive(pid)
        assert elapsed < 10, f"throwaway cluster took {elapsed:.1f}s to start"
    finally:
        srv.stop()
    assert not base.exists()
    assert not pgserver._pid_alive(pid)
    assert not _port_open("127.0.0.1", srv.port)
    srv.stop()  # idempotent
