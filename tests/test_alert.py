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
        assert r.returncode == 2  # a usage error: nothing ran
        assert f"'runbook' annotation names '{ref}', which is not a runbook" in r.stderr
        assert "Traceback" not in r.stderr


def test_no_runbook_answers_the_alert(main, write, tmp_path, audit_dir):
    books(write, SLOW)
    for extra in (["--dry-run"], []):  # a usage error (exit 2), dry-run or not: nothing ran
        r = main("run", "--alert", payload(tmp_path), *extra)
        assert r.returncode == 2, (extra, r.returncode, r.stderr)
        assert r.stderr.strip().splitlines()[-1].startswith("runbook: error: no runbook answers alert HighErrorRate")
    assert not (audit_dir / "audit.jsonl").exists() or not [x for x in records(audit_dir) if x.get("type") == "run_started"]


def test_two_runbooks_answer_the_alert(main, write, tmp_path):
    books(write, ERROR_RATE, ERROR_RATE.replace("name: error-rate", "name: error-rate-2"))
    r = main("run", "--alert", payload(tmp_path), "--dry-run")
    assert r.returncode == 1
    assert "alert HighErrorRate is answered by 2 runbooks (error-rate, error-rate-2); choose one" in r.stderr
    # naming the runbook settles it, and the labels still fill its parameters
    r = main("run", "error-rate-2", "--alert", payload(tmp_path), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "echo looking at api in production" in r.stdout


def test_bad_payloads(main, write, tmp_path):
    books(write, ERROR_RATE)
    (tmp_path / "empty.json").write_text('{"alerts": []}')
    r = main("run", "--alert", tmp_path / "empty.json", "--dry-run")
    assert r.returncode == 2 and "the payload's 'alerts' list is empty" in r.stderr
    (tmp_path / "bad.json").write_text('{"alerts": [\n  {"labels": }\n]}')
    r = main("run", "--alert", tmp_path / "bad.json", "--dry-run")
    assert r.returncode == 2 and "not JSON (line 2, column 14" in r.stderr
    (tmp_path / "other.json").write_text('{"hello": 1}')
    r = main("run", "--alert", tmp_path / "other.json", "--dry-run")
    assert r.returncode == 2 and "not an Alertmanager webhook payload" in r.stderr
    r = main("run", "--alert", tmp_path / "missing.json")
    assert r.returncode == 2 and "cannot read it" in r.stderr


def test_a_deeply_nested_alert_payload_is_a_usage_error_not_an_internal_error(main, tmp_path):
    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)  # 200 KB: under the 1 MB limit, too deep for the JSON parser
    r = main("run", "--alert", p, "--dry-run")
    assert "internal error" not in r.stderr and r.returncode == 2, (r.returncode, r.stderr)
    assert "nested too deeply" in r.stderr, r.stderr


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
        deadline = time.monotonic() + 20  # until its step runs (a loaded machine starts it slowly)
        while time.monotonic() < deadline and sum(r["type"] == "step_intent" for r in records(audit_dir)) < 2:
            time.sleep(0.05)
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


# --- resolved alerts -----------------------------------------------------------------------------

FIX = """\
name: fix
title: Fix
alerts: [HighErrorRate]
params_from_labels: {service: job}
params:
  service: {type: string, required: true, pattern: '^[a-z0-9-]+$'}
stages:
  diagnose:
    - id: look
      shell: "while [ ! -f {tmp}/go ]; do sleep 0.05; done; echo looked"
      readonly: true
      timeout: 30s
  mitigate:
    - id: restart
      shell: echo restarting {{ params.service }}
      timeout: 5s
  verify:
    - id: check
      shell: echo fine
      readonly: true
"""

ENDS = "2026-11-26T03:41:07.5Z"


def resolved(doc=None, ends=ENDS):
    doc = copy.deepcopy(doc or PAYLOAD)
    doc["status"] = "resolved"
    for a in doc["alerts"]:
        a["status"], a["endsAt"] = "resolved", ends
    return doc


def test_a_resolved_alert_runs_nothing_exits_0_and_is_recorded(main, write, tmp_path, audit_dir):
    books(write, ERROR_RATE)
    alert = payload(tmp_path, resolved())
    r = main("run", "--alert", alert, "--dry-run")  # a dry-run says so and records nothing
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ("resolved: nothing to run — alert HighErrorRate (c3b0e1f2a4d5e6f7) resolved at "
                                f"{ENDS}; not recorded (--dry-run)")
    assert not (audit_dir / "audit.jsonl").exists() and r.stdout == ""
    r = main("run", "--alert", alert)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ("resolved: nothing to run — alert HighErrorRate (c3b0e1f2a4d5e6f7) resolved at "
                                f"{ENDS}; recorded in the audit log")
    [rec] = [x for x in records(audit_dir) if x.get("type") != "epoch"]  # (the log's first key)
    assert rec["type"] == "alert_resolved" and "run" not in rec  # an alert event, not a run
    assert (rec["alertname"], rec["fingerprint"], rec["endsAt"], rec["startsAt"]) == (
        "HighErrorRate", "c3b0e1f2a4d5e6f7", ENDS, "2026-11-26T03:02:11.123Z")
    assert rec["labels"]["job"] == "api" and rec["who"]
    assert main("audit", "verify").returncode == 0
    assert "no runs recorded" in main("audit", "list").stdout  # nothing ran
    # named on the command line, or picked with --fingerprint: still nothing to run
    r = main("run", "nope-not-a-runbook", "--alert", alert, "--fingerprint", "c3b0e1f2a4d5e6f7")
    assert r.returncode == 0 and "resolved: nothing to run" in r.stderr


def test_a_resolution_goes_to_the_paused_run_and_its_resume_says_so(main, write, tmp_path, audit_dir):
    (tmp_path / "go").touch()
    write("playbooks/fix.yaml", FIX.replace("{tmp}", str(tmp_path)))
    r = main("run", "--alert", payload(tmp_path))  # no terminal, no --yes: stops before the write step
    assert r.returncode == 3, r.stderr
    run_id = [x for x in records(audit_dir) if x["type"] == "run_started"][0]["run"]
    r = main("run", "--alert", payload(tmp_path, resolved(), "resolved.json"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == (f"resolved: nothing to run — alert HighErrorRate (c3b0e1f2a4d5e6f7) resolved at {ENDS}; "
                                f"recorded in run {run_id} (refused, not finished): runbook resume {run_id} shows it")
    rec = records(audit_dir)[-1]
    assert rec["type"] == "alert_resolved" and rec["run"] == run_id and rec["endsAt"] == ENDS
    r = main("resume", run_id, "--yes")
    assert r.returncode == 0, r.stderr
    assert f"the alert resolved at {ENDS}: HighErrorRate (c3b0e1f2a4d5e6f7)" in r.stderr
    resumed = [x for x in records(audit_dir) if x["type"] == "resumed"]
    assert len(resumed) == 1 and f"the alert resolved at {ENDS}" in resumed[0]["notice"]
    assert main("audit", "verify").returncode == 0
    # the run finished: a later resolution of the same incident is an event of its own
    r = main("run", "--alert", payload(tmp_path, resolved(), "resolved.json"))
    assert r.returncode == 0 and r.stderr.strip().endswith("; recorded in the audit log"), r.stderr
    assert "run" not in records(audit_dir)[-1]


def test_a_resolution_of_another_incident_is_not_given_to_an_old_run(main, write, tmp_path, audit_dir):
    (tmp_path / "go").touch()
    write("playbooks/fix.yaml", FIX.replace("{tmp}", str(tmp_path)))
    assert main("run", "--alert", payload(tmp_path)).returncode == 3  # paused: last week's incident, say
    later = copy.deepcopy(PAYLOAD)
    later["alerts"][0]["startsAt"] = "2026-12-03T10:00:00Z"  # same fingerprint, a new startsAt: a new incident
    r = main("run", "--alert", payload(tmp_path, resolved(later), "resolved.json"))
    assert r.returncode == 0 and r.stderr.strip().endswith("; recorded in the audit log"), r.stderr
    assert "run" not in records(audit_dir)[-1]
    # the same instant written differently is the same incident
    same = copy.deepcopy(PAYLOAD)
    same["alerts"][0]["startsAt"] = "2026-11-26T04:02:11.123+01:00"
    r = main("run", "--alert", payload(tmp_path, resolved(same), "resolved.json"))
    assert "(refused, not finished): runbook resume" in r.stderr, r.stderr


def _group_payload():
    """Two alerts of one group with the same parameters (same job): one run for both, for
    c3b0… (the earlier), with 00000000000000bb in its `also`."""
    doc = copy.deepcopy(PAYLOAD)
    other = copy.deepcopy(doc["alerts"][0])
    other["fingerprint"], other["startsAt"] = "00000000000000bb", "2026-11-26T03:04:00Z"
    other["labels"] = dict(other["labels"], alertname="HighLatency", instance="api-2")
    doc["alerts"].append(other)
    return doc


def _only(doc, i):
    doc = copy.deepcopy(doc)
    doc["alerts"] = [doc["alerts"][i]]
    return doc


def test_a_resolution_of_one_alert_of_the_group_does_not_say_the_runs_alert_resolved(main, write, tmp_path, audit_dir):
    write("playbooks/fix.yaml", FIX.replace("{tmp}", str(tmp_path)).replace("[HighErrorRate]", "[HighErrorRate, HighLatency]"))
    (tmp_path / "go").touch()
    r = main("run", "--alert", payload(tmp_path, _group_payload()))  # stops before the write step (exit 3)
    assert r.returncode == 3, r.stderr
    started = [x for x in records(audit_dir) if x["type"] == "run_started"][0]
    assert started["alert"]["fingerprint"] == "c3b0e1f2a4d5e6f7" and started["alert"]["also"] == ["00000000000000bb"]
    assert started["alert"]["also_startsAt"] == {"00000000000000bb": "2026-11-26T03:04:00Z"}
    # only the second alert resolved; the run's own alert still fires
    r = main("run", "--alert", payload(tmp_path, _only(resolved(_group_payload()), 1), "b-resolved.json"))
    assert r.returncode == 0 and f"recorded in run {started['run']} (refused, not finished)" in r.stderr, r.stderr
    r = main("resume", started["run"])  # no --yes: it stops again before the write step
    assert "the alert resolved at" not in r.stderr and "stop it if nothing is left to do" not in r.stderr, r.stderr
    assert (f"one of the run's 2 alerts (HighLatency, 00000000000000bb) resolved at {ENDS}, recorded " in r.stderr
            and "its other alerts (c3b0e1f2a4d5e6f7) have not resolved" in r.stderr), r.stderr
    # then the run's own alert resolves too: now it may be stopped
    r = main("run", "--alert", payload(tmp_path, _only(resolved(_group_payload()), 0), "a-resolved.json"))
    assert r.returncode == 0 and f"recorded in run {started['run']}" in r.stderr, r.stderr
    r = main("resume", started["run"], "--yes")
    assert r.returncode == 0, r.stderr
    assert (f"all 2 of the run's alerts resolved, the last (HighErrorRate, c3b0e1f2a4d5e6f7) at {ENDS}, recorded "
            in r.stderr and "stop it if nothing is left to do" in r.stderr), r.stderr


def test_a_new_incident_of_a_group_member_is_not_given_to_an_old_paused_run(main, write, tmp_path, audit_dir):
    write("playbooks/fix.yaml", FIX.replace("{tmp}", str(tmp_path)).replace("[HighErrorRate]", "[HighErrorRate, HighLatency]"))
    (tmp_path / "go").touch()
    assert main("run", "--alert", payload(tmp_path, _group_payload())).returncode == 3  # last week's, left paused
    run_id = [x for x in records(audit_dir) if x["type"] == "run_started"][0]["run"]
    later = _only(resolved(_group_payload()), 1)
    later["alerts"][0]["startsAt"] = "2026-12-03T10:00:00Z"  # a new incident of alert bb
    r = main("run", "--alert", payload(tmp_path, later, "later.json"))
    assert r.returncode == 0 and r.stderr.strip().endswith("; recorded in the audit log"), r.stderr
    assert records(audit_dir)[-1].get("run") != run_id
    # the same incident of bb (its startsAt written another way) is the run's
    same = _only(resolved(_group_payload()), 1)
    same["alerts"][0]["startsAt"] = "2026-11-26T04:04:00+01:00"
    r = main("run", "--alert", payload(tmp_path, same, "same.json"))
    assert r.returncode == 0 and records(audit_dir)[-1].get("run") == run_id, r.stderr


def test_a_resolution_reaches_a_run_that_is_going_and_one_that_crashed(cli, write, tmp_path, audit_dir):
    write("playbooks/fix.yaml", FIX.replace("{tmp}", str(tmp_path)))
    first = _start(tmp_path, "run", "--alert", payload(tmp_path), "--yes")
    try:
        _wait_for_step(audit_dir, "look")
        run_id = [r for r in records(audit_dir) if r["type"] == "run_started"][0]["run"]
        r = cli("run", "--alert", payload(tmp_path, resolved(), "resolved.json"))
        assert r.returncode == 0, r.stderr
        assert f"recorded in run {run_id}, which is still going" in r.stderr
    finally:
        first.kill()  # SIGKILL, mid-step: the run never finishes
        first.wait(timeout=10)
    r = cli("run", "--alert", payload(tmp_path, resolved(ends="2026-11-26T03:50:00Z"), "resolved.json"))
    assert r.returncode == 0, r.stderr
    assert f"recorded in run {run_id} (in progress, not finished): runbook resume {run_id} shows it" in r.stderr
    (tmp_path / "go").touch()
    r = cli("resume", run_id, "--yes")
    assert r.returncode == 0, r.stderr
    assert "the alert resolved at 2026-11-26T03:50:00Z" in r.stderr  # the last word on it
    assert "restarting api" in r.stdout
    assert cli("audit", "verify").returncode == 0


def test_a_mixed_payload_runs_for_the_firing_alerts_and_records_the_resolved_ones(main, write, tmp_path, audit_dir):
    books(write, ERROR_RATE)
    doc = copy.deepcopy(PAYLOAD)
    gone = resolved()["alerts"][0]
    gone["fingerprint"], gone["labels"] = "00000000000000aa", dict(gone["labels"], job="web")
    doc["alerts"].append(gone)
    r = main("run", "--alert", payload(tmp_path, doc))
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0] == f"resolved: alert HighErrorRate (00000000000000aa) resolved at {ENDS}; recorded in the audit log"
    assert lines[1].startswith("alert HighErrorRate (c3b0e1f2a4d5e6f7, firing since")
    assert "looking at api in production" in r.stdout  # the resolved alert's job=web did not split the group
    started = [x for x in records(audit_dir) if x["type"] == "run_started"][0]
    assert started["alert"]["fingerprint"] == "c3b0e1f2a4d5e6f7" and "also" not in started["alert"]
    assert [x["fingerprint"] for x in records(audit_dir) if x["type"] == "alert_resolved"] == ["00000000000000aa"]


def test_a_resolved_alert_with_terminal_escapes_is_shown_harmless(main, write, tmp_path, audit_dir):
    books(write, ERROR_RATE)
    doc = resolved()
    doc["alerts"][0]["labels"]["alertname"] = "High\x1b]0;pwned\x07\x1b[2JRate"
    doc["alerts"][0]["endsAt"] = "2026\x1b[31m"
    r = main("run", "--alert", payload(tmp_path, doc))
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert records(audit_dir)[-1]["alertname"] == "High\x1b]0;pwned\x07\x1b[2JRate"  # the log keeps what came


# --- from a pod to its Deployment (params_from_labels: {deployment: {from_pod: pod}}) ---------------

OOM_PAYLOAD = ROOT / "tests" / "data" / "alertmanager-pod-oom-killed.json"
OOM_POD = "api-7c9d8f6b5-q4x2m"  # the captured payload's pod label

OOM = """\
name: oom
title: OOM
alerts: [PodOOMKilled]
params_from_labels: {deployment: {from_pod: pod}, namespace: namespace}
example_params: {deployment: example}
params:
  deployment: {type: string, required: true, pattern: '^[a-z0-9-]+$'}
  namespace: {type: string, default: default, pattern: '^[a-z0-9-]+$'}
stages:
  diagnose:
    - id: look
      k8s: "get deployment/{{ params.deployment }} -n {{ params.namespace }}"
"""


def oom_payload(tmp_path, pod=OOM_POD):
    doc = json.loads(OOM_PAYLOAD.read_text())
    doc["alerts"][0]["labels"]["pod"] = pod
    return payload(tmp_path, doc, "oom.json")


def _pod_reads(kubeapi):
    return [r["path"] for r in kubeapi.requests if "/pods/" in r["path"] or "/replicasets/" in r["path"]]


def test_pod_oom_killed_starts_from_the_captured_payload_as_is(main, kubeapi, kube_inventory, audit_dir):
    from kubeapi import deployment, node

    deployment(kubeapi, "api", "production", replicas=2, oom=True, memory="256Mi", pods=[OOM_POD, "api-7c9d8f6b5-z8wkp"])
    node(kubeapi, "node-1")
    rs = kubeapi.all("replicasets", "production")[0]["metadata"]["name"]
    r = main("run", "--alert", OOM_PAYLOAD, "--path", ROOT / "playbooks", "--inventory", kube_inventory(), "--yes",
             "-p", "memory_limit=1Gi")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "runbook pod-oom-killed" in r.stderr and f"deployment from pod {OOM_POD} (label pod)" in r.stderr
    assert f"runbook: deployment=api (from pod {OOM_POD} via ReplicaSet {rs})" in r.stderr
    assert _pod_reads(kubeapi)[:2] == [f"/api/v1/namespaces/production/pods/{OOM_POD}",
                                       f"/apis/apps/v1/namespaces/production/replicasets/{rs}"]
    assert "run resolved (exit 0)" in r.stdout and "api runs with a 1Gi memory limit" in r.stdout
    d = kubeapi.get("deployments", "api", "production")
    assert d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "1Gi"
    started = [x for x in records(audit_dir) if x["type"] == "run_started"][0]
    assert started["params"]["deployment"] == "api" and started["params"]["container"] == "api"
    assert started["params_from"] == {"deployment": {
        "label": "pod", "from_pod": OOM_POD, "namespace": "production", "cluster": "main",
        "namespace_from": "parameter namespace", "via": [f"ReplicaSet {rs}"], "value": "api"}}
    assert main("audit", "verify").returncode == 0


def test_a_dry_run_from_the_payload_contacts_nothing_and_says_what_it_will_look_up(main, cli, kubeapi, kube_inventory):
    inv = kube_inventory()
    inv.write_text(inv.read_text() + "notify:\n  incidents: {webhook: {env: SLACK_WEBHOOK_INCIDENTS}}\n")
    r = main("run", "--alert", OOM_PAYLOAD, "--path", ROOT / "playbooks", "--inventory", inv, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert kubeapi.requests == []
    assert (f"dry-run: deployment comes from pod {OOM_POD} in namespace production (its ReplicaSet's Deployment), "
            "read from cluster main when the run is live; this plan uses the example value deployment=api") in r.stderr
    assert "summary deployment/api -n production" in r.stdout
    # the README's command, from the repository as shipped
    r = cli("run", "--alert", "tests/data/alertmanager-pod-oom-killed.json", "--dry-run", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "deployment=api" in r.stdout and "from pod api-7c9d8f6b5-q4x2m" in r.stderr


def test_from_pod_refuses_what_is_not_a_deployments_pod(main, write, tmp_path, kubeapi, kube_inventory):
    from kubeapi import deployment, make_pod, statefulset

    write("playbooks/oom.yaml", OOM)
    inv = kube_inventory()
    statefulset(kubeapi, "db", "production")
    kubeapi.put(make_pod("bare", "production", {"spec": {"containers": [{"name": "x", "image": "x:1"}]}}))
    deployment(kubeapi, "api", "production", replicas=1)
    lone = kubeapi.put({"kind": "ReplicaSet", "apiVersion": "apps/v1", "metadata": {"name": "lone", "namespace": "production"},
                        "spec": {"replicas": 1}})
    kubeapi.put(make_pod("lone-abcde", "production", {"spec": {"containers": [{"name": "x", "image": "x:1"}]}}, owner=lone))
    for pod, says in [
        ("db-0", "from_pod: pod db-0 (namespace production) is owned by StatefulSet db, not by a Deployment's ReplicaSet"),
        ("bare", "from_pod: pod bare (namespace production) has no owner"),
        ("lone-abcde", "from_pod: pod lone-abcde (namespace production) belongs to ReplicaSet lone, which has no owner, "
                       "not a Deployment"),
        ("gone-1", "from_pod: pod gone-1 is not in namespace production on cluster 'main'"),
    ]:
        r = main("run", "--alert", oom_payload(tmp_path, pod), "--inventory", inv, "--yes")
        assert r.returncode == 1, (pod, r.stderr)
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("runbook: error: " + says), last
        assert "Traceback" not in r.stderr and "give the parameter with -p" in last or "give the Deployment with -p" in last
    # -p wins: no lookup at all
    kubeapi.requests.clear()
    r = main("run", "--alert", oom_payload(tmp_path, "db-0"), "--inventory", inv, "--yes", "-p", "deployment=api")
    assert r.returncode == 0, r.stderr
    assert _pod_reads(kubeapi) == []


def test_from_pod_label_and_server_answers_are_checked_before_use(main, write, tmp_path, kubeapi, kube_inventory):
    from kubeapi import make_pod

    write("playbooks/oom.yaml", OOM)
    inv = kube_inventory()
    for evil in ("../../secrets/x", "api; rm -rf /", "API", "a" * 300):
        r = main("run", "--alert", oom_payload(tmp_path, evil), "--inventory", inv, "--yes")
        assert r.returncode == 1 and "which is not a pod name" in r.stderr, r.stderr
    assert kubeapi.requests == []  # refused before anything was sent
    # an API server (or whoever stands in its place) naming an owner that is no name: refused, not requested
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "../../../api/v1/secrets", "uid": "u1"}}
    kubeapi.put(make_pod("odd", "production", {"spec": {"containers": [{"name": "x", "image": "x:1"}]}}, owner=owner))
    r = main("run", "--alert", oom_payload(tmp_path, "odd"), "--inventory", inv, "--yes")
    assert r.returncode == 1 and "names an owner ReplicaSet '../../../api/v1/secrets' that is not a name" in r.stderr
    assert not [q for q in kubeapi.requests if "secrets" in q["path"]]
    rs = kubeapi.put({"kind": "ReplicaSet", "apiVersion": "apps/v1", "metadata": {
        "name": "odd-rs", "namespace": "production",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "api -n kube-system", "uid": "u2",
                             "controller": True}]}, "spec": {"replicas": 1}})
    kubeapi.put(make_pod("odd2", "production", {"spec": {"containers": [{"name": "x", "image": "x:1"}]}}, owner=rs))
    r = main("run", "--alert", oom_payload(tmp_path, "odd2"), "--inventory", inv, "--yes")
    assert r.returncode == 1 and "names an owner Deployment 'api -n kube-system' that is not a name" in r.stderr
    # a label with terminal escapes never reaches the terminal as such
    r = main("run", "--alert", oom_payload(tmp_path, "x\x1b[2J"), "--inventory", inv, "--yes")
    assert r.returncode == 1 and "\x1b" not in r.stderr


def test_from_pod_without_a_cluster_or_with_credentials_over_http(main, write, tmp_path, kubeapi_http):
    write("playbooks/oom.yaml", OOM)
    r = main("run", "--alert", oom_payload(tmp_path), "--yes")  # no inventory at all
    assert r.returncode == 1 and "needs an inventory with a cluster" in r.stderr
    # a kubeconfig whose token would go to a plain-http server: the lookup refuses, as a k8s step does
    from kubeapi import write_kubeconfig

    cfg = write_kubeconfig(tmp_path / "kc", kubeapi_http.url, token="s3cret-token")
    inv = tmp_path / "inv.yaml"
    inv.write_text("clusters:\n  main: " + json.dumps({"kubeconfig": str(cfg), "namespace": "production"}) + "\n")
    r = main("run", "--alert", oom_payload(tmp_path), "--inventory", inv, "--yes")
    assert r.returncode == 1 and "refusing to send a bearer token" in r.stderr and "s3cret-token" not in r.stderr
    assert kubeapi_http.requests == []


def test_params_from_labels_forms_are_validated(main, write):
    write("playbooks/x.yaml", OOM.replace("{from_pod: pod}", "{from_pdo: pod}"))
    r = main("validate", "playbooks")
    assert r.returncode == 1
    assert ("playbooks/x.yaml:4:35: error: params_from_labels.deployment: unknown label form 'from_pdo' "
            "(did you mean 'from_pod'?)") in r.stdout, r.stdout
    write("playbooks/x.yaml", OOM.replace("deployment: {type: string,", "deployment: {type: integer,")
          .replace("example_params: {deployment: example}", "example_params: {deployment: 1}")
          .replace(", pattern: '^[a-z0-9-]+$'}\n  namespace", "}\n  namespace"))
    r = main("validate", "playbooks")
    assert "x.yaml:4:34: error: params_from_labels: 'deployment' gets a name (from_pod: pod), but parameter " \
           "'deployment' is type: integer; make it type: string" in r.stdout, r.stdout
    write("playbooks/x.yaml", OOM.replace("{from_pod: pod}", "{from_pod: pod, namespace: nmspace, cluster: [main]}"))
    r = main("validate", "playbooks")
    assert "params_from_labels.deployment.cluster: expected a string, got a list" in r.stdout, r.stdout
    write("playbooks/x.yaml", OOM.replace("{from_pod: pod}", "{from_pod: pod, namespace: nmspace}"))
    r = main("validate", "playbooks")
    assert "'deployment': namespace names parameter 'nmspace', which the runbook does not declare " \
           "(did you mean 'namespace'?)" in r.stdout, r.stdout
    write("playbooks/x.yaml", OOM.replace("example_params: {deployment: example}\n", ""))
    r = main("validate", "playbooks")
    assert "x.yaml:4:22: error: params_from_labels: 'deployment' is found from a label only when a live run " \
           "starts; give it an example_params value" in r.stdout, r.stdout


def test_a_dry_run_from_an_oom_alert_imports_no_kubernetes(tmp_path):
    code = (
        "import sys\n"
        "from runbook.cli import main\n"
        "assert main(['run', '--alert', 'tests/data/alertmanager-pod-oom-killed.json', '--dry-run']) == 0\n"
        "print('HEAVY', [m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3')])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), RUNBOOK_AUDIT_DIR=str(tmp_path / "audit")))
    assert "HEAVY []" in r.stdout, r.stdout + r.stderr


def test_a_payload_over_the_file_limit_is_refused_before_parsing(main, write, tmp_path):
    big = tmp_path / "huge.json"
    big.write_text('{"alerts": [' + ",".join(['{"labels": {"alertname": "X"}}'] * 40000) + "]}")
    assert big.stat().st_size > 1_000_000
    for args, kw in ((("run", "--alert", str(big)), {}), (("run", "--alert", "-"), {"input": big.read_text()})):
        r = main(*args, **kw)
        assert r.returncode == 2 and "over runbook's 1 MB limit" in r.stderr and "Traceback" not in r.stderr, r.stderr
