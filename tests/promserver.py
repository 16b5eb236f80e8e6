"""A real Prometheus for the prometheus step's tests — never mocked.

A pytest plugin (listed in conftest's ``pytest_plugins``). Fixtures:

``exporter`` (session)
    A tiny metrics endpoint (``http.server`` on 127.0.0.1) serving
    ``http_requests_total{service, status_code}`` in the Prometheus text
    format.  Each scrape adds ``requests`` requests of which ``errors`` have
    status 500, per service; a test sets them with
    ``exporter.set(service, requests=100, errors=10)`` and uses its own
    service name, so tests sharing the session server do not disturb each
    other.
``prom`` (session)
    Debian's ``/usr/bin/prometheus`` on a free 127.0.0.1 port, with a
    temporary TSDB, ``scrape_interval``/``evaluation_interval`` of 1 s,
    scraping ``exporter``, and a rule file with the alerts
    ``HighErrorRate`` (seed 003's rule with a 5 s window and no ``for``) and
    ``AlwaysFiring`` (``vector(1)``).  No lifecycle or admin API.  Has
    ``url``, ``port``, ``query(promql)`` (the API's ``data``) and
    ``log_tail()``.  Stopped at teardown.

Start-up waits until the server is ready and has scraped the exporter once
(about 2 s on this machine).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
READY_TIMEOUT = 30.0

RULES = """\
groups:
  - name: runbook-tests
    interval: 1s
    rules:
      - alert: HighErrorRate
        expr: |
          sum(rate(http_requests_total{status_code=~"5.."}[5s])) by (service) /
          sum(rate(http_requests_total[5s])) by (service) > 0.05
        labels: {severity: critical}
        annotations: {summary: "High error rate on {{ $labels.service }}", runbook: RB-005}
      - alert: AlwaysFiring
        expr: vector(1)
        labels: {severity: info}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Exporter:
    """Counters per service; every scrape advances them by the configured amounts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rates: dict[str, tuple[int, int]] = {}  # service -> (requests, errors) per scrape
        self.totals: dict[str, list[int]] = {}  # service -> [ok total, error total]
        self.scrapes = 0
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = exporter.scrape().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set(self, service: str, requests: int = 100, errors: int = 0) -> None:
        with self.lock:
            self.rates[service] = (requests, errors)
            self.totals.setdefault(service, [0, 0])

    def scrape(self) -> str:
        lines = ["# HELP http_requests_total Requests served.", "# TYPE http_requests_total counter"]
        with self.lock:
            self.scrapes += 1
            for service, (requests, errors) in sorted(self.rates.items()):
                t = self.totals[service]
                t[0] += requests - errors
                t[1] += errors
                lines.append(f'http_requests_total{{service="{service}",status_code="200"}} {t[0]}')
                lines.append(f'http_requests_total{{service="{service}",status_code="500"}} {t[1]}')
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class PromServer:
    def __init__(self, exporter: Exporter) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="runbook-prom-"))
        (self.dir / "rules.yml").write_text(RULES)
        (self.dir / "prometheus.yml").write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(self.dir / "rules.yml")],
            "scrape_configs": [{"job_name": "app", "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}],
        }))
        self.log = open(self.dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
             f"--web.console.templates={self.dir}", f"--web.console.libraries={self.dir}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def get(self, path: str, **params) -> dict:
        url = f"{self.url}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())

    def query(self, promql: str) -> dict:
        return self.get("/api/v1/query", query=promql)["data"]

    def wait_ready(self) -> None:
        end = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.query('up{job="app"} == 1')["result"]:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus did not scrape the exporter within {READY_TIMEOUT:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.dir / "prometheus.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def exporter():
    e = Exporter()
    yield e
    e.close()


@pytest.fixture(scope="session")
def prom(exporter):
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.fail(f"{PROMETHEUS} is missing: install Debian's prometheus package (.ci/run does)")
    server = PromServer(exporter)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
