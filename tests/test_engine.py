"""The live engine, end to end through the CLI code run in-process (the `main` fixture): real
local commands, a real audit log; signals go to a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from conftest import alive, book
from runbook import audit


def records(audit_dir: Path) -> list[dict]:
    return list(audit.read_records(audit_dir / "audit.jsonl"))


rb = book  # write a runbook file


def test_read_steps_run_and_outputs_flow_to_later_steps(write, main, tmp_path, audit_dir):
    p = rb(write, """
  diagnose:
    - id: count
      shell: "echo 'connections: 142'"
      readonly: true
      outputs:
        n: {regex: 'connections: (\\d+)', type: integer}
    - id: data
      shell: "echo '{\\"pods\\": [{\\"name\\": \\"api-1\\"}]}'"
      readonly: true
      outputs:
        first: {json: pods.0.name}
    - id: decide
      choose:
        - when: "steps.count.outputs.n > 140"
          goto: high
        - default: low
    - id: low
      end: "low"
    - id: high
      shell: "echo n={{ steps.count.outputs.n }} first={{ steps.data.outputs.first }} > {{ params.out }}"
      readonly: true
    - id: done
      end: "high {{ steps.count.outputs.n }}"
""", head="params:\n  out: {type: string}\n")
    out = tmp_path / "result.txt"
    r = main("run", p, "-p", f"out={out}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.read_text() == "n=142 first=api-1\n"
    assert "high 142" in r.stdout
    types = [x["type"] for x in records(audit_dir)]
    assert types[0] == "run_started" and types[-1] == "run_finished"


def test_write_step_without_terminal_and_without_yes_stops_before_it(write, main, tmp_path, audit_dir):
    marker = tmp_path / "written"
    p = rb(write, f"""
  diagnose:
    - id: look
      shell: "echo looked > {tmp_path / 'looked'}"
      readonly: true
  mitigate:
    - id: fix
      shell: "touch {marker}"
      timeout: 10s
  verify:
    - id: check
      shell: "test -f {marker}"
      readonly: true
""")
    r = main("run", p)
    assert r.returncode == 3, r.stdout + r.stderr
    assert not marker.exists() and (tmp_path / "looked").exists()
    assert "--yes" in r.stdout
    recs = records(audit_dir)
    decision = next(x for x in recs if x["type"] == "decision")
    assert decision["approved"] is False and decision["how"] == "no-terminal"
    assert not any(x["type"] == "step_intent" and x["step"] == "fix" for x in recs)
    assert recs[-1]["type"] == "run_finished" and recs[-1]["exit_code"] == 3

    r = main("run", p, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert marker.exists()
    recs = records(audit_dir)
    # write-ahead: the decision and the intent are logged before the result
    fix = [x["type"] for x in recs if x.get("step") == "fix" and x["run"] == recs[-1]["run"]]
    assert fix == ["decision", "step_intent", "step_process", "step_result"]


def test_failure_without_handler_exits_1_and_on_failure_branches(write, main):
    p = rb(write, """
  diagnose:
    - id: boom
      shell: "echo oops >&2; exit 4"
      readonly: true
""")
    r = main("run", p)
    assert r.returncode == 1
    assert "step 'boom' failed: exit code 4" in r.stdout
    p = rb(write, """
  diagnose:
    - id: boom
      shell: "exit 4"
      readonly: true
      on_failure: handle
    - id: skipped
      shell: "exit 9"
      readonly: true
    - id: handle
      end: {status: escalated, message: "handled {{ steps.boom.exit_code }}"}
""", name="t2.yaml")
    r = main("run", p)
    assert r.returncode == 1 and "handled 4" in r.stdout and "escalated" in r.stdout
    p = rb(write, """
  diagnose:
    - id: boom
      shell: "exit 4"
      readonly: true
      on_failure: continue
    - id: after
      shell: "echo after-ran"
      readonly: true
""", name="t3.yaml")
    r = main("run", p)
    assert r.returncode == 0 and "after-ran" in r.stdout


def test_retries_with_delay(write, main, tmp_path):
    counter = tmp_path / "n"
    p = rb(write, f"""
  diagnose:
    - id: flaky
      shell: "n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; test $n -ge 3"
      readonly: true
      retries: 3
      retry_delay: 0.1s
""")
    r = main("run", p)
    assert r.returncode == 0, r.stdout
    assert counter.read_text().strip() == "3"
    counter.write_text("-10")
    r = main("run", p)
    assert r.returncode == 1 and counter.read_text().strip() == "-6"  # 1 try + 3 retries


def test_until_polls_until_the_condition_holds_and_times_out(write, main, tmp_path):
    counter = tmp_path / "n"
    p = rb(write, f"""
  verify:
    - id: poll
      shell: "n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; echo $n"
      readonly: true
      outputs:
        n: {{regex: '(\\d+)', type: integer}}
      until: "outputs.n >= 3"
      every: 0.1s
      timeout: 10s
""")
    r = main("run", p)
    assert r.returncode == 0, r.stdout
    assert counter.read_text().strip() == "3"
    p = rb(write, """
  verify:
    - id: never
      shell: "echo 1"
      readonly: true
      until: "stdout.strip() == '2'"
      every: 0.2s
      timeout: 1s
""", name="t2.yaml")
    started = time.monotonic()
    r = main("run", p)
    took = time.monotonic() - started
    assert r.returncode == 1
    assert "condition 'stdout.strip() == '2'' not met after 1s" in r.stdout
    assert took < 8


def test_timeout_kills_the_whole_process_group(write, main, tmp_path):
    pidfile = tmp_path / "pid"
    p = rb(write, f"""
  diagnose:
    - id: hang
      shell: "sleep 60 & echo $! > {pidfile}; wait"
      readonly: true
      timeout: 1s
""")
    started = time.monotonic()
    r = main("run", p)
    assert r.returncode == 1
    assert time.monotonic() - started < 10
    assert "timed out after 1s" in r.stdout
    pid = int(pidfile.read_text())
    time.sleep(0.2)
    assert not alive(pid)


def test_parameter_injection_runs_nothing(write, main, tmp_path):
    pwned = tmp_path / "pwned"
    p = rb(write, """
  diagnose:
    - id: echo
      shell: "echo {{ params.service }}"
      readonly: true
""", head="params:\n  service: {type: string}\n")
    value = f"x; touch {pwned}"
    r = main("run", p, "-p", f"service={value}")
    assert r.returncode == 0, r.stdout
    assert not pwned.exists()
    assert value in r.stdout
    for evil in (f"$(touch {pwned})", f"`touch {pwned}`", f"x' ; touch {pwned}; echo '", f"a\ntouch {pwned}"):
        assert main("run", p, "-p", f"service={evil}").returncode == 0
        assert not pwned.exists(), evil


def test_secrets_are_masked_and_never_in_argument_lists(write, main, tmp_path, audit_dir):
    seen = tmp_path / "seen"
    p = rb(write, f"""
  diagnose:
    - id: use
      shell: "tr '\\\\0' ' ' < /proc/$$/cmdline > {tmp_path / 'argv'}; printf %s {{{{ params.token }}}} > {seen}; echo token={{{{ params.token }}}}"
      readonly: true
    - id: fail
      shell: "echo {{{{ params.token }}}} >&2; exit 1"
      readonly: true
""", head="params:\n  token: {secret: true}\n")
    r = main("run", p, "-p", "token=hunter2-xyz")
    assert seen.read_text() == "hunter2-xyz"  # the command did get the secret
    assert "hunter2-xyz" not in (tmp_path / "argv").read_text()  # but not through its argv
    assert "hunter2-xyz" not in r.stdout + r.stderr
    assert "token=***" in r.stdout
    assert b"hunter2-xyz" not in (audit_dir / "audit.jsonl").read_bytes()
    d = main("run", p, "-p", "token=hunter2-xyz", "--dry-run", "--format", "json")
    assert "hunter2-xyz" not in d.stdout and d.returncode == 0


def test_ask_and_manual_without_terminal_use_answers(write, main):
    p = rb(write, """
  diagnose:
    - id: region
      ask: {prompt: "Which region?", choices: [eu, us]}
    - id: look
      manual: "Look at the {{ steps.region.answer }} dashboard"
    - id: done
      end: "region {{ steps.region.answer }}"
""")
    r = main("run", p)
    assert r.returncode == 3 and "--answer region=VALUE (one of: eu, us)" in r.stdout
    r = main("run", p, "--answer", "region=us")
    assert r.returncode == 3 and "--answer look=done" in r.stdout
    r = main("run", p, "--answer", "region=us", "--answer", "look=done")
    assert r.returncode == 0 and "region us" in r.stdout
    r = main("run", p, "--answer", "region=mars", "--answer", "look=done")
    assert r.returncode == 1 and "not one of eu, us" in r.stdout


def test_wait_end_and_max_visits(write, main, tmp_path):
    counter = tmp_path / "n"
    p = rb(write, f"""
  diagnose:
    - id: settle
      wait: 0.05s
    - id: again
      shell: "echo x >> {counter}; exit 1"
      readonly: true
      max_visits: 3
      on_failure: settle
""")
    r = main("run", p)
    assert r.returncode == 1
    assert counter.read_text().count("x") == 3
    assert "already ran 3 times" in r.stdout


def test_missing_and_bad_parameters_are_one_line(write, main):
    p = rb(write, """
  diagnose:
    - id: a
      shell: "echo {{ params.n }}"
      readonly: true
""", head="params:\n  n: {type: integer, required: true}\n")
    for args, msg in (([], "missing required parameter 'n': pass -p n=VALUE"),
                      (["-p", "n=ten"], "parameter 'n': expected an integer, got 'ten'"),
                      (["-p", "m=1"], "has no parameter 'm' (parameters: n)"),
                      (["-p", "oops"], "-p takes key=value")):
        r = main("run", p, *args)
        assert r.returncode in (1, 2) and msg in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_ctrl_c_stops_the_command_and_the_log_says_interrupted(write, tmp_path, audit_dir):
    from conftest import ROOT

    pidfile = tmp_path / "pid"
    p = rb(write, f"""
  diagnose:
    - id: hang
      shell: "sleep 60 & echo $! > {pidfile}; wait"
      readonly: true
""")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "runbook", "run", str(p)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, (out, err)
    assert b"Traceback" not in err
    recs = records(audit_dir)
    assert recs[-1]["type"] == "run_finished" and recs[-1]["status"] == "interrupted" and recs[-1]["exit_code"] == 130
    time.sleep(0.2)
    assert not alive(int(pidfile.read_text()))
    assert audit.verify(audit_dir / "audit.jsonl").ok


def test_sigterm_is_handled_like_ctrl_c(write, tmp_path, audit_dir):
    from conftest import ROOT

    p = rb(write, """
  diagnose:
    - id: hang
      shell: "sleep 60"
      readonly: true
""")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "runbook", "run", str(p)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not any(r["type"] == "step_intent" for r in (records(audit_dir) if (audit_dir / "audit.jsonl").exists() else [])):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.terminate()
    proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert records(audit_dir)[-1]["status"] == "interrupted"


def test_audit_records_of_a_run(write, main, audit_dir):
    p = rb(write, """
  diagnose:
    - id: hello
      shell: "echo hello"
      readonly: true
""", head="params:\n  who: {default: me}\n")
    assert main("run", p).returncode == 0
    recs = records(audit_dir)
    start = recs[0]
    import hashlib

    assert start["type"] == "run_started" and start["runbook"] == "t" and start["dry_run"] is False
    assert start["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert start["params"] == {"who": "me"} and start["who"] and start["host"]
    result = next(x for x in recs if x["type"] == "step_result")
    assert result["status"] == "ok" and result["exit_code"] == 0 and "hello" in result["output_excerpt"]
    assert result["output_sha256"] == hashlib.sha256(b"hello\n").hexdigest()
    # dry-runs are recorded too
    assert main("run", p, "--dry-run").returncode == 0
    last = [x for x in records(audit_dir) if x["run"] == records(audit_dir)[-1]["run"]]
    assert last[0]["dry_run"] is True and last[-1]["type"] == "run_finished"
    assert audit.verify(audit_dir / "audit.jsonl").ok


def test_a_condition_that_cannot_be_evaluated_fails_the_step_and_follows_on_failure(write, main):
    p = rb(write, """
  diagnose:
    - id: probe
      shell: "echo abc"
      readonly: true
      outputs:
        v: {regex: '(\\w+)'}
    - id: decide
      choose:
        - when: "steps.probe.outputs.v > 3"
          goto: high
      on_failure: handled
    - id: high
      end: high
    - id: handled
      end: {status: escalated, message: "condition failed, handled"}
""")
    r = main("run", p)
    assert r.returncode == 1 and "condition failed, handled" in r.stdout


def test_until_sees_outputs_and_decides_even_on_a_failing_command(write, main, tmp_path):
    counter = tmp_path / "n"
    p = rb(write, f"""
  verify:
    - id: poll
      shell: "n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; echo $((n+1))"
      readonly: true
      outputs:
        n: {{regex: '(\\d+)', type: integer}}
      until: "n >= 2"
      every: 0.05s
      timeout: 10s
    - id: down
      shell: "exit 3"
      readonly: true
      until: "exit_code == 3"
      every: 0.05s
      timeout: 5s
""")
    r = main("run", p)
    assert r.returncode == 0, r.stdout
    assert counter.read_text().strip() == "2"


def test_dry_run_renders_arithmetic_on_run_time_values(write, main):
    p = rb(write, """
  diagnose:
    - id: probe
      shell: "echo 3"
      readonly: true
      outputs:
        n: {regex: '(\\d+)', type: integer}
  mitigate:
    - id: scale
      shell: "kubectl scale deployment/api --replicas={{ steps.probe.outputs.n * 2 }}"
      timeout: 1m
  verify:
    - id: ok
      end: done
""")
    r = main("run", p, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "--replicas=<steps.probe.outputs.n * 2>" in r.stdout


def test_a_last_check_cut_short_by_the_timeout_keeps_the_reason_before_it(write, main, tmp_path):
    """The final poll can start with almost no time left; "did not finish" would hide why the
    condition never held. The reason of the last check that ran its course is kept."""
    marker = tmp_path / "seen"
    p = book(write, f"""
  verify:
    - id: healthy
      shell: "if [ -e {marker} ]; then sleep 30; else touch {marker}; echo 'replica lag 42s' >&2; exit 3; fi"
      readonly: true
      until: "exit_code == 0"
      every: 0.1s
      timeout: 1.5s
""")
    r = main("run", p)
    assert r.returncode == 1
    assert "not met after 1.5s (2 checks); last: " in r.stdout, r.stdout
    assert "(the check after it was cut short by the step's timeout)" in r.stdout, r.stdout
