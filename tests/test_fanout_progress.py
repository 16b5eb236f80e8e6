"""Live fan-out progress: a step on several hosts tells the UI of each host as it answers (plain
output: one line per host as it finishes, before the step's summary)."""

from __future__ import annotations

from conftest import book
from fakeui import FakeUI
from test_ssh_step import inventory


def test_plain_output_prints_a_line_per_host_as_it_finishes(write, main, sshd, ssh_known_hosts):
    extra = {"refused": {"address": "127.0.0.1", "port": 1, "user": sshd.user}}
    inv = inventory(write, sshd, ssh_known_hosts, names=("h1", "h2"), extra_hosts=extra)
    p = book(write, """
  diagnose:
    - id: fan
      ssh: {hosts: [h1, refused, h2], command: "sleep 0.5; echo done", forks: 3}
      readonly: true
""")
    r = main("run", p, "--inventory", inv)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    hosts = [line.split() for line in lines if line.strip().startswith("host ") and "/3" in line]
    assert [h[1] for h in hosts] == ["1/3", "2/3", "3/3"], r.stdout
    # the unreachable host answers at once, the others after their command: it comes first
    assert hosts[0][2:4] == ["refused", "failed"] and "connection refused" in " ".join(hosts[0])
    assert sorted((h[2], h[3], h[5]) for h in hosts[1:]) == [("h1", "ok", "exit"), ("h2", "ok", "exit")]
    # every host line comes before the step's summary (✗ failed …) and its output table
    summary = next(i for i, line in enumerate(lines) if "failed on 1 of 3 hosts" in line)
    assert max(i for i, line in enumerate(lines) if line.strip().startswith("host ")) < summary


def test_one_host_prints_no_progress_and_json_keeps_stdout_clean(write, main, sshd, ssh_known_hosts):
    import json

    p = book(write, """
  diagnose:
    - id: one
      ssh: {hosts: h1, command: "true"}
      readonly: true
    - id: two
      ssh: {hosts: [h1, h2], command: "true", forks: 2}
      readonly: true
""")
    inv = inventory(write, sshd, ssh_known_hosts, names=("h1", "h2"))
    r = main("run", p, "--inventory", inv, "--format", "json")
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)  # the progress went to standard error
    assert [line.split()[1] for line in r.stderr.splitlines() if line.strip().startswith("host ")] == ["1/2", "2/2"]


def test_the_ui_hears_of_each_host(write, sshd, ssh_known_hosts, audit_dir):
    from runbook import session, spec

    p = book(write, """
  diagnose:
    - id: two
      ssh: {hosts: [h1, h2], command: "true", forks: 2}
      readonly: true
""")
    inv = inventory(write, sshd, ssh_known_hosts, names=("h1", "h2"))
    ui = FakeUI()
    out = session.start(session.RunRequest(runbook=spec.find(str(p), []), params={}, inventory_file=str(inv),
                                           audit_dir=audit_dir), ui)
    assert out.exit_code == 0, out.message
    heard = [c for c in ui.calls if c[0] == "host_finished"]
    assert sorted(c[2] for c in heard) == ["h1", "h2"] and [c[4:] for c in heard] == [(1, 2), (2, 2)]
    assert all(c[1] == "two" and c[3] == "ok" for c in heard)


def test_guided_mode_shows_a_progress_bar_of_the_hosts_then_removes_it():
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from runbook import ui

    buf = io.StringIO()
    console = ui.ConsoleUI()
    console.c = Console(file=buf, force_terminal=True, width=120)
    console.fancy = True
    step = SimpleNamespace(id="fan")
    for n, (host, status) in enumerate([("web-1", "ok"), ("web-2", "failed"), ("web-3", "ok")], 1):
        console.host_finished(step, host, {"status": status, "exit_code": 0 if status == "ok" else 1,
                                           "duration": 0.1}, n, 3)
        assert console._hosts is not None
    console._end_host_bar()  # what step_finished and run_finished do first
    assert console._hosts is None
    text = buf.getvalue()
    assert "hosts" in text and "3/3" in text and "1 failed" in text and "last web-3 ok" in text


def test_host_lines_are_printed_together_and_a_late_one_soon():
    """Plain output prints the hosts that end close together in one write (a line per host, as
    before); a line left waiting is printed by a timer, not held until the next host or the step's end."""
    import io
    import time

    from rich.console import Console

    from runbook.ui import ConsoleUI

    ui = ConsoleUI()
    buf = io.StringIO()
    ui.c, ui.fancy = Console(file=buf, width=200, no_color=True), False
    ok = {"status": "ok", "exit_code": 0, "duration": 0.1}
    ui.host_finished(None, "web-1", ok, 1, 3)  # the first: at once
    assert "host 1/3 web-1 ok · exit 0 0.10s" in buf.getvalue()
    ui.host_finished(None, "web-2\x1b[31m", {**ok, "status": "failed", "error": "exit code 3"}, 2, 3)
    ui.host_finished(None, "web-3", ok, 3, 3)
    assert "web-2" not in buf.getvalue()  # waiting for the next write, at most 0.1 s away
    time.sleep(0.4)
    lines = [line.strip() for line in buf.getvalue().splitlines()]
    assert lines == ["host 1/3 web-1 ok · exit 0 0.10s", "host 2/3 web-2\\x1b[31m failed · exit 0 · exit code 3 0.10s",
                     "host 3/3 web-3 ok · exit 0 0.10s"]
