"""Prompts in a real terminal (a pseudo-terminal): confirm, decline, ask, manual."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from conftest import ROOT


def run_in_pty(args, answers, cwd, timeout=30):
    """Run the CLI on a pty; each time `prompt` shows up, type `reply`. Returns (exit code, screen text)."""
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="dumb", COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "runbook", *map(str, args)], stdin=slave, stdout=slave, stderr=slave,
                            cwd=cwd, env=env, close_fds=True)
    os.close(slave)
    screen = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            screen += data
            if pending and pending[0][0].encode() in screen.split(b"\n")[-1] + screen[-200:]:
                prompt, reply = pending.pop(0)
                os.write(master, reply.encode() + b"\r")
        elif proc.poll() is not None:
            break
    proc.wait(timeout=5)
    os.close(master)
    return proc.returncode, screen.decode("utf-8", "replace")


BOOK = """\
name: t
title: T
stages:
  diagnose:
    - id: region
      ask: {{prompt: "Which region?", choices: [eu, us]}}
    - id: look
      manual: "Open the {{{{ steps.region.answer }}}} dashboard"
  mitigate:
    - id: fix
      shell: "touch {marker}"
      timeout: 10s
  verify:
    - id: check
      shell: "test -f {marker}"
      readonly: true
"""


def test_operator_answers_and_approves(tmp_path):
    marker = tmp_path / "fixed"
    p = tmp_path / "t.yaml"
    p.write_text(BOOK.format(marker=marker))
    code, screen = run_in_pty(["run", p], [("Which region?", "us"), ("Done?", "y"), ("Run it?", "y")], tmp_path)
    assert code == 0, screen
    assert "Open the us dashboard" in screen and f"touch {marker}" in screen
    assert marker.exists()


def test_operator_declines_the_write_step(tmp_path):
    marker = tmp_path / "fixed"
    p = tmp_path / "t.yaml"
    p.write_text(BOOK.format(marker=marker))
    code, screen = run_in_pty(["run", p], [("Which region?", "eu"), ("Done?", "y"), ("Run it?", "n")], tmp_path)
    assert code == 3, screen
    assert not marker.exists()
    assert "declined" in screen


def test_ctrl_d_at_the_confirmation_declines(tmp_path, audit_dir):
    from runbook import audit

    marker = tmp_path / "fixed"
    p = tmp_path / "t.yaml"
    p.write_text(BOOK.format(marker=marker))
    code, screen = run_in_pty(["run", p], [("Which region?", "eu"), ("Done?", "y"), ("Run it?", "\x04")], tmp_path)
    assert code == 3, screen
    assert not marker.exists() and "Traceback" not in screen
    recs = list(audit.read_records(audit_dir / "audit.jsonl"))
    decision = next(r for r in recs if r["type"] == "decision")
    assert decision["approved"] is False and decision["how"] == "prompt"
    assert recs[-1]["type"] == "run_finished" and recs[-1]["exit_code"] == 3
