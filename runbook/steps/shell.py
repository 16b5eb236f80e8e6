"""``shell``: a command on the machine running runbook.

    - id: disk
      shell: "df -h {{ params.mount }}"
      readonly: true

The command runs under ``bash -c`` (``sh`` where bash is missing) in its own
process group, with standard input closed.  Template values are shell-quoted;
secrets reach the process through its environment, never its arguments.
A ``timeout`` kills the whole process group.  The effect is ``write`` unless
the step says ``readonly: true``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

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
MAX_CAPTURE = 4 * 1024 * 1024  # bytes kept per stream
_SHELL = shutil.which("bash") or "/bin/sh"


def normalize(value) -> dict:
    return {"command": value} if isinstance(value, str) else dict(value)


def templates(body: dict) -> list[tuple[str, str, str]]:
    out = [("command", body["command"], "shell")]
    if "cwd" in body:
        out.append(("cwd", body["cwd"], "text"))
    out += [(f"env.{k}", v, "text") for k, v in (body.get("env") or {}).items() if isinstance(v, str)]
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
        rendered = {k: r.text(str(v)) for k, v in step.body["env"].items()}
        detail["env"] = sorted(rendered)  # names only: values may be secret
        env.update(rendered)
    return Action(summary=command, targets=["localhost"], detail=detail, env=env)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(2)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run(step, act: Action, ctx) -> StepResult:
    env = os.environ.copy()
    env.update(act.env)
    env["RUNBOOK_RUN_ID"] = ctx.run_id
    env["RUNBOOK_STEP"] = step.id
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [_SHELL, "-c", act.detail["command"]],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=act.detail.get("cwd"), env=env, start_new_session=True,
        )
    except OSError as exc:
        return StepResult("failed", error=f"cannot start the command: {exc.strerror} ({exc.filename or _SHELL})")
    try:
        out, err = proc.communicate(timeout=ctx.timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, err = proc.communicate()
        return StepResult(
            "timeout", exit_code=proc.returncode, stdout=_text(out), stderr=_text(err),
            error=f"timed out after {ctx.timeout:g}s; the command was stopped", duration=time.monotonic() - started,
        )
    except BaseException:  # Ctrl-C or SIGTERM: stop the command with us
        _kill(proc)
        raise
    status = "ok" if proc.returncode == 0 else "failed"
    return StepResult(
        status, exit_code=proc.returncode, stdout=_text(out), stderr=_text(err),
        error=None if status == "ok" else f"exit code {proc.returncode}", duration=time.monotonic() - started,
    )


def _text(b: bytes) -> str:
    if len(b) > MAX_CAPTURE:
        b = b[-MAX_CAPTURE:]
    return b.decode("utf-8", "replace")
