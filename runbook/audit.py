"""The append-only, hash-chained, write-ahead audit log.

The log is one JSON record per line (``audit.jsonl``).  Every record carries
``prev`` (the hash of the record before it, 64 zeros for the first one) and
``hash`` (the SHA-256 of its own canonical JSON without ``hash``), so editing,
removing or reordering a record breaks the chain and :func:`verify` names the
line.  Removing records from the *end* of the log cannot be detected by the
chain alone.

Appends are serialised across processes by an exclusive ``flock`` on a
sibling lock file, written with one ``write`` on an ``O_APPEND`` descriptor
and synced to disk before :meth:`AuditLog.append` returns, so a record is
durable before the step it announces runs.  A line torn by a power loss is
left in place (as evidence) and the next record starts on a new line.

The engine talks to the log through :class:`RunJournal`, which redacts every
field before it is written: secrets never reach the file.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from runbook.errors import RunbookError
from runbook.secrets import Redactor

LOG_NAME = "audit.jsonl"
VERSION = 1
GENESIS = "0" * 64
EXCERPT_CHARS = 2000

_TAIL_CHUNK = 8192
# fdatasync also makes the new file size durable (all an append needs) and
# skips the mtime update that a full fsync would flush.
_sync = getattr(os, "fdatasync", os.fsync)


def default_dir() -> Path:
    """``$RUNBOOK_AUDIT_DIR``, else ``$XDG_STATE_HOME/runbook``, else ``~/.local/state/runbook``."""
    if os.environ.get("RUNBOOK_AUDIT_DIR"):
        return Path(os.environ["RUNBOOK_AUDIT_DIR"]).expanduser()
    if os.environ.get("XDG_STATE_HOME"):
        return Path(os.environ["XDG_STATE_HOME"]).expanduser() / "runbook"
    return Path.home() / ".local" / "state" / "runbook"


def new_run_id() -> str:
    """A unique, time-sortable run id such as ``20261126T121500Z-3f9a1c``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex()


def who() -> str:
    """The operator: the login name, plus ``via sudo from X`` under sudo."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no USER/LOGNAME variable
        user = f"uid {os.getuid()}"
    sudo_user = os.environ.get("SUDO_USER")
    return f"{user} via sudo from {sudo_user}" if sudo_user else user


def hostname() -> str:
    """This machine's name, as recorded in ``run_started``."""
    return socket.gethostname()


def now() -> str:
    """The current time as the log writes it (RFC 3339, UTC, microseconds)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# What a ``decision`` record's ``how`` says: before a step ran, or the operator's choice after it failed.
BEFORE_STEP_HOW = ("prompt", "--yes", "no-terminal", "answer-flag", "step-mode")
AFTER_FAILURE_HOW = ("retry", "skip", "on_failure", "abort")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time (the log's ``ts``, Alertmanager's ``startsAt``, a
    Kubernetes timestamp) in UTC; None when absent, unreadable or Alertmanager's
    zero time.  Reads ``Z`` and nanoseconds on every supported Python."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    m = re.match(r"(.*?\.)(\d+)(.*)$", text)
    if m:  # at most microseconds, padded: Python < 3.11 wants exactly 3 or 6 digits
        text = f"{m[1]}{m[2][:6].ljust(6, '0')}{m[3]}"
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    t = t.astimezone(timezone.utc)
    return None if t.year <= 1 else t


def _canonical(obj: Any) -> bytes:
    """The bytes that are hashed (and written).

    Lone surrogates (undecodable process output) are written as JSON ``\\uXXXX``
    escapes, which read back as the same string, so hashing stays stable.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return text.encode("utf-8", "backslashreplace")


def _digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (str keys; other objects turned into strings)."""
    return json.loads(json.dumps(value, default=str))


def _parse(line: bytes) -> dict[str, Any] | None:
    """The record on ``line``, or None when it is not a JSON object with a chain."""
    try:
        obj = json.loads(line)
    except ValueError:  # includes UnicodeDecodeError
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("hash"), str) or not isinstance(obj.get("prev"), str):
        return None
    return obj


class AuditLog:
    """The audit log file in ``directory`` (default: :func:`default_dir`).

    The file and its lock are opened on the first append and stay open until
    :meth:`close`; use the object as a context manager.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None):
        self.directory = Path(directory) if directory is not None else default_dir()
        self.path = self.directory / LOG_NAME
        self._lock_path = self.directory / (LOG_NAME + ".lock")
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._thread_lock = threading.Lock()  # flock does not exclude threads sharing one descriptor

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock_fd = None

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Chain, hash and durably append a copy of ``record``; return the copy as written.

        Sets ``prev``, ``v``, ``hash`` and ``ts`` (unless given).
        """
        record = _jsonable(record)
        with self._thread_lock:
            try:
                fd, lock_fd = self._open()
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                try:
                    prev, torn = self._tail(fd)
                    record.setdefault("ts", now())
                    record["prev"] = prev
                    record["v"] = VERSION
                    record.pop("hash", None)
                    record["hash"] = _digest(record)
                    data = (b"\n" if torn else b"") + _canonical(record) + b"\n"
                    while data:  # one write in practice; a short write is finished, not left torn
                        data = data[os.write(fd, data) :]
                    _sync(fd)
                finally:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
            except OSError as exc:
                raise RunbookError(
                    f"cannot write the audit log {self.path}: {exc.strerror or exc} "
                    "(set RUNBOOK_AUDIT_DIR to a writable directory)"
                ) from None
        return record

    def _open(self) -> tuple[int, int]:
        if self._fd is None or self._lock_fd is None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            created = not self.path.exists()
            lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError:
                os.close(lock_fd)
                raise
            self._lock_fd = lock_fd
            if created:  # make the new directory entry itself durable
                dir_fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        return self._fd, self._lock_fd

    def _tail(self, fd: int) -> tuple[str, bool]:
        """(hash of the last record, whether the file ends inside a torn line).

        Reads backwards from the end just far enough to see the last two lines.
        """
        pos = os.fstat(fd).st_size
        buf = b""
        while pos > 0 and buf.count(b"\n") < 2:
            n = min(_TAIL_CHUNK, pos)
            pos -= n
            buf = os.pread(fd, n, pos) + buf
        lines = buf.split(b"\n")
        if pos > 0:
            del lines[0]  # may start mid-line
        if lines == [b""]:
            return GENESIS, False
        torn = lines[-1] != b""
        if torn:
            whole = _parse(lines[-1])  # only the newline may be missing
            if whole is not None:
                return whole["hash"], True
        if len(lines) < 2:  # the file holds only a torn line
            return GENESIS, torn
        last = _parse(lines[-2])
        if last is None:
            raise RunbookError(
                f"cannot append to the audit log {self.path}: its last record is damaged "
                f"(see `runbook audit verify {self.path}`)"
            )
        return last["hash"], torn


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int  # valid records before the first problem (all of them when ok)
    line: int | None  # first bad line, 1-based
    message: str  # "ok: ..." or "line N: what is wrong"
    problem: str = ""  # what is wrong, without the line number


def verify(path: str | os.PathLike[str]) -> VerifyResult:
    """Check every record's hash and the chain; stop at the first bad line."""
    path = Path(path)
    prev = GENESIS
    records = 0
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise RunbookError(f"{path}: cannot read the audit log: {exc.strerror or exc}") from None
    with f:
        for number, line in enumerate(f, start=1):
            record = _parse(line)
            if record is None:
                problem = _unreadable(line)
            elif record["hash"] != _digest(record):
                problem = "record was modified (hash mismatch)"
            elif record["prev"] != prev:
                problem = "chain broken: " + (
                    f"prev does not match the hash of line {number - 1} (a record was removed or reordered)"
                    if number > 1
                    else "the first record does not start the chain (records were removed from the start)"
                )
            else:
                records += 1
                prev = record["hash"]
                continue
            return VerifyResult(False, records, number, f"line {number}: {problem}", problem)
    return VerifyResult(True, records, None, f"ok: {records} records, chain intact")


def _unreadable(line: bytes) -> str:
    """Why ``line``, which is not a chained record, cannot be read."""
    if not line.endswith(b"\n"):
        return "incomplete record at the end of the file (a write torn by a crash or power loss)"
    if not line.strip():
        return "empty line"
    try:
        json.loads(line)
    except ValueError:
        return "not valid JSON (damaged, or a write torn by a crash or power loss)"
    return "not an audit record (no hash or prev field)"


def read_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of the log in order (none if it does not exist).

    Damaged lines are skipped; :func:`verify` is what reports them.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise RunbookError(f"{path}: cannot read the audit log: {exc.strerror or exc}") from None
    with f:
        for line in f:
            record = _parse(line)
            if record is not None:
                yield record


def in_doubt(records: list[dict[str, Any]]) -> list[str]:
    """Write steps of one run announced by a ``step_intent`` but with no result:
    they may or may not have changed something.

    A declined ``decision`` settles an intent too (the step did not run).  A
    read step without a result is not in doubt: running it again is safe.
    """
    pending: dict[tuple[str, int], str] = {}
    for r in records:
        step = str(r.get("step"))
        if r.get("type") == "step_intent":
            if r.get("effect") == "read":
                continue
            pending[(step, r.get("attempt", 1))] = step
        elif r.get("type") == "step_result":
            pending.pop((step, r.get("attempt", 1)), None)
        elif r.get("type") == "decision" and not r.get("approved"):
            for key in [k for k in pending if k[0] == step]:
                del pending[key]
    return list(dict.fromkeys(pending.values()))


def list_runs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One summary per run, oldest first.

    Keys: ``run``, ``runbook``, ``started``, ``finished``, ``status``,
    ``exit_code``, ``who``, ``host``, ``dry_run``, ``steps`` (distinct steps
    announced) and ``in_doubt``.  Without a ``run_finished`` record the status
    is ``in doubt`` when a step may have run without its result being
    recorded, else ``in progress`` (a run that died between steps looks the same).
    """
    runs: dict[str, list[dict[str, Any]]] = {}
    for record in read_records(path):
        if "run" in record:
            runs.setdefault(str(record["run"]), []).append(record)
    return [summarize(records) for records in runs.values()]


def last_finish(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's ``run_finished`` record, or None while it has not finished: a
    ``resumed`` record after a finish opens the run again."""
    for r in reversed(records):
        if r.get("type") == "run_finished":
            return r
        if r.get("type") == "resumed":
            return None
    return None


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of one run (see :func:`list_runs`) from its records."""
    started = next((r for r in records if r.get("type") == "run_started"), {})
    finished = last_finish(records)
    doubt = in_doubt(records)
    if finished is not None:
        status, exit_code = str(finished.get("status")), finished.get("exit_code")
    else:
        status, exit_code = ("in doubt" if doubt else "in progress"), None
    return {
        "run": str(records[0]["run"]),
        "runbook": started.get("runbook"),
        "started": started.get("ts", records[0].get("ts")),
        "finished": finished.get("ts") if finished else None,
        "status": status,
        "exit_code": exit_code,
        "who": started.get("who"),
        "host": started.get("host"),
        "dry_run": started.get("dry_run"),
        "steps": len({r.get("step") for r in records if r.get("type") == "step_intent"}),
        "in_doubt": doubt,
    }


def run_records(path: str | os.PathLike[str], run_id: str) -> list[dict[str, Any]]:
    """The records of one run, in order; ``run_id`` may be a unique prefix."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for record in read_records(path):
        rid = str(record.get("run"))
        if "run" in record and rid.startswith(run_id):
            runs.setdefault(rid, []).append(record)
    if run_id in runs:
        return runs[run_id]
    if not runs:
        raise RunbookError(f"no run {run_id!r} in the audit log {path} (see `runbook audit list`)")
    if len(runs) > 1:
        shown = ", ".join(list(runs)[:5]) + (", ..." if len(runs) > 5 else "")
        raise RunbookError(f"run id {run_id!r} is ambiguous: {len(runs)} runs start with it ({shown})")
    return next(iter(runs.values()))


def _excerpt(text: str) -> str:
    if len(text) <= EXCERPT_CHARS:
        return text
    return f"[... {len(text) - EXCERPT_CHARS} earlier characters not shown ...]\n" + text[-EXCERPT_CHARS:]


class RunJournal:
    """What the engine writes about one run.

    Every field is redacted before it is appended, and every method returns
    only once its record is durable.
    """

    def __init__(self, log: AuditLog, run_id: str, redactor: Redactor):
        self.log = log
        self.run_id = run_id
        self.redactor = redactor

    def _write(self, record_type: str, fields: dict[str, Any]) -> dict[str, Any]:
        # Made plain JSON first, so objects turned into strings are redacted too.
        record = _jsonable({"type": record_type, **fields, "run": self.run_id})
        return self.log.append(self.redactor.data(record))

    def run_started(
        self,
        *,
        runbook: str,
        path: str,
        sha256: str,
        git_commit: str | None,
        params: dict[str, Any],
        dry_run: bool,
        who: str,
        host: str,
        argv: list[str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        return self._write(
            "run_started",
            {
                **extra,
                "runbook": runbook,
                "path": path,
                "sha256": sha256,
                "git_commit": git_commit,
                "params": params,
                "dry_run": dry_run,
                "who": who,
                "host": host,
                "argv": argv,
            },
        )

    def step_intent(
        self,
        *,
        step: str,
        kind: str,
        stage: str,
        effect: str,
        targets: list[str],
        rendered: str | dict[str, Any],
        attempt: int = 1,
        **extra: Any,
    ) -> dict[str, Any]:
        """Written before the step runs (write-ahead).  ``extra``: e.g. ``runner``,
        the process that runs the step's work (pid, start time, boot id, host)."""
        return self._write(
            "step_intent",
            {
                "step": step,
                "kind": kind,
                "stage": stage,
                "effect": effect,
                "targets": targets,
                "rendered": rendered,
                "attempt": attempt,
                **extra,
            },
        )

    def decision(self, *, step: str, approved: bool, by: str, how: str, **extra: Any) -> dict[str, Any]:
        """``how``: ``prompt``, ``step-mode``, ``--yes``, ``no-terminal`` or
        ``answer-flag`` before a step (``choice``: run, skip, abort); after a
        failure the operator's choice: ``retry``, ``skip``, ``abort`` or
        ``on_failure``; on resume ``mark-done`` or ``rerun`` for a step in doubt."""
        return self._write("decision", {"step": step, "approved": approved, "by": by, "how": how, **extra})

    def step_result(
        self,
        *,
        step: str,
        status: str,
        exit_code: int | None,
        duration: float,
        output: str = "",
        error: str | None = None,
        outputs: dict[str, Any] | None = None,
        attempt: int = 1,
        attempts: int | None = None,
        data: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Keeps a digest, the size and the tail of the output, never all of it.

        ``attempt`` pairs the result with its ``step_intent``; ``attempts`` is
        how often the step ran behind that one intent (retries, until polls)."""
        # Redact before cutting, so a secret across the cut cannot leak in part.
        text = self.redactor.text(output)
        raw = text.encode("utf-8", "backslashreplace")
        return self._write(
            "step_result",
            {
                "step": step,
                "status": status,
                "exit_code": exit_code,
                "duration": round(duration, 6),
                "output_sha256": hashlib.sha256(raw).hexdigest(),
                "output_bytes": len(raw),
                "output_excerpt": _excerpt(text),
                "error": error,
                "outputs": outputs,
                "attempt": attempt,
                **({"attempts": attempts} if attempts is not None else {}),
                **({"data": data} if data else {}),
                **extra,
            },
        )

    def run_finished(self, *, status: str, exit_code: int, **extra: Any) -> dict[str, Any]:
        """``extra``: e.g. ``signal`` (SIGINT, SIGTERM, SIGHUP) for an interrupted run."""
        return self._write("run_finished", {"status": status, "exit_code": exit_code, **extra})

    def event(self, type: str, **fields: Any) -> dict[str, Any]:
        """Any other record (``run`` cannot be overridden)."""
        return self._write(type, fields)
