"""The ``shell`` kind run directly, with real processes: timeouts that hold
even when a background process keeps the output open, and bounded capture."""

from __future__ import annotations

import os
import resource
import signal
import time
import types

import pytest

from conftest import alive
from runbook.secrets import Redactor
from runbook.steps import Action
from runbook.steps import shell


@pytest.fixture
def daemons():
    """PIDs to SIGKILL after the test (background processes the steps left)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run(command: str, timeout: float | None = 10, env: dict | None = None, step_id: str = "s"):
    step = types.SimpleNamespace(id=step_id, body={"command": command})
    act = Action(summary=command, targets=["localhost"], detail={"command": command}, env=dict(env or {}))
    ctx = types.SimpleNamespace(timeout=timeout, run_id="t", redactor=Redactor())
    started = time.monotonic()
    result = shell.run(step, act, ctx)
    return result, time.monotonic() - started



def first_pid(stdout: str) -> int:
    return int(stdout.split()[0])


def test_exit_zero_with_a_setsid_daemon_holding_the_pipe_is_ok(daemons):
    result, took = run("setsid sleep 30 & echo $!; echo started", timeout=2)
    daemons.append(first_pid(result.stdout))
    assert took < 4
    assert result.status == "ok", result
    assert result.exit_code == 0
    assert "started" in result.stdout
    assert "background process kept the output open" in result.error


def test_exit_zero_with_a_background_child_in_the_group_is_ok_without_timeout(daemons):
    result, took = run("sleep 30 & echo $!", timeout=None)
    daemons.append(first_pid(result.stdout))
    assert took < 4
    assert result.status == "ok" and result.exit_code == 0


def test_failure_with_a_daemon_holding_the_pipe_keeps_the_exit_code(daemons):
    result, took = run("setsid sleep 30 & echo $!; exit 4", timeout=10)
    daemons.append(first_pid(result.stdout))
    assert took < 4
    assert result.status == "failed" and result.exit_code == 4
    assert result.error.startswith("exit code 4")
    assert "background process" in result.error


def test_timeout_holds_while_a_daemon_keeps_the_pipe_open(daemons):
    result, took = run("setsid sleep 30 & echo $!; sleep 20", timeout=1.5)
    daemons.append(first_pid(result.stdout))
    assert result.status == "timeout", result
    assert 1.4 < took < 4
    assert "timed out after 1.5s" in result.error


def test_timeout_kills_a_group_that_ignores_sigterm(tmp_path):
    pidfile = tmp_path / "pid"
    result, took = run(f"trap '' TERM; sleep 30 & echo $! > {pidfile}; echo waiting; wait", timeout=1)
    assert result.status == "timeout"
    assert took < 6  # 1 s, 2 s until SIGKILL, a little reading
    assert "waiting" in result.stdout
    pid = int(pidfile.read_text())
    time.sleep(0.2)
    assert not alive(pid)


def test_output_is_bounded_while_reading():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    total = 50_000_000
    result, took = run(f"head -c {total} /dev/zero | tr '\\0' a", timeout=60)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert result.status == "ok", result.error
    marker = f"\n[... {total - shell.MAX_CAPTURE} bytes not kept ...]\n"
    assert len(result.stdout) == shell.MAX_CAPTURE + len(marker)
    head, tail = result.stdout.split(marker)
    assert head == "a" * shell.HEAD_KEEP
    assert tail == "a" * (shell.MAX_CAPTURE - shell.HEAD_KEEP)
    assert after - before < 3 * shell.MAX_CAPTURE, (before, after)


def test_output_under_the_limit_is_kept_whole():
    n = shell.HEAD_KEEP * 3 + 7
    result, _ = run(f"head -c {n} /dev/zero | tr '\\0' x; printf 'é'")
    assert result.stdout == "x" * n + "é"


def test_stdout_and_stderr_are_both_captured_even_when_large():
    result, _ = run("echo out; echo err >&2; head -c 3000000 /dev/zero | tr '\\0' b >&2; echo end")
    assert result.status == "ok"
    assert result.stdout == "out\nend\n"
    assert result.stderr.startswith("err\nbbb") and len(result.stderr) == 4 + 3_000_000


def test_non_zero_exit_is_failed_with_the_exit_code():
    result, _ = run("echo partial; echo oops >&2; exit 3")
    assert result.status == "failed"
    assert result.exit_code == 3
    assert result.error == "exit code 3"
    assert result.stdout == "partial\n" and result.stderr == "oops\n"


def test_environment_secrets_and_step_id_reach_the_command():
    result, _ = run('printf "%s %s %s" "$TOKEN" "$RUNBOOK_STEP" "$RUNBOOK_RUN_ID"', env={"TOKEN": "s3cr3t"}, step_id="look")
    assert result.stdout == "s3cr3t look t"
    assert result.error is None


def test_a_command_that_closes_its_output_still_times_out():
    result, took = run("exec >&- 2>&-; sleep 20", timeout=1)
    assert result.status == "timeout"
    assert took < 4


def test_cli_run_with_a_daemon_finishes_promptly(write, cli, tmp_path, daemons):
    pidfile = tmp_path / "pid"
    p = write("t.yaml", f"""
        name: t
        title: T
        stages:
          diagnose:
            - id: start
              shell: "setsid sleep 30 & echo $! > {pidfile}; echo started"
              readonly: true
              timeout: 2s
            - id: after
              shell: "echo after"
              readonly: true
        """)
    started = time.monotonic()
    r = cli("run", p)
    daemons.append(int(pidfile.read_text()))
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.monotonic() - started < 8
    assert "after" in r.stdout
