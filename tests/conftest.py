"""Shared fixtures: a private audit directory for every test, and helpers to
write runbooks and run the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# real servers started on 127.0.0.1: PostgreSQL, OpenSSH, a Kubernetes API server
# subset (kubeapi), Prometheus, small HTTP services (webservers) and an AWS API emulator (awsserver: moto)
pytest_plugins = ["pgserver", "sshserver", "kubeapi", "promserver", "webservers", "labservers", "awsserver"]

ROOT = Path(__file__).resolve().parent.parent

def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture(autouse=True)
def audit_dir(tmp_path, monkeypatch):
    d = tmp_path / "audit"
    monkeypatch.setenv("RUNBOOK_AUDIT_DIR", str(d))
    monkeypatch.setenv("RUNBOOK_KEY_DIR", str(tmp_path / "keys"))  # the audit log's sealing keys
    monkeypatch.setenv("RUNBOOK_CACHE_DIR", str(tmp_path / "cache"))  # runbook list's catalog
    monkeypatch.delenv("RUNBOOK_PATH", raising=False)
    monkeypatch.delenv("RUNBOOK_INVENTORY", raising=False)
    monkeypatch.delenv("RUNBOOK_ENV", raising=False)
    return d


def book(write, steps: str, head: str = "", name: str = "t.yaml") -> Path:
    """A runbook file named `t` with the given stages (and params etc. in `head`)."""
    return write(name, "name: t\ntitle: T\n" + head + "stages:\n" + steps)


@pytest.fixture
def write(tmp_path):
    """write("name.yaml", text) -> Path, dedenting the text."""

    def _write(name: str, text: str) -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"))
        return p

    return _write


@pytest.fixture
def cli(tmp_path):
    """cli(*args, cwd=..., input=..., env=...) -> CompletedProcess of `python -m runbook`."""

    def _cli(*args, cwd=None, input=None, env=None, timeout=60):
        e = os.environ.copy()
        e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
        e.setdefault("COLUMNS", "200")
        if env:
            e.update(env)
        return subprocess.run(
            [sys.executable, "-m", "runbook", *map(str, args)],
            cwd=cwd or tmp_path, input=input, env=e, capture_output=True, text=True, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    return _cli


@pytest.fixture
def main(tmp_path, monkeypatch, capsys):
    """main(*args, cwd=..., env=...) -> CompletedProcess of the CLI run in this process: the
    same code path as `runbook ...` without starting an interpreter (use `cli` for what only
    a real process shows: signals, terminals, exit on a crash)."""
    from runbook.cli import main as runbook_main

    monkeypatch.setenv("COLUMNS", "200")

    def _main(*args, cwd=None, env=None, input=None, timeout=None):
        import io

        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        monkeypatch.chdir(cwd or tmp_path)
        monkeypatch.setattr("sys.stdin", io.StringIO(input or ""))
        monkeypatch.setattr("sys.argv", ["runbook", *map(str, args)])
        capsys.readouterr()
        try:
            code = runbook_main([str(a) for a in args])
        except SystemExit as exc:  # argparse: usage errors, --help
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return _main
