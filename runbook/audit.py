"""The append-only, hash-chained, sealed, write-ahead audit log.

The log is one JSON record per line (``audit.jsonl``), each line exactly the
canonical JSON of its record (keys sorted, no spaces, UTF-8).  A record carries
``prev`` (the ``hash`` of the record before it, 64 zeros for the first one),
``epoch`` and ``hash``, the SHA-256 of the canonical JSON of the record without
``hash`` and ``sig`` (its *body*), and ``sig``, the Ed25519 signature of that
body by the key of its epoch (see :mod:`runbook.seal`).  ``verify`` also checks
that every line is byte for byte its canonical form, so a change that decodes to
the same JSON (``\\u001B`` for ``\\u001b``) is found too.

Epochs: the first sealed record is an ``epoch`` record opening epoch 0 with the
anchor's public key (``verify.pub``); each later ``epoch`` record, signed by the
old key, opens the next epoch with a new key, written before each run starts
(``run_started``, ``resumed``) and at least every :data:`seal.EPOCH_RECORDS`
records; the old private key is then destroyed.  Records written before sealing
(``v`` 1: ``hash`` over the canonical JSON without ``hash``, no ``sig``) are kept
and still chained; the first sealed record pins them.

Beside the log, ``audit.head`` (replaced atomically after every append) holds
the number of records, the last hash and the epoch, signed by the current key:
records cut off the end are found.

Appends are serialised across processes by an exclusive ``flock`` on a
sibling lock file, written with one ``write`` on an ``O_APPEND`` descriptor
and synced to disk before :meth:`AuditLog.append` returns, so a record is
durable before the step it announces runs.  A line torn by a crash is kept: the
next writer ends it with a newline and appends a ``torn_tail`` record holding
its bytes, so the chain goes on from the last whole record.

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
VERSION = 2  # sealed records; 1: records written before sealing (hash chain only)
GENESIS = "0" * 64
ROTATE_ON = ("run_started", "resumed")  # a new epoch (a new key) before each of these records
SEAL_TYPES = ("epoch", "torn_tail")  # records the log writes for itself (not in read_records)
SEAL_FIELDS = ("epoch", "sig")  # fields of every sealed record (not in read_records)
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
    """The bytes that are hashed, signed and written: the JSON with sorted keys and no spaces.

    Lone surrogates (undecodable process output) are written as JSON ``\\uXXXX``
    escapes, which read back as the same string, so the form stays stable.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return text.encode("utf-8", "backslashreplace")


def _body(record: dict[str, Any]) -> bytes:
    """What a sealed record's ``hash`` digests and its ``sig`` signs: its canonical JSON without both."""
    return _canonical({k: v for k, v in record.items() if k not in ("hash", "sig")})


def _digest(record: dict[str, Any]) -> str:
    """The ``hash`` a record must carry (sealed, or written before sealing)."""
    if "sig" in record:
        return hashlib.sha256(_body(record)).hexdigest()
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


def head_path(log_path: str | os.PathLike[str]) -> Path:
    """The head file beside a log: ``audit.jsonl`` → ``audit.head``."""
    return Path(log_path).with_suffix(".head")


def _read_head(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the head, "") or (None, why not: "" when there is no head file)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"cannot read the head file {path}: {exc.strerror or exc}"
    try:
        head = json.loads(data)
    except ValueError:
        head = None
    if (
        not isinstance(head, dict)
        or not all(type(head.get(k)) is int and head[k] >= 0 for k in ("records", "epoch", "epoch_start"))
        or not isinstance(head.get("hash"), str)
    ):
        return None, f"the head file {path} is damaged"
    return head, ""


class AuditLog:
    """The audit log file in ``directory`` (default: :func:`default_dir`).

    The file and its lock are opened on the first append and stay open until
    :meth:`close`; use the object as a context manager.  The sealing keys are in
    :func:`runbook.seal.key_dir` of the directory, created on the first append.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None):
        self.directory = Path(directory) if directory is not None else default_dir()
        self.path = self.directory / LOG_NAME
        self.head_path = head_path(self.path)
        self._lock_path = self.directory / (LOG_NAME + ".lock")
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._thread_lock = threading.Lock()  # flock does not exclude threads sharing one descriptor
        self._key_dir: Path | None = None
        self._key: Any = None  # the current epoch's seal.Key, as last read
        self._key_stat: tuple[int, int] | None = None
        self._head: dict[str, Any] | None = None  # the head as this object last wrote it

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
        self._key = None

    @property
    def key_dir(self) -> Path:
        from runbook import seal

        if self._key_dir is None:
            self._key_dir = seal.key_dir(self.directory)
        return self._key_dir

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Chain, hash, seal and durably append a copy of ``record``; return the copy as written.

        Sets ``prev``, ``v``, ``epoch``, ``hash``, ``sig`` and ``ts`` (unless given).
        May write an ``epoch`` record (a new key) and a ``torn_tail`` record first.
        """
        record = _jsonable(record)
        if record.get("type") in SEAL_TYPES:
            raise RunbookError(f"record type {record['type']!r} is reserved for the audit log's own records")
        with self._thread_lock:
            try:
                fd, lock_fd = self._open()
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                try:
                    record = self._append_locked(fd, record)
                finally:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
            except OSError as exc:
                raise RunbookError(
                    f"cannot write the audit log {self.path}: {exc.strerror or exc} "
                    "(set RUNBOOK_AUDIT_DIR to a writable directory)"
                ) from None
        return record

    def _append_locked(self, fd: int, record: dict[str, Any]) -> dict[str, Any]:
        from runbook import seal

        last, fragment, newline = self._tail(fd)
        prev = last["hash"] if last is not None else GENESIS
        key = self._current_key(last) if last is not None and "sig" in last else None
        count, epoch_start = self._position(fd, prev)
        data = bytearray(b"\n" if newline else b"")
        stamp = now()

        def emit(r: dict[str, Any], signer: Any, epoch: int | None = None) -> None:
            nonlocal prev, count
            r.setdefault("ts", stamp)
            r["prev"] = prev
            for k in ("hash", "sig", "epoch"):
                r.pop(k, None)
            if signer is None:  # the log is not sealed yet: as written before sealing
                r["v"] = 1
                r["hash"] = _digest(r)
            else:
                r["v"] = VERSION
                r["epoch"] = signer.epoch if epoch is None else epoch
                body = _body(r)
                r["hash"] = hashlib.sha256(body).hexdigest()
                r["sig"] = signer.sign(body)
            data.extend(_canonical(r) + b"\n")
            prev = r["hash"]
            count += 1

        if fragment is not None:  # a write torn by a crash: keep its bytes, go on from the last whole record
            size = os.fstat(fd).st_size
            emit({"type": "torn_tail", "line": self._newlines(fd) + 1, "offset": size - len(fragment),
                  "length": len(fragment), "bytes": seal.b64(fragment)}, key)
        if key is None:  # the first sealed record: a new key and its anchor
            key = self._new_chain()
            emit({"type": "epoch", "public_key": seal.b64(key.public), "anchor": True}, key)
            epoch_start = count
        rotated = None
        if (record.get("type") in ROTATE_ON and count > epoch_start) or count - epoch_start >= seal.EPOCH_RECORDS:
            rotated = seal.generate(key.epoch + 1, key.anchor, key.log)
            seal.write_key(self.key_dir / seal.NEXT_NAME, rotated)
            emit({"type": "epoch", "public_key": seal.b64(rotated.public)}, key, epoch=rotated.epoch)
            key = rotated
            epoch_start = count
        emit(record, key)

        view = memoryview(bytes(data))
        while view:  # one write in practice; a short write is finished, not left torn
            view = view[os.write(fd, view) :]
        _sync(fd)
        if rotated is not None:  # the new epoch is in the log: destroy the old key
            os.replace(self.key_dir / seal.NEXT_NAME, self.key_dir / seal.KEY_NAME)
            seal._fsync_dir(self.key_dir)
            self._remember(rotated)
        head = {"v": 1, "records": count, "hash": prev, "epoch": key.epoch, "epoch_start": epoch_start, "ts": stamp}
        head["sig"] = key.sign(_canonical(head))
        seal.write_atomic(self.head_path, _canonical(head) + b"\n", sync=False)  # the log itself is synced
        self._head = head
        return record

    def _remember(self, key: Any) -> None:
        from runbook import seal

        self._key = key
        st = os.stat(self.key_dir / seal.KEY_NAME)
        self._key_stat = (st.st_ino, st.st_mtime_ns)

    def _refuse(self, why: str) -> RunbookError:
        return RunbookError(
            f"cannot seal the audit log {self.path}: {why} (see `runbook audit verify {self.path}`; to start a new "
            f"sealed log, move {self.path.name} and {self.head_path.name} aside)"
        )

    def _current_key(self, last: dict[str, Any]) -> Any:
        """The key of the epoch the log's last record is sealed in; finishes a rotation
        that a crash interrupted; refuses a key that does not belong to the log."""
        from runbook import seal

        epoch = last.get("epoch")
        path = self.key_dir / seal.KEY_NAME
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if (self._key is not None and st is not None and self._key.epoch == epoch
                and self._key_stat == (st.st_ino, st.st_mtime_ns)):
            return self._key
        key = seal.read_key(path)
        if key is not None and key.epoch == epoch and _sealed_by(last, key):
            try:
                os.unlink(self.key_dir / seal.NEXT_NAME)  # a rotation that died before its epoch record
            except FileNotFoundError:
                pass
        else:
            nxt = seal.read_key(self.key_dir / seal.NEXT_NAME)
            if nxt is not None and nxt.epoch == epoch and _sealed_by(last, nxt):  # died after it: finish
                os.replace(self.key_dir / seal.NEXT_NAME, path)
                seal._fsync_dir(self.key_dir)
                key = nxt
            elif key is None:
                raise self._refuse(f"its sealing key {path} is missing")
            elif key.epoch != epoch:
                raise self._refuse(
                    f"its last record is sealed in epoch {epoch} but the key {path} is for epoch {key.epoch} "
                    "(a key restored from a backup, or the key of another log)"
                )
            else:
                raise self._refuse(f"its last record was not sealed with the key {path} (the key of another log?)")
        self._remember(key)
        return key

    def _new_chain(self) -> Any:
        """Key and anchor (``verify.pub``) of epoch 0, for a log with no sealed record yet."""
        from runbook import seal

        self.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        me = str(self.path.resolve())
        try:
            other = seal.read_key(self.key_dir / seal.KEY_NAME)
        except RunbookError:
            other = None
        if other is not None and other.log and other.log != me and _nonempty(other.log):
            raise self._refuse(
                f"the key directory {self.key_dir} seals another log, {other.log} (give each log its own "
                "RUNBOOK_KEY_DIR)"
            )
        seal.retire(self.key_dir)  # keys of a log that is gone: kept aside as evidence
        key = seal.generate(0, log=me)
        seal.write_anchor(self.key_dir, key.public)
        seal.write_key(self.key_dir / seal.KEY_NAME, key)
        self._remember(key)
        return key

    def _position(self, fd: int, prev: str) -> tuple[int, int]:
        """(records in the log, the number of the record that opened the current epoch),
        from the head when it matches the last record, else counted."""
        if self._head is not None and self._head["hash"] == prev:
            return self._head["records"], self._head["epoch_start"]
        head, _ = _read_head(self.head_path)
        if head is not None and head["hash"] == prev:
            return head["records"], head["epoch_start"]
        count = epoch_start = 0
        named = None  # the hash of the record the head names
        for line in self._lines(fd):
            record = _parse(line)
            if record is not None:
                count += 1
                if record.get("type") == "epoch" and "sig" in record:
                    epoch_start = count
                if head is not None and count == head["records"]:
                    named = record["hash"]
        # A head behind the log is a crash between the two writes; one ahead of it, or naming
        # another record, is evidence of records removed or rewritten: do not write over it.
        if head is not None and head["records"] > count:
            raise self._refuse(f"the log ends at record {count} but the head says {head['records']} "
                               "(records were removed from the end)")
        if head is not None and named != head["hash"]:
            raise self._refuse(f"record {head['records']} is not the one the head names (the log was rewritten)")
        return count, epoch_start

    def _lines(self, fd: int) -> Iterator[bytes]:
        with open(os.dup(fd), "rb", closefd=True) as f:
            f.seek(0)
            yield from f

    def _newlines(self, fd: int) -> int:
        return sum(line.endswith(b"\n") for line in self._lines(fd))

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

    def _tail(self, fd: int) -> tuple[dict[str, Any] | None, bytes | None, bool]:
        """(the last whole record or None, the torn bytes after it or None, whether
        the file ends without a newline).

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
            return None, None, False
        torn = lines[-1] != b""
        fragment = None
        if torn:
            whole = _parse(lines[-1])  # only the newline may be missing
            if whole is not None:
                return whole, None, True
            fragment = lines[-1]
        if len(lines) < 2:  # the file holds only a torn line
            return None, fragment, torn
        last = _parse(lines[-2])
        if last is None:
            raise RunbookError(
                f"cannot append to the audit log {self.path}: its last record is damaged "
                f"(see `runbook audit verify {self.path}`)"
            )
        return last, fragment, torn


def _nonempty(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def _sealed_by(record: dict[str, Any], key: Any) -> bool:
    """Whether ``record`` (the last of the log) belongs to ``key``'s epoch: an ``epoch`` record
    announces the key; any other record is signed by it."""
    from runbook import seal

    if record.get("type") == "epoch":
        return record.get("public_key") == seal.b64(key.public)
    return seal.check(key.public, record.get("sig"), _body(record))


# --- verification ----------------------------------------------------------------------

STATUSES = ("ok", "torn", "tampered", "unsealed", "key-missing")


@dataclass(frozen=True)
class VerifyResult:
    ok: bool  # True for "ok" (repaired torn writes included) and "unsealed" (see status)
    records: int  # valid records before the first problem (all of them when ok)
    line: int | None  # first bad line, 1-based
    message: str  # "ok: ..." or "line N: what is wrong"
    problem: str = ""  # what is wrong, without the line number
    status: str = "ok"  # one of STATUSES
    warnings: tuple[str, ...] = ()  # e.g. no head file: a cut-off end cannot be detected


def _anchor(path: Path, key: str | os.PathLike[str] | None) -> tuple[bytes | None, str]:
    """(the anchor's public key or None when its file is missing, the file's name)."""
    from runbook import seal

    where = Path(key) if key is not None else seal.key_dir(path.parent) / seal.ANCHOR_NAME
    try:
        return seal.read_anchor(where), str(where)
    except FileNotFoundError:
        return None, str(where)
    except OSError as exc:
        raise RunbookError(f"{where}: cannot read the key: {exc.strerror or exc}") from None


def verify(path: str | os.PathLike[str], key: str | os.PathLike[str] | None = None) -> VerifyResult:
    """Check every line against its canonical form, every hash, the chain, every seal
    against its epoch's key (from the anchor: ``key``, else ``verify.pub`` in the log's
    key directory) and the head; stop at the first problem.

    ``status``: ``ok``; ``torn`` (the last line is an incomplete write: a crash, which
    the next append repairs); ``tampered``; ``unsealed`` (every record was written before
    sealing: only the chain is checked); ``key-missing`` (no anchor: the seals cannot be
    proven).  A torn line followed by the ``torn_tail`` record that holds its bytes is a
    repaired crash: ``ok``.
    """
    from runbook import seal

    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise RunbookError(f"{path}: cannot read the audit log: {exc.strerror or exc}") from None
    anchor, anchor_name = _anchor(path, key)
    hpath = head_path(path)
    head, head_problem = _read_head(hpath)

    prev = GENESIS
    records = legacy = 0
    epoch: int | None = None  # the current epoch, once the sealed part has begun
    public = b""  # its key
    keys: dict[int, bytes] = {}
    first_key = b""
    repaired: list[int] = []
    pending: tuple[int, bytes] | None = None  # an unreadable line: a torn write, if a torn_tail follows
    torn_line: int | None = None
    head_hash: str | None = None  # the hash of record number head["records"]
    number = 0

    def bad(line: int, problem: str, status: str = "tampered", n: int | None = None) -> VerifyResult:
        return VerifyResult(False, records if n is None else n, line, f"line {line}: {problem}", problem, status)

    with f:
        for number, raw in enumerate(f, start=1):
            text = raw[:-1] if raw.endswith(b"\n") else raw
            record = _parse(raw)
            if pending is not None:
                line, torn = pending
                if not (record is not None and record.get("type") == "torn_tail" and record.get("line") == line
                        and seal.unb64(record.get("bytes")) == torn):
                    return bad(line, _unreadable(torn + b"\n"))
                repaired.append(line)
                pending = None
            if record is None:
                if not raw.endswith(b"\n"):
                    torn_line = number
                    break
                if not text.strip():
                    return bad(number, "empty line")
                pending = (number, text)
                continue
            problem = None
            if "sig" not in record:
                if epoch is not None:
                    problem = "record is not sealed, after sealed records (its seal was removed)"
                elif record["hash"] != _digest(record):
                    problem = "record was modified (hash mismatch)"
            elif record["hash"] != _digest(record):
                problem = "record was modified (hash mismatch)"
            if problem is None and text != _canonical(record):
                problem = ("record was modified: its bytes are not its canonical JSON "
                           "(a change that reads back the same, e.g. an escape or a number rewritten)")
            if problem is None and record["prev"] != prev:
                problem = "chain broken: " + (
                    f"prev does not match the hash of line {number - 1} (a record was removed or reordered)"
                    if number > 1
                    else "the first record does not start the chain (records were removed from the start)"
                )
            if problem is None and "sig" in record:
                problem, signer = None, public
                e = record.get("epoch")
                if type(e) is not int:
                    problem = "sealed record without an epoch number"
                elif record.get("type") == "epoch":
                    new = seal.unb64(record.get("public_key"))
                    if new is None or len(new) != 32:
                        problem = "epoch record without a valid public key"
                    elif epoch is None:
                        signer = first_key = new
                        if e != 0:
                            problem = (f"the first sealed record opens epoch {e}, not 0 "
                                       "(sealed records were removed from the start)")
                        elif anchor is not None and new != anchor:
                            problem = (f"the log's first seal is by key {seal.fingerprint(new)}, not by the anchor "
                                       f"{anchor_name} (key {seal.fingerprint(anchor)}): either that is the anchor "
                                       "of another log, or this log was re-sealed from its start")
                    elif e != epoch + 1:
                        problem = f"epoch {e} does not follow epoch {epoch} (an epoch record was removed or forged)"
                    if problem is None and not seal.check(signer, record.get("sig"), _body(record)):
                        problem = f"the seal does not verify with the key of epoch {max(e - 1, 0)} (forged)"
                    if problem is None:
                        epoch, public = e, new
                        keys[e] = new
                elif epoch is None:
                    problem = "sealed record before the log's first epoch record (sealed records were removed)"
                elif e != epoch:
                    problem = f"record is sealed for epoch {e} but sits in epoch {epoch} (moved or forged)"
                elif not seal.check(public, record.get("sig"), _body(record)):
                    problem = (f"the seal does not verify with the key of epoch {epoch} "
                               "(forged, or signed with another epoch's key)")
            if problem is not None:
                return bad(number, problem)
            records += 1
            legacy += "sig" not in record
            prev = record["hash"]
            if head is not None and records == head["records"]:
                head_hash = prev
    if pending is not None:
        return bad(pending[0], _unreadable(pending[1] + b"\n"))

    warnings: list[str] = []
    end = number + 1 if torn_line is None else torn_line
    if head is not None:
        where = f"the head {hpath}"
        if epoch is None:
            if head["records"] > 0:
                return bad(end, f"the log has no sealed record but {where} says {head['records']} records "
                           "(its seals were removed)")
        elif head["epoch"] not in keys:
            return bad(end, f"the log ends at record {records} in epoch {epoch} but {where} is sealed in "
                       f"epoch {head['epoch']} (records were removed from the end)")
        elif not seal.check(keys[head["epoch"]], head.get("sig"),
                            _canonical({k: v for k, v in head.items() if k != "sig"})):
            return bad(end, f"{where} does not verify (forged)")
        elif head["records"] > records:
            return bad(end, f"the log ends at record {records} but the head says {head['records']} "
                       "(records were removed from the end)")
        elif head_hash != head["hash"]:
            return bad(end, f"record {head['records']} is not the one {where} names (the log was rewritten)")
    elif epoch is not None:
        warnings.append(head_problem or f"no head file {hpath}: records cut off the end cannot be detected")
    if epoch is None and records and anchor is not None:
        return bad(1, f"the log has no sealed record, but its anchor {anchor_name} exists (its seals were removed)")

    if epoch is not None and anchor is None:
        problem = (f"cannot verify the seals: key missing ({anchor_name} not found; give the log's anchor with "
                   f"--key). The chain and seals agree with the log's own first key ({seal.fingerprint(first_key)}), "
                   "which proves nothing by itself")
        return VerifyResult(False, records, None, problem, problem, "key-missing", tuple(warnings))
    if torn_line is not None:
        problem = ("incomplete record at the end of the file (a write torn by a crash or power loss; "
                   "the next write repairs it)")
        return VerifyResult(False, records, torn_line, f"line {torn_line}: {problem}", problem, "torn",
                            tuple(warnings))
    if epoch is None and records:
        message = (f"not sealed (written before sealing): {records} records, chain intact; "
                   "without seals anyone who can write the file can rewrite it")
        return VerifyResult(True, records, None, message, message, "unsealed", tuple(warnings))
    message = f"ok: {records} records, chain intact"
    if epoch is not None:
        message += f", sealed ({epoch + 1} epoch{'s' if epoch else ''}, anchor {seal.fingerprint(first_key)})"
        message += ", head matches" if head is not None else ""
        if legacy:
            message += f"; the first {legacy} were written before sealing (chained, not sealed)"
    if repaired:
        message += "; torn writes repaired at line " + ", ".join(map(str, repaired))
    return VerifyResult(True, records, None, message, status="ok", warnings=tuple(warnings))


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
    """The records of the log in order (none if it does not exist), without the
    log's own bookkeeping: the records of :data:`SEAL_TYPES` (new keys, repaired
    torn writes) and the fields of :data:`SEAL_FIELDS` (``prev`` and ``hash`` stay).

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
            if record is not None and not (record.get("type") in SEAL_TYPES and "run" not in record):
                for k in SEAL_FIELDS:
                    record.pop(k, None)
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
