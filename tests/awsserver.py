"""An AWS API emulator for tests: moto's server (the same WSGI application
``moto_server`` runs, speaking AWS's wire protocols over HTTP) on 127.0.0.1,
behind a small WSGI layer that records every request as it arrives (service,
operation, the Authorization header) and can answer chosen operations with an
AWS error or another body instead (throttling, access denied, a query still
running).  Nothing in boto3 is patched: the client under test sends real
requests to this port."""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass, field
from urllib.parse import parse_qs
from urllib.request import Request, urlopen

import pytest


@dataclass
class Rule:
    operation: str
    status: int
    body: bytes
    content_type: str
    times: int  # -1: always
    hits: int = 0


@dataclass
class Wire:
    """What reached the emulator, and the answers it should fake."""

    app: object
    requests: list = field(default_factory=list)
    rules: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        if path.startswith("/moto-api"):
            return self.app(environ, start_response)
        auth = environ.get("HTTP_AUTHORIZATION", "")
        service = auth.split("Credential=", 1)[1].split("/")[3] if "Credential=" in auth else None
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target:
            operation = target.rsplit(".", 1)[-1]
        elif "/operation/" in path:  # smithy-rpc-v2-cbor (CloudWatch)
            operation = path.rsplit("/operation/", 1)[1]
        else:
            operation = (parse_qs(body.decode("utf-8", "replace")).get("Action") or [None])[0]
        with self.lock:
            self.requests.append({"service": service, "operation": operation, "authorization": auth,
                                  "token": environ.get("HTTP_X_AMZ_SECURITY_TOKEN"), "body": body})
            rule = next((r for r in self.rules if r.operation == operation and r.times != 0), None)
            if rule is not None:
                rule.hits += 1
                if rule.times > 0:
                    rule.times -= 1
        if rule is not None:
            start_response(f"{rule.status} {'OK' if rule.status == 200 else 'Error'}",
                           [("Content-Type", rule.content_type), ("Content-Length", str(len(rule.body))),
                            ("x-amzn-RequestId", "test")])
            return [rule.body]
        return self.app(environ, start_response)

    # --- what the tests use

    def operations(self) -> list[str]:
        return [r["operation"] for r in self.requests]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.rules.clear()

    def json_error(self, operation: str, code: str, message: str, times: int = -1, status: int = 400) -> Rule:
        """An error of a JSON-protocol service (ECS, CloudWatch Logs)."""
        rule = Rule(operation, status, json.dumps({"__type": code, "message": message}).encode(),
                    "application/x-amz-json-1.1", times)
        self.rules.append(rule)
        return rule

    def query_error(self, operation: str, code: str, message: str, times: int = -1, status: int = 400) -> Rule:
        """An error of a query-protocol service (RDS, ELBv2, STS)."""
        xml = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
               "<RequestId>test</RequestId></ErrorResponse>")
        rule = Rule(operation, status, xml.encode(), "text/xml", times)
        self.rules.append(rule)
        return rule

    def json_answer(self, operation: str, doc: dict, times: int = -1) -> Rule:
        rule = Rule(operation, 200, json.dumps(doc).encode(), "application/x-amz-json-1.1", times)
        self.rules.append(rule)
        return rule


class Emulator:
    def __init__(self):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        class Quiet(MotoRequestHandler):
            def log(self, *args, **kwargs):  # no access log on the test's stderr
                pass

        self.wire = Wire(DomainDispatcherApplication(create_backend_app))
        self.server = make_server("127.0.0.1", 0, self.wire, threaded=True, request_handler=Quiet)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        urlopen(Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10).read()
        self.wire.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def aws_emulator():
    emu = Emulator()
    try:
        yield emu
    finally:
        emu.stop()
