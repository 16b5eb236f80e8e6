"""Small real HTTP services on 127.0.0.1 for the http and notify steps' tests.

A pytest plugin (listed in conftest's ``pytest_plugins``). Fixtures:

``web`` (function; the server lives for the session)
    A ``ThreadingHTTPServer`` with health-check style routes:

    * ``/health/liveness`` → 200 ``{"status": "ok"}``
    * ``/health/readiness`` → 503 ``{"status": "down", "checks": {"db": "down"}}``
    * ``/status/CODE`` → that status with ``{"code": CODE}``
    * ``/slow?seconds=N`` → 200 after N seconds
    * ``/badjson`` → 200, ``Content-Type: application/json``, a body that is not JSON
    * ``/redirect`` → 302 to ``/health/liveness``
    * ``/echo/…`` → 200 with the request as JSON: method, raw path, query (parsed), headers, body
    * ``/ready-after/KEY?n=N`` → 503 for the first N calls with that KEY, then 200
    * ``/hook/NAME`` (POST) → 200 ``ok``: a webhook receiver; ``/hook-fail/NAME`` → 500

    Every request is recorded: ``web.requests`` (dicts with method, path, headers,
    body), ``web.hooks`` (the JSON payloads posted to ``/hook/…``/``/hook-fail/…``);
    both are emptied for each test.  ``web.url`` is ``http://127.0.0.1:PORT``.
``tls_web`` (session)
    The same routes over HTTPS with a self-signed certificate for 127.0.0.1
    (made with ``openssl``); ``tls_web.url``, ``tls_web.ca_file`` (the cert, to
    trust it).
``closed_port`` (function)
    A 127.0.0.1 port on which nothing listens (connection refused).
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


_PD_TOP = {"routing_key", "event_action", "dedup_key", "payload", "client", "client_url", "links", "images"}
_PD_PAYLOAD = {"summary", "source", "severity", "timestamp", "component", "group", "class", "custom_details"}


def pagerduty_errors(event) -> list[str]:
    """What PagerDuty's Events API v2 would refuse in ``event`` (developer.pagerduty.com: Send an Alert Event)."""
    if not isinstance(event, dict):
        return ["the event must be a JSON object"]
    errors = [f"unknown field '{k}'" for k in event if k not in _PD_TOP]
    key = event.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        errors.append("'routing_key' must be a 32-character integration key")
    action = event.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        errors.append("'event_action' must be trigger, acknowledge or resolve")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or not dedup or len(dedup) > 255):
        errors.append("'dedup_key' must be a string of 1 to 255 characters")
    if action in ("acknowledge", "resolve") and dedup is None:
        errors.append(f"'dedup_key' is required to {action}")
    if action == "trigger":
        body = event.get("payload")
        if not isinstance(body, dict):
            errors.append("'payload' is required to trigger")
        else:
            errors += [f"unknown field 'payload.{k}'" for k in body if k not in _PD_PAYLOAD]
            for k in ("summary", "source"):
                if not isinstance(body.get(k), str) or not body[k]:
                    errors.append(f"'payload.{k}' is required")
            if len(str(body.get("summary", ""))) > 1024:
                errors.append("'payload.summary' is longer than 1024 characters")
            if body.get("severity") not in ("critical", "error", "warning", "info"):
                errors.append("'payload.severity' must be critical, error, warning or info")
            if "custom_details" in body and not isinstance(body["custom_details"], dict):
                errors.append("'payload.custom_details' must be an object")
    return errors


class WebServer:
    def __init__(self, tls_dir: Path | None = None) -> None:
        self.requests: list[dict] = []
        self.hooks: list[dict] = []
        self.counters: dict[str, int] = {}
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, code: int, body, content_type: str = "application/json", headers=()):
                data = body if isinstance(body, bytes) else (json.dumps(body) if not isinstance(body, str) else body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                split = urllib.parse.urlsplit(self.path)
                record = {"method": self.command, "path": self.path, "headers": dict(self.headers.items()),
                          "body": body.decode("utf-8", "replace")}
                with owner.lock:
                    owner.requests.append(record)
                p = split.path
                q = urllib.parse.parse_qs(split.query)
                if p == "/health/liveness":
                    return self._reply(200, {"status": "ok"}, headers=[("X-Request-Id", "req-123")])
                if p == "/health/readiness":
                    return self._reply(503, {"status": "down", "checks": {"db": "down"}})
                if p.startswith("/status/"):
                    code = int(p.split("/")[2])
                    return self._reply(code, {"code": code})
                if p == "/slow":
                    time.sleep(float(q.get("seconds", ["5"])[0]))
                    return self._reply(200, {"status": "ok"})
                if p == "/badjson":
                    return self._reply(200, '{"status": ok', "application/json")
                if p == "/redirect":
                    return self._reply(302, "", "text/plain", headers=[("Location", "/health/liveness")])
                if p == "/redirect-to":
                    code = int(q.get("code", ["302"])[0])
                    return self._reply(code, "", "text/plain", headers=[("Location", q["url"][0])])
                if p == "/trickle":  # one byte every 0.2 s: each read is quick, the whole answer is not
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    try:
                        for _ in range(int(q.get("bytes", ["50"])[0])):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.2)
                    except OSError:
                        pass
                    return None
                if p.startswith("/echo"):
                    return self._reply(200, {"method": self.command, "path": self.path, "query": q,
                                             "headers": dict(self.headers.items()), "body": record["body"]})
                if p.startswith("/ready-after/"):
                    key = p.rsplit("/", 1)[1]
                    with owner.lock:
                        owner.counters[key] = owner.counters.get(key, 0) + 1
                        n = owner.counters[key]
                    if n <= int(q.get("n", ["2"])[0]):
                        return self._reply(503, {"status": "starting", "calls": n})
                    return self._reply(200, {"status": "ok", "calls": n})
                if p == "/pagerduty/v2/enqueue":  # checks what PagerDuty's Events API v2 checks
                    try:
                        payload = json.loads(body or b"null")
                    except ValueError:
                        return self._reply(400, {"status": "invalid event", "errors": ["not JSON"]})
                    errors = pagerduty_errors(payload)
                    with owner.lock:
                        owner.hooks.append({"path": p, "payload": payload, "headers": record["headers"],
                                            "errors": errors})
                    if errors:
                        return self._reply(400, {"status": "invalid event", "message": "Event object is invalid",
                                                 "errors": errors})
                    return self._reply(202, {"status": "success", "message": "Event processed",
                                             "dedup_key": payload.get("dedup_key")})
                if p.startswith("/hook/") or p.startswith("/hook-fail/"):
                    try:
                        payload = json.loads(body or b"null")
                    except ValueError:
                        payload = {"_raw": record["body"]}
                    with owner.lock:
                        owner.hooks.append({"path": p, "payload": payload, "headers": record["headers"]})
                    if p.startswith("/hook-fail/"):
                        return self._reply(500, "internal error", "text/plain")
                    return self._reply(200, "ok", "text/plain")
                return self._reply(404, {"error": "not found"})

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        self.ca_file = None
        if tls_dir is not None:
            cert, key = tls_dir / "cert.pem", tls_dir / "key.pem"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                 "-addext", "subjectAltName=IP:127.0.0.1"],
                check=True, capture_output=True,
            )
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
            self.ca_file = str(cert)
        self.port = self.server.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.hooks.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def _web_server():
    s = WebServer()
    yield s
    s.close()


@pytest.fixture
def web(_web_server):
    _web_server.reset()
    yield _web_server
    _web_server.reset()


@pytest.fixture(scope="session")
def tls_web():
    d = Path(tempfile.mkdtemp(prefix="runbook-tls-"))
    s = WebServer(tls_dir=d)
    yield s
    s.close()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the with block ends: nothing listens there
