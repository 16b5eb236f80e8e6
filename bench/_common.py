"""Helpers shared by the benchmark scripts (stdlib only)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def child_env(**extra: str) -> dict[str, str]:
    """The environment for `python -m runbook` children: the checkout first on sys.path.

    Children read and write their bytecode under one cache folder outside the checkout
    (``PYTHONPYCACHEPREFIX``), even where ``PYTHONDONTWRITEBYTECODE`` is set (it is on some CI
    machines): an installed runbook has its ``.pyc`` files (pip compiles them at install), so a
    figure that recompiled every module in every process would measure the compiler, not runbook.
    The floor (``python -c pass``) runs in the same environment."""
    import tempfile

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "runbook-bench-pycache"))
    env.setdefault("NO_COLOR", "1")
    env.setdefault("COLUMNS", "120")
    env.update(extra)
    return env


def runbook_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "runbook", *args]


def time_cmd(cmd: list[str], *, cwd: Path | str = REPO, env: dict | None = None, check: int | None = 0) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time (s) of one run of ``cmd``, process start included."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if check is not None and proc.returncode != check:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"bench: {' '.join(cmd)} exited {proc.returncode} (expected {check})")
    return dt, proc


def median(xs) -> float:
    return statistics.median(xs)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def machine() -> str:
    return f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"


def verdict(name: str, ok: bool, detail: str) -> None:
    print(f"TARGET {name}: {'MET' if ok else 'MISSED'} ({detail})")


def run_rusage(cmd: list[str], *, cwd: Path | str = REPO, env: dict | None = None, stdin=subprocess.DEVNULL):
    """Run ``cmd`` to its end: (wall s, returncode, stdout, stderr, CPU s, peak RSS in MiB).

    CPU (user + sys) and peak RSS are the child's own, from ``wait4`` (its waited-for descendants
    included), not this process's running RUSAGE_CHILDREN totals. Output goes through temporary
    files, so no reader thread competes with the child."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env=env or child_env(), stdin=stdin, stdout=out, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (wall, p.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, seconds: float, what: str) -> None:
    """Poll ``check`` until it is true; exit the benchmark saying ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what}")
        time.sleep(0.02)
