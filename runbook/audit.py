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

Beside the log, ``audit.head`` holds the number of records, the last hash, the
epoch and the anchor's fingerprint, signed by the current key: records cut off the
end are found.  It is written before the log's first sealed record and replaced
after every append so that a power loss leaves the old head or the new one (synced
before it takes the name), never none: a sealed log without a valid head is
tampered with.  Every writer reads it from disk and checks its seal under the lock
before it appends, and refuses to sign a new head over a missing, damaged or
forged one, or over a log that is shorter than its head.  Nor does a writer ever
re-anchor a log that was sealed (seals stripped, an unsealed record forged): it
refuses, and only a log moved aside makes room for a new one.

Appends are serialised across processes by an exclusive ``flock`` on a
sibling lock file, written with one ``write`` on an ``O_APPEND`` descriptor
and synced to disk before :meth:`AuditLog.append` returns, so a record is
durable before the step it announces runs.  Lines torn by a crash (also a repair
torn by another crash) are kept: the next writer ends them with a newline and
appends a ``torn_tail`` record holding all their bytes, so the chain goes on from
the last whole record.  :func:`verify` reads the log and head as they were between
two appends (under the lock, shared), so an append in progress is not a torn write.

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
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from runbook.errors import RunbookError, UsageError
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
BEFORE_STEP_HOW = ("prompt", "--yes", "no-terminal", "answer-flag", "step-mode", "worker", "auto-approved")
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


def _head_from(data: bytes | None, path: Path | str, name: str = "") -> tuple[dict[str, Any] | None, str]:
    """(the head in ``data``, "") or (None, why not: "" when there is no head file); ``name``: the
    head's, when it is not a file ``path``."""
    if data is None:
        return None, ""
    try:
        head = json.loads(data)
    except ValueError:
        head = None
    if (
        not isinstance(head, dict)
        or not all(type(head.get(k)) is int and head[k] >= 0 for k in ("records", "epoch", "epoch_start"))
        or not isinstance(head.get("hash"), str)
        or not (head.get("first") is None or (type(head["first"]) is int and head["first"] >= 0))
    ):
        return None, f"{name or f'the head file {path}'} is damaged"
    return head, ""


def _read_head_bytes(path: Path) -> tuple[bytes | None, str]:
    """(the head file's bytes or None, why it cannot be read: "" when it does not exist)."""
    try:
        return path.read_bytes(), ""
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"cannot read the head file {path}: {exc.strerror or exc}"


def _head_signed(head: dict[str, Any], public: bytes) -> bool:
    from runbook import seal

    return seal.check(public, head.get("sig"), _canonical({k: v for k, v in head.items() if k != "sig"}))


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
        self._lock_path = lock_path(self.path)
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._thread_lock = threading.Lock()  # flock does not exclude threads sharing one descriptor
        self._key_dir: Path | None = None
        self._key: Any = None  # the current epoch's seal.Key, as last read
        self._key_stat: tuple[int, int] | None = None
        self._head_bytes: bytes | None = None  # ... and its bytes
        self._exchange_ok = True  # whether the head can be replaced in place (see _replace_head)

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

        last, torn, newline, torn_offset = self._tail(fd)
        prev = last["hash"] if last is not None else GENESIS
        head_bytes, head_problem = _read_head_bytes(self.head_path)  # always the file, never a copy in memory
        head, damaged = _head_from(head_bytes, self.head_path)
        head_problem = head_problem or damaged
        starting = last is None or "sig" not in last
        if not starting:
            key = self._current_key(last)
            count, epoch_start, first = self._position(fd, prev, key, head_bytes, head, head_problem)
        else:  # no sealed record yet: start the chain (or finish a start cut short by a crash)
            key, count, first = self._start_chain(fd, prev, torn is not None, head_bytes, head, head_problem)
            epoch_start = count
        data = bytearray(b"\n" if newline else b"")
        stamp = now()

        def emit(r: dict[str, Any], signer: Any, epoch: int | None = None) -> None:
            nonlocal prev, count
            r.setdefault("ts", stamp)
            r["prev"] = prev
            for k in ("hash", "sig", "epoch"):
                r.pop(k, None)
            if signer is None:  # before the log's first sealed record: as written before sealing
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

        if torn is not None:  # writes torn by a crash (a repair torn too): keep all their bytes, go on
            emit({"type": "torn_tail", "line": self._count_newlines(fd, torn_offset) + 1, "offset": torn_offset,
                  "length": len(torn), "bytes": seal.b64(torn)}, None if starting else key)
        if starting:  # the first sealed record: epoch 0, the anchor's key
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
        self._write_head(key, count, prev, epoch_start, first, stamp, create=head_bytes is None)
        return record

    def _write_head(self, key: Any, count: int, last_hash: str, epoch_start: int, first: int | None, stamp: str,
                    create: bool) -> None:
        """Replace the head: synced before the rename, so a power loss leaves the old head or the
        new one (a head behind the log is a crash between the two writes), never none."""
        from runbook import seal

        data = self._make_head(key, count, last_hash, epoch_start, first, stamp)
        if not create and self._exchange_ok:
            if _replace_head(self.head_path, data):
                return
            self._exchange_ok = False
        seal.write_atomic(self.head_path, data, sync_dir=create)

    def _make_head(self, key: Any, count: int, last_hash: str, epoch_start: int, first: int | None,
                   stamp: str) -> bytes:
        """The signed head for a log of ``count`` records ending with ``last_hash``
        (remembered as the head this object wrote)."""
        head: dict[str, Any] = {"v": 1, "records": count, "hash": last_hash, "epoch": key.epoch,
                                "epoch_start": epoch_start, "anchor": key.anchor, "ts": stamp}
        if first is not None:
            head["first"] = first
        head["sig"] = key.sign(_canonical(head))
        data = _canonical(head) + b"\n"
        data += b" " * (HEAD_SIZE - len(data) - 1) + b"\n" if len(data) < HEAD_SIZE else b""  # one size: see _replace_head
        self._head_bytes = data
        return data

    def _remember(self, key: Any) -> None:
        from runbook import seal

        self._key = key
        st = os.stat(self.key_dir / seal.KEY_NAME)
        self._key_stat = (st.st_ino, st.st_mtime_ns)

    def _refuse(self, why: str) -> RunbookError:
        return RunbookError(
            f"cannot seal the audit log {self.path}: {why} (see `runbook audit verify {self.path}`; to start a new "
            f"sealed log, move {self.path.name} and {self.head_path.name} aside together, e.g. to "
            f"audit-old.jsonl and audit-old.head)"
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
        seal.secure(self.key_dir)
        seal.clean_temporary(self.key_dir)  # under the lock: leftovers of a writer that crashed
        for leftover in self.directory.glob(f"{self.head_path.name}.tmp*"):
            leftover.unlink(missing_ok=True)
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

    def _start_chain(self, fd: int, prev: str, torn: bool, head_bytes: bytes | None, head: dict[str, Any] | None,
                     head_problem: str) -> tuple[Any, int, int]:
        """(the key of epoch 0, the records in the log, the number of records before the first
        sealed one) for a log whose last record is not sealed.

        Keys of this log are never moved aside here: a log whose seals were stripped, or with a
        forged unsealed record after its sealed ones, is refused, not re-anchored."""
        from runbook import seal

        count = 0
        sealed_seen = False
        forged = None  # the first unsealed record after a sealed one
        for number, line in enumerate(self._lines(fd), start=1):
            r = _parse(line)
            if r is None:
                continue
            count += 1
            if "sig" in r:
                sealed_seen = True
            elif sealed_seen and forged is None:
                forged = number
        if forged is not None:
            raise self._refuse(f"line {forged}: a record is not sealed, after sealed records (forged, or its seal "
                               "removed)")
        me = str(self.path.resolve())
        self.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        seal.secure(self.key_dir)
        seal.clean_temporary(self.key_dir)
        try:
            key = seal.read_key(self.key_dir / seal.KEY_NAME)
            key_problem = ""
        except RunbookError as exc:
            key, key_problem = None, str(exc)
        anchor_path = self.key_dir / seal.ANCHOR_NAME
        first = count + torn
        start = {"records": count, "hash": prev, "inode": os.fstat(fd).st_ino}  # this file, at this point
        if key is not None and key.epoch == 0 and key.log == me and key.start == start:
            # a start cut short by a crash before the first sealed record: finish it with its key
            if anchor_path.exists() and seal.read_anchor(anchor_path) != key.public:
                raise self._refuse(f"its anchor {anchor_path} is not the public key of {self.key_dir / seal.KEY_NAME}")
            if head_problem or head_bytes is not None and not (
                    head is not None and head["records"] == count and head["hash"] == prev and head["epoch"] == 0
                    and _head_signed(head, key.public)):
                raise self._refuse(f"its last record is not sealed, but its head file {self.head_path} says "
                                   "otherwise (its seals were removed)")
            if not anchor_path.exists():
                seal.write_anchor(self.key_dir, key.public)
            self._write_head(key, count, prev, count, first, now(), create=head_bytes is None)
            self._remember(key)
            return key, count, first
        if head_bytes is not None or head_problem:
            says = f" says {head['records']} records up to epoch {head['epoch']}" if head is not None else " exists"
            raise self._refuse(f"its last record is not sealed, but its head file {self.head_path}{says} "
                               "(its seals were removed, or an unsealed record forged)")
        if count or torn:
            if key is not None and key.log == me:
                raise self._refuse(f"it has no sealed record, but the key directory {self.key_dir} holds its "
                                   f"sealing key (epoch {key.epoch}): its seals were removed")
            if key_problem or (key is None and anchor_path.exists()):
                raise self._refuse(f"it has no sealed record, but the key directory {self.key_dir} holds "
                                   f"{'a damaged key' if key_problem else 'an anchor'} (its seals were removed?); "
                                   "a log of its own needs a key directory of its own")
        if key is not None and key.log and key.log != me and _nonempty(key.log):
            raise self._refuse(
                f"the key directory {self.key_dir} seals another log, {key.log} (give each log its own "
                "RUNBOOK_KEY_DIR)"
            )
        seal.retire(self.key_dir)  # keys of a log that is gone: its anchor kept aside, its private key destroyed
        key = seal.generate(0, log=me)
        key.start = start
        seal.write_key(self.key_dir / seal.KEY_NAME, key)
        seal.write_anchor(self.key_dir, key.public)
        # the head before the first sealed record, so that no crash leaves a sealed log without a head
        self._write_head(key, count, prev, count, first, now(), create=True)
        self._remember(key)
        return key, count, first

    def _position(self, fd: int, prev: str, key: Any, head_bytes: bytes | None, head: dict[str, Any] | None,
                  head_problem: str) -> tuple[int, int, int | None]:
        """(records in the log, the number of the record that opened the current epoch, the number of
        records before the first sealed one), from the head on disk when it names the last record
        and its seal verifies with the current key, else counted; refuses a missing or damaged head,
        and one the log does not reach (records cut off the end)."""
        if head is None:
            if head_problem:
                raise self._refuse(f"{head_problem}: records may have been cut off the end")
            raise self._refuse(f"its head file {self.head_path} is missing: records may have been cut off the end")
        if head.get("anchor", key.anchor) != key.anchor:
            raise self._refuse(f"the head file {self.head_path} belongs to another log (anchor {head['anchor']}, "
                               f"this log's is {key.anchor}): this log's head is missing, records may have been "
                               "cut off the end")
        if head["hash"] == prev:
            if head_bytes != self._head_bytes and not (head["epoch"] == key.epoch and _head_signed(head, key.public)):
                raise self._refuse(f"its head file {self.head_path} does not verify with the key of epoch "
                                   f"{key.epoch} (forged or damaged): records may have been cut off the end")
            return head["records"], head["epoch_start"], head.get("first")
        # The head is behind the log (a crash between the two writes) or names another record: count.
        count = epoch_start = 0
        first = None
        named = GENESIS if head["records"] == 0 else None  # the hash of the record the head names
        publics: dict[int, bytes] = {}
        for line in self._lines(fd):
            record = _parse(line)
            if record is not None:
                count += 1
                if record.get("type") == "epoch" and "sig" in record:
                    epoch_start = count
                    if first is None:
                        first = count - 1
                    public = _b64_key(record.get("public_key"))
                    if type(record.get("epoch")) is int and public is not None:
                        publics[record["epoch"]] = public
                if count == head["records"]:
                    named = record["hash"]
        # One ahead of the log, or naming another record, is evidence of records removed or rewritten:
        # do not write over it.
        if head["records"] > count:
            raise self._refuse(f"the log ends at record {count} but the head says {head['records']} "
                               "(records were removed from the end)")
        if named != head["hash"]:
            raise self._refuse(f"record {head['records']} is not the one the head names (the log was rewritten)")
        public = publics.get(head["epoch"])
        if public is None or not _head_signed(head, public):
            raise self._refuse(f"its head file {self.head_path} does not verify with the key of epoch {head['epoch']} "
                               "(forged, damaged or another log's): records may have been cut off the end")
        return count, epoch_start, first

    def _lines(self, fd: int) -> Iterator[bytes]:
        with open(os.dup(fd), "rb", closefd=True) as f:
            f.seek(0)
            yield from f

    def _count_newlines(self, fd: int, upto: int) -> int:
        n = pos = 0
        while pos < upto:
            chunk = os.pread(fd, min(1 << 20, upto - pos), pos)
            if not chunk:
                break
            n += chunk.count(b"\n")
            pos += len(chunk)
        return n

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

    def _tail(self, fd: int) -> tuple[dict[str, Any] | None, bytes | None, bool, int]:
        """(the last whole record or None, the torn bytes after it or None, whether the file
        ends without a newline, the offset of the torn bytes).

        Torn bytes are the lines after the last whole record: a write torn by a crash, and
        any repair of it torn by another (its newline, part of its ``torn_tail`` record);
        the newline the next write adds is not part of them.  Reads backwards from the end,
        each byte once, just far enough to see the last whole record.
        """
        size = os.fstat(fd).st_size
        if size == 0:
            return None, None, False, 0
        newline = os.pread(fd, 1, size - 1) != b"\n"
        end = size if newline else size - 1  # the end of the current line, without its newline
        while True:
            start = _line_start(fd, end)
            line = os.pread(fd, end - start, start)
            last = _parse(line)
            if last is not None:
                break
            if not _torn_like(line):
                raise RunbookError(
                    f"cannot append to the audit log {self.path}: its last record is damaged "
                    f"(see `runbook audit verify {self.path}`)"
                )
            if start == 0:  # the file holds only torn lines
                torn = os.pread(fd, size, 0)
                return None, torn if newline else torn[:-1], newline, 0
            end = start - 1
        if end >= size:  # a whole record whose newline is missing
            return last, None, True, size
        offset = end + 1
        torn = os.pread(fd, size - offset, offset)
        if not torn:
            return last, None, False, size
        return last, torn if newline else torn[:-1], newline, offset


HEAD_SIZE = 1024  # bytes of a head file (its JSON, padded with spaces), so that it is rewritten in place
_RENAME_EXCHANGE = 2
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap the files named ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``);
    False where the system or file system cannot."""
    global _renameat2
    if _renameat2 is None:
        import ctypes
        import platform

        libc = ctypes.CDLL(None, use_errno=True)
        if hasattr(libc, "renameat2"):
            fn = libc.renameat2
            _renameat2 = lambda x, y: fn(-100, x, -100, y, _RENAME_EXCHANGE)  # -100: AT_FDCWD
        else:
            nr = {"x86_64": 316, "aarch64": 276}.get(platform.machine())
            _renameat2 = (lambda x, y: libc.syscall(nr, -100, x, -100, y, _RENAME_EXCHANGE)) if nr else False
    if _renameat2 is False:
        return False
    return _renameat2(os.fsencode(a), os.fsencode(b)) == 0


def _replace_head(path: Path, data: bytes) -> bool:
    """Replace the head ``path`` with ``data`` so that a power loss leaves the old head or the new one,
    never an empty or partial one; False when this way is not available (then the caller writes a
    new file, synced, and renames it over the head).

    A second file, ``audit.head.next``, is kept: ``data`` is written into it in place (it keeps its
    size, so syncing it is cheap: no metadata), synced, then the two names are exchanged in one step;
    the old head, now ``audit.head.next``, is blanked (an old head is what hides records cut off the end)."""
    spare = path.with_name(path.name + ".next")
    try:
        fd = os.open(spare, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if st.st_nlink != 1 or not stat.S_ISREG(st.st_mode):
            return False
        os.pwrite(fd, data, 0)
        if st.st_size != len(data):
            os.ftruncate(fd, len(data))
        _sync(fd)
        if not _exchange(spare, path):
            os.unlink(spare)  # it holds a head: none is left lying around
            return False
    finally:
        os.close(fd)
    try:
        fd = os.open(spare, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.pwrite(fd, b" " * (len(data) - 1) + b"\n", 0)
        finally:
            os.close(fd)
    except OSError:
        pass
    return True


def _torn_like(line: bytes) -> bool:
    """Whether ``line`` (not a whole record) can be what a crash leaves of runbook's writes:
    the start of a record, never anything else (an empty line, text of another program)."""
    return line[:2] in (b"{", b'{"')


def lock_path(log_path: str | os.PathLike[str]) -> Path:
    """The lock file that writers of a log hold (``audit.jsonl.lock``)."""
    p = Path(log_path)
    return p.with_name(p.name + ".lock")


def _line_start(fd: int, end: int) -> int:
    """The offset just after the last newline before ``end`` (0 when there is none)."""
    pos, chunk = end, _TAIL_CHUNK
    while pos > 0:
        n = min(chunk, pos)
        pos -= n
        i = os.pread(fd, n, pos).rfind(b"\n")
        if i >= 0:
            return pos + i + 1
        chunk = min(chunk * 2, 1 << 20)
    return 0


def _b64_key(text: Any) -> bytes | None:
    from runbook import seal

    raw = seal.unb64(text)
    return raw if raw is not None and len(raw) == 32 else None


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


def _anchor(path: Path, key: str | os.PathLike[str] | None) -> tuple[bytes | None, str, str]:
    """(the anchor's public key or None, the file's name, why there is none: "" when its
    file is missing).  A file that cannot be read or is not a key is no anchor either:
    the seals cannot be proven with it (``key-missing``), which is not tampering."""
    from runbook import seal

    where = Path(key) if key is not None else seal.key_dir(path.parent) / seal.ANCHOR_NAME
    try:
        return seal.read_anchor(where), str(where), ""
    except FileNotFoundError:
        return None, str(where), ""
    except OSError as exc:
        return None, str(where), f"cannot read {where}: {exc.strerror or exc}"
    except RunbookError as exc:
        return None, str(where), str(exc)


def _retired_anchor(path: Path, public: bytes) -> Path | None:
    """The anchor kept aside in the log's key directory (``retired-*/verify.pub``) whose key is ``public``."""
    from runbook import seal

    for candidate in seal.retired_anchors(seal.key_dir(path.parent)):
        try:
            if seal.read_anchor(candidate) == public:
                return candidate
        except (OSError, RunbookError):
            continue
    return None


_LOCK_WAIT = 10.0  # seconds verify waits for a writer to finish its append


def _snapshot(path: Path) -> tuple[int, bytes | None, str]:
    """(the log's size, the head's bytes or None, why the head cannot be read) at a moment
    when no writer is in the middle of an append: taken under a shared lock on the writers'
    lock file, when there is one (a read-only copy of a log has none)."""
    import time

    lock_fd = None
    try:
        lock_fd = os.open(lock_path(path), os.O_RDONLY)
    except OSError:
        pass
    try:
        if lock_fd is not None:
            deadline = time.monotonic() + _LOCK_WAIT
            while True:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:  # a writer stuck in an append: go on without it
                        break
                    time.sleep(0.005)
                except OSError:
                    break
        size = os.stat(path).st_size
        head_bytes, head_problem = _read_head_bytes(head_path(path))
        return size, head_bytes, head_problem
    finally:
        if lock_fd is not None:
            os.close(lock_fd)  # releases the lock


def _lines_upto(f: Any, size: int) -> Iterator[bytes]:
    """The lines of ``f`` in its first ``size`` bytes (what writers appended later is not read)."""
    left = size
    for raw in f:
        if left <= 0:
            return
        if len(raw) > left:
            raw = raw[:left]
        left -= len(raw)
        yield raw


def verify(path: str | os.PathLike[str], key: str | os.PathLike[str] | None = None) -> VerifyResult:
    """Check every line against its canonical form, every hash, the chain, every seal
    against its epoch's key (from the anchor: ``key``, else ``verify.pub`` in the log's
    key directory) and the head; stop at the first problem.

    ``status``: ``ok``; ``torn`` (the last lines are an incomplete write: a crash, perhaps
    during the repair of an earlier one, which the next append repairs); ``tampered``
    (a sealed log without a valid head included: records may have been cut off its end);
    ``unsealed`` (every record was written before sealing: only the chain is checked);
    ``key-missing`` (no usable anchor, or the log's anchor was retired: the seals cannot be
    proven).  Torn lines followed by the ``torn_tail`` record that holds their bytes are a
    repaired crash: ``ok``.  The log and its head are read as they were between two
    appends (under the writers' lock, shared), so a write in progress is not a torn write.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise RunbookError(f"{path}: cannot read the audit log: {exc.strerror or exc}") from None
    anchor, anchor_name, anchor_problem = _anchor(path, key)
    hpath = head_path(path)
    try:
        size, head_bytes, head_problem = _snapshot(path)
    except OSError as exc:
        f.close()
        raise RunbookError(f"{path}: cannot read the audit log: {exc.strerror or exc}") from None
    head, damaged = _head_from(head_bytes, hpath)
    place = _Place(
        unit="line", head=f"the head {hpath}", head_name=str(hpath), head_missing=f"the head file {hpath} is missing",
        head_hint=f"; if the log was moved, move its head beside it as {hpath.name}", torn=True,
        retired=(lambda public: _retired_anchor(path, public)) if key is None else None,
    )
    with f:
        return _verify_lines(_lines_upto(f, size), head, head_problem or damaged, anchor, anchor_name,
                             anchor_problem, place)


@dataclass(frozen=True)
class _Place:
    """How :func:`_verify_lines` names what it reads: the lines of a log file and its head file,
    or the rows of a store and its head row."""

    unit: str  # a position: "line" (of the file) or "record" (a row, in order)
    head: str  # the head, as a subject: "the head /x/audit.head"
    head_name: str  # the head, after "but": "/x/audit.head"
    head_missing: str  # why there is no head: "the head file /x/audit.head is missing"
    head_hint: str  # said after "a sealed log always has its head"
    torn: bool  # whether unreadable lines can be writes torn by a crash (a file; never rows)
    retired: Any = None  # public key -> the retired anchor file that holds it, or None


def _verify_lines(lines: Iterable[bytes], head: dict[str, Any] | None, head_problem: str, anchor: bytes | None,
                  anchor_name: str, anchor_problem: str, place: _Place) -> VerifyResult:
    """The checks of :func:`verify` over ``lines`` (each one record's bytes and its newline), in
    order, against ``head`` (parsed; or None and why: ``head_problem``, "" when there is none)
    and ``anchor`` (the public key of epoch 0, or None: ``anchor_problem`` says why, "" when
    ``anchor_name`` was not found); shared by the file log and the stores."""
    from runbook import seal

    retired: Path | None = None  # the log's anchor, found retired in its key directory
    unit = place.unit

    prev = GENESIS
    records = legacy = 0
    epoch: int | None = None  # the current epoch, once the sealed part has begun
    public = b""  # its key
    keys: dict[int, bytes] = {}
    first_key = b""
    repaired: list[int] = []
    pending: list[tuple[int, bytes]] = []  # unreadable lines: torn writes, if a torn_tail follows
    torn_line: int | None = None
    head_hash: str | None = GENESIS if head is not None and head["records"] == 0 else None
    first_line: int | None = None  # the line of record number head["first"] + 1 (the first sealed one)
    number = 0

    def bad(line: int, problem: str) -> VerifyResult:
        return VerifyResult(False, records, line, f"{unit} {line}: {problem}", problem, "tampered")

    for number, raw in enumerate(lines, start=1):
        text = raw[:-1] if raw.endswith(b"\n") else raw
        record = _parse(raw)
        if record is None:
            if raw.endswith(b"\n") and not text.strip():
                return bad(number, f"empty {unit}")
            if not place.torn:  # a row is whole: a damaged one was written over
                return bad(number, _unreadable_row(raw))
            pending.append((number, text))
            continue
        if pending:  # unreadable lines before a record: torn writes, kept by the torn_tail that follows
            line = pending[0][0]
            torn = b"\n".join(t for _, t in pending)
            if not (record.get("type") == "torn_tail" and record.get("line") == line
                    and seal.unb64(record.get("bytes")) == torn):
                return bad(line, _unreadable(pending[0][1] + b"\n"))
            repaired.append(line)
            pending = []
        problem = None
        if "sig" not in record and epoch is not None:
            problem = "record is not sealed, after sealed records (forged, or its seal removed)"
        elif record["hash"] != _digest(record):
            problem = "record was modified (hash mismatch)"
        if problem is None and text != _canonical(record):
            problem = ("record was modified: its bytes are not its canonical JSON "
                       "(a change that reads back the same, e.g. an escape or a number rewritten)")
        if problem is None and record["prev"] != prev:
            problem = "chain broken: " + (
                f"prev does not match the hash of {unit} {number - 1} (a record was removed or reordered)"
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
                        retired = place.retired(new) if place.retired is not None else None
                        if retired is None:
                            problem = (f"the log's first seal is by key {seal.fingerprint(new)}, not by the "
                                       f"anchor {anchor_name} (key {seal.fingerprint(anchor)}): either that is "
                                       "the anchor of another log, or this log was re-sealed from its start")
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
        if head is not None and head.get("first") is not None and records == head["first"] + 1:
            first_line = number
    if pending:  # the last lines: a write torn by a crash (and repairs of it torn too), if the head agrees
        for line, text in pending:
            if not _torn_like(text):
                return bad(line, _unreadable(text + (b"\n" if line < number or raw.endswith(b"\n") else b"")))
        torn_line = pending[0][0]

    end = number + 1 if torn_line is None else torn_line
    unsealed_start = False  # a crash between the head written before the first seal and the seal itself
    if epoch is not None:
        where = place.head
        if head is None:
            why = head_problem or place.head_missing
            return bad(end, f"{why}: records may have been cut off the end (a sealed log always has its head"
                       f"{place.head_hint})")
        if isinstance(head.get("anchor"), str) and head["anchor"] != seal.fingerprint(first_key):
            return bad(end, f"{where} belongs to another log (anchor {head['anchor']}, this log's is "
                       f"{seal.fingerprint(first_key)}): this log's head is missing, records may have been cut off "
                       "the end")
        if head["epoch"] not in keys:
            return bad(end, f"the log ends at record {records} in epoch {epoch} but {where} is sealed in "
                       f"epoch {head['epoch']} (records were removed from the end"
                       + (")" if "anchor" in head else ", or it is another log's head)"))
        if not _head_signed(head, keys[head["epoch"]]):
            return bad(end, f"{where} does not verify (forged or damaged): records may have been cut off the end")
        if head["records"] > records:
            return bad(end, f"the log ends at record {records} but the head says {head['records']} "
                       "(records were removed from the end)")
        if head_hash != head["hash"]:
            return bad(end, f"record {head['records']} is not the one {where} names (the log was rewritten)")
    elif head is not None or head_problem:
        if (head is not None and anchor is not None and head["records"] == records and head["epoch"] == 0
                and head_hash == head["hash"] and _head_signed(head, anchor)):
            unsealed_start = True  # signed by the anchor's key for exactly this log: the seal was about to start
        elif records or torn_line is not None:
            says = f"says {head['records']} records" if head is not None else f"is there ({head_problem})"
            return bad(first_line or 1, f"record is not sealed, but {place.head_name} {says}: its seals were "
                       "removed (or it is another log's head)")
        else:
            return bad(1, f"the log is empty but {place.head_name} is there: its records were removed")
    if epoch is None and records and anchor is not None and not unsealed_start:
        return bad(1, f"the log has no sealed record, but its anchor {anchor_name} exists (its seals were removed)")

    if epoch is not None and (anchor is None or retired is not None):
        if retired is not None:
            problem = (f"cannot verify the seals with the anchor {anchor_name}: the log's first seal is by key "
                       f"{seal.fingerprint(first_key)}, the anchor kept in {retired} when a new log started here "
                       f"(this log was moved aside); verify it with --key {retired}, better with a copy of it kept "
                       "where nobody on this machine can write")
        elif anchor_problem:
            problem = (f"cannot verify the seals: key missing ({anchor_problem}; give the log's anchor with --key). "
                       f"The chain and seals agree with the log's own first key ({seal.fingerprint(first_key)}), "
                       "which proves nothing by itself")
        else:
            problem = (f"cannot verify the seals: key missing ({anchor_name} not found; give the log's anchor with "
                       f"--key). The chain and seals agree with the log's own first key "
                       f"({seal.fingerprint(first_key)}), which proves nothing by itself")
        return VerifyResult(False, records, None, problem, problem, "key-missing")
    if torn_line is not None:
        problem = ("incomplete record at the end of the file (a write torn by a crash or power loss, or the repair "
                   "of one torn too; the next write repairs it)")
        return VerifyResult(False, records, torn_line, f"line {torn_line}: {problem}", problem, "torn")
    if epoch is None and records:
        message = (f"not sealed (written before sealing): {records} records, chain intact; "
                   "without seals anyone who can write the file can rewrite it")
        if unsealed_start:
            message += "; the writer stopped (a crash) just before sealing it, the next write seals it"
        return VerifyResult(True, records, None, message, message, "unsealed")
    message = f"ok: {records} records, chain intact"
    if epoch is not None:
        message += f", sealed ({epoch + 1} epoch{'s' if epoch else ''}, anchor {seal.fingerprint(first_key)})"
        message += ", head matches"
        if legacy:
            message += f"; the first {legacy} were written before sealing (chained, not sealed)"
    if repaired:
        message += "; torn writes repaired at line " + ", ".join(map(str, repaired))
    return VerifyResult(True, records, None, message, status="ok")


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


def _unreadable_row(line: bytes) -> str:
    """Why a stored row (whole, never torn), which is not a chained record, cannot be read."""
    try:
        json.loads(line)
    except ValueError:
        return "not valid JSON (damaged or overwritten)"
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
        yield from records_of(f)


def records_of(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The records on ``lines`` as :func:`read_records` gives them (a store's rows too)."""
    for line in lines:
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
    return runs_of(read_records(path))


def runs_of(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`list_runs` of ``records`` (as :func:`read_records` gives them)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for record in records:
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
    return run_of(read_records(path), run_id, path)


def run_of(records: Iterable[dict[str, Any]], run_id: str, where: Any) -> list[dict[str, Any]]:
    """:func:`run_records` among ``records`` (as :func:`read_records` gives them) of the log ``where``."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        rid = str(record.get("run"))
        if "run" in record and rid.startswith(run_id):
            runs.setdefault(rid, []).append(record)
    if run_id in runs:
        return runs[run_id]
    if not runs:
        raise UsageError(f"no run {run_id!r} in the audit log {where} (see `runbook audit list`)")
    if len(runs) > 1:
        shown = ", ".join(list(runs)[:5]) + (", ..." if len(runs) > 5 else "")
        raise UsageError(f"run id {run_id!r} is ambiguous: {len(runs)} runs start with it ({shown})")
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
