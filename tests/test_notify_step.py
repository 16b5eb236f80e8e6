"""The notify step posting to a real local webhook receiver (tests/webservers.py)."""

from __future__ import annotations

import json

import pytest

from conftest import book
from runbook import audit


@pytest.fixture
def inv(write, web):
    def _inv(extra: str = "") -> str:
        text = ("notify:\n"
                "  incidents: {webhook: {env: HOOK_INCIDENTS}, channel: \"#incidents\"}\n"
                "  generic: {webhook: {env: HOOK_GENERIC}}\n"
                "  broken: {webhook: {env: HOOK_BROKEN}, channel: \"#broken\"}\n")
        return str(write("inv.yaml", text + (extra + "\n" if extra else "")))
    return _inv


@pytest.fixture
def hooks(web):
    return {"HOOK_INCIDENTS": f"{web.url}/hook/incidents/T000/B000/s3cr3t-path",
            "HOOK_GENERIC": f"{web.url}/hook/generic",
            "HOOK_BROKEN": f"{web.url}/hook-fail/broken"}


def _records(audit_dir) -> list[dict]:
    return list(audit.read_records(audit_dir / "audit.jsonl"))


def test_posts_slack_and_json_payloads(write, main, web, inv, hooks, audit_dir):
    p = book(write, """
  diagnose:
    - id: started
      notify: {to: incidents, event: started, message: "Investigating {{ params.service }}"}
    - id: by-channel
      notify: {to: "#incidents", message: "update"}
    - id: generic
      notify: {to: generic, event: resolved, message: "all good", format: json}
    - id: check
      choose:
        - when: "steps.started.sent and steps.started.status_code == 200 and steps.generic.sent"
          goto: done
    - id: bad
      end: {status: failed, message: "not sent"}
    - id: done
      end: ok
""", head="params:\n  service: {default: api}\n")
    r = main("run", p, "--inventory", inv(), env=hooks)
    assert r.returncode == 0, r.stdout + r.stderr
    run_id = next(x["run"] for x in _records(audit_dir) if x["type"] == "run_started")
    assert [h["path"] for h in web.hooks] == ["/hook/incidents/T000/B000/s3cr3t-path"] * 2 + ["/hook/generic"]
    first = web.hooks[0]["payload"]
    assert first == {"text": f"*STARTED* Investigating api\n_runbook t, run {run_id}_", "channel": "#incidents"}
    assert web.hooks[0]["headers"]["Content-Type"] == "application/json"
    assert web.hooks[1]["payload"]["text"].startswith("*UPDATE* update")
    generic = web.hooks[2]["payload"]
    assert generic == {"text": f"*RESOLVED* all good\n_runbook t, run {run_id}_", "event": "resolved",
                       "message": "all good", "runbook": "t", "run_id": run_id, "channel": None, "dry_run": False}
    assert "sent to incidents (#incidents)" in r.stdout


def test_dry_run_shows_the_payload_and_sends_nothing(write, main, web, inv, hooks):
    p = book(write, """
  diagnose:
    - id: started
      notify: {to: incidents, event: started, message: "Investigating {{ params.service }}"}
""", head="params:\n  service: {default: api}\n")
    r = main("run", p, "--inventory", inv(), "--dry-run", env=hooks)
    assert r.returncode == 0, r.stderr
    assert 'POST to notifier incidents (#incidents): {"text": "*STARTED* Investigating api' in r.stdout
    assert '"channel": "#incidents"' in r.stdout
    assert "s3cr3t-path" not in r.stdout
    r = main("run", p, "--inventory", inv(), "--dry-run", "--format", "json", env=hooks)
    step = json.loads(r.stdout)["steps"][0]
    assert step["effect"] == "read" and step["detail"]["payload"]["text"].startswith("*STARTED* Investigating api")
    assert web.hooks == [] and web.requests == []


def test_a_failing_webhook_warns_and_the_run_goes_on(write, main, web, inv, hooks, audit_dir):
    p = book(write, """
  diagnose:
    - id: tell
      notify: {to: broken, message: "hello"}
    - id: unset
      notify: {to: generic, message: "hello"}
    - id: after
      end: "went on"
""")
    env = {k: v for k, v in hooks.items() if k != "HOOK_GENERIC"}
    r = main("run", p, "--inventory", inv(), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "NOT SENT to broken: the webhook answered 500 Internal Server Error: internal error" in r.stdout
    assert "NOT SENT to generic: webhook of notifier 'generic':" in r.stdout
    assert "environment variable HOOK_GENERIC is not set" in r.stdout
    assert "went on" in r.stdout
    records = _records(audit_dir)
    failed = [x for x in records if x["type"] == "notify_failed"]
    assert [x["notifier"] for x in failed] == ["broken", "generic"]
    results = {x["step"]: x for x in records if x["type"] == "step_result"}
    assert results["tell"]["status"] == "ok" and results["tell"]["error"].startswith("warning: not sent:")
    assert len(web.hooks) == 1  # the broken receiver got the post and answered 500


def test_required_makes_a_failed_post_fail_the_step(write, main, web, inv, hooks, closed_port):
    p = book(write, f"""
  diagnose:
    - id: page
      notify: {{to: broken, event: escalation, message: "help", required: true}}
      on_failure: down
    - id: fine
      end: "sent"
    - id: down
      notify: {{to: gone, message: "x", required: true}}
""")
    inv_file = inv(extra=f'  gone: {{webhook: "http://127.0.0.1:{closed_port}/hook"}}')
    r = main("run", p, "--inventory", inv_file, env=hooks)
    assert r.returncode == 1
    assert "✗ failed" in r.stdout and "not sent: the webhook answered 500 Internal Server Error" in r.stdout
    assert (f"step 'down' failed: not sent: cannot connect to the webhook of 'gone': connection refused") in r.stdout


def test_webhook_url_never_shows(write, main, web, inv, hooks, audit_dir, closed_port):
    p = book(write, """
  diagnose:
    - id: tell
      notify: {to: incidents, message: "hi", timeout: 2s}
""")
    env = dict(hooks, HOOK_INCIDENTS=f"http://127.0.0.1:{closed_port}/services/T000/s3cr3t-path")
    r = main("run", p, "--inventory", inv(), env=env)
    assert r.returncode == 0
    assert "NOT SENT to incidents: cannot connect to the webhook of 'incidents': connection refused" in r.stdout
    out = r.stdout + r.stderr + (audit_dir / "audit.jsonl").read_text()
    assert "s3cr3t-path" not in out


def test_readonly_false_makes_it_a_confirmed_write(write, main, web, inv, hooks):
    p = book(write, """
  mitigate:
    - id: customers
      notify: {to: incidents, message: "we are down"}
      readonly: false
      timeout: 10s
  verify:
    - id: done
      end: ok
""")
    r = main("run", p, "--inventory", inv(), env=hooks)
    assert r.returncode == 3 and web.hooks == []
    r = main("run", p, "--inventory", inv(), "--yes", env=hooks)
    assert r.returncode == 0 and len(web.hooks) == 1


@pytest.mark.parametrize("body, message", [
    ("{to: incidents}", "missing required key 'message'"),
    ("{to: incidents, message: x, event: done}", "'done' is not one of started, update, failed, escalation, resolved"),
    ("{to: incidnets, message: x}", "notify 'incidnets' is not in"),
    ("{to: incidents, message: x, format: xml}", "'xml' is not one of slack, json"),
    ("{to: incidents, message: '{{ params.nope }}'}", "parameter 'nope' is not defined"),
])
def test_validation_errors(write, main, inv, body, message):
    p = book(write, f"""
  diagnose:
    - id: n
      notify: {body}
""")
    r = main("validate", p, "--inventory", inv())
    assert r.returncode == 1
    assert message in r.stdout, r.stdout


def test_unknown_or_ambiguous_channel(write, main, inv, hooks):
    p = book(write, """
  diagnose:
    - id: n
      notify: {to: "#nowhere", message: x}
""")
    r = main("run", p, "--inventory", inv(), "--dry-run", env=hooks)
    assert r.returncode == 1
    assert "no notifier in" in r.stderr and "posts to #nowhere (notifiers with channels: incidents (#incidents), broken (#broken))" in r.stderr


def test_a_notifier_missing_from_the_inventory_warns_in_a_live_run_but_fails_the_plan(main, write, tmp_path, audit_dir):
    import json

    inv = write("inv-empty.yaml", "hosts: {}\n")
    p = write("n.yaml", """\
        name: n
        title: N
        stages:
          diagnose:
            - id: tell
              notify: {to: incidents, message: "hello"}
            - id: after
              shell: "echo went on"
              readonly: true
        """)
    r = main("run", p, "--inventory", inv, "--dry-run")
    assert r.returncode == 1 and "incidents" in r.stderr  # CI catches it
    r = main("run", p, "--inventory", inv)
    assert r.returncode == 0, r.stdout + r.stderr  # at 3am the response goes on
    assert "NOT SENT" in r.stdout and "went on" in r.stdout
    recs = [json.loads(x) for x in (audit_dir / "audit.jsonl").read_text().splitlines()]
    assert any(x["type"] == "notify_failed" for x in recs)
