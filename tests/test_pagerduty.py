"""The notify step paging through PagerDuty's Events API v2, against a local receiver that
checks the events as PagerDuty does (tests/webservers.py: pagerduty_errors)."""

from __future__ import annotations

import json

from conftest import book
from runbook import audit

ROUTING_KEY = "R0ut1ngKeyF0rTest5ab12cd34ef56gh"  # 32 characters, as PagerDuty's are


def _inv(write, extra: str = "") -> str:
    return str(write("inv.yaml", "notify:\n"
                                 "  pager: {routing_key: {env: PD_KEY}, webhook: {env: PD_URL}}\n"
                                 "  chat: {webhook: {env: PD_URL}}\n" + extra))


def _env(web) -> dict:
    return {"PD_KEY": ROUTING_KEY, "PD_URL": f"{web.url}/pagerduty/v2/enqueue"}


PAGES = """
  diagnose:
    - id: page
      notify: {to: pager, event: escalation, message: "5xx on {{ params.service }}", severity: critical}
    - id: ack
      notify: {to: pager, page: acknowledge}
    - id: check
      choose:
        - when: "steps.page.sent and steps.page.status_code == 202 and steps.ack.sent"
          goto: all-clear
    - id: bad
      end: {status: failed, message: "not paged"}
  verify:
    - id: all-clear
      notify: {to: pager, event: resolved, message: "back to normal"}
    - id: done
      end: ok
"""


def test_trigger_acknowledge_and_resolve_events(write, main, web, audit_dir):
    p = book(write, PAGES, head="params:\n  service: {default: api}\n")
    r = main("run", p, "--inventory", _inv(write), env=_env(web))
    assert r.returncode == 0, r.stdout + r.stderr
    run_id = next(x["run"] for x in audit.read_records(audit_dir / "audit.jsonl") if x["type"] == "run_started")
    assert [h["errors"] for h in web.hooks] == [[], [], []]  # PagerDuty would accept every one
    trigger, ack, resolve = (h["payload"] for h in web.hooks)
    assert trigger == {
        "routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": run_id, "client": "runbook",
        "payload": {"summary": f"5xx on api (runbook t, run {run_id})", "source": "runbook t", "severity": "critical",
                    "custom_details": {"event": "escalation", "message": "5xx on api", "runbook": "t",
                                       "run_id": run_id, "dry_run": False}},
    }
    assert ack == {"routing_key": ROUTING_KEY, "event_action": "acknowledge", "dedup_key": run_id}
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": run_id}
    assert all(h["headers"]["Content-Type"] == "application/json" for h in web.hooks)
    # the routing key is a secret: never in the output or the log
    assert ROUTING_KEY not in r.stdout + r.stderr
    assert ROUTING_KEY not in (audit_dir / "audit.jsonl").read_text()
    assert f"PagerDuty trigger sent through pager (dedup_key {run_id})" in r.stdout


def test_dedup_key_template_and_a_refused_event(write, main, web):
    p = book(write, """
  diagnose:
    - id: page
      notify: {to: pager, message: "disk full", dedup_key: "disk-{{ params.host }}", required: true}
    - id: done
      end: ok
""", head="params:\n  host: {default: db-1}\n")
    r = main("run", p, "--inventory", _inv(write), env=_env(web))
    assert r.returncode == 0, r.stdout + r.stderr
    assert web.hooks[0]["payload"]["dedup_key"] == "disk-db-1" and web.hooks[0]["payload"]["payload"]["severity"] == "error"
    web.reset()
    r = main("run", p, "--inventory", _inv(write), env={**_env(web), "PD_KEY": "too-short"})
    assert r.returncode != 0 and "400" in r.stdout and "too-short" not in r.stdout


def test_never_sent_in_dry_run_and_the_key_is_not_planned(write, main, web):
    p = book(write, PAGES, head="params:\n  service: {default: api}\n")
    r = main("run", p, "--inventory", _inv(write), "--dry-run", "--format", "json", env=_env(web))
    assert r.returncode == 0, r.stdout + r.stderr
    assert web.hooks == [] and ROUTING_KEY not in r.stdout
    plan = {s["id"]: s for s in json.loads(r.stdout)["steps"]}
    assert "trigger PagerDuty incident via notifier pager" in json.dumps(plan["page"])


def test_pagerduty_keys_need_a_pagerduty_notifier_and_a_trigger_needs_a_message(write, main, web):
    p = book(write, """
  diagnose:
    - id: page
      notify: {to: chat, message: "x", page: trigger, required: true}
""")
    r = main("run", p, "--inventory", _inv(write), env=_env(web))
    assert r.returncode != 0 and "for PagerDuty notifiers" in r.stdout + r.stderr
    assert web.hooks == []
    p = book(write, """
  diagnose:
    - id: page
      notify: {to: pager}
""")
    r = main("validate", p)
    assert r.returncode != 0 and "missing required key 'message'" in r.stdout + r.stderr


def test_inventory_notifier_needs_a_webhook_or_a_routing_key(write):
    import jsonschema

    from runbook.inventory import check_inventory, json_schema

    inventory, problems = check_inventory(write("inv.yaml", "notify:\n  nothing: {channel: '#x'}\n"))
    assert inventory is None
    assert [p.message for p in problems] == ["notify.nothing: needs one of the keys 'webhook' or 'routing_key'"]
    schema = json_schema()  # editors see the same rule
    with __import__("pytest").raises(jsonschema.ValidationError):
        jsonschema.validate({"notify": {"nothing": {"channel": "#x"}}}, schema)
    jsonschema.validate({"notify": {"pager": {"routing_key": {"env": "PD_KEY"}}}}, schema)


def test_a_run_started_from_an_alert_pages_with_the_alerts_fingerprint(write, main, web, tmp_path):
    """One PagerDuty incident per alert, whichever run (or rerun) pages about it."""
    p = book(write, PAGES, head="params:\n  service: {default: api}\n")
    doc = {"version": "4", "alerts": [{"status": "firing", "labels": {"alertname": "Errors"}, "annotations": {},
                                       "startsAt": "2026-12-05T03:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                                       "fingerprint": "4f1c2a9b7d3e5f60"}]}
    alert = tmp_path / "alert.json"
    alert.write_text(json.dumps(doc))
    r = main("run", p, "--alert", str(alert), "--inventory", _inv(write), env=_env(web))
    assert r.returncode == 0, r.stdout + r.stderr
    assert [h["payload"]["dedup_key"] for h in web.hooks] == ["4f1c2a9b7d3e5f60"] * 3


ESCALATING = """
  diagnose:
    - id: slow
      shell: "sleep 1.3"
      readonly: true
    - id: next
      shell: "true"
      readonly: true
"""
ESCALATION = "escalation:\n  - {after: 1s, to: secondary, page: pager}\n  - {after: 1h, to: manager, page: pager}\n"


def test_an_escalation_time_passed_pages_through_pagerduty_once_and_never_in_a_dry_run(write, main, web, audit_dir):
    p = book(write, ESCALATING, head=ESCALATION)
    r = main("run", p, "--inventory", _inv(write), "--dry-run", env=_env(web))
    assert r.returncode == 0 and web.hooks == [], r.stdout + r.stderr
    r = main("run", p, "--inventory", _inv(write), env=_env(web))
    assert r.returncode == 0, r.stdout + r.stderr
    [hook] = web.hooks  # secondary after 1s, once; the manager's hour has not come
    assert hook["errors"] == [] and hook["payload"]["event_action"] == "trigger"
    assert hook["payload"]["payload"]["summary"].startswith("escalation to secondary: ")
    assert hook["payload"]["payload"]["severity"] == "critical"
    paged = [x for x in audit.read_records(audit_dir / "audit.jsonl") if x["type"] == "escalation_paged"]
    assert [(x["to"], x["notifier"], x["sent"]) for x in paged] == [("secondary", "pager", True)]
    assert ROUTING_KEY not in r.stdout + r.stderr + (audit_dir / "audit.jsonl").read_text()


def test_validate_checks_that_an_escalation_pages_through_a_pagerduty_notifier(write, main):
    p = book(write, ESCALATING, head="escalation:\n  - {after: 15m, to: secondary, page: chat}\n")
    r = main("validate", p, "--inventory", _inv(write))
    assert r.returncode == 1 and "has no routing_key" in r.stdout + r.stderr
    p = book(write, ESCALATING, head="escalation:\n  - {after: 15m, to: secondary, page: nobody}\n", name="u.yaml")
    r = main("validate", p, "--inventory", _inv(write))
    assert r.returncode == 1 and "'nobody', which is not in" in r.stdout + r.stderr
