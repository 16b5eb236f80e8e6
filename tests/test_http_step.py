"""The http step against real local HTTP(S) servers (tests/webservers.py), through the real CLI."""

from __future__ import annotations

import json

import pytest

from conftest import book
from runbook import audit


def _inv(write, web, extra: str = "") -> str:
    return str(write("inv.yaml", f"""
        http:
          api: {{url: "{web.url}", headers: {{Authorization: {{env: API_TOKEN}}}}, timeout: 5}}
        {extra}
        """))


def _records(audit_dir) -> list[dict]:
    return list(audit.read_records(audit_dir / "audit.jsonl"))


def test_health_check_outputs_and_conditions(write, main, web):
    p = book(write, f"""
  diagnose:
    - id: live
      http:
        url: "{web.url}/health/liveness"
        expect: {{status: 200, json: {{status: ok}}}}
      outputs:
        state: {{json: status}}
    - id: decide
      choose:
        - when: "steps.live.status_code == 200 and steps.live.json.status == 'ok' and steps.live.headers['x-request-id'] == 'req-123'"
          goto: fine
    - id: other
      end: {{status: failed, message: "unexpected"}}
    - id: fine
      end: "live: {{{{ steps.live.outputs.state }}}} in {{{{ steps.live.elapsed | round(3) }}}}s"
""")
    r = main("run", p)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "live: ok in" in r.stdout
    assert [q["path"] for q in web.requests] == ["/health/liveness"]


@pytest.mark.parametrize("expect, message", [
    ("200", 'expected status 200, got 503 Service Unavailable: {"status": "down", "checks": {"db": "down"}}'),
    ("[200, 204]", "expected status one of 200, 204, got 503 Service Unavailable"),
    ("{status: 503, json: {status: ok}}", 'JSON body: expected status = "ok", got "down"'),
    ("{status: 503, json: {checks: {db: up}}}", 'JSON body: expected checks.db = "up", got "down"'),
    ("{status: 503, json: {version: 2}}", "JSON body: version is missing (keys: status, checks)"),
    ("\"json.status == 'ok'\"", "expected a 2xx status, got 503 Service Unavailable"),  # a condition alone never makes a 503 fine
    ("{status: 503, condition: \"json.status == 'ok'\"}", "expected json.status == 'ok', but it is false (status 503 Service Unavailable"),
])
def test_expect_failures_say_what_differed_in_one_line(write, main, web, expect, message):
    p = book(write, f"""
  diagnose:
    - id: ready
      http: {{url: "{web.url}/health/readiness", expect: {expect}}}
""")
    r = main("run", p)
    assert r.returncode == 1
    line = next(x for x in r.stdout.splitlines() if "✗ failed" in x)
    assert message in line, r.stdout


def test_default_expectation_is_2xx_and_failure_is_one_line(write, main, web):
    p = book(write, f"""
  diagnose:
    - id: ready
      http: "{web.url}/health/readiness"
""")
    r = main("run", p)
    assert r.returncode == 1
    assert "step 'ready' failed: expected a 2xx status, got 503 Service Unavailable" in r.stdout


def test_bad_json_body(write, main, web):
    p = book(write, f"""
  diagnose:
    - id: bad
      http: {{url: "{web.url}/badjson", expect: {{json: {{status: ok}}}}}}
""")
    r = main("run", p)
    assert r.returncode == 1
    assert "expected a JSON body, but the body is not JSON (Expecting value): {\"status\": ok" in r.stdout


def test_redirects_are_not_followed_unless_asked(write, main, web):
    p = book(write, f"""
  diagnose:
    - id: stay
      http: "{web.url}/redirect"
      on_failure: continue
    - id: follow
      http: {{url: "{web.url}/redirect", follow_redirects: true, expect: {{json: {{status: ok}}}}}}
""")
    r = main("run", p)
    assert r.returncode == 0, r.stdout
    assert "got 302 Found (redirect to /health/liveness; follow_redirects: true to follow)" in r.stdout
    assert [q["path"] for q in web.requests] == ["/redirect", "/redirect", "/health/liveness"]


def test_request_timeout_and_step_timeout(write, main, web):
    p = book(write, f"""
  diagnose:
    - id: own
      http: {{url: "{web.url}/slow?seconds=2", timeout: 0.3s}}
      on_failure: continue
    - id: step
      http: "{web.url}/slow?seconds=2"
      timeout: 0.3s
""")
    r = main("run", p)
    assert r.returncode == 1
    assert f"✗ failed" in r.stdout and f"no answer from 127.0.0.1:{web.port} within 0.3s" in r.stdout
    assert "step 'step' timeout: timed out after 0.3s; the step was stopped" in r.stdout  # the engine's words


def test_connection_refused_is_one_line(write, main, closed_port):
    p = book(write, f"""
  diagnose:
    - id: down
      http: "http://127.0.0.1:{closed_port}/health/liveness"
""")
    r = main("run", p)
    assert r.returncode == 1
    assert (f"step 'down' failed: cannot connect to 127.0.0.1:{closed_port}: connection refused "
            "(is the service running and listening there?)") in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_until_polls_until_ready(write, main, web):
    p = book(write, f"""
  verify:
    - id: ready
      http: "{web.url}/ready-after/k1?n=2"
      until: "status_code == 200 and json.status == 'ok'"
      every: 0.2s
      timeout: 5s
""")
    r = main("run", p)
    assert r.returncode == 0, r.stdout
    assert len(web.requests) == 3
    result = [x for x in _records(p.parent / "audit") if x["type"] == "step_result"][0]
    assert result["attempts"] == 3 and result["status"] == "ok"


def test_values_are_quoted_per_url_part(write, main, web):
    p = book(write, f"""
  diagnose:
    - id: echo
      http:
        url: "{web.url}/echo/{{{{ params.seg }}}}/x?raw={{{{ params.q }}}}"
        query: {{q: "{{{{ params.q }}}}", n: 3}}
      outputs:
        path: {{json: path}}
""", head="params:\n  seg: {default: '../a b/c'}\n  q: {default: 'x&y=z #1'}\n")
    r = main("run", p)
    assert r.returncode == 0, r.stdout
    got = web.requests[0]
    assert got["path"] == "/echo/..%2Fa%20b%2Fc/x?raw=x%26y%3Dz%20%231&q=x%26y%3Dz%20%231&n=3"
    echoed = json.loads(r.stdout[r.stdout.index('{"method"'):].splitlines()[0])
    assert echoed["query"] == {"raw": ["x&y=z #1"], "q": ["x&y=z #1"], "n": ["3"]}


def test_dot_segments_and_hosts_are_refused(write, main, web):
    p = book(write, f"""
  diagnose:
    - id: up
      http: "{web.url}/a/{{{{ params.seg }}}}"
""", head="params:\n  seg: {default: '..'}\n")
    r = main("run", p, "--dry-run")
    assert r.returncode == 1 and "'..' may not be a path segment" in r.stderr
    p = book(write, """
  diagnose:
    - id: up
      http: "http://{{ params.host }}/health"
""", head="params:\n  host: {default: 'evil.example/x?'}\n")
    r = main("run", p, "--dry-run")
    assert r.returncode == 1 and "'evil.example/x?' is not a host name or address" in r.stderr
    assert web.requests == []


def test_secrets_are_masked_in_output_and_audit_but_sent(write, main, web, audit_dir):
    inv = _inv(write, web)
    p = book(write, """
  mitigate:
    - id: echo
      http:
        endpoint: api
        path: /echo/auth
        headers: {X-Api-Key: "{{ env.TOKEN }}", X-Trace: plain-value}
        json: {password: "{{ params.pw }}", note: hello}
        method: POST
      timeout: 5s
  verify:
    - id: done
      end: ok
""", head="env: [TOKEN]\nparams:\n  pw: {secret: true}\n")
    env = {"API_TOKEN": "inventory-token-123", "TOKEN": "env-token-456", "RUNBOOK_PARAM_PW": "param-secret-789"}
    r = main("run", p, "--inventory", inv, "--yes", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    sent = web.requests[0]
    assert sent["headers"]["Authorization"] == "inventory-token-123"
    assert sent["headers"]["X-Api-Key"] == "env-token-456"
    assert json.loads(sent["body"]) == {"password": "param-secret-789", "note": "hello"}
    logged = (audit_dir / "audit.jsonl").read_text()
    for secret in env.values():
        assert secret not in r.stdout + r.stderr
        assert secret not in logged
    assert "X-Api-Key: ***" in r.stdout and "X-Trace: plain-value" in r.stdout
    assert "***" in logged and '"echo"' in logged
    # dry-run: the plan shows the request, masked, and nothing is sent
    web.reset()
    r = main("run", p, "--inventory", inv, "--dry-run", env=env)
    assert r.returncode == 0, r.stderr
    assert f"POST {web.url}/echo/auth" in r.stdout and "Authorization: ***" in r.stdout
    assert '{"password": "***", "note": "hello"}' in r.stdout
    assert all(s not in r.stdout for s in env.values())
    assert web.requests == []


def test_post_is_a_write_step_confirmed_first(write, main, web):
    p = book(write, f"""
  mitigate:
    - id: flag
      http: {{url: "{web.url}/echo/flag", method: PATCH, json: {{enabled: false}}, expect: [200, 204]}}
      timeout: 10s
  verify:
    - id: live
      http: "{web.url}/health/liveness"
""")
    r = main("run", p)
    assert r.returncode == 3 and "needs approval" in r.stdout
    assert web.requests == []
    r = main("run", p, "--yes")
    assert r.returncode == 0, r.stdout
    assert web.requests[0]["method"] == "PATCH" and json.loads(web.requests[0]["body"]) == {"enabled": False}
    assert web.requests[0]["headers"]["Content-Type"] == "application/json"


def test_tls_is_verified_by_default(write, main, tls_web):
    p = book(write, f"""
  diagnose:
    - id: default
      http: "{tls_web.url}/health/liveness"
      on_failure: continue
    - id: trusted
      http: {{url: "{tls_web.url}/health/liveness", ca_file: "{tls_web.ca_file}"}}
    - id: unverified
      http: {{url: "{tls_web.url}/health/liveness", verify_tls: false}}
""")
    r = main("run", p)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [x for x in r.stdout.splitlines() if "✗ failed" in x]
    assert len(lines) == 1
    assert (f"TLS certificate of 127.0.0.1:{tls_web.port} not trusted: self-signed certificate "
            "(give the CA with ca_file: PATH, or verify_tls: false to skip verification)") in lines[0]
    assert r.stdout.count("✓ ok") == 2
    assert "InsecureRequestWarning" not in r.stderr


@pytest.mark.parametrize("body, message", [
    ('{url: "http://x/a", endpoint: api}', "'url' and 'endpoint' cannot be used together"),
    ('{path: /a}', "http.path: path goes with endpoint"),
    ('{method: GET}', "http.url: give url, or endpoint"),
    ('"ftp://x/a"', "not an http(s) URL: 'ftp://x/a'"),
    ('"http://user:pw@x/a"', "credentials in a URL are not allowed"),
    ('{url: "http://x/a", method: FETCH}', "'FETCH' is not one of GET, HEAD"),
    ('{url: "http://x/a", expect: "stauts == 200"}', "unknown name 'stauts' in the condition"),
    ('{url: "http://x/a", expect: {status: 99}}', "99 is out of range"),
    ('{url: "http://x/a", timeout: soon}', "expected a duration"),
    ('{url: "http://x/a", body: a, json: {b: 1}}', "'body' and 'json' cannot be used together"),
])
def test_validation_errors(write, main, body, message):
    p = book(write, f"""
  diagnose:
    - id: h
      http: {body}
""")
    r = main("validate", p)
    assert r.returncode == 1
    assert message in r.stdout, r.stdout


def test_readonly_cannot_change_the_method_s_effect(write, main):
    p = book(write, """
  diagnose:
    - id: h
      http: {url: "http://x/a", method: POST}
      readonly: true
""")
    r = main("validate", p)
    assert r.returncode == 1
    assert "readonly: true cannot make a POST a read step" in r.stdout
    assert "writes in the diagnose stage" in r.stdout


def test_secret_in_url_is_refused(write, main, web):
    p = book(write, f"""
  diagnose:
    - id: h
      http: "{web.url}/a?token={{{{ params.token }}}}"
""", head="params:\n  token: {secret: true}\n")
    r = main("validate", p)
    assert r.returncode == 1 and "secret parameter 'token' would be printed here" in r.stdout
    inv = _inv(write, web)
    p = book(write, """
  diagnose:
    - id: h
      http: {endpoint: api, path: /a, query: {t: "{{ inventory.http.api.headers.Authorization }}"}}
""")
    r = main("run", p, "--inventory", inv, "--dry-run")
    assert r.returncode == 1 and "query.t: a secret may not be put in a URL" in r.stderr
    assert web.requests == []


def test_unknown_endpoint_is_reported_with_the_inventory(write, main, web):
    inv = _inv(write, web)
    p = book(write, """
  diagnose:
    - id: h
      http: {endpoint: apii, path: /health}
""")
    r = main("validate", p, "--inventory", inv)
    assert r.returncode == 1 and "http 'apii' is not in" in r.stdout and "did you mean 'api'" in r.stdout


# --- found by a security review ---------------------------------------------------------


def _run_one(write, main, web, step_yaml: str, *args, env=None, extra=""):
    p = book(write, step_yaml)
    inv = write("inv2.yaml", f"""
        http:
          api: {{url: "{web.url}", headers: {{X-Api-Key: {{env: API_KEY}}}}, timeout: 5}}
        {extra}
        """)
    return main("run", p, "--inventory", inv, *args, env={"API_KEY": "key-xyz-123", **(env or {})})


def test_redirects_keep_credentials_home_and_never_move_a_write(write, main, web):
    import urllib.parse

    other = f"http://localhost:{web.port}/echo/stolen"  # another origin (host name) on the same test server
    web.reset()
    r = _run_one(write, main, web, f"""
  diagnose:
    - id: get
      http: {{endpoint: api, path: /redirect-to, query: {{url: "{other}", code: "307"}}, follow_redirects: true}}
""")
    assert r.returncode == 0, r.stdout + r.stderr
    stolen = [q for q in web.requests if q["path"].startswith("/echo/stolen")]
    assert stolen and not any(k.lower() == "x-api-key" for k in stolen[0]["headers"])
    web.reset()
    r = _run_one(write, main, web, f"""
  mitigate:
    - id: post
      http: {{endpoint: api, method: POST, path: /redirect-to, query: {{url: "{other}", code: "308"}}, json: {{a: 1}},
              follow_redirects: true, expect: 308}}
      timeout: 10s
  verify:
    - id: done
      end: done
""", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not any(q["path"].startswith("/echo/stolen") for q in web.requests)  # the write was not re-sent elsewhere
    assert urllib.parse.quote  # (imported for the URL above)


def test_a_header_with_a_line_break_is_one_line_and_never_shown(write, main, web, audit_dir):
    r = _run_one(write, main, web, """
  diagnose:
    - id: get
      http: {endpoint: api, path: /health/liveness}
      on_failure: continue
    - id: after
      wait: 0s
""", env={"API_KEY": "key-SECRET456\n"})
    assert r.returncode == 0, r.stdout + r.stderr  # on_failure: continue held: no internal error
    assert "line break" in r.stdout and "SECRET456" not in r.stdout
    assert "SECRET456" not in (audit_dir / "audit.jsonl").read_text()


def test_a_templated_header_is_not_masked_in_the_answer(write, main, web):
    p = book(write, f"""
  diagnose:
    - id: get
      http: {{url: "{web.url}/echo", headers: {{X-Format: "{{{{ params.fmt }}}}"}}}}
    - id: after
      shell: "echo status is ok"
      readonly: true
""", "params:\n  fmt: {type: string, default: ok}\n")
    r = main("run", p)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "status is ok" in r.stdout and '"X-Format": "ok"' in r.stdout


def test_the_timeout_bounds_the_whole_answer(write, main, web):
    import time

    p = book(write, f"""
  diagnose:
    - id: slow
      http: {{url: "{web.url}/trickle", timeout: 1s}}
""")
    started = time.monotonic()
    r = main("run", p)
    assert time.monotonic() - started < 8
    assert r.returncode == 1 and "did not finish within 1s" in r.stdout


def test_an_empty_value_cannot_change_the_path(write, main, web):
    p = book(write, f"""
  mitigate:
    - id: delete
      http: {{url: "{web.url}/api/flags/{{{{ params.flag }}}}", method: DELETE}}
      timeout: 5s
  verify:
    - id: done
      end: done
""", "params:\n  flag: {type: string, default: ''}\n")
    web.reset()
    r = main("run", p, "--yes")
    assert r.returncode == 1 and "may not be a path segment" in r.stdout
    assert web.requests == []


@pytest.mark.parametrize("want, body, ok", [
    ("[{name: a}]", '[{"name": "a", "ready": true}, {"name": "b"}]', True),
    ("[{name: c}]", '[{"name": "a"}]', False),
    ("{v: null}", '{"v": "None"}', False),
    ("{v: null}", '{"v": null}', True),
])
def test_expect_json_lists_are_subsets_and_null_is_null(want, body, ok):
    from runbook.steps.http import _json_diff
    import yaml

    assert (_json_diff(yaml.safe_load(want), json.loads(body), "") is None) is ok


def test_dry_run_of_a_url_from_an_earlier_step(write, main):
    p = book(write, """
  diagnose:
    - id: a
      shell: "echo http://127.0.0.1:1"
      readonly: true
      outputs:
        u: {regex: '(\\S+)'}
    - id: b
      http: {url: "{{ steps.a.outputs.u }}/health"}
""")
    r = main("run", p, "--dry-run")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_a_method_override_header_makes_a_get_a_write(write, main, web):
    p = book(write, f"""
  mitigate:
    - id: sneaky
      http: {{url: "{web.url}/echo", headers: {{X-HTTP-Method-Override: DELETE}}}}
      timeout: 5s
  verify:
    - id: done
      end: done
""")
    web.reset()
    r = main("run", p)  # no terminal, no --yes: a write is not sent
    assert r.returncode == 3 and web.requests == []
