"""`runbook run --format json` (and resume, and `audit show --format result`): the run's
result as one JSON document from its audit records, valid against `runbook schema --result`."""

from __future__ import annotations

import json

import jsonschema
import pytest
from conftest import book
from test_ssh_step import inventory

SECRET = "s3cr3t-t0ken-value-xyz"


@pytest.fixture
def result_schema(main):
    r = main("schema", "--result")
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _fan_out_book(write):
    return book(write, """
  diagnose:
    - id: look
      ssh: {hosts: [h1, h2], command: "echo load 7; echo token={{ params.token }}", forks: 2}
      readonly: true
      outputs:
        load: {regex: 'load (\\d+)', type: integer, aggregate: max}
    - id: decide
      choose:
        - when: "steps.look.outputs.load > 5"
          goto: restart
    - id: fine
      end: "nothing to do"
  mitigate:
    - id: restart
      shell: "echo restarting {{ params.service }}"
  verify:
    - id: done
      end: "restarted"
""", head="params:\n  token: {type: string, secret: true, required: true}\n  service: {type: string, default: api}\n")


def test_run_format_json_ssh_fan_out_choose_declined_write_and_secret(write, main, sshd, ssh_known_hosts,
                                                                      result_schema):
    p = _fan_out_book(write)
    inv = inventory(write, sshd, ssh_known_hosts, names=("h1", "h2"))
    r = main("run", p, "--inventory", inv, "--format", "json", env={"RUNBOOK_PARAM_TOKEN": SECRET})
    doc = json.loads(r.stdout)  # standard output is the document and nothing else
    jsonschema.validate(doc, result_schema)
    assert SECRET not in r.stdout and SECRET not in r.stderr
    assert "look" in r.stderr and "restart" in r.stderr  # the progress went to standard error

    assert doc["runbook"] == "t" and doc["dry_run"] is False
    assert doc["params"] == {"token": "***", "service": "api"}
    assert doc["status"] == "refused" and doc["exit_code"] == r.returncode != 0
    steps = {s["id"]: s for s in doc["steps"]}
    assert [s["id"] for s in doc["steps"]] == ["look", "decide", "restart"]

    look = steps["look"]
    assert look["kind"] == "ssh" and look["effect"] == "read" and look["status"] == "ok"
    assert sorted(look["targets"]) == ["h1", "h2"] and look["outputs"] == {"load": 7}
    assert sorted(look["hosts"]) == ["h1", "h2"]
    for h in look["hosts"].values():
        assert h["status"] == "ok" and h["exit_code"] == 0
        assert "token=***" in h["stdout"] and SECRET not in h["stdout"]
    assert look["duration"] >= 0

    assert steps["decide"]["kind"] == "choose" and steps["decide"]["status"] == "ok"
    restart = steps["restart"]
    assert restart["effect"] == "write" and restart["kind"] == "shell" and restart["status"] == "declined"
    assert restart["decision"]["approved"] is False and restart["decision"]["how"] == "no-terminal"
    assert restart["decision"]["by"]
    assert [(d["step"], d["choice"]) for d in doc["decisions"]] == [("restart", "declined")]

    # the same truth from the log afterwards
    shown = main("audit", "show", doc["run_id"], "--format", "result")
    assert shown.returncode == 0 and json.loads(shown.stdout) == doc
    raw = main("audit", "show", doc["run_id"], "--format", "json")  # the raw records, as before
    assert isinstance(json.loads(raw.stdout), list)


def test_run_format_json_approved_write_succeeds(write, main, result_schema):
    p = book(write, """
  mitigate:
    - id: fix
      shell: "echo fixed"
      outputs:
        word: {regex: '(\\w+)'}
  verify:
    - id: done
      end: "all good"
""")
    r = main("run", p, "--yes", "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, result_schema)
    assert doc["status"] == "resolved" and doc["exit_code"] == 0 and doc["message"] == "all good"
    fix = doc["steps"][0]
    assert fix["status"] == "ok" and fix["effect"] == "write" and fix["outputs"] == {"word": "fixed"}
    assert fix["hosts"] is None and fix["decision"]["how"] == "--yes" and fix["decision"]["choice"] == "approved"


def test_resume_format_json(write, main, result_schema):
    p = book(write, """
  mitigate:
    - id: fix
      shell: "echo fixed"
  verify:
    - id: done
      end: "all good"
""")
    first = main("run", p, "--format", "json")  # declined: no terminal, no --yes
    run_id = json.loads(first.stdout)["run_id"]
    r = main("resume", run_id, "--yes", "--format", "json")
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, result_schema)
    assert doc["run_id"] == run_id and doc["exit_code"] == r.returncode == 0 and doc["status"] == "resolved"
    fix = [s for s in doc["steps"] if s["id"] == "fix"]
    assert [s["status"] for s in fix] == ["declined", "ok"] and fix[1]["decision"]["how"] == "--yes"


def test_schema_result_alone(main):
    r = main("schema", "--result", "--markdown")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
