"""A step cannot outlive its run: `runbook` killed (SIGKILL) or stopped during a
step, and what the audit log then says about what may still run (runbook.procs).

Real processes, a real CLI, the real sshd of tests/sshserver.py; every wait polls."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from conftest import ROOT, book
from runbook import audit, procs
from runbook.secrets import Redactor
from runbook.steps import Action, shell

pytestmark = pytest.mark.skipif(shell._supervision() != "pdeathsig", reason="needs setpriv and GNU timeout (Linux)")


def poll(check, limit: float, every: float = 0.02):
    """check()'s first true value within ``limit`` seconds, else None."""
    end = time.monotonic() + limit
    while True:
        value = check()
        if value or time.monotonic() >= end:
            return value
        time.sleep(every)


@pytest.fixture
def spawn(tmp_path):
    """spawn(*args) -> Popen of `python -m runbook ...` (output to a file); every one is SIGKILLed
    after the test, and every process group registered in ``spawn.groups`` too."""
    started: list[subprocess.Popen] = []

    def _spawn(*args) -> subprocess.Popen:
        env = os.environ.copy()
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        out = open(tmp_path / f"cli-{len(started)}.out", "wb")
        p = subprocess.Popen([sys.executable, "-m", "runbook", *map(str, args)], cwd=tmp_path, env=env,
                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        started.append(p)
        return p

    _spawn.groups = []
    yield _spawn
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()
    for g in _spawn.groups:
        try:
            os.killpg(g, signal.SIGKILL)
        except ProcessLookupError:
            pass


def record(audit_dir: Path, step: str, limit: float = 20):
    """The step_process record of ``step``, once it is in the audit log."""

    def find():
        for r in audit.read_records(audit_dir / audit.LOG_NAME):
            if r.get("type") == "step_process" and r.get("step") == step:
                return r
        return None

    found = poll(find, limit)
    assert found, f"no step_process record for {step} within {limit}s"
    return found


def gone_within(pgid: int, limit: float) -> float:
    """Seconds until no live process of the group is left (fails the test after ``limit``)."""
    started = time.monotonic()
    members = poll(lambda: not procs.group_members(pgid), limit)
    assert members, f"process group {pgid} still has {procs.group_members(pgid)} after {limit}s"
    return time.monotonic() - started


def mitigate(write, command: str, timeout: str | None) -> Path:
    return book(write, f"""
  diagnose:
    - id: look
      shell: "true"
      readonly: true
  mitigate:
    - id: act
      shell: {json.dumps(command)}
{f"      timeout: {timeout}" if timeout else ""}
  verify:
    - id: check
      shell: "true"
      readonly: true
""")


# --- local shell steps --------------------------------------------------------------------------


def test_sigkill_during_a_timed_step_ends_its_process_group(write, spawn, audit_dir, tmp_path):
    marker = tmp_path / "M"
    cli = spawn("run", mitigate(write, f"sleep 6; touch {marker}", "3s"), "--yes")
    rec = record(audit_dir, "act")
    spawn.groups.append(rec["pgid"])
    assert set(rec) >= {"pid", "pgid", "start_ticks", "boot_id", "host"}
    assert rec["pid"] == rec["pgid"] and isinstance(rec["start_ticks"], int)
    assert rec["boot_id"] == procs.boot_id() and rec["host"] == socket.gethostname()
    # the record is written as soon as the process exists: wait for the wrappers to exec the command
    line = poll(lambda: next((x for x in [procs.still_running(rec) or ""] if "sleep" in x), ""), 5)
    assert line.startswith(f"process group {rec['pgid']} (pid {rec['pid']}, started ") and "(bash, sh, sleep, timeout)" in line

    cli.send_signal(signal.SIGKILL)
    cli.wait()
    # the parent-death signal (SIGHUP/SIGTERM at once, SIGKILL of what is left 2 s later), not the 3.5 s timeout
    assert gone_within(rec["pgid"], 5) < 3
    assert not marker.exists()
    assert procs.still_running(rec) is None


def test_sigkill_during_a_step_without_timeout_ends_its_process_group(write, spawn, audit_dir, tmp_path):
    marker = tmp_path / "M"
    cli = spawn("run", mitigate(write, f"sleep 4; touch {marker}", None), "--yes")
    rec = record(audit_dir, "act")
    spawn.groups.append(rec["pgid"])
    poll(lambda: "sleep" in (procs.still_running(rec) or ""), 5)  # the command has started
    cli.send_signal(signal.SIGKILL)
    cli.wait()
    gone_within(rec["pgid"], 5)
    assert not marker.exists()


def test_sigkill_during_a_step_that_ignores_sigterm_kills_it_after_the_grace(write, spawn, audit_dir, tmp_path):
    marker, ready = tmp_path / "M", tmp_path / "ready"
    cli = spawn("run", mitigate(write, f"trap '' TERM; touch {ready}; sleep 6; touch {marker}", "5s"), "--yes")
    rec = record(audit_dir, "act")
    spawn.groups.append(rec["pgid"])
    assert poll(ready.exists, 5)  # the trap is set
    cli.send_signal(signal.SIGKILL)
    cli.wait()
    took = gone_within(rec["pgid"], 5)
    assert 1.5 < took < 3.5  # SIGTERM ignored, SIGKILL from `timeout --kill-after=2`
    assert not marker.exists()


def test_sigkill_ends_a_background_process_that_ignores_the_signals(write, spawn, audit_dir, tmp_path):
    """From a review: `timeout` stops supervising once bash exits, so a background child that ignores
    SIGTERM (and SIGHUP) outlived a killed runbook; the guard between them SIGKILLs the group."""
    ready = tmp_path / "ready"
    cli = spawn("run", mitigate(write, f"(trap '' TERM HUP; exec sleep 300) & touch {ready}; sleep 300", None), "--yes")
    rec = record(audit_dir, "act")
    spawn.groups.append(rec["pgid"])
    assert poll(ready.exists, 5)
    cli.send_signal(signal.SIGKILL)
    cli.wait()
    assert gone_within(rec["pgid"], 6) < 3.5


def test_timeout_holds_while_runbook_is_stopped(write, spawn, audit_dir, tmp_path):
    """runbook alive but doing nothing (SIGSTOP): the step's own supervisor ends it at its timeout."""
    marker = tmp_path / "M"
    cli = spawn("run", mitigate(write, f"sleep 6; touch {marker}", "2s"), "--yes")
    rec = record(audit_dir, "act")
    spawn.groups.append(rec["pgid"])
    seen = time.monotonic()
    cli.send_signal(signal.SIGSTOP)
    try:
        gone_within(rec["pgid"], 5)
        took = time.monotonic() - seen
        assert 1.5 < took < 4  # 2 s + the supervisor's 0.5 s margin, less the start-up already spent
        assert not marker.exists()
    finally:
        cli.send_signal(signal.SIGKILL)
        cli.wait()


def _run_shell(command: str, timeout: float | None, output=None):
    step = types.SimpleNamespace(id="s", body={"command": command})
    act = Action(summary=command, targets=["localhost"], detail={"command": command}, env={})
    events: list[tuple[str, dict]] = []
    ctx = types.SimpleNamespace(timeout=timeout, run_id="t", redactor=Redactor(), output=output,
                                event=lambda type_, **fields: events.append((type_, fields)))
    return shell.run(step, act, ctx), events


def test_the_supervising_timeout_winning_is_still_a_timeout():
    """runbook slow to act on its deadline (here: stuck 1.5 s in its output callback): `timeout`
    ends the command first (exit 124) and the step is a timeout, not exit code 124."""
    stuck = []

    def slow(stream, data):
        if not stuck:
            stuck.append(1)
            time.sleep(1.5)

    result, events = _run_shell("echo hi; sleep 5", 0.5, output=slow)
    assert result.status == "timeout", result
    assert result.exit_code == 124 and "timed out after 0.5s" in result.error
    assert [t for t, _ in events] == ["step_process"] and events[0][1]["step"] == "s"


def test_exit_code_124_of_the_command_itself_is_a_failure():
    result, _ = _run_shell("exit 124", 5)
    assert result.status == "failed" and result.exit_code == 124


def test_the_wrapper_runs_nothing_once_its_parent_is_gone(tmp_path):
    """The race between fork and the parent-death signal: a wrapper whose parent is no longer
    the runbook that started it exits (125) without running the command."""
    marker = tmp_path / "M"
    argv = shell._wrap("pdeathsig", ["bash", "-c", f"touch {marker}"], None)
    i = argv.index(str(os.getpid()))
    assert subprocess.run(argv[:i] + ["1"] + argv[i + 1:], start_new_session=True).returncode == 125
    assert not marker.exists()
    assert subprocess.run(argv, start_new_session=True).returncode == 0 and marker.exists()


# --- ssh steps ------------------------------------------------------------------------------------


def test_sigkill_during_an_ssh_step_the_remote_timeout_still_ends_it(write, spawn, audit_dir, sshd, ssh_known_hosts,
                                                                     tmp_path):
    marker, pgid_file = tmp_path / "remote-M", tmp_path / "remote.pgid"
    inv = write("inv.yaml", json.dumps({
        "ssh": {"known_hosts": str(ssh_known_hosts), "identity_file": str(sshd.client_key_path), "connect_timeout": 3},
        "hosts": {"h1": {"address": sshd.host, "port": sshd.port, "user": sshd.user}},
    }))
    p = book(write, f"""
  diagnose:
    - id: look
      shell: "true"
      readonly: true
  mitigate:
    - id: act
      ssh: {{hosts: h1, command: "cut -d' ' -f5 /proc/$$/stat > {pgid_file}; sleep 8; touch {marker}"}}
      timeout: 3s
  verify:
    - id: check
      shell: "true"
      readonly: true
""")
    cli = spawn("run", p, "--yes", "--inventory", inv)
    rec = record(audit_dir, "act")
    sent = time.time()
    assert rec["hosts"] == ["h1"]
    # remote `timeout -k 5 3`: gone 8 s after it started, plus a little for the command to arrive
    assert sent + 3 + 5 < rec["deadline"] < sent + 3 + 5 + 3
    assert poll(lambda: pgid_file.exists() and pgid_file.read_text().strip(), 10)
    pgid = int(pgid_file.read_text())
    spawn.groups.append(pgid)
    assert procs.group_members(pgid)
    line = procs.still_running(rec)
    assert line and line.startswith("its remote command on h1 may run until ") and line.endswith("UTC (its timeout)")

    cli.send_signal(signal.SIGKILL)
    cli.wait()
    gone_within(pgid, 3 + 5 + 2)
    assert time.time() < rec["deadline"]  # the record's promise held
    assert time.time() - sent < 3 + 1.5  # SIGTERM at 3 s was enough: the kill-after was not needed
    assert not marker.exists()
    assert procs.still_running(rec, now=rec["deadline"] + 0.001) is None


# --- procs ----------------------------------------------------------------------------------------


@pytest.fixture
def group():
    """A live process group (a `sleep 30` in a new session); killed after the test."""
    p = subprocess.Popen(["sleep", "30"], start_new_session=True)
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


def test_identity_of_a_process():
    me = procs.identity(os.getpid())
    assert me["pid"] == os.getpid() and me["pgid"] == os.getpgid(0)
    assert isinstance(me["start_ticks"], int) and me["start_ticks"] > 0
    assert me["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert me["host"] == socket.gethostname()
    gone = procs.identity(2 ** 22 + 1)  # above pid_max's ceiling: never a process
    assert gone["pgid"] is None and gone["start_ticks"] is None


def test_still_running_names_a_live_group_then_none_once_it_ends(group):
    rec = {"type": "step_process", "step": "s", **procs.identity(group.pid)}
    line = procs.still_running(rec)
    assert line.startswith(f"process group {group.pid} (pid {group.pid}, started ")
    assert f"is still running on host {socket.gethostname()}: 1 process (sleep)" in line
    assert procs.running_lines([rec]) == [f"step s: {line}"]
    group.kill()
    group.wait()
    assert procs.still_running(rec) is None
    assert procs.running_lines([rec]) == []


def test_still_running_tells_a_reused_pid_another_boot_and_another_host(group):
    rec = procs.identity(group.pid)
    assert procs.still_running({**rec, "start_ticks": rec["start_ticks"] - 1}) is None  # the pid was reused
    assert procs.still_running({**rec, "boot_id": "00000000-0000-0000-0000-000000000000"}) is None  # rebooted since
    other = procs.still_running({**rec, "host": "elsewhere.example"})
    assert other.startswith(f"process group {group.pid} (pid {group.pid}) ran on host elsewhere.example")
    assert "cannot be checked from here" in other
    assert procs.still_running({"pid": None, "pgid": None}) is None  # nothing identifies it


def test_still_running_of_remote_commands():
    now = 1_700_000_000.0  # 22:13:20 UTC
    assert procs.still_running({"hosts": ["web-1", "web-2"], "deadline": now - 1}, now=now) is None
    assert (procs.still_running({"hosts": ["web-1", "web-2"], "deadline": now + 5}, now=now)
            == "its remote command on web-1, web-2 may run until 22:13:25 UTC (its timeout)")
    assert (procs.still_running({"hosts": ["web-1"], "deadline": None}, now=now)
            == "its remote command on web-1 has no timeout and may still be running")
    per_host = [{"type": "step_process", "step": "x", "hosts": [h], "deadline": now + d}
                for h, d in (("web-1", 3), ("web-2", 7), ("web-3", -1))]
    assert procs.running_lines(per_host, now=now) == [
        "step x: its remote command on web-1, web-2 may run until 22:13:27 UTC (its timeout)"]
