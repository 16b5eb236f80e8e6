"""Where a run's audit records live: the file log (the default) or a shared store.

Everything that writes or reads the audit (the run lifecycle, ``runbook audit``,
``runbook report``, resume, the team worker and server) goes through a *store*
from :func:`open_store`, never through a path:

* :class:`FileStore`: ``audit.jsonl`` in ``RUNBOOK_AUDIT_DIR`` (or the directory
  given), sealed and chained by :mod:`runbook.audit`, its locks ``flock`` files
  beside it (one machine);
* ``RUNBOOK_AUDIT_URL=postgresql://…``: :class:`runbook.team.pgstore.PgStore`, the
  same records, chain and seals in PostgreSQL, its locks PostgreSQL advisory locks
  (a team: any machine that can reach the database).

A store has one protocol (:class:`Store`); a lock has one too (:class:`Lock`):
both are held for a run's life and dropped when their process dies.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from runbook import audit

URL_ENV = "RUNBOOK_AUDIT_URL"


class Lock(Protocol):
    """A named lock held for a run's life across the processes that share the store;
    dropped when its holder dies (flock: the kernel; PostgreSQL: the session ends)."""

    what: str  # what holding it means, for the refusal ("this alert is already being handled")
    name: str  # its name, e.g. "alert-FP" or "run-RUN_ID"

    def acquire(self, run_id: str, who: str, started: str, force: bool = False) -> str | None:
        """Take it; a warning when ``force`` overrode a holder; else RunbookError (exit 3) naming the holder."""

    def held(self) -> bool:
        """Whether a live process holds it now (without taking it)."""

    def check(self) -> None:
        """Raise :class:`runbook.errors.LockLost` when the holder lost it (a PostgreSQL session
        that ended); a run checks its locks before each step, so that it never goes on beside
        the process that took its lock over."""

    def release(self) -> None: ...


class Store(Protocol):
    where: str  # for messages: the log's path, or the database URL without its password

    def log(self) -> Any:
        """The writer: ``append(record) -> record as written`` (chained, sealed, durable), ``close()``,
        a context manager.  :class:`runbook.audit.RunJournal` writes through it."""

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record in order, as :func:`runbook.audit.read_records`."""

    def run_records(self, run_id: str) -> list[dict[str, Any]]:
        """One run's records (``run_id`` or a unique prefix), as :func:`runbook.audit.run_records`."""

    def list_runs(self) -> list[dict[str, Any]]:
        """One summary per run, oldest first, as :func:`runbook.audit.list_runs`."""

    def verify(self, key: str | os.PathLike[str] | None = None) -> audit.VerifyResult:
        """As :func:`runbook.audit.verify`: chain, canonical bytes, seals from the anchor, head."""

    def record_at(self, number: int) -> dict[str, Any] | None:
        """The record at position ``number`` (1-based, as VerifyResult.line), or None."""

    def exists(self) -> bool:
        """Whether anything was recorded yet."""

    def anchor(self) -> bytes:
        """The anchor (the public key of epoch 0) as a ``verify.pub`` file's bytes."""

    def lock(self, name: str, what: str = "this alert is already being handled") -> Lock: ...


class FileStore:
    """The audit log file ``audit.jsonl`` in ``directory`` (or the log file at ``path``, to read it)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, path: str | os.PathLike[str] | None = None):
        if path is not None:
            self.path = Path(path)
            self.directory = self.path.parent
        else:
            self.directory = Path(directory) if directory is not None else audit.default_dir()
            self.path = self.directory / audit.LOG_NAME
        self.where = str(self.path)

    def log(self) -> audit.AuditLog:
        return audit.AuditLog(self.directory)

    def records(self) -> Iterator[dict[str, Any]]:
        return audit.read_records(self.path)

    def run_records(self, run_id: str) -> list[dict[str, Any]]:
        return audit.run_records(self.path, run_id)

    def list_runs(self) -> list[dict[str, Any]]:
        return audit.list_runs(self.path)

    def verify(self, key: str | os.PathLike[str] | None = None) -> audit.VerifyResult:
        return audit.verify(self.path, key)

    def record_at(self, number: int) -> dict[str, Any] | None:
        import json

        try:
            with open(self.path, "rb") as f:
                for n, line in enumerate(f, start=1):
                    if n == number:
                        try:
                            value = json.loads(line)
                        except ValueError:
                            return None
                        return value if isinstance(value, dict) else None
        except OSError:
            return None
        return None

    def exists(self) -> bool:
        return self.path.exists()

    def anchor(self) -> bytes:
        """The anchor (``verify.pub``) as a file's bytes; RunbookError when none was written yet."""
        from runbook import seal
        from runbook.errors import RunbookError

        where = seal.key_dir(self.directory) / seal.ANCHOR_NAME
        try:
            return where.read_bytes()
        except FileNotFoundError:
            raise RunbookError(f"{where}: no anchor yet (the log's first sealed record writes it)") from None
        except OSError as exc:
            raise RunbookError(f"cannot read {where}: {exc.strerror or exc}") from None

    def lock(self, name: str, what: str = "this alert is already being handled") -> Lock:
        from runbook.alert import RunLock

        return RunLock(self.directory, name, what)

    def close(self) -> None:
        pass


def open_store(directory: str | os.PathLike[str] | None = None, url: str | None = None) -> Any:
    """The store to use: ``url`` (a ``postgresql://`` URL), else ``directory`` (a file
    log there), else ``RUNBOOK_AUDIT_URL`` when set, else the file log in
    :func:`runbook.audit.default_dir`.  A directory given explicitly (``--dir``,
    a test's ``audit_dir``) wins over the environment's URL."""
    if url is None and directory is None:
        url = os.environ.get(URL_ENV) or None
    if url:
        from runbook.team.pgstore import PgStore

        return PgStore(url)
    return FileStore(directory)
