"""Real PostgreSQL servers for the tests of the `sql` step — never mocked, never skipped.

A pytest plugin (enable with ``pytest_plugins = ["pgserver"]`` in conftest.py, or
``-p pgserver`` with ``tests`` on PYTHONPATH). Fixtures:

``pg`` (session)
    A PostgreSQL server to which the tests connect as a superuser. The one at
    127.0.0.1:5432 (user ``postgres``, trust auth) when it answers within ~2 s,
    otherwise a throwaway cluster started from the installed server binaries
    (initdb + pg_ctl) on a free 127.0.0.1 port. Set ``RUNBOOK_TEST_PG_THROWAWAY=1``
    to always use a throwaway cluster.
``pg_password`` (session, lazy)
    Always a separate throwaway cluster whose 127.0.0.1 connections require a
    scram-sha-256 password; superuser ``postgres`` has ``pg_password.password``.
``pg_db`` (function)
    Name of a fresh empty database on ``pg``, force-dropped at teardown.
``pg_role`` (function)
    Name of a fresh login role on ``pg`` (granted ``pg_monitor``, no password),
    dropped at teardown.
``make_pg_role`` (function)
    Factory ``make_pg_role(password=None, grants=("pg_monitor",), server=None,
    superuser=False) -> name`` for further roles (on ``pg`` unless ``server`` is
    given, e.g. ``pg_password``); all dropped at teardown.

Server objects (``PgServer``) have ``host``, ``port``, ``user``, ``password``,
``throwaway``, ``dsn(dbname="postgres", **overrides)`` (libpq conninfo string;
an override of None drops the key), ``url(...)`` (postgresql:// URI) and
``connect(dbname="postgres", **kw)`` (an autocommit psycopg connection).

``start_throwaway(trust=True, password=None)`` starts a throwaway cluster
directly; the caller must ``.stop()`` it (an atexit hook is a last resort).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5432
DEFAULT_USER = "postgres"
PROBE_TIMEOUT = 2  # seconds; libpq's connect_timeout minimum is 2
READY_TIMEOUT = 30.0  # seconds to wait for a throwaway cluster to accept connections
THROWAWAY_ENV = "RUNBOOK_TEST_PG_THROWAWAY"
SUPERUSER_PASSWORD = "rb-test-superuser-pw"


class PgServerError(RuntimeError):
    """A throwaway PostgreSQL cluster could not be created or started."""


@dataclass
class PgServer:
    host: str
    port: int
    user: str
    password: str | None = None
    throwaway: bool = False
    # Throwaway clusters only:
    base_dir: Path | None = field(default=None, repr=False)
    bindir: Path | None = field(default=None, repr=False)
    run_as: str | None = field(default=None, repr=False)  # OS user running the server, when we are root

    @property
    def data_dir(self) -> Path | None:
        return self.base_dir / "data" if self.base_dir else None

    @property
    def socket_dir(self) -> Path | None:
        return self.base_dir

    @property
    def log_file(self) -> Path | None:
        return self.base_dir / "server.log" if self.base_dir else None

    def _params(self, dbname: str, overrides: dict) -> dict:
        params = {"host": self.host, "port": self.port, "user": self.user, "dbname": dbname}
        if self.password is not None:
            params["password"] = self.password
        params.update(overrides)
        return {k: v for k, v in params.items() if v is not None}

    def dsn(self, dbname: str = "postgres", **overrides) -> str:
        """A libpq conninfo string (``host=127.0.0.1 port=… user=… dbname=…``)."""
        return make_conninfo("", **self._params(dbname, overrides))

    def url(self, dbname: str = "postgres", **overrides) -> str:
        """The same as a ``postgresql://user:password@host:port/dbname`` URI."""
        p = self._params(dbname, overrides)
        auth = quote(str(p.pop("user")), safe="")
        if "password" in p:
            auth += ":" + quote(str(p.pop("password")), safe="")
        netloc = f"{auth}@{p.pop('host')}:{p.pop('port')}"
        db = quote(str(p.pop("dbname")), safe="")
        query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in p.items())
        return f"postgresql://{netloc}/{db}" + (f"?{query}" if query else "")

    def connect(self, dbname: str = "postgres", **kw) -> psycopg.Connection:
        """An autocommit connection; ``kw`` are conninfo overrides (e.g. user=, password=)."""
        kw.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn(dbname, **kw), autocommit=True)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_file, lines) if self.log_file else ""

    def stop(self) -> None:
        """Stop a throwaway cluster (immediate mode) and delete its files. Idempotent."""
        if not self.throwaway or self.base_dir is None:
            return
        base, self.base_dir = self.base_dir, None
        _LIVE.discard(base)
        _SERVERS.pop(base, None)
        data = base / "data"
        try:
            if (data / "postmaster.pid").exists():
                pid = _postmaster_pid(data)
                try:
                    _run(self.bindir / "pg_ctl", "stop", "-D", data, "-m", "immediate", "-w", "-t", "10",
                         run_as=self.run_as, cwd=base, timeout=20)
                except Exception:
                    pass
                if pid and _pid_alive(pid):  # pg_ctl failed: the postmaster is ours, end it by its id
                    _kill_and_wait(pid)
        finally:
            shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- helpers

_LIVE: set[Path] = set()  # base dirs of running throwaway clusters, for the atexit safety net
_SERVERS: dict[Path, PgServer] = {}


@atexit.register
def _stop_leftovers() -> None:
    for base in list(_LIVE):
        srv = _SERVERS.pop(base, None)
        if srv is not None:
            srv.stop()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


def _kill_and_wait(pid: int) -> None:
    for sig, wait in ((signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.05)


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.TimeoutExpired):
            pass

    def version_key(p: str) -> tuple:
        v = Path(p).parent.name
        return tuple(int(x) if x.isdigit() else 0 for x in v.split("."))

    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin",
                    "/opt/homebrew/opt/postgresql*/bin", "/usr/local/opt/postgresql*/bin"):
        candidates += [Path(p) for p in sorted(glob.glob(pattern), key=version_key, reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(os.path.realpath(initdb)).parent)
    for d in candidates:
        if all(os.access(d / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return d
    raise PgServerError(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found via pg_config --bindir, "
        "/usr/lib/postgresql/*/bin or PATH; install the PostgreSQL server package"
    )


def _clean_env() -> dict:
    # PG* variables (PGDATA, PGPORT, PGHOST, PGOPTIONS…) must not leak into initdb/pg_ctl.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = env["LANG"] = "C"
    return env


def _run(exe, *args, run_as: str | None, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    cmd = [str(exe), *map(str, args)]
    kw: dict = {}
    if run_as:
        runuser = shutil.which("runuser")
        if runuser:
            cmd = [runuser, "-u", run_as, "--", *cmd]
        else:  # no util-linux runuser: let Python drop privileges itself
            pw = pwd.getpwnam(run_as)
            kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    return subprocess.run(cmd, cwd=cwd, env=_clean_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, **kw)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((DEFAULT_HOST, 0))
        return s.getsockname()[1]


def _world_traversable(path: Path) -> bool:
    for p in [path, *path.parents]:
        try:
            if not os.stat(p).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _make_base_dir(run_as: str | None) -> Path:
    parent = Path(tempfile.gettempdir())
    if run_as and not _world_traversable(parent):
        parent = Path("/tmp")  # the postgres OS user must reach the data dir
    # Keep it short: the unix socket path must stay below ~107 bytes.
    base = Path(tempfile.mkdtemp(prefix="rbpg-", dir=parent))
    if run_as:
        pw = pwd.getpwnam(run_as)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    return base


def _server_os_user() -> str | None:
    """None to run the server binaries as ourselves; the OS user to switch to when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "_postgres", "pgsql"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PgServerError("running as root, and there is no `postgres` OS user to run initdb/postgres as")


def _probe(srv: PgServer) -> bool:
    try:
        with psycopg.connect(srv.dsn(connect_timeout=PROBE_TIMEOUT), autocommit=True) as conn:
            row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
            return bool(row and row[0])
    except psycopg.Error:
        return False


def _wait_ready(srv: PgServer, deadline: float) -> None:
    last: Exception | None = None
    while True:
        try:
            with srv.connect(connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as e:
            last = e
        if time.monotonic() >= deadline:
            raise PgServerError(
                f"throwaway PostgreSQL on {srv.host}:{srv.port} did not accept connections within "
                f"{READY_TIMEOUT:.0f}s: {last}\n--- server log tail ---\n{srv.log_tail()}"
            )
        time.sleep(0.05)


def start_throwaway(trust: bool = True, password: str | None = None) -> PgServer:
    """Create and start a throwaway cluster on a free 127.0.0.1 port; the caller must ``.stop()`` it.

    With ``trust=False`` TCP connections require scram-sha-256 and the superuser
    ``postgres`` gets ``password`` (default ``SUPERUSER_PASSWORD``); unix-socket
    connections (in the cluster's own directory) stay trusted.
    """
    if not trust and password is None:
        password = SUPERUSER_PASSWORD
    bindir = find_bindir()
    run_as = _server_os_user()
    base = _make_base_dir(run_as)
    srv = PgServer(DEFAULT_HOST, 0, DEFAULT_USER, None if trust else password, throwaway=True,
                   base_dir=base, bindir=bindir, run_as=run_as)
    _LIVE.add(base)
    _SERVERS[base] = srv
    try:
        _init_and_start(srv, trust, password)
    except BaseException:
        srv.stop()
        raise
    return srv


def _init_and_start(srv: PgServer, trust: bool, password: str | None) -> None:
    base, data, log, bindir, run_as = srv.base_dir, srv.data_dir, srv.log_file, srv.bindir, srv.run_as
    deadline = time.monotonic() + READY_TIMEOUT
    args = ["-D", data, "-U", DEFAULT_USER, "-E", "UTF8", "--locale=C", "--no-sync", "--auth=trust"]
    if not trust:
        pwfile = base / "pwfile"
        pwfile.write_text(password + "\n")
        if run_as:
            pw = pwd.getpwnam(run_as)
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        os.chmod(pwfile, 0o600)
        args += ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
    res = _run(bindir / "initdb", *args, run_as=run_as, cwd=base, timeout=READY_TIMEOUT)
    if res.returncode != 0:
        raise PgServerError(f"initdb failed (exit {res.returncode}):\n{res.stdout}\n{res.stderr}")
    if not trust:
        (base / "pwfile").unlink(missing_ok=True)
        (data / "pg_hba.conf").write_text(
            "# written by tests/pgserver.py\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
    else:
        (data / "pg_hba.conf").write_text(
            "# written by tests/pgserver.py\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
        )
    conf = data / "postgresql.conf"
    base_conf = conf.read_text()
    for attempt in range(3):  # the free port may be taken between probing and binding
        srv.port = _free_port()
        conf.write_text(base_conf + (
            "\n# --- tests/pgserver.py ---\n"
            f"listen_addresses = '{DEFAULT_HOST}'\n"
            f"port = {srv.port}\n"
            f"unix_socket_directories = '{base}'\n"
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
            "password_encryption = 'scram-sha-256'\n"
            "max_connections = 50\n"
            "logging_collector = off\n"
        ))
        res = _run(bindir / "pg_ctl", "start", "-D", data, "-l", log, "-w", "-t", int(READY_TIMEOUT),
                   run_as=run_as, cwd=base, timeout=READY_TIMEOUT + 10)
        if res.returncode == 0:
            break
        tail = srv.log_tail()
        if "could not bind" in tail or "Address already in use" in tail:
            if (data / "postmaster.pid").exists():
                pid = _postmaster_pid(data)
                if pid and _pid_alive(pid):
                    _kill_and_wait(pid)
            log.rename(log.with_suffix(f".attempt{attempt}.log"))
            continue
        raise PgServerError(f"pg_ctl start failed (exit {res.returncode}): {res.stdout}{res.stderr}\n"
                            f"--- server log tail ---\n{tail}")
    else:
        raise PgServerError("could not find a free port for the throwaway PostgreSQL:\n"
                            f"--- server log tail ---\n{_tail(log.with_suffix('.attempt2.log'))}")
    _wait_ready(srv, deadline)


def local_server() -> PgServer | None:
    """The server at 127.0.0.1:5432 as superuser postgres with trust auth, if it answers."""
    srv = PgServer(DEFAULT_HOST, DEFAULT_PORT, DEFAULT_USER)
    return srv if _probe(srv) else None


def _ident(conn: psycopg.Connection, name: str) -> str:
    from psycopg import sql

    return sql.Identifier(name).as_string(conn)


def create_database(srv: PgServer, prefix: str = "rbtest") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with srv.connect() as conn:
        conn.execute(f"CREATE DATABASE {_ident(conn, name)}")
    return name


def drop_database(srv: PgServer, name: str) -> None:
    with srv.connect() as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        force = " WITH (FORCE)" if conn.info.server_version >= 130000 else ""
        conn.execute(f"DROP DATABASE IF EXISTS {_ident(conn, name)}{force}")


def create_role(srv: PgServer, password: str | None = None, grants=("pg_monitor",),
                superuser: bool = False, prefix: str = "rbrole") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with srv.connect() as conn:
        role = _ident(conn, name)
        opts = "LOGIN SUPERUSER" if superuser else "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
        conn.execute(f"CREATE ROLE {role} {opts}")
        if password is not None:
            # Utility statements take no bind parameters: quote the literal client-side.
            from psycopg import sql

            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
        for g in grants:
            conn.execute(f"GRANT {_ident(conn, g)} TO {role}")
    return name


def drop_role(srv: PgServer, name: str) -> None:
    with srv.connect() as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None:
            return
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
        # Objects or privileges it holds in other databases block DROP ROLE: clear them there first.
        dbs = [r[0] for r in conn.execute(
            "SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid "
            "JOIN pg_roles r ON r.oid = s.refobjid WHERE r.rolname = %s AND d.datallowconn", (name,))]
        role = _ident(conn, name)
        for db in dbs:
            if db == conn.info.dbname:
                continue
            try:
                with srv.connect(db) as other:
                    other.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
                    other.execute(f"DROP OWNED BY {role}")
            except psycopg.OperationalError:
                pass  # the database went away meanwhile (e.g. pg_db was dropped)
        conn.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
        conn.execute(f"DROP OWNED BY {role}")  # also revokes privileges on shared objects
        conn.execute(f"DROP ROLE {role}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def pg():
    """Superuser access to a real PostgreSQL: 127.0.0.1:5432 if it answers, else a throwaway cluster."""
    srv = None if os.environ.get(THROWAWAY_ENV) == "1" else local_server()
    if srv is not None:
        yield srv
        return
    srv = start_throwaway(trust=True)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def pg_password():
    """A separate throwaway cluster whose TCP connections require a scram-sha-256 password."""
    srv = start_throwaway(trust=False)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def pg_db(pg):
    """Name of a fresh empty database on `pg`; its sessions are ended and it is dropped afterwards."""
    name = create_database(pg)
    try:
        yield name
    finally:
        drop_database(pg, name)


@pytest.fixture
def make_pg_role(pg):
    """make_pg_role(password=None, grants=("pg_monitor",), server=None, superuser=False) -> role name."""
    made: list[tuple[PgServer, str]] = []

    def _make(password: str | None = None, grants=("pg_monitor",), server: PgServer | None = None,
              superuser: bool = False) -> str:
        srv = server or pg
        name = create_role(srv, password=password, grants=grants, superuser=superuser)
        made.append((srv, name))
        return name

    yield _make
    errors = []
    for srv, name in reversed(made):
        try:
            drop_role(srv, name)
        except Exception as e:  # drop the others anyway
            errors.append(f"{name}: {e}")
    if errors:
        raise RuntimeError("could not drop test roles: " + "; ".join(errors))


@pytest.fixture
def pg_role(make_pg_role):
    """Name of a fresh login role on `pg` (NOSUPERUSER, granted pg_monitor, no password)."""
    return make_pg_role()
