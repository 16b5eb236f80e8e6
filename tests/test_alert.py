"""runbook run --alert: Alertmanager webhook payloads choose the runbook, fill
parameters from labels, are recorded in the audit log, and one alert is
handled by one run at a time."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, alive

# The webhook payload as Alertmanager 0.25 sends it (its documentation,
# "webhook_config"), with the values of a real HighErrorRate page.
PAYLOAD = {
    "version": "4",
    "groupKey": '{}:{alertname="HighErrorRate"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "runbook",
    "groupLabels": {"alertname": "HighErrorRate"},
    "commonLabels": {"alertname": "HighErrorRate", "job": "api", "severity": "critical"},
    "commonAnnotations": {"summary": "5xx ratio above 1% for 5 minutes"},
    "externalURL": "http://alertmanager.example:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "HighErrorRate", "job": "api", "namespace": "production", "severity": "critical"},
            "annotations": {"summary": "5xx ratio above 1% for 5 minutes"},
            "startsAt": "2026-11-26T03:02:11.123Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example:9090/graph?g0.expr=...",
            "fingerprint": "c3b0e1f2a4d5e6f7",
        }
    ],
}

ERROR_RATE = """\
name: error-rate
title: Error rate
alerts: [HighErrorRate]
params_from_labels: {service: job, namespace: namespace}
params:
  service: {type: string, required: true, pattern: '^[a-z0-9-]+$'}
  namespace: {type: string, default: default}
stages:
  diagnose:
    - id: look
      shell: echo looking at {{ params.service }} in {{ params.namespace }}
      readonly: true
"""

SLOW = """\
name: slow
title: Slow
alerts: [DiskFull]
params_from_labels: {host: instance}
params:
  host: {type: string, required: true}
stages:
  diagnose:
    - id: work
      wait: 30s
"""


def payload(tmp_path, doc=None, name="alert.json"):
    p = tmp_path / name
    p.write_text(json.dumps(doc or PAYLOAD))
    return p


def books(write, *texts):
    for i, t in enumerate(texts):
        write(f"playbooks/b{i}.yaml", t)


def records(audit_dir):
    return [json.loads(line) for line in (audit_dir / "audit.jsonl").read_text().splitlines()]


def test_chosen_by_alert_name_and_labels_become_params(main, write, tmp_path):
    books(write, ERROR_RATE, SLOW)
    r = main("run", "--alert", payload(tmp_path), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "alert HighErrorRate (c3b0e1f2a4d5e6f7, firing since 2026-11-26T03:02:11.123Z) → runbook error-rate" in r.stderr
    assert "service=api (label job)" in r.stderr
    assert "echo looking at api in production" in r.stdout


def test_chosen_by_runbook_annotation_over_the_alerts_list(main, write, tmp_path):
    books(write, ERROR_RATE, SLOW.replace("[DiskFull]", "[HighErrorRate]"))
    doc = copy.deepcopy(PAYLOAD)
    doc["alerts"][0]["annotations"]["runbook"] = "error-rate"
    r = main("run", "--alert", payload(tmp_path, doc), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "its 'runbook' annotation (error-rate)" in r.stderr
    # a runbook_url whose last segment names a runbook works too
    doc["alerts"][0]["annotations"] = {"runbook_url": "https://wiki.example/runbooks/error-rate.md"}
    r = main("run", "--alert", payload(tmp_path, doc), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "its 'runbook_url' annotation" in r.stderr


def test_annotation_naming_no_runbook_or_a_path_is_refused(main, write, tmp_path):
    books(write, ERROR_RATE)
    doc = copy.deepcopy(PAYLOAD)
    for ref in ("nope", "../../etc/evil.yaml"):
        doc["alerts"][0]["annotations"]["runbook"] = ref
        r = main("run", "--alert", payload(tmp_path, doc), "--dry-run")
        assert r.returncode == 1
        assert f"'runbook' annotation names '{ref}', which is not a runbook" in r.stderr
        assert "Traceback" not in r.stderr


def test_no_runbook_answers_the_alert(main, write, tmp_path):
    books(write, SLOW)
    r = main("run", "--alert", payload(tmp_path), "--dry-run")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("runbook: error: no runbook answers alert HighErrorRate")


def test_two_runbooks_answer_the_alert(main, write, tmp_path):
    books(write, ERROR_RATE, ERROR_RATE.replace("name: error-rate", "name: error-rate-2"))
    r = main("run", "--alert", payload(tmp_path), "--dry-run")
    assert r.returncode == 1
    assert "alert HighErrorRate is answered by 2 runbooks (error-rate, error-rate-2); choose one" in r.stderr
    # naming the runbook settles it, and the labels still fill its parameters
    r = main("run", "error-rate-2", "--alert", payload(tmp_path), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "echo looking at api in production" in r.stdout


def test_resolved_alert_and_bad_payloads(main, write, tmp_path):
    books(write, ERROR_RATE)
    doc = copy.deepcopy(PAYLOAD)
    doc["alerts"][0]["status"] = "resolved"
    r = main("run", "--alert", payload(tmp_path, doc), "--dry-run")
    assert r.returncode == 1 and "no firing alert (HighErrorRate: resolved)" in r.stderr
    (tmp_path / "bad.json").write_text('{"alerts": [\n  {"labels": }\n]}')
    r = main("run", "--alert", tmp_path / "bad.json", "--dry-run")
    assert r.returncode == 2 and "not JSON (line 2, column 14" in r.stderr
    (tmp_path / "other.json").write_text('{"hello": 1}')
    r = main("run", "--alert", tmp_path / "other.json", "--dry-run")
    assert r.returncode == 2 and "not an Alertmanager webhook payload" in r.stderr
    r = main("run", "--alert", tmp_path / "missing.json")
    assert r.returncode == 2 and "cannot read it" in r.stderr


def test_label_values_must_pass_the_parameter_checks(main, write, tmp_path):
    books(write, ERROR_RATE)
    doc = copy.deepcopy(PAYLOAD)
    doc["alerts"][0]["labels"]["job"] = "api; rm -rf /"
    r = main("run", "--alert", payload(tmp_path, doc), "--dry-run")
    assert r.returncode == 2  # a usage error: the parameter is invalid
    assert "parameter 'service'" in r.stderr and "does not match" in r.stderr
    # -p wins over a label
    r = main("run", "--alert", payload(tmp_path, doc), "--dry-run", "-p", "service=web")
    assert r.returncode == 0, r.stderr
    assert "echo looking at web in production" in r.stdout


def test_payload_on_standard_input_and_alert_in_the_audit_log(main, write, tmp_path, audit_dir):
    books(write, ERROR_RATE)
    r = main("run", "--alert", "-", input=json.dumps(PAYLOAD))
    assert r.returncode == 0, r.stderr
    started = [x for x in records(audit_dir) if x["type"] == "run_started"][0]
    assert started["alert"] == {
        "name": "HighErrorRate", "status": "firing", "fingerprint": "c3b0e1f2a4d5e6f7",
        "startsAt": "2026-11-26T03:02:11.123Z", "generatorURL": PAYLOAD["alerts"][0]["generatorURL"],
        "labels": PAYLOAD["alerts"][0]["labels"],
    }
    assert started["params"] == {"service": "api", "namespace": "production"}
    assert main("audit", "verify").returncode == 0


def test_group_of_alerts(main, write, tmp_path):
    books(write, ERROR_RATE)
    doc = copy.deepcopy(PAYLOAD)
    second = copy.deepcopy(doc["alerts"][0])
    second["fingerprint"] = "0000000000000002"
    second["startsAt"] = "2026-11-26T03:00:00Z"
    doc["alerts"].append(second)
    # same parameters: one run, for the earliest alert
    r = main("run", "--alert", payload(tmp_path, doc), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "alert HighErrorRate (0000000000000002, firing since 2026-11-26T03:00:00Z) and 1 more" in r.stderr
    # different parameters: refused, and --fingerprint picks one
    second["labels"]["job"] = "web"
    r = main("run", "--alert", payload(tmp_path, doc), "--dry-run")
    assert r.returncode == 1 and "give different parameters" in r.stderr and "--fingerprint" in r.stderr
    r = main("run", "--alert", payload(tmp_path, doc), "--dry-run", "--fingerprint", "0000000000000002")
    assert r.returncode == 0 and "echo looking at web" in r.stdout
    r = main("run", "--alert", payload(tmp_path, doc), "--dry-run", "--fingerprint", "ffff")
    assert r.returncode == 2 and "no such alert" in r.stderr


def test_params_from_labels_is_validated(main, write):
    write("playbooks/x.yaml", ERROR_RATE.replace("{service: job,", "{servise: job,"))
    r = main("validate", "playbooks")
    assert r.returncode == 1
    assert "params_from_labels names parameter 'servise', which the runbook does not declare (did you mean 'service'?)" in r.stdout


def _start(tmp_path, *args):
    env = os.environ.copy()
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, "-m", "runbook", *map(str, args)], cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(audit_dir, step, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (audit_dir / "audit.jsonl").exists() and any(
                r["type"] == "step_intent" and r.get("step") == step for r in records(audit_dir)):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} never started")


def test_one_run_per_alert_at_a_time(cli, write, tmp_path, audit_dir):
    books(write, SLOW)
    doc = copy.deepcopy(PAYLOAD)
    doc["alerts"][0]["labels"] = {"alertname": "DiskFull", "instance": "db1"}
    alert = payload(tmp_path, doc)
    first = _start(tmp_path, "run", "--alert", alert, "--yes")
    try:
        try:
            _wait_for_step(audit_dir, "work")
        except AssertionError:
            first.kill()
            raise AssertionError(first.communicate()[1]) from None
        run_id = [r for r in records(audit_dir) if r["type"] == "run_started"][0]["run"]
        r = cli("run", "--alert", alert, "--yes")
        assert r.returncode == 3, r.stderr
        assert f"this alert is already being handled: run {run_id} started by" in r.stderr
        assert "--force" in r.stderr
        # the refused attempt is in the audit log too
        refused = [x for x in records(audit_dir) if x["type"] == "run_finished" and x["status"] == "refused"]
        assert len(refused) == 1
        # a dry-run contacts nothing and is never refused
        assert cli("run", "--alert", alert, "--dry-run").returncode == 0
        # --force runs anyway (with a warning); SIGTERM it after it starts
        forced = _start(tmp_path, "run", "--alert", alert, "--yes", "--force")
        time.sleep(1.5)
        forced.send_signal(signal.SIGTERM)
        _, err = forced.communicate(timeout=20)
        assert "warning: --force: this alert is already being handled by run " + run_id in err
    finally:
        first.kill()  # SIGKILL: the lock must not outlive the process
        first.wait(timeout=10)
    assert not alive(first.pid)
    # the kernel released the dead run's lock: a new run may start
    shortened = SLOW.replace("wait: 30s", "wait: 0s")
    books(write, shortened)
    r = cli("run", "--alert", alert, "--yes")
    assert r.returncode == 0, r.stderr
    assert cli("audit", "verify").returncode == 0
