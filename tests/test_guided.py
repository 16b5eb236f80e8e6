"""Guided mode, --step/--start-at/--stage, Ctrl-C and resume, driven through a
real pseudo-terminal (pexpect) and checked against the screen and the audit log."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pexpect
import pytest

from conftest import ROOT, alive


def spawn(args, cwd, env=None, cols=160, rows=50):
    """The CLI on a pseudo-terminal; TERM=dumb keeps escape codes out of the
    screen text the tests match (the colour tests set TERM themselves)."""
    e = dict(os.environ, PYTHONPATH=str(ROOT), TERM="dumb")
    e.pop("COLUMNS", None)
    e.pop("NO_COLOR", None)
    if env:
        e.update(env)
    return pexpect.spawn(sys.executable, ["-m", "runbook", *map(str, args)], cwd=str(cwd), env=e, encoding="utf-8",
                         timeout=30, dimensions=(rows, cols))


def finish(child):
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus if child.exitstatus is not None else -child.signalstatus


def records(audit_dir):
    return [json.loads(line) for line in (audit_dir / "audit.jsonl").read_text().splitlines()]


def run_id(audit_dir):
    return next(r["run"] for r in records(audit_dir) if r["type"] == "run_started")


def verify(cli):
    r = cli("audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


BOOK = """\
name: pool
title: Connection pool exhausted
severity: SEV2
escalation:
  - {{after: 15m, to: secondary on-call}}
  - {{after: 30m, to: engineering manager}}
params:
  limit: {{type: integer, default: 140}}
stages:
  diagnose:
    - id: count
      description: How many connections are open
      checks: connections to the database
      normal: below 100
      if_failed: check that the database answers at all
      shell: "echo one; echo two; echo 152"
      readonly: true
      outputs:
        n: {{regex: '^(\\d+)$', type: integer}}
    - id: decide
      choose:
        - when: "steps.count.outputs.n > params.limit"
          goto: kill-idle
        - default: done
  mitigate:
    - id: kill-idle
      title: Terminate idle connections
      shell: "echo killed >> {tmp}/killed"
      timeout: 10s
  verify:
    - id: done
      shell: "echo checked >> {tmp}/checked"
      readonly: true
"""


@pytest.fixture
def pool(tmp_path):
    p = tmp_path / "pool.yaml"
    p.write_text(BOOK.format(tmp=tmp_path))
    return p


def test_guided_run_header_cards_streamed_output_and_branch_reason(pool, tmp_path, audit_dir, cli):
    child = spawn(["run", pool], tmp_path)
    child.expect("Connection pool exhausted")
    child.expect("SEV2")
    child.expect("incident clock 00:00:0")
    child.expect("secondary on-call after 00:15:00")
    child.expect("How many connections are open")
    child.expect("normal:.*below 100")
    child.expect("│ one")
    child.expect("│ 152")
    child.expect("ok")
    child.expect(r"→ kill-idle.* because steps\.count\.outputs\.n > params\.limit\s+\(steps\.count\.outputs\.n = 152, params\.limit = 140\)")
    child.expect("Run it\\?")
    child.sendline("d")  # details first, then run
    child.expect("timeout:")
    child.expect("Run it\\?")
    child.sendline("r")
    child.expect("run completed")
    assert finish(child) == 0
    assert (tmp_path / "killed").read_text() == "killed\n"
    decision = next(r for r in records(audit_dir) if r["type"] == "decision")
    assert (decision["step"], decision["approved"], decision["how"], decision["choice"]) == ("kill-idle", True, "prompt", "run")
    assert decision["by"]
    verify(cli)


def test_skip_a_write_step_goes_on_and_is_audited(pool, tmp_path, audit_dir, cli):
    child = spawn(["run", pool], tmp_path)
    child.expect("Run it\\?")
    child.sendline("skip")
    child.expect("skipped")
    child.expect("run completed")
    assert finish(child) == 0
    assert not (tmp_path / "killed").exists()
    assert (tmp_path / "checked").exists()
    recs = records(audit_dir)
    decision = next(r for r in recs if r["type"] == "decision")
    assert (decision["approved"], decision["choice"]) == (False, "skip")
    result = next(r for r in recs if r["type"] == "step_result" and r["step"] == "kill-idle")
    assert result["status"] == "skipped"
    verify(cli)


def test_abort_at_a_write_step(pool, tmp_path, audit_dir, cli):
    child = spawn(["run", pool], tmp_path)
    child.expect("Run it\\?")
    child.sendline("a")
    child.expect("declined")
    assert finish(child) == 3
    assert not (tmp_path / "killed").exists() and not (tmp_path / "checked").exists()
    verify(cli)


FLAKY = """\
name: flaky
title: Flaky
stages:
  diagnose:
    - id: probe
      shell: "n=$(cat {tmp}/n 2>/dev/null || echo 0); echo $((n+1)) > {tmp}/n; test $n -ge 1"
      readonly: true
      on_failure: page
    - id: after
      shell: "touch {tmp}/after"
      readonly: true
      next: end
    - id: page
      shell: "touch {tmp}/paged"
      readonly: true
    - id: end
      end: resolved
"""


def test_after_a_failure_the_operator_retries(tmp_path, audit_dir, cli):
    p = tmp_path / "flaky.yaml"
    p.write_text(FLAKY.format(tmp=tmp_path))
    child = spawn(["run", p], tmp_path)
    child.expect("step probe failed")
    child.expect("What now\\?.*ollow on_failure \\(page\\)")
    child.sendline("r")
    child.expect("run resolved")
    assert finish(child) == 0
    assert (tmp_path / "after").exists() and not (tmp_path / "paged").exists()
    how = [r["how"] for r in records(audit_dir) if r["type"] == "decision"]
    assert how == ["retry"]
    # the same failure, and the operator follows on_failure instead
    (tmp_path / "n").unlink()
    (tmp_path / "after").unlink()
    child = spawn(["run", p], tmp_path)
    child.expect("What now\\?")
    child.sendline("f")
    child.expect("run resolved")
    assert finish(child) == 0
    assert (tmp_path / "paged").exists() and not (tmp_path / "after").exists()
    verify(cli)


def test_step_mode_asks_before_read_steps_too(pool, tmp_path, audit_dir):
    child = spawn(["run", pool, "--step"], tmp_path)
    child.expect("Step count\\?")
    child.sendline("s")  # skip the first read step
    child.expect("Step decide\\?")
    child.sendline("c")  # continue: stop asking for read steps
    # the choose step cannot read a skipped step's outputs: it fails, and the operator aborts
    child.expect("What now\\?")
    child.sendline("a")
    assert finish(child) == 1
    decisions = [(r["step"], r.get("choice") or r["how"]) for r in records(audit_dir) if r["type"] == "decision"]
    assert decisions[:2] == [("count", "skip"), ("decide", "continue")]
    assert not (tmp_path / "killed").exists()


def test_step_mode_needs_a_terminal(pool, cli):
    r = cli("run", pool, "--step")
    assert r.returncode == 2 and "--step asks before every step: it needs a terminal" in r.stderr


def test_start_at_and_stage(pool, tmp_path, audit_dir, cli):
    r = cli("run", pool, "--stage", "verify")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "checked").exists() and "count" not in [x.get("step") for x in records(audit_dir)]
    (tmp_path / "checked").unlink()
    r = cli("run", pool, "--stage", "diagnose", "--yes")
    assert r.returncode == 0, r.stderr
    assert "the diagnose stage is done (next: mitigate step 'kill-idle'; not run)" in r.stdout
    assert not (tmp_path / "killed").exists()
    r = cli("run", pool, "--start-at", "kill-idle", "--yes")
    assert r.returncode == 0 and (tmp_path / "killed").exists() and (tmp_path / "checked").exists()
    r = cli("run", pool, "--start-at", "kil-idle")
    assert r.returncode == 2 and "--start-at kil-idle: no such step in pool (did you mean 'kill-idle'?)" in r.stderr


LONG = """\
name: long
title: Long
params:
  token: {{type: string, secret: true, required: true}}
stages:
  diagnose:
    - id: first
      shell: "echo one >> {tmp}/ran; echo value-42"
      readonly: true
      outputs:
        v: {{regex: 'value-(\\d+)'}}
  mitigate:
    - id: slow
      shell: "echo slow >> {tmp}/ran; echo $$ > {tmp}/pid; sleep 30; echo slow-done >> {tmp}/ran"
      timeout: 1m
  verify:
    - id: last
      shell: "echo last-{{{{ steps.first.outputs.v }}}} >> {tmp}/ran"
      readonly: true
"""


# a read step that runs long (Ctrl-C tests): interrupted, it asks the operator how to go on
SLOW_READ = LONG.replace("  mitigate:\n", "").replace("      timeout: 1m\n  verify:\n", "      readonly: true\n")


def _wait_file(path, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_ctrl_c_during_a_step_asks_then_stops_the_run(tmp_path, audit_dir, cli):
    p = tmp_path / "long.yaml"
    p.write_text(SLOW_READ.format(tmp=tmp_path))
    child = spawn(["run", p], tmp_path, env={"RUNBOOK_PARAM_TOKEN": "s3cret-tok"})
    pid = int(_wait_file(tmp_path / "pid"))
    child.sendintr()
    child.expect("step slow was interrupted")
    child.expect("Stop the whole run, or go on\\?")
    assert not alive(pid)  # the step's command was stopped with it
    child.sendline("a")
    child.expect("run interrupted")
    assert finish(child) == 130
    recs = records(audit_dir)
    slow = next(r for r in recs if r["type"] == "step_result" and r["step"] == "slow")
    assert slow["status"] == "interrupted"
    assert recs[-1]["type"] == "run_finished" and recs[-1]["status"] == "interrupted"
    verify(cli)


def test_second_ctrl_c_stops_at_once(tmp_path, audit_dir, cli):
    p = tmp_path / "long.yaml"
    p.write_text(SLOW_READ.format(tmp=tmp_path))
    child = spawn(["run", p], tmp_path, env={"RUNBOOK_PARAM_TOKEN": "x"})
    _wait_file(tmp_path / "pid")
    child.sendintr()
    child.expect("Stop the whole run, or go on\\?")
    child.sendintr()
    assert finish(child) == 130
    assert records(audit_dir)[-1]["status"] == "interrupted"
    verify(cli)


def test_sigkill_during_a_step_then_resume(tmp_path, audit_dir, cli):
    """The CLI surface of a crash: the step dies with runbook; resume asks for the secret
    again and, in a terminal, whether the write step in doubt is done (the logic: test_session.py)."""
    p = tmp_path / "long.yaml"
    p.write_text(LONG.format(tmp=tmp_path))
    child = spawn(["run", p, "--yes"], tmp_path, env={"RUNBOOK_PARAM_TOKEN": "s3cret-tok"})
    pid = int(_wait_file(tmp_path / "pid"))
    os.kill(child.pid, signal.SIGKILL)  # the runbook process dies; its step goes with it
    child.expect(pexpect.EOF)
    child.close()
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "the step's command outlived runbook"
    rid = run_id(audit_dir)
    listed = cli("audit", "list")
    assert "in doubt" in listed.stdout
    # without a terminal, secret parameters come from the environment again
    r = cli("resume", rid)
    assert r.returncode == 2  # a usage error and "missing required parameter 'token': set RUNBOOK_PARAM_TOKEN=VALUE" in r.stderr
    # and without a decision about the step in doubt, resume refuses
    r = cli("resume", rid, env={"RUNBOOK_PARAM_TOKEN": "s3cret-tok"})
    assert r.returncode == 3 and "step 'slow' of run" in r.stderr and "--mark-done or --rerun" in r.stderr
    # in a terminal: the secret is asked again, the operator marks the step done
    child = spawn(["resume", rid[:12], "--yes"], tmp_path)
    child.expect("token \\(secret, not echoed\\)")
    child.sendline("s3cret-tok")
    child.expect("step slow is in doubt")
    child.expect("Is it done\\?")
    child.sendline("m")
    child.expect("run completed")
    assert finish(child) == 0
    ran = (tmp_path / "ran").read_text().split()
    assert ran == ["one", "slow", "last-42"]  # first not run again; its output restored for last
    recs = [r for r in records(audit_dir) if r.get("run") == rid]
    types = [r["type"] for r in recs]
    assert types.index("resumed") < max(i for i, t in enumerate(types) if t == "decision")  # resumed, then the decision
    d = [r for r in recs if r["type"] == "decision"][-1]
    assert (d["step"], d["how"]) == ("slow", "mark-done")
    assert "s3cret-tok" not in (audit_dir / "audit.jsonl").read_text()
    verify(cli)
    # resuming a finished run says so
    r = cli("resume", rid)
    assert r.returncode == 0 and "already finished: completed" in r.stdout


def test_resume_after_a_declined_step_asks_again(pool, tmp_path, audit_dir, cli):
    r = cli("run", pool)  # no terminal: stops before the write step
    assert r.returncode == 3
    rid = run_id(audit_dir)
    r = cli("resume", rid, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "killed").exists() and (tmp_path / "checked").exists()
    kinds = [(x["type"], x.get("step")) for x in records(audit_dir) if x["type"] == "step_intent"]
    assert kinds.count(("step_intent", "count")) == 1  # diagnose was not run again
    verify(cli)


def test_escalation_policy_from_the_alert_time(pool, tmp_path, audit_dir, cli):
    from datetime import datetime, timedelta, timezone

    fired = (datetime.now(timezone.utc) - timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    (tmp_path / "a.json").write_text(json.dumps({"alerts": [{"status": "firing", "labels": {"alertname": "X"},
                                                               "startsAt": fired, "fingerprint": "f1"}]}))
    child = spawn(["run", pool, "--alert", tmp_path / "a.json"], tmp_path)
    child.expect("incident clock 00:20:0")
    child.expect(r"escalate\s+to\s+secondary\s+on-call")
    child.expect("Run it\\?")
    child.sendline("r")
    child.expect("run completed")
    assert finish(child) == 0
    assert "engineering manager" not in child.before
    due = [r for r in records(audit_dir) if r["type"] == "escalation_due"]
    assert [(d["to"], d["after"]) for d in due] == [("secondary on-call", 900.0)]


@pytest.mark.parametrize("no_color,cols", [(True, 160), (False, 40)])
def test_no_color_and_narrow_terminals(pool, tmp_path, no_color, cols):
    env = {"TERM": "xterm-256color", **({"NO_COLOR": "1"} if no_color else {})}
    child = spawn(["run", pool], tmp_path, env=env, cols=cols)
    child.expect("Run it\\?")
    screen = child.before
    child.sendline("r")
    assert finish(child) == 0
    screen += child.before
    colours = [code for code in ("\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[34m", "\x1b[35m", "\x1b[36m") if code in screen]
    assert not colours if no_color else colours
    assert "Traceback" not in screen and "run completed" in screen
    if cols == 40:
        plain = _plain(screen).splitlines()
        # boxes and headers fit the terminal; commands stay whole on one line (the terminal wraps them) so they copy
        assert max(len(line) for line in plain if "╭" in line or "╰" in line) <= 40
        assert f"  $ echo killed >> {tmp_path}/killed" in plain


def _plain(text):
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_not_a_terminal_plain_lines(pool, cli):
    r = cli("run", pool, "--yes")
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stdout and "╭" not in r.stdout and "│" not in r.stdout
    assert "  | 152" in r.stdout  # output still streams, as plain lines
    assert "→ kill-idle because steps.count.outputs.n > params.limit" in r.stdout


# --- resume: where a run goes on (each case from a review of the first version) ---

def test_retry_does_not_count_against_max_visits(tmp_path, audit_dir):
    p = tmp_path / "flaky.yaml"
    p.write_text(FLAKY.format(tmp=tmp_path).replace("      on_failure: page\n", "      on_failure: page\n      max_visits: 1\n"))
    child = spawn(["run", p], tmp_path)
    child.expect("What now\\?")
    child.sendline("r")
    child.expect("run resolved")
    assert finish(child) == 0


def test_stage_whose_failure_path_leaves_it_fails(tmp_path, cli):
    p = tmp_path / "flaky.yaml"
    p.write_text(FLAKY.format(tmp=tmp_path).replace("    - id: page\n", "  verify:\n    - id: page\n")
                 .replace("    - id: end\n", "    - id: end\n").replace("    - id: after\n", "    - id: after\n"))
    (tmp_path / "n").write_text("0")  # the probe fails (n == 0)
    r = cli("run", p, "--stage", "diagnose")
    assert r.returncode == 1 and "the diagnose stage ended with a failure" in r.stdout


def test_escalation_is_announced_without_an_alert_too(tmp_path, audit_dir, cli):
    p = tmp_path / "esc.yaml"
    p.write_text("""\
name: esc
title: E
escalation: [{after: 1s, to: secondary on-call}]
stages:
  diagnose:
    - id: slow
      wait: 1.2s
    - id: next
      wait: 0s
""")
    r = cli("run", p)
    assert r.returncode == 0 and "escalate to secondary on-call" in r.stdout
    assert [x["to"] for x in records(audit_dir) if x["type"] == "escalation_due"] == ["secondary on-call"]


def test_branch_reason_never_shows_part_of_a_secret(tmp_path, audit_dir, cli):
    p = tmp_path / "leak.yaml"
    p.write_text("""\
name: leak
title: L
params:
  token: {type: string, secret: true, required: true}
stages:
  diagnose:
    - id: x
      shell: "echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{{ params.token }}"
      readonly: true
    - id: pick
      choose:
        - when: "'x' in steps.x.stdout"
          goto: done
        - default: done
    - id: done
      end: resolved
""")
    r = cli("run", p, env={"RUNBOOK_PARAM_TOKEN": "SuperSecretValue123"})
    assert r.returncode == 0, r.stderr
    log = (audit_dir / "audit.jsonl").read_text()
    for part in ("SuperSecr", "Value123"):
        assert part not in r.stdout and part not in log


def test_last_output_line_without_a_newline_is_shown(tmp_path):
    p = tmp_path / "nl.yaml"
    p.write_text("name: nl\ntitle: N\nstages:\n  diagnose:\n    - id: x\n      shell: \"printf 'a\\\\nLAST'\"\n      readonly: true\n")
    child = spawn(["run", p], tmp_path)
    child.expect("│ a")
    child.expect("│ LAST")
    assert finish(child) == 0


def test_lock_released_while_another_process_waits_on_the_old_file(tmp_path):
    from runbook.alert import RunLock

    a = RunLock(tmp_path, "alert-x")
    assert a.acquire("r1", "alice", "t0") is None
    stale = os.open(a.path, os.O_RDWR)  # a second process opened the file before the holder released it
    a.release()
    b = RunLock(tmp_path, "alert-x")
    assert b.acquire("r2", "bob", "t1") is None
    import fcntl

    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it can lock the removed file ...
    c = RunLock(tmp_path, "alert-x")
    with pytest.raises(Exception, match="already being handled: run r2 started by bob"):
        c.acquire("r3", "carol", "t2")  # ... but the lock that counts is the file on disk, held by b
    os.close(stale)
    b.release()


def test_malformed_alert_payloads_are_one_line(tmp_path, cli, write):
    write("playbooks/x.yaml", "name: x\ntitle: X\nalerts: [X]\nstages:\n  diagnose:\n    - id: a\n      wait: 0s\n")
    for alert in ({"labels": ["alertname", "X"]}, {"labels": {"alertname": "X"}, "annotations": "runbook: x"},
                  {"labels": {"alertname": "X"}, "startsAt": 12345}):
        (tmp_path / "a.json").write_text(json.dumps({"alerts": [alert]}))
        r = cli("run", "--alert", tmp_path / "a.json", "--dry-run")
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
        assert r.returncode in (0, 2), r.stderr


def test_report_says_why_a_branch_was_taken(pool, cli):
    assert cli("run", pool, "--yes").returncode == 0
    r = cli("report", "last")
    assert r.returncode == 0, r.stderr
    assert "went to `kill-idle` because `steps.count.outputs.n > params.limit  (steps.count.outputs.n = 152" in r.stdout


# --- in-process: the guided screen (a ConsoleUI on a recorded terminal) and the engine with a
# scripted operator (FakeUI).  No pseudo-terminal: the prompts read a scripted standard input.


def guided(path, answers, monkeypatch, **kw):
    """Run ``path`` in guided mode in this process: the real ConsoleUI drawing on a recorded
    terminal, the operator's answers typed one a line.  Returns (outcome, screen text)."""
    import io

    from rich.console import Console

    from runbook import session, spec
    from runbook.ui import ConsoleUI

    ui = ConsoleUI()
    screen = io.StringIO()
    ui.c = Console(file=screen, force_terminal=True, color_system=None, width=160, highlight=False)
    ui.fancy = True
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(a + "\n" for a in answers)))
    out = session.start(session.RunRequest(runbook=spec.find(str(path), []), interactive=True, **kw), ui)
    return out, screen.getvalue()


def engine_run(path, ui, **kw):
    from runbook import session, spec

    return session.start(session.RunRequest(runbook=spec.find(str(path), []), interactive=True, **kw), ui)


DETAILS = """\
name: det
title: Details
params:
  token: {{type: string, secret: true, required: true}}
stages:
  mitigate:
    - id: restart
      shell:
        command: "curl -sf -H Authorization:{{{{ params.token }}}} -X POST http://127.0.0.1:9/restart; echo done >> {tmp}/restarted"
        env: {{MODE: fast}}
      timeout: 45s
    - id: notify-team
      wait: 0s
  verify:
    - id: error-rate-ok
      checks: the API error rate is back under 1%
      normal: below 0.01
      shell: "echo 0.002"
      readonly: true
      outputs:
        rate: {{regex: '([0-9.]+)', type: number}}
      until: "outputs.rate < 0.01"
      every: 1s
      timeout: 10m
"""


def test_details_at_a_write_prompt_are_readable_and_complete(tmp_path, monkeypatch, audit_dir):
    p = tmp_path / "det.yaml"
    p.write_text(DETAILS.format(tmp=tmp_path))
    monkeypatch.setenv("RUNBOOK_PARAM_TOKEN", "tok-SECRET-4711")
    out, screen = guided(p, ["d", "r"], monkeypatch)
    assert out.exit_code == 0, screen
    details = screen.split("[d]etails / [a]bort:", 1)[1].split("Run it?", 1)[0]
    assert '"shown"' not in details and "null" not in details and '": ' not in details  # text, not a JSON dump
    lines = [line.strip() for line in details.splitlines()]
    command = next(line for line in lines if line.startswith("command:"))
    assert command.endswith(f'Authorization:"${{RUNBOOK_SECRET_TOKEN}}" -X POST http://127.0.0.1:9/restart; '
                            f"echo done >> {tmp_path}/restarted")  # the command whole, as it is sent
    assert "environment: MODE, RUNBOOK_SECRET_TOKEN (values not shown)" in lines
    assert "targets: localhost" in lines and "timeout: 45s" in lines
    # the step that follows, then the one that verifies the write, with what it checks
    i = lines.index("then:")
    assert lines[i + 1] == "notify-team (wait, mitigate)"
    j = lines.index("verified by:")
    assert lines[j + 1:j + 5] == ["error-rate-ok (shell, verify)", "checks: the API error rate is back under 1%",
                                  "normal: below 0.01", "until outputs.rate < 0.01 (every 1s, up to 600s)"]
    assert "tok-SECRET-4711" not in screen


def test_details_of_an_http_request_show_the_whole_body(tmp_path):
    from runbook.engine import Engine, Options, resolve_params
    from runbook.spec import load_text

    body = {"reason": "x" * 600, "replicas": 3}
    rb, _ = load_text(f"""\
name: h
title: H
stages:
  mitigate:
    - id: scale
      http: {{url: "http://127.0.0.1:9/scale", method: POST, json: {json.dumps(body)}, expect: {{status: 200}}}}
      timeout: 5s
""", "h.yaml")
    entry = Engine(rb, resolve_params(rb, {}), options=Options(dry_run=True)).plan()[0]
    rows = dict(entry.step.module.details(entry.action))
    assert len(entry.action.summary) < 600  # the card's one line is cut short ...
    assert rows["request"].splitlines()[0] == "POST http://127.0.0.1:9/scale"
    assert json.loads(rows["request"].split("\n\n", 1)[1]) == body  # ... the details are not
    assert json.loads(rows["expects"]) == {"status": 200}


POLL = """\
name: poll
title: Poll
stages:
  verify:
    - id: drained
      shell: "n=$(cat {tmp}/n 2>/dev/null || echo 0); echo $((n+1)) > {tmp}/n; echo queue $((30 - n*10))"
      readonly: true
      outputs:
        depth: {{regex: 'queue (-?[0-9]+)', type: integer}}
      until: "outputs.depth < 15"
      every: 0.05s
      timeout: 20s
"""


def test_polling_shows_the_value_each_check_read(tmp_path, monkeypatch, audit_dir):
    from fakeui import FakeUI

    p = tmp_path / "poll.yaml"
    p.write_text(POLL.format(tmp=tmp_path))
    ui = FakeUI()
    assert engine_run(p, ui).exit_code == 0
    assert [c[2:] for c in ui.calls if c[0] == "polling"] == [(1, "depth = 30"), (2, "depth = 20")]
    (tmp_path / "n").unlink()
    out, screen = guided(p, [], monkeypatch)
    assert out.exit_code == 0, screen
    assert "waiting until outputs.depth < 15 (a check every 0.05s, for up to 20s)" in screen
    assert "… depth = 30 — not yet (check 1, next in 0.05s)" in screen
    assert "… depth = 20 — not yet (check 2, next in 0.05s)" in screen


def test_each_kind_says_what_a_check_read():
    """The observed hook of every kind that polls: what the operator sees on each check."""
    from types import SimpleNamespace

    from runbook.steps import StepResult, get
    from runbook.steps.prometheus import NoValue

    def seen(kind, result, body=None):
        return get(kind).observed(SimpleNamespace(body=body or {}), result)

    assert seen("shell", StepResult("failed", stdout="starting\nqueue 12\n", exit_code=1)) == "queue 12"
    assert seen("shell", StepResult("failed", exit_code=3)) == "exit code 3"
    assert seen("prometheus", StepResult("ok", data={"value": 0.034})) == "value 0.034"
    assert seen("prometheus", StepResult("ok", data={"value": NoValue("no series", "no data")})) == "value no data"
    assert seen("prometheus", StepResult("ok", data={"firing_count": 2}), {"alerts": "X"}) == "2 firing"
    assert seen("http", StepResult("failed", data={"status_code": 503})) == "HTTP 503"
    assert seen("sql", StepResult("ok", data={"rows": [{"n": 152, "db": "main"}, {"n": 3, "db": "x"}]})) == \
        "n = 152, db = main (first of 2 rows)"
    assert seen("k8s", StepResult("ok", data={"replicas": 3, "ready_replicas": 1, "updated_replicas": 2})) == \
        "1/3 ready, 2 updated"
    hosts = {"web-1": {"status": "ok", "stdout": "29%\n"}, "web-2": {"status": "ok", "stdout": "70%\n"}}
    assert seen("ssh", StepResult("ok", data={"hosts": hosts})) == "web-1: 29%, web-2: 70%"
    assert seen("ssh", StepResult("ok", data={"hosts": hosts}, outputs={"use": 70})) == "use = 70"


@pytest.mark.parametrize("choice,approved,word", [
    ("retry", True, "retry"), ("skip", False, "skip"), ("on_failure", False, "follow on_failure"),
    ("abort", False, "abort")])
def test_the_choice_after_a_failure_is_recorded_as_it_was(tmp_path, audit_dir, choice, approved, word):
    from fakeui import FakeUI

    from runbook import report

    p = tmp_path / "flaky.yaml"
    p.write_text(FLAKY.format(tmp=tmp_path))
    out = engine_run(p, FakeUI(after_failure={"probe": choice}))
    d = next(r for r in records(audit_dir) if r["type"] == "decision")
    assert (d["step"], d["choice"], d["approved"]) == ("probe", choice, approved)
    assert d.get("to") == ("page" if choice == "on_failure" else None)
    md = report.report(audit_dir / "audit.jsonl", out.run_id, meta=lambda s: {})
    assert f"after step `probe` failed, {d['by']} chose **{word.replace('_', chr(92) + '_')}**" in md
    assert "**approved**" not in md  # nothing here was approved: the operator chose how to go on


def test_every_choice_before_a_step_is_recorded_as_it_was(pool, tmp_path, audit_dir, main):
    from fakeui import FakeUI

    from runbook import report

    out = engine_run(pool, FakeUI(step_prompt={"count": "continue"}, confirm={"kill-idle": "skip"}), step_mode=True)
    assert out.exit_code == 0
    got = [(r["step"], r["how"], r["choice"], r["approved"]) for r in records(audit_dir) if r["type"] == "decision"]
    assert got == [("count", "step-mode", "continue", True), ("kill-idle", "prompt", "skip", False)]
    md = report.report(audit_dir / "audit.jsonl", out.run_id, meta=lambda s: {})
    assert "step `count` **approved** by" in md and "choice `continue`: stop asking before read steps" in md
    assert "step `kill-idle` **skipped** by" in md and "**declined**" not in md
    # audit show's status column says the same
    shown = main("audit", "show", out.run_id).stdout
    rows = [line.split()[1:4] for line in shown.splitlines() if " decision " in line]
    assert rows == [["decision", "count", "approved"], ["decision", "kill-idle", "skipped"]]


def test_the_header_shows_the_inventorys_env(tmp_path, monkeypatch, audit_dir):
    from fakeui import FakeUI

    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "staging.yaml").write_text("env: staging-eu\nhosts:\n  a: {address: 127.0.0.1}\n")
    (tmp_path / "hosts.yaml").write_text("hosts:\n  a: {address: 127.0.0.1}\n")
    p = tmp_path / "x.yaml"
    p.write_text("name: x\ntitle: X\nstages:\n  diagnose:\n    - id: a\n      wait: 0s\n")
    monkeypatch.chdir(tmp_path)
    ui = FakeUI()
    engine_run(p, ui, env="staging")
    assert ui.environment == "staging-eu"  # the inventory's env:, not the --env name that found the file
    engine_run(p, ui, inventory_file=str(tmp_path / "hosts.yaml"))
    assert ui.environment == "hosts"  # no env: the file's stem


def test_one_frame_for_every_kinds_output(capsys):
    """Streamed shell output, a table shown when a step ends and an ssh step's per-host
    output: the same bar before every line, each host under its name."""
    from types import SimpleNamespace

    from runbook.secrets import Redactor
    from runbook.steps import StepResult, get
    from runbook.ui import ConsoleUI

    ui = ConsoleUI(Redactor())
    ui.fancy = False

    def step(kind):
        return SimpleNamespace(id=kind, kind=kind, effect="read", stage="diagnose", module=get(kind))

    sink = ui.output_sink(step("shell"))
    sink("stdout", b"streamed line\n")
    ui.step_finished(step("shell"), StepResult("ok", stdout="streamed line\n"))
    ui.step_finished(step("sql"), StepResult("ok", stdout="n\n---\n152\n"))
    hosts = {"web-1": {"status": "ok", "exit_code": 0, "stdout": "29%\n", "stderr": "", "error": None},
             "web-2": {"status": "failed", "exit_code": 1, "stdout": "70%\n", "stderr": "warn\n", "error": "exit code 1"}}
    ui.step_finished(step("ssh"), StepResult("failed", stdout="HOST table\n", data={"hosts": hosts}, error="failed on 1 of 2 hosts"))
    screen = capsys.readouterr().out.splitlines()
    assert "  | streamed line" in screen
    assert ["  | n", "  | ---", "  | 152"] == [line for line in screen if line in ("  | n", "  | ---", "  | 152")]
    i = screen.index("  +- web-2 · failed · exit 1")  # failures first, the exit code said once
    assert screen[i + 1:i + 3] == ["  | 70%", "  | warn"]
    assert screen[i + 3:i + 5] == ["  +- web-1 · ok · exit 0", "  | 29%"]
    assert "HOST table" not in "\n".join(screen)  # the per-host parts replace the step's summary table


def test_counts_agree_with_their_nouns(tmp_path, capsys):
    from runbook import ui
    from runbook.engine import Engine, Options, resolve_params
    from runbook.secrets import Redactor
    from runbook.spec import load_text

    assert [ui.plural(n, "write step") for n in (0, 1, 2)] == ["0 write steps", "1 write step", "2 write steps"]
    rb, _ = load_text("name: one\ntitle: One\nstages:\n  mitigate:\n    - id: a\n      shell: 'true'\n      timeout: 1s\n",
                      "one.yaml")
    ui.print_plan(rb, Engine(rb, resolve_params(rb, {}), options=Options(dry_run=True)).plan(), {}, Redactor())
    assert "1 step, 1 write step. Nothing was run." in capsys.readouterr().out


def test_a_step_over_200_hosts_shows_failures_first_folds_the_same_output_and_stays_bounded(capsys, monkeypatch):
    """One frame per host would print 200 labels and ~2,000 lines: the step's outcome would scroll
    away. Hosts with the same ending and output fold into one part, failures come first, and the
    whole step stays within SHOW_LINES."""
    from runbook import ui
    from runbook.spec import load_text
    from runbook.steps import ssh as SSH

    monkeypatch.setenv("COLUMNS", "200")
    rb, _ = load_text("name: m\ntitle: M\nstages:\n  diagnose:\n    - id: up\n      ssh: {hosts: [a, b], command: uptime, forks: 10}\n      readonly: true\n", "m.yaml")

    def host(i, status="ok", out="same\n"):
        return {"status": status, "exit_code": 0 if status == "ok" else 2, "stdout": out, "stderr": "", "duration": 0.1,
                "error": None if status == "ok" else "exit 2"}

    hosts = {f"web-{i:03d}": host(i) for i in range(150)}
    hosts.update({f"db-{i:03d}": host(i, out="".join(f"line {i}.{j}\n" for j in range(12))) for i in range(49)})
    hosts["web-199"] = host(199, status="failed", out="disk full\n")
    ui.ConsoleUI().step_finished(rb.steps[0], SSH._result([{"name": n} for n in hosts], hosts))
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) <= SSH.SHOW_LINES + 5, len(shown)
    labels = [line for line in shown if line.lstrip().startswith(("+-", "├─"))]
    assert "web-199 · failed · exit 2" in labels[0] and "exit 2 · exit" not in labels[0]  # the failure first, said once
    assert any("web-000, web-001, web-002 and 147 more · ok · exit 0" in line for line in shown)
    assert any("more hosts not shown here" in line for line in shown)
