"""The live lab's own services: for tests/test_lab.py, and for people trying the
shipped runbooks against inventory/lab.yaml by hand.

A pytest plugin (listed in conftest's ``pytest_plugins``). Fixtures:

``lab_redis`` (function)
    A real ``redis-server`` (Debian's) on a free 127.0.0.1 port, with its own
    directory, config, AOF (``appendfsync always``, so a crash loses nothing),
    pid file and log; daemonized, as a service is, so that a restart over ssh
    (``lab_redis.restart_command``) starts the same server again.  Methods
    ``cli(*args)`` (redis-cli against it), ``ping()``, ``crash()`` (SIGKILL,
    the incident) and ``stop()`` (at teardown, whatever pid runs by then).
``lab_api`` (function)
    A small HTTP service in its own process on a free 127.0.0.1 port, started
    *stuck*: ``/health``, ``/health/liveness`` and ``/health/readiness`` answer
    503 until it is restarted with ``lab_api.restart_command`` (what the lab
    inventory's ``restart_command`` runs over ssh), which stops the process and
    starts a healthy one.  ``/metrics`` counts the requests it served
    (``http_requests_total{service="api",status_code}``).  ``lab_api.url``,
    ``pid()``, ``healthy()``; stopped at teardown.
``lab_inventory`` (function)
    ``lab_inventory(**sections) -> Path``: inventory/lab.yaml with its ssh host
    pointed at the ``sshd`` fixture (port, user, key, known_hosts) and every
    section given replaced or merged (``groups={"redis-servers": {...}}``,
    ``databases=…``, ``prometheus=…``, ``http=…``, ``notify=…``,
    ``clusters=…``), written as a temp file.

Command line, for the lab by hand (see the top of inventory/lab.yaml)::

    python3 tests/labservers.py up       # Redis :6379, the API :8080, a webhook receiver :9099
    python3 tests/labservers.py break redis   # SIGKILL Redis (redis-session-store-crash)
    python3 tests/labservers.py break api     # restart the API stuck: 503 (service-unavailable)
    python3 tests/labservers.py down

``restart-api --dir DIR`` is the lab's restart command for the API (and
``serve-api``/``webhook`` run the services themselves).  Everything lives in
``$RUNBOOK_LAB_DIR`` (default ``/tmp/runbook-lab``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOST = "127.0.0.1"
HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
LAB_DIR = Path(os.environ.get("RUNBOOK_LAB_DIR", "/tmp/runbook-lab"))
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _kill(pid: int | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; returns when the process is gone."""
    if not pid or not _pid_alive(pid):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if not _pid_alive(pid):
                return
            time.sleep(0.02)


RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


def _port_open(port: int) -> bool:
    import socket

    try:
        socket.create_connection((HOST, port), timeout=1).close()
        return True
    except OSError:
        return False


class RabbitNode:
    """A RabbitMQ node of its own (own node name, ports, data and log directories)."""

    def __init__(self, base: Path):
        self.base, self.port, self.dist = base, free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        env = {**os.environ, "RABBITMQ_NODENAME": f"rbtest{os.getpid()}@localhost",
               "RABBITMQ_NODE_IP_ADDRESS": HOST, "RABBITMQ_NODE_PORT": str(self.port),
               "RABBITMQ_DIST_PORT": str(self.dist), "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
               "RABBITMQ_LOG_BASE": str(self.base / "log"), "RABBITMQ_CONFIG_FILE": str(self.base / "none"),
               "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "plugins"),
               "RABBITMQ_PID_FILE": str(self.base / "pid")}
        self.proc = subprocess.Popen([RABBITMQ_SERVER], env=env, cwd=self.base, stdout=open(self.base / "out", "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        _wait(lambda: _port_open(self.port), 60, f"rabbitmq-server on {HOST}:{self.port} did not start: "
              + (self.base / "out").read_text(errors="replace")[-2000:])
        return f"amqp://guest:guest@{HOST}:{self.port}//"

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _wait(check, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} within {timeout:g}s")


# --------------------------------------------------------------------------- Redis


class RedisLab:
    """A daemonized redis-server with its own directory; see the module docstring."""

    def __init__(self, base: Path, port: int | None = None):
        self.dir = Path(base)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.dir / "redis.conf"
        self.pid_file = self.dir / "redis.pid"
        self.log = self.dir / "redis.log"
        self.conf.write_text("\n".join([
            f"bind {HOST}", f"port {self.port}", f"dir {self.dir}", "daemonize yes",
            f"pidfile {self.pid_file}", f"logfile {self.log}", "appendonly yes", "appendfsync always",
            'save ""', "protected-mode yes", "",
        ]))
        # what the lab inventory's redis-servers restart_command runs over ssh
        self.restart_command = f"{REDIS_SERVER} {self.conf}"

    def start(self) -> "RedisLab":
        subprocess.run([REDIS_SERVER, str(self.conf)], check=True, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=30)
        _wait(self.ping, 10, f"redis-server on {HOST}:{self.port} did not answer PING")
        return self

    def cli(self, *args: str) -> str:
        r = subprocess.run([REDIS_CLI, "-h", HOST, "-p", str(self.port), *args], capture_output=True, text=True,
                           timeout=10, stdin=subprocess.DEVNULL)
        return r.stdout.strip()

    def ping(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def pid(self) -> int | None:
        return _read_pid(self.pid_file)

    def crash(self) -> None:
        """The incident: SIGKILL, no shutdown, no save."""
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            _wait(lambda: not _pid_alive(pid), 5, "redis-server did not die")
        _wait(lambda: not self.ping(), 5, "redis still answers")

    def stop(self) -> None:
        _kill(self.pid())


# --------------------------------------------------------------------------- the API service


def serve_api(port: int, directory: Path, unhealthy: bool) -> None:
    """The lab API (runs in its own process): health endpoints, /metrics."""
    counts: dict[int, int] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _reply(self, code: int, body: str, ctype: str = "application/json") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                with lock:
                    lines = ["# TYPE http_requests_total counter"] + [
                        f'http_requests_total{{service="api",status_code="{c}"}} {n}' for c, n in sorted(counts.items())]
                return self._reply(200, "\n".join(lines) + "\n", "text/plain; version=0.0.4")
            if path in ("/health", "/health/liveness", "/health/readiness", "/"):
                code = 503 if unhealthy else 200
                body = {"status": "unavailable" if unhealthy else "ok", "pid": os.getpid()}
            else:
                code, body = 404, {"error": "not found"}
            with lock:
                counts[code] = counts.get(code, 0) + 1
            self._reply(code, json.dumps(body))

    server = ThreadingHTTPServer((HOST, port), Handler)
    server.daemon_threads = True
    (directory / "api.pid").write_text(str(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    server.serve_forever()
    server.server_close()


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def spawn_api(directory: Path, port: int, unhealthy: bool = False) -> int:
    """Start the API in a new session (it outlives whoever started it, e.g. an ssh command); its pid."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "api.port").write_text(str(port))
    args = [sys.executable, str(HERE), "serve-api", "--port", str(port), "--dir", str(directory)]
    with open(directory / "api.log", "ab") as log:
        proc = subprocess.Popen(args + (["--unhealthy"] if unhealthy else []), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, close_fds=True)
    _wait(lambda: _http_status(f"http://{HOST}:{port}/health/liveness") is not None or proc.poll() is not None,
          15, f"the lab API did not listen on {HOST}:{port}")
    if proc.poll() is not None:
        raise RuntimeError(f"the lab API exited with {proc.returncode}: {(directory / 'api.log').read_text()[-2000:]}")
    return proc.pid


def restart_api(directory: Path, unhealthy: bool = False) -> int:
    """Stop the running API (its pid file) and start it again on the same port."""
    port = int((directory / "api.port").read_text())
    _kill(_read_pid(directory / "api.pid"))
    _wait(lambda: _http_status(f"http://{HOST}:{port}/health") is None, 5, "the old API still answers")
    return spawn_api(directory, port, unhealthy)


class LabApi:
    def __init__(self, base: Path, port: int | None = None):
        self.dir = Path(base)
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.restart_command = f"{shlex.quote(sys.executable)} {shlex.quote(str(HERE))} restart-api --dir {shlex.quote(str(self.dir))}"

    def start(self, unhealthy: bool = True) -> "LabApi":
        spawn_api(self.dir, self.port, unhealthy)
        return self

    def pid(self) -> int | None:
        return _read_pid(self.dir / "api.pid")

    def healthy(self) -> bool:
        return _http_status(f"{self.url}/health") == 200

    def stop(self) -> None:
        _kill(self.pid())


# --------------------------------------------------------------------------- webhook receiver (by hand)


def serve_webhook(port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            print(f"{time.strftime('%H:%M:%S')} {self.path}: {body.decode('utf-8', 'replace')}", flush=True)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer((HOST, port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    server.serve_forever()


# --------------------------------------------------------------------------- fixtures

try:
    import pytest
except ImportError:  # the command line needs no pytest
    pytest = None

if pytest is not None:

    def _redis_in(folder):
        """A started RedisLab in ``folder``, stopped when the fixture ends."""
        if not os.access(REDIS_SERVER, os.X_OK) or not os.access(REDIS_CLI, os.X_OK):
            pytest.fail(f"{REDIS_SERVER} / {REDIS_CLI} missing: install Debian's redis-server and redis-tools (.ci/run does)")
        redis = RedisLab(folder)
        try:
            yield redis.start()
        finally:
            redis.stop()

    @pytest.fixture
    def lab_redis(tmp_path):
        yield from _redis_in(tmp_path / "lab-redis")

    @pytest.fixture(scope="module")
    def redis_broker(tmp_path_factory):
        """A redis-server of a test module's own on a free 127.0.0.1 port: team mode's broker."""
        yield from _redis_in(tmp_path_factory.mktemp("broker"))

    @pytest.fixture(scope="session")
    def rabbitmq_url(tmp_path_factory):
        """An AMQP URL of a RabbitMQ broker: the one on 127.0.0.1:5672 (guest) when it answers, else a
        node of the tests' own started from the installed server (Debian's rabbitmq-server) on free
        127.0.0.1 ports and stopped at the end — never a skip."""
        if _port_open(5672):
            yield "amqp://guest:guest@127.0.0.1:5672//"
            return
        if not os.access(RABBITMQ_SERVER, os.X_OK):
            pytest.fail(f"{RABBITMQ_SERVER} missing: install Debian's rabbitmq-server (scripts/test does)")
        node = RabbitNode(tmp_path_factory.mktemp("rabbitmq"))
        try:
            yield node.start()
        finally:
            node.stop()

    @pytest.fixture
    def lab_api(tmp_path):
        api = LabApi(tmp_path / "lab-api")
        try:
            yield api.start(unhealthy=True)
        finally:
            api.stop()

    @pytest.fixture
    def lab_inventory(tmp_path, sshd, ssh_known_hosts):
        import yaml

        def _make(**sections) -> Path:
            doc = yaml.safe_load((ROOT / "inventory" / "lab.yaml").read_text())
            doc["ssh"] = dict(doc.get("ssh") or {}, known_hosts=str(ssh_known_hosts), host_key_policy="strict",
                              identity_file=str(sshd.client_key_path), connect_timeout=5)
            doc["hosts"]["localhost"].update(address=sshd.host, port=sshd.port, user=sshd.user)
            for name, value in sections.items():
                if name == "groups":
                    for group, entry in value.items():
                        merged = dict(doc["groups"].get(group) or {})
                        merged["vars"] = dict(merged.get("vars") or {}, **entry.get("vars", {}))
                        doc["groups"][group] = merged
                else:
                    doc[name] = dict(doc.get(name) or {}, **value)
            p = tmp_path / "lab-inventory.yaml"
            p.write_text(json.dumps(doc, indent=1))
            return p

        return _make


# --------------------------------------------------------------------------- command line


def _lab_up(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    if HERE != d / HERE.name:
        shutil.copy(HERE, d / HERE.name)  # the inventory's restart_command runs this copy
    redis = RedisLab(d / "redis", port=6379)
    if not redis.ping():
        redis.start()
        redis.cli("SET", "session:lab-user-1", "alice")
        redis.cli("SET", "session:lab-user-2", "bob")
    print(f"redis     {HOST}:6379   restart: {redis.restart_command}")
    if _http_status(f"http://{HOST}:8080/health") is None:
        spawn_api(d / "api", 8080, unhealthy=False)
    print(f"api       http://{HOST}:8080   restart: python3 {d / HERE.name} restart-api --dir {d / 'api'}")
    if _http_status(f"http://{HOST}:9099/") is None:
        with open(d / "webhook.log", "ab") as log:
            p = subprocess.Popen([sys.executable, str(HERE), "webhook", "--port", "9099"], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log, start_new_session=True)
        (d / "webhook.pid").write_text(str(p.pid))
    print(f"webhook   http://{HOST}:9099/hook/incidents   (posts go to {d / 'webhook.log'})")
    prom = d / "prometheus.yml"
    prom.write_text(json.dumps({"global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
                                "scrape_configs": [{"job_name": "api", "static_configs": [{"targets": [f"{HOST}:8080"]}]}]}))
    print(f"prometheus: prometheus --config.file={prom} --web.listen-address={HOST}:9090 --storage.tsdb.path={d / 'prom'}")


def _lab_down(d: Path) -> None:
    _kill(_read_pid(d / "redis" / "redis.pid"))
    _kill(_read_pid(d / "api" / "api.pid"))
    _kill(_read_pid(d / "webhook.pid"))
    print("lab services stopped")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="labservers.py", description="the runbook live lab's services")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up")
    sub.add_parser("down")
    b = sub.add_parser("break")
    b.add_argument("what", choices=["redis", "api"])
    s = sub.add_parser("serve-api")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--dir", type=Path, required=True)
    s.add_argument("--unhealthy", action="store_true")
    r = sub.add_parser("restart-api")
    r.add_argument("--dir", type=Path, required=True)
    w = sub.add_parser("webhook")
    w.add_argument("--port", type=int, default=9099)
    a = ap.parse_args(argv)
    if a.cmd == "serve-api":
        serve_api(a.port, a.dir, a.unhealthy)
    elif a.cmd == "restart-api":
        pid = restart_api(a.dir)
        print(f"api restarted: pid {pid}, port {(a.dir / 'api.port').read_text()}")
    elif a.cmd == "webhook":
        serve_webhook(a.port)
    elif a.cmd == "up":
        _lab_up(LAB_DIR)
    elif a.cmd == "down":
        _lab_down(LAB_DIR)
    elif a.what == "redis":
        RedisLab(LAB_DIR / "redis", port=6379).crash()
        print("redis killed (SIGKILL): try  runbook run redis-session-store-crash --env lab -p platform=process")
    else:
        restart_api(LAB_DIR / "api", unhealthy=True)
        print("api answers 503: try  runbook run service-unavailable --env lab -p service=api -p platform=docker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
