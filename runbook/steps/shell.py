"""``shell``: a command on the machine running runbook.

    - id: disk
      shell: "df -h {{ params.mount }}"
      readonly: true

The command runs under ``bash -c`` (``sh`` where bash is missing) in its own
process group, with standard input closed.  Template values are shell-quoted;
secrets reach the process through its environment, never its arguments.
A ``timeout`` kills the whole process group (SIGTERM, then SIGKILL after 2 s).

A step cannot outlive its run: the command runs under coreutils ``timeout``
with a parent-death signal (``setpriv --pdeathsig``), so when runbook dies,
``kill -9`` included, its process group gets SIGHUP and SIGTERM, then SIGKILL
2 s later (background processes that ignore the signals included);
and a ``timeout`` holds even while runbook is stopped or gone (0.5 s after
runbook's own).  The audit log records the process (``step_process``: pid,
process group, start time, boot id, host).  Without ``setpriv`` (util-linux)
only the timeout holds after a crash; without GNU ``timeout`` either (macOS)
a crash leaves the command running.  In the command, ``$PPID`` is ``timeout``.

Output is read as it comes and kept bounded: of each stream, the first 64 KiB
and the last ``MAX_CAPTURE`` minus 64 KiB, with a line
``[... N bytes not kept ...]`` where the middle was dropped (ASCII, so that
ASCII output stays one byte a character in memory).  The step ends when the
command exits; a background process that still holds the output open is read
for at most 1 s more, then left running, and the step is reported by the exit
code with a note in its ``error``.  The effect is ``write`` unless the step says
``readonly: true``.
"""

from __future__ import annotations

import codecs
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections import deque

from runbook import procs
from runbook import schema as S
from runbook.steps import Action, StepResult

SCHEMA = S.OneOf(
    (
        (str, S.Str(doc="the command")),
        (dict, S.Obj(
            {
                "command": S.Str(doc="the command, run by bash -c"),
                "cwd": S.Str(doc="working directory"),
                "env": S.MapOf(S.Str(), key_pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", doc="extra environment variables"),
            },
            required=("command",),
        )),
    ),
    doc="Run a local command",
    expect_text="a command string or a mapping with command",
)
DEFAULT_READONLY = False
FIXED_EFFECT = None
RESULT_FIELDS = ("stdout", "stderr", "exit_code")
SHOW_OUTPUT = True  # the UI shows the command's output
COMMAND_SUMMARY = True  # the summary is the command line: shown as $ COMMAND
MAX_CAPTURE = 4 * 1024 * 1024  # bytes kept per stream: the first HEAD_KEEP and the last ones
HEAD_KEEP = 64 * 1024
_CHUNK = 64 * 1024  # bytes per read
_POLL = 0.1  # seconds between checks whether the command has exited
_READ_GRACE = 1.0  # seconds to keep reading once the command has exited or was killed
_TERM_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
_SHELL = shutil.which("bash") or "/bin/sh"
# Supervision (issue 13): the command runs as
#   setpriv --pdeathsig SIGHUP -- sh -c PARENT_CHECK runbook-step OUR_PID \
#     timeout --kill-after=2 --signal=TERM SECS sh -c GUARD runbook-guard bash -c CMD
# in a new session.  GNU `timeout` leads the process group; on the parent-death SIGHUP (or ours,
# or its own SECS elapsing) it signals the whole group, then SIGKILLs it 2 s later if it is still
# alive itself.  It supervises only until bash exits: background processes left behind by a
# finished command are not its business (nor ours, see "lingering").  Fallbacks, probed once:
# `timeout` alone (no parent-death signal: a step without a timeout outlives a killed runbook),
# then the bare command (only a live runbook stops it).
_SUPERVISOR_MARGIN = 0.5  # seconds: the supervising `timeout` fires this long after our own deadline
# Run by setpriv once the parent-death signal is set: exit unless our parent is still the one
# that started us.  Without it, a runbook killed between fork and prctl (a few ms; 8 of 60 such
# races in a test) would leave the command unsupervised.
_PARENT_CHECK = '[ "$PPID" = "$1" ] || exit 125; shift; exec "$@"'
# Between `timeout` and the command, a guard for the parent-death signal (SIGHUP, which nothing
# else sends a command of a new session): `timeout` passes it to the whole group, and the guard
# then SIGTERMs the group and SIGKILLs it 2 s later, so that a background process that ignores
# the signals goes too (`timeout` itself stops supervising once bash exits).  The guard ignores
# SIGTERM: when runbook stops a step (killpg SIGTERM, SIGKILL 2 s later) the command ends, `wait`
# returns and the guard exits at once with the command's status.
# (SIGTERM is ignored only once the command runs: an ignored signal is inherited.  SIGPIPE too:
# the guard may report a killed job on standard error, a pipe whose reader, runbook, is gone.)
_GUARD = ('trap \'trap "" HUP; kill -TERM 0 2>/dev/null; RUNBOOK_GUARD=1 sleep 2; kill -KILL 0\' HUP; '
          '"$@" & trap "" TERM PIPE; wait $!')
_supervisor: str | None = None  # "pdeathsig", "timeout" or "none", found once per process


def _supervision() -> str:
    """How commands are supervised here: "pdeathsig" (setpriv + timeout), "timeout" or "none".
    Found by running the wrapper once (an old setpriv lacks --pdeathsig; a BSD or busybox
    timeout may not take these options)."""
    global _supervisor
    if _supervisor is None:
        found = "none"
        if sys.platform.startswith("linux") and shutil.which("timeout"):
            for mode in ("pdeathsig", "timeout"):
                if mode == "pdeathsig" and not shutil.which("setpriv"):
                    continue
                argv = _wrap(mode, ["/bin/sh", "-c", "exit 3"], None)
                try:
                    code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, timeout=10, start_new_session=True).returncode
                except (OSError, subprocess.SubprocessError):
                    continue
                if code == 3:
                    found = mode
                    break
        _supervisor = found
    return _supervisor


def _wrap(mode: str, argv: list[str], timeout: float | None) -> list[str]:
    """``argv`` under the supervisor of ``mode``.

    Gotcha: the parent-death signal fires when the *thread* that spawned the
    process ends, not the process.  ``run`` blocks the calling thread until the
    command has ended (or been killed), so calling it from a worker thread is
    fine; spawning from a thread that returns while the command runs is not.
    (runbook runs shell steps on its main thread.)
    """
    if mode == "none":
        return argv
    secs = "0" if timeout is None else f"{max(0.001, timeout + _SUPERVISOR_MARGIN):.3f}"
    if mode == "pdeathsig":
        argv = ["/bin/sh", "-c", _GUARD, procs.GUARD_MARK, *argv]
    line = ["timeout", f"--kill-after={_TERM_GRACE:g}", "--signal=TERM", secs, *argv]
    if mode == "pdeathsig":
        line = ["setpriv", "--pdeathsig", "SIGHUP", "--", "/bin/sh", "-c", _PARENT_CHECK, "runbook-step",
                str(os.getpid()), *line]
    return line


def normalize(value) -> dict:
    return {"command": value} if isinstance(value, str) else dict(value)


def templates(body: dict) -> list[tuple[str, str, str]]:
    out = [("command", body["command"], "shell")]
    if "cwd" in body:
        out.append(("cwd", body["cwd"], "text"))
    # "env": values that go to the process, never to the screen, so a secret is fine here
    out += [(f"env.{k}", v, "env") for k, v in (body.get("env") or {}).items() if isinstance(v, str)]
    return out


def edges(body: dict) -> list[tuple[str, str]]:
    return []


def action(step, r) -> Action:
    command, secret_env = r.shell(step.body["command"])
    detail = {"command": command}
    env = dict(secret_env)
    if "cwd" in step.body:
        detail["cwd"] = r.text(step.body["cwd"])
    if step.body.get("env"):
        rendered = {k: r.value(str(v)) for k, v in step.body["env"].items()}
        detail["env"] = sorted(rendered)  # names only: values may be secret
        env.update(rendered)
    return Action(summary=command, targets=["localhost"], detail=detail, env=env)


def details(action: Action) -> list[tuple[str, str]]:
    rows = [("command", action.summary)]
    if action.detail.get("cwd"):
        rows.append(("in directory", action.detail["cwd"]))
    if action.env:
        rows.append(("environment", ", ".join(sorted(action.env)) + " (values not shown)"))
    return rows


class Capture:
    """One output stream, kept bounded while it is read: the first
    ``head`` bytes and the last ``limit - head`` bytes (the
    tail as the chunks read, so that dropping old output copies nothing)."""

    def __init__(self, limit: int = MAX_CAPTURE, head: int = HEAD_KEEP) -> None:
        self.limit, self.head_keep = limit, head
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.size = 0  # bytes in tail
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.head_keep - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if not data:
            return
        self.tail.append(data)
        self.size += len(data)
        while self.size - len(self.tail[0]) >= self.limit - self.head_keep:
            n = len(self.tail.popleft())
            self.size -= n
            self.dropped += n

    def text(self) -> str:
        """The kept output, decoded (empties the buffers: call once)."""
        excess = self.size - (self.limit - self.head_keep)
        if excess > 0:
            self.tail[0] = self.tail[0][excess:]
            self.size -= excess
            self.dropped += excess
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        if self.dropped:
            pieces = [self.head.decode("utf-8", "replace"), f"\n[... {self.dropped} bytes not kept ...]\n"]
        else:  # one piece: a character may span head and tail
            pieces = [decoder.decode(bytes(self.head))]
        self.head = bytearray()
        while self.tail:
            pieces.append(decoder.decode(self.tail.popleft()))
        pieces.append(decoder.decode(b"", True))
        return "".join(pieces)


class _Reader:
    """Reads the command's stdout and stderr pipes without blocking."""

    def __init__(self, proc: subprocess.Popen, on_data=None) -> None:
        self.proc = proc
        self.on_data = on_data  # callable(stream, bytes): the operator watches the output live
        self.out, self.err = Capture(), Capture()
        self.sel = selectors.DefaultSelector()
        for f, cap in ((proc.stdout, self.out), (proc.stderr, self.err)):
            os.set_blocking(f.fileno(), False)
            self.sel.register(f, selectors.EVENT_READ, cap)

    @property
    def open(self) -> bool:
        return bool(self.sel.get_map())

    def read(self, wait: float) -> None:
        """Read what is ready within ``wait`` seconds; sleep if both pipes are closed."""
        if not self.open:
            time.sleep(max(0.0, wait))
            return
        for key, _ in self.sel.select(max(0.0, wait)):
            try:
                data = os.read(key.fd, _CHUNK)
            except BlockingIOError:
                continue
            if data:
                key.data.add(data)
                if self.on_data is not None:
                    self.on_data("stdout" if key.data is self.out else "stderr", data)
            else:
                self.sel.unregister(key.fileobj)
                key.fileobj.close()

    def pump(self, seconds: float, stop=lambda: False) -> None:
        """Read until both pipes are at EOF and ``stop()``, or for ``seconds``."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if (not self.open and stop()) or now >= end:
                return
            self.read(min(_POLL, end - now))

    def close(self) -> None:
        for key in list(self.sel.get_map().values()):
            self.sel.unregister(key.fileobj)
            key.fileobj.close()
        self.sel.close()


def _group_alive(proc: subprocess.Popen) -> bool:
    """True while a process of the command's group is running (zombies,
    which a container without an init may never reap, do not count)."""
    proc.poll()  # reap the leader
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    members = procs.group_members(proc.pid)
    return True if members is None else bool(members)  # no /proc: trust killpg


def _kill(proc: subprocess.Popen, reader: _Reader | None = None) -> None:
    """SIGTERM the process group; SIGKILL what is left of it after 2 s.
    Output written meanwhile is still read (so that no writer blocks on a
    full pipe), then for at most 1 s more."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + _TERM_GRACE
    while _group_alive(proc) and time.monotonic() < end:
        if reader:
            reader.read(min(_POLL, end - time.monotonic()))
        else:
            time.sleep(min(_POLL, max(0.0, end - time.monotonic())))
    if _group_alive(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if reader:
        reader.pump(_READ_GRACE, stop=lambda: proc.poll() is not None)
    try:
        proc.wait(_READ_GRACE)
    except subprocess.TimeoutExpired:
        pass


def _wait(proc: subprocess.Popen, reader: _Reader, deadline: float | None) -> str:
    """Read the output until the command is done.  Returns ``"exited"``,
    ``"lingering"`` (exited, but a background process still holds a pipe)
    or ``"timeout"`` (the deadline passed; the command is still running)."""
    exited_at = None
    while True:
        now = time.monotonic()
        if exited_at is None and not reader.open:
            # both pipes closed: the command is ending; wait for it, don't poll
            try:
                proc.wait(None if deadline is None else max(0.0, deadline - now))
            except subprocess.TimeoutExpired:
                return "timeout"
            return "exited"
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None:
            if not reader.open:
                return "exited"
            if now - exited_at >= _READ_GRACE:
                return "lingering"
            wait = exited_at + _READ_GRACE - now
        elif deadline is not None:
            if now >= deadline:
                return "timeout"
            wait = deadline - now
        else:
            wait = _POLL
        reader.read(min(_POLL, wait))


def run(step, act: Action, ctx) -> StepResult:
    env = os.environ.copy()
    env.update(act.env)
    env["RUNBOOK_RUN_ID"] = ctx.run_id
    env["RUNBOOK_STEP"] = step.id
    mode = _supervision()
    started = time.monotonic()
    deadline = None if ctx.timeout is None else started + ctx.timeout
    try:
        proc = subprocess.Popen(
            _wrap(mode, [_SHELL, "-c", act.detail["command"]], ctx.timeout),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=act.detail.get("cwd"), env=env, start_new_session=True,
        )
    except OSError as exc:
        return StepResult("failed", error=f"cannot start the command: {exc.strerror} ({exc.filename or _SHELL})")
    reader = None
    try:
        event = getattr(ctx, "event", None)
        if event is not None:  # what runs, so that a later look can tell whether it still does
            event("step_process", step=step.id, **procs.identity(proc.pid))
        reader = _Reader(proc, getattr(ctx, "output", None))
        outcome = _wait(proc, reader, deadline)
        if (outcome != "timeout" and mode != "none" and proc.returncode == 124 and deadline is not None
                and time.monotonic() >= deadline):
            outcome = "timeout"  # the supervising `timeout` acted before we did (runbook was slow)
        if outcome == "timeout":
            _kill(proc, reader)
    except BaseException:  # Ctrl-C or SIGTERM: stop the command with us
        _kill(proc)
        raise
    finally:
        if reader:
            reader.close()
    out, err = reader.out.text(), reader.err.text()
    if outcome == "timeout":
        return StepResult(
            "timeout", exit_code=proc.returncode, stdout=out, stderr=err,
            error=f"timed out after {ctx.timeout:g}s; the command was stopped", duration=time.monotonic() - started,
        )
    status = "ok" if proc.returncode == 0 else "failed"
    notes = [] if status == "ok" else [f"exit code {proc.returncode}"]
    if outcome == "lingering":
        notes.append(f"a background process kept the output open; stopped reading {_READ_GRACE:g}s after the command exited")
    return StepResult(
        status, exit_code=proc.returncode, stdout=out, stderr=err,
        error="; ".join(notes) or None, duration=time.monotonic() - started,
    )
