"""The audit store in PostgreSQL (``RUNBOOK_AUDIT_URL=postgresql://…``): the records,
chain and seals of the file log (:mod:`runbook.audit`) in a database that a team's
machines share, and its locks as PostgreSQL advisory locks.

Tables (created on first write, ``CREATE TABLE IF NOT EXISTS`` under a transaction-level
advisory lock so that two first writers do not race):

``runbook_audit``
    One row per record: ``seq`` (1, 2, …: its position), ``line`` (the record's exact
    canonical bytes, as the file log writes a line, without the newline), and, derived
    from it for the queries, ``hash``, ``run`` (the record's run id, or NULL) and
    ``type`` (both indexed, so one run is read without parsing the table), and
    ``token`` (unique: the writer's token for the append, to find out after a lost
    connection whether the append was committed).
``runbook_audit_head``
    One row: the signed head (the canonical JSON of ``records``, ``hash`` of the last
    record, ``epoch``, ``epoch_start``, ``anchor`` fingerprint, ``first``, ``ts``,
    ``sig``), as the file log's ``audit.head``.  Rows deleted from the end are found.
``runbook_audit_key``
    One row: the private key of the *current* epoch (:func:`runbook.seal.key_bytes`).
    Writers on every machine need it.
``runbook_audit_anchor``
    One row: the anchor, the public key of epoch 0, as a ``verify.pub`` file
    (:meth:`PgStore.anchor` returns its bytes, for a command to export).
``runbook_locks``
    One row per lock name: who holds (or last held) it, for a refusal to name them.

Writing: :meth:`PgLog.append` runs one transaction: ``SELECT … FOR UPDATE`` on the head
row (appends are serialised across machines), the last record and the key; checks that
the head names the last record and is signed by the current key (as the file writer
does), writes the record (first an ``epoch`` record when a new epoch starts: before each
run starts and at least every :data:`runbook.seal.EPOCH_RECORDS` records, a new key
announced by an ``epoch`` record signed by the old one; the old key's row is replaced by
the new one in the same transaction), then the new head; durable at commit.  No write is
torn here, so there is no ``torn_tail``.  When the connection breaks (the server
restarted), the writer reconnects for ~10 s and first looks whether its append was
committed (by its token) before writing it again: no record is lost or written twice.

Verifying: :meth:`PgStore.verify` runs the file log's checks (:func:`runbook.audit._verify_lines`)
over the rows in ``seq`` order, in one snapshot with the head row: canonical bytes, the
chain, every seal from the anchor on, the head; its messages say ``record N`` for the
N-th row in order (:meth:`PgStore.record_at` ``(N)``).  It also checks that each row's
``hash``/``run``/``type`` columns agree with its bytes.

What the seals prove, and what they do not: the key of the current epoch is in the
database, so whoever can write the database and read its key table can append, rewrite
or cut records *from the current epoch on* and sign a matching head; earlier epochs'
keys are gone, so earlier records cannot be re-signed, but anyone who can write every
table can also replace the anchor row and re-sign the whole table with a key of their
own.  What defeats that is a copy of the anchor kept outside the database (export it
with :meth:`PgStore.anchor` right after the first run, keep it where the database's
writers cannot write) and given to ``verify(key=COPY)``: a re-signed table then fails
("the log's first seal is by key …, not by the anchor …").  Deleting every table, or
every row with the head, key and anchor, cannot be told from a store never used.
PostgreSQL keeps a replaced row's old version until it is vacuumed (the writer vacuums
the key table after a new epoch when it may), and in its WAL and backups: protect those
like the key table.

Locks (:class:`PgLock`): ``pg_try_advisory_lock`` on a 64-bit key hashed from the name,
on a connection of its own held for the lock's life; PostgreSQL releases it when that
session ends (the holder died or its connection broke).  Session advisory locks need a
direct connection or session pooling (not a transaction-pooling bouncer).

psycopg is imported only when the store is used (never by ``runbook --help``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from runbook import audit
from runbook.errors import RunbookError

RECORDS = "runbook_audit"
HEAD = "runbook_audit_head"
KEY = "runbook_audit_key"
ANCHOR = "runbook_audit_anchor"
LOCKS = "runbook_locks"
TABLES = (RECORDS, HEAD, KEY, ANCHOR, LOCKS)
RETRY_SECONDS = 10.0  # how long a writer tries to reconnect after its connection broke
CONNECT_TIMEOUT = 5  # seconds, unless the URL says otherwise

SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {RECORDS} (seq bigint PRIMARY KEY, line bytea NOT NULL, hash text NOT NULL, "
    "run text, type text, token text UNIQUE)",
    f"CREATE INDEX IF NOT EXISTS {RECORDS}_run ON {RECORDS} (run text_pattern_ops)",
    f"CREATE INDEX IF NOT EXISTS {RECORDS}_type ON {RECORDS} (type)",
    f"CREATE TABLE IF NOT EXISTS {HEAD} (id smallint PRIMARY KEY CHECK (id = 1), data bytea)",
    f"CREATE TABLE IF NOT EXISTS {KEY} (id smallint PRIMARY KEY CHECK (id = 1), data bytea NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {ANCHOR} (id smallint PRIMARY KEY CHECK (id = 1), data bytea NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {LOCKS} (name text PRIMARY KEY, holder text NOT NULL)",
)


def _key64(text: str) -> int:
    """A signed 64-bit advisory lock key for ``text``."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


_SCHEMA_LOCK = _key64("runbook audit store: schema")


def redact_url(url: str) -> str:
    """``url`` without its password (in the authority or a ``password=`` parameter)."""
    if "://" not in url:  # a libpq keyword/value string
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            auth, hosts = netloc.rsplit("@", 1)
            netloc = auth.split(":", 1)[0] + "@" + hosts
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "the audit store URL"


def _password(url: str, quoted: bool = False) -> str:
    """The URL's password (as written in it with ``quoted``), to be scrubbed from any message."""
    from urllib.parse import unquote

    try:
        parts = urlsplit(url)
        found = [parts.password or ""] + [v for k, v in parse_qsl(parts.query) if k == "password"]
    except ValueError:
        found = []
    m = re.search(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", url) if "://" not in url else None
    if m:
        found.append(m.group(1).strip("'"))
    return next((p if quoted else unquote(p) for p in found if p), "")


class PgStore:
    """The audit store in the PostgreSQL database at ``url`` (see the module)."""

    def __init__(self, url: str):
        self.url = url
        self.where = redact_url(url)
        self._secrets = sorted({p for p in (_password(url), _password(url, quoted=True)) if p}, key=len, reverse=True)
        self._schema_ready = False

    # --- connections and errors ----------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _reason(self, exc: BaseException) -> str:
        """One line of what went wrong, from a psycopg error (libpq's message, trimmed)."""
        lines = [" ".join(part.split()) for part in str(exc).splitlines() if part.strip()]
        if not lines:
            return type(exc).__name__
        first = lines[0]
        if " failed: " in first:  # 'connection failed: connection to server at "h", port p failed: why'
            first = first.rsplit(" failed: ", 1)[1]
        first = re.sub(r"^(FATAL|ERROR):\s*", "", first)
        if first[:1].isupper() and first[1:2].islower():
            first = first[0].lower() + first[1:]
        hints = [h[0].lower() + h[1:] for h in lines[1:2] if not h.startswith(("DETAIL", "HINT", "LINE"))]
        text = first + (f" ({hints[0]})" if hints else "")
        return self._scrub(text)

    def unreachable(self, exc: BaseException) -> RunbookError:
        return RunbookError(f"cannot reach the audit store {self.where}: {self._reason(exc)}; check RUNBOOK_AUDIT_URL")

    def failed(self, exc: BaseException, doing: str) -> RunbookError:
        import psycopg

        state = getattr(exc, "sqlstate", None)
        if isinstance(exc, psycopg.OperationalError) and (state is None or state[:2] in ("08", "57", "28", "3D")):
            return self.unreachable(exc)  # libpq's own, connection, shutdown, authorisation, no such database
        return RunbookError(f"cannot {doing} the audit store {self.where}: {self._reason(exc)}")

    def connect(self) -> Any:
        """A new autocommit connection; RunbookError (one line, no password) when it cannot be made."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        extra: dict[str, Any] = {"autocommit": True}
        try:
            given = conninfo_to_dict(self.url)
        except psycopg.Error as exc:
            raise RunbookError(f"the audit store URL {self.where} is not valid: {self._reason(exc)}; "
                               "check RUNBOOK_AUDIT_URL") from None
        if "connect_timeout" not in given:
            extra["connect_timeout"] = CONNECT_TIMEOUT
        if "application_name" not in given:
            extra["application_name"] = "runbook"
        try:
            return psycopg.connect(self.url, **extra)
        except psycopg.Error as exc:
            raise self.unreachable(exc) from None

    def ensure_schema(self, conn: Any) -> None:
        """Create the tables unless they are there (once per store object)."""
        if self._schema_ready:
            return
        row = conn.execute("SELECT " + ", ".join(f"to_regclass('{t}') IS NOT NULL" for t in TABLES)).fetchone()
        if not all(row):
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in SCHEMA:
                    conn.execute(statement)
        self._schema_ready = True

    def _read(self, doing: str, query: str, params: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        """The rows of ``query``, streamed (none when the tables do not exist yet)."""
        import psycopg

        conn = self.connect()
        try:
            with conn:
                if conn.execute(f"SELECT to_regclass('{RECORDS}') IS NULL").fetchone()[0]:
                    return
                yield from conn.cursor().stream(query, params)
        except psycopg.Error as exc:
            raise self.failed(exc, doing) from None

    def _lines(self, where: str = "", params: tuple[Any, ...] = ()) -> Iterator[bytes]:
        for (line,) in self._read("read", f"SELECT line FROM {RECORDS} {where} ORDER BY seq", params):
            yield bytes(line) + b"\n"

    # --- the Store protocol --------------------------------------------------------------

    def log(self) -> PgLog:
        return PgLog(self)

    def records(self) -> Iterator[dict[str, Any]]:
        return audit.records_of(self._lines())

    def run_records(self, run_id: str) -> list[dict[str, Any]]:
        pattern = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        records = audit.records_of(self._lines("WHERE run LIKE %s", (pattern,)))
        return audit.run_of(records, run_id, self.where)

    def list_runs(self) -> list[dict[str, Any]]:
        return audit.runs_of(audit.records_of(self._lines("WHERE run IS NOT NULL")))

    def record_at(self, number: int) -> dict[str, Any] | None:
        if number < 1:
            return None
        for (line,) in self._read("read", f"SELECT line FROM {RECORDS} ORDER BY seq OFFSET %s LIMIT 1",
                                  (number - 1,)):
            try:
                value = json.loads(bytes(line))
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
        return None

    def exists(self) -> bool:
        return any(True for _ in self._read("read", f"SELECT 1 FROM {RECORDS} LIMIT 1"))

    def anchor(self) -> bytes:
        """The anchor (``verify.pub``: the public key of epoch 0) to keep outside the database."""
        import psycopg

        try:
            with self.connect() as conn:
                row = None
                if conn.execute(f"SELECT to_regclass('{ANCHOR}') IS NOT NULL").fetchone()[0]:
                    row = conn.execute(f"SELECT data FROM {ANCHOR} WHERE id = 1").fetchone()
        except psycopg.Error as exc:
            raise self.failed(exc, "read") from None
        if row is None:
            raise RunbookError(f"the audit store {self.where} has no anchor yet: nothing was recorded in it")
        return bytes(row[0])

    def verify(self, key: str | os.PathLike[str] | None = None) -> audit.VerifyResult:
        """As :func:`runbook.audit.verify`, over the rows in ``seq`` order with the head row, in one
        snapshot; the anchor from ``key`` (a file: a copy kept outside the database is what makes
        this meaningful), else the anchor table.  ``record N`` is the N-th row (:meth:`record_at`)."""
        import psycopg

        from runbook import seal

        conn = self.connect()
        try:
            with conn:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
                with conn.transaction():
                    present = conn.execute(
                        "SELECT " + ", ".join(f"to_regclass('{t}') IS NOT NULL" for t in (RECORDS, HEAD, ANCHOR))
                    ).fetchone()
                    head_row = anchor_row = None
                    if present[1]:
                        head_row = conn.execute(f"SELECT data FROM {HEAD} WHERE id = 1").fetchone()
                    if present[2]:
                        anchor_row = conn.execute(f"SELECT data FROM {ANCHOR} WHERE id = 1").fetchone()
                    if key is not None:
                        anchor, anchor_name, anchor_problem = audit._anchor(Path(), key)
                    else:
                        anchor_name, anchor_problem, anchor = f"the anchor row ({ANCHOR})", "", None
                        if anchor_row is not None:
                            try:
                                anchor = seal.parse_anchor(bytes(anchor_row[0]), anchor_name)
                            except RunbookError as exc:
                                anchor_problem = str(exc)
                    head_name = f"the head row ({HEAD})"
                    head_bytes = bytes(head_row[0]) if head_row is not None and head_row[0] is not None else None
                    head, head_problem = audit._head_from(head_bytes, "", name=head_name)
                    place = audit._Place(unit="record", head=head_name, head_name=head_name,
                                         head_missing=f"{head_name} is missing", head_hint="", torn=False)
                    columns: list[tuple[int, str]] = []  # the first row whose columns disagree with its bytes
                    rows: Any = ()
                    if present[0]:  # a cursor on the server: the rows are fetched a batch at a time
                        rows = conn.cursor(name="runbook_verify")
                        rows.itersize = 2000
                        rows.execute(f"SELECT line, hash, run, type FROM {RECORDS} ORDER BY seq")
                    try:
                        result = audit._verify_lines(_checked(iter(rows), columns), head, head_problem, anchor,
                                                     anchor_name, anchor_problem, place)
                    finally:
                        if present[0]:
                            rows.close()
        except psycopg.Error as exc:
            raise self.failed(exc, "verify") from None
        if columns and (result.line is None or columns[0][0] < result.line) and result.status in ("ok", "tampered"):
            number, problem = columns[0]
            return audit.VerifyResult(False, number - 1, number, f"record {number}: {problem}", problem, "tampered")
        return result

    def lock(self, name: str, what: str = "this alert is already being handled") -> PgLock:
        return PgLock(self, name, what)

    def close(self) -> None:
        pass


def _checked(rows: Iterator[tuple[Any, ...]], columns: list[tuple[int, str]]) -> Iterator[bytes]:
    """The lines of ``rows`` (line, hash, run, type); notes in ``columns`` the first row whose
    derived columns do not say what its bytes say (they steer run_records and list_runs)."""
    for number, (line, hash_, run, type_) in enumerate(rows, start=1):
        line = bytes(line)
        if not columns:
            record = audit._parse(line)
            if record is not None and (hash_, run, type_) != _derived(record):
                columns.append((number, "its hash, run or type column does not match its record (altered)"))
        yield line + b"\n"


def _derived(record: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """The ``hash``, ``run`` and ``type`` columns of the row holding ``record``."""
    t = record.get("type")
    return record["hash"], (str(record["run"]) if "run" in record else None), (t if isinstance(t, str) else None)


class PgLog:
    """The writer of a :class:`PgStore`: ``append(record) -> record as written``, ``close()``,
    a context manager (as :class:`runbook.audit.AuditLog`).  One connection, opened on the
    first append and kept until :meth:`close`."""

    def __init__(self, store: PgStore):
        self.store = store
        self._conn: Any = None
        self._connected = False  # once: a later failure to reconnect is a restart, retried

    def __enter__(self) -> PgLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Chain, hash, seal and commit a copy of ``record``; return the copy as written.

        After a broken connection, reconnects (for :data:`RETRY_SECONDS`), looks whether the append
        was committed (its token) and writes it only if not."""
        import psycopg

        record = audit._jsonable(record)
        if record.get("type") in audit.SEAL_TYPES:
            raise RunbookError(f"record type {record['type']!r} is reserved for the audit log's own records")
        token = os.urandom(16).hex()
        deadline: float | None = None
        delay = 0.1
        in_doubt = False
        while True:
            try:
                if self._conn is None:
                    self._conn = self.store.connect()
                    self._connected = True
                self.store.ensure_schema(self._conn)
                return self._append(self._conn, dict(record), token, in_doubt)
            except (psycopg.OperationalError, RunbookError) as exc:
                if isinstance(exc, RunbookError) and not (self._connected and str(exc).startswith("cannot reach")):
                    raise  # a refusal, or a first connection that failed (a wrong URL): not a restart
                if not _lost(exc, self._conn):  # a statement failed, the connection is fine: not a restart
                    raise self.store.failed(exc, "write") from None
                self.close()
                in_doubt = True  # the commit may have been sent: look before writing again
                now = time.monotonic()
                deadline = now + RETRY_SECONDS if deadline is None else deadline
                if now >= deadline:
                    raise exc if isinstance(exc, RunbookError) else self.store.unreachable(exc) from None
                time.sleep(min(delay, max(deadline - now, 0)))
                delay = min(delay * 2, 1.0)
            except psycopg.Error as exc:
                raise self.store.failed(exc, "write") from None

    def _refuse(self, why: str) -> RunbookError:
        return RunbookError(f"cannot seal the audit store {self.store.where}: {why} (see `runbook audit verify`; "
                            "to start a new sealed store, use a new database)")

    def _append(self, conn: Any, record: dict[str, Any], token: str, in_doubt: bool = False) -> dict[str, Any]:
        """One transaction: the head locked, the record (and an epoch record first when a new
        epoch starts) and the new head written, the old key replaced by a new one.

        ``in_doubt``: an earlier try with this ``token`` may have committed (its connection broke):
        looked for under the head's lock, so that a commit still in flight is waited for."""
        from runbook import seal

        rotated = None
        with conn.transaction():
            conn.execute("SET LOCAL synchronous_commit TO on")  # durable at commit, whatever the server's default
            head_row = conn.execute(f"SELECT data FROM {HEAD} WHERE id = 1 FOR UPDATE").fetchone()
            if head_row is None:  # (deleted) a row to lock: the checks below refuse a store with records
                conn.execute(f"INSERT INTO {HEAD} (id, data) VALUES (1, NULL) ON CONFLICT DO NOTHING")
                head_row = conn.execute(f"SELECT data FROM {HEAD} WHERE id = 1 FOR UPDATE").fetchone()
            if in_doubt:
                done = conn.execute(f"SELECT line FROM {RECORDS} WHERE token = %s", (token,)).fetchone()
                if done is not None:  # committed before the connection broke: not written twice
                    return json.loads(bytes(done[0]))
            head_bytes = bytes(head_row[0]) if head_row[0] is not None else None
            head, damaged = audit._head_from(head_bytes, "", name=f"the head row ({HEAD})")
            last_row = conn.execute(f"SELECT seq, line FROM {RECORDS} ORDER BY seq DESC LIMIT 1").fetchone()
            key_row = conn.execute(f"SELECT data FROM {KEY} WHERE id = 1").fetchone()
            key = seal.parse_key(bytes(key_row[0]), f"in {KEY}") if key_row is not None else None
            if last_row is None:
                has_anchor = conn.execute(f"SELECT 1 FROM {ANCHOR} WHERE id = 1").fetchone() is not None
                if head_bytes is not None or key is not None or has_anchor:
                    what = "head" if head_bytes is not None else "sealing key" if key is not None else "anchor"
                    raise self._refuse(f"it has no record but its {what} is there: its records were removed")
                key = seal.generate(0, log=self.store.where)
                conn.execute(f"INSERT INTO {ANCHOR} (id, data) VALUES (1, %s)", (seal.anchor_bytes(key.public),))
                conn.execute(f"INSERT INTO {KEY} (id, data) VALUES (1, %s)", (seal.key_bytes(key),))
                prev, count, epoch_start, first, starting = audit.GENESIS, 0, 0, 0, True
            else:
                last = audit._parse(bytes(last_row[1]))
                if last is None or "sig" not in last:
                    raise self._refuse(f"its last record (seq {last_row[0]}) is damaged or not sealed")
                if head is None:
                    raise self._refuse(f"{damaged or f'its head row ({HEAD}) is missing'}: records may have been "
                                       "cut off the end")
                if key is None:
                    raise self._refuse(f"its sealing key ({KEY}) is missing")
                if key.epoch != last.get("epoch") or not audit._sealed_by(last, key):
                    raise self._refuse(f"its last record is sealed in epoch {last.get('epoch')} but the key in {KEY} "
                                       f"is for epoch {key.epoch} or another store")
                if head.get("anchor") != key.anchor:
                    raise self._refuse("its head belongs to another store (anchor "
                                       f"{head.get('anchor')}, this store's is {key.anchor})")
                if head["hash"] != last["hash"] or head["records"] != last_row[0]:
                    raise self._refuse(f"its head says {head['records']} records, not the last one (seq {last_row[0]}):"
                                       " records were removed or added behind the writers' back")
                if head["epoch"] != key.epoch or not audit._head_signed(head, key.public):
                    raise self._refuse(f"its head does not verify with the key of epoch {key.epoch} (forged or "
                                       "damaged)")
                prev, count, epoch_start, first, starting = last["hash"], head["records"], head["epoch_start"], \
                    head.get("first"), False
            stamp = audit.now()
            rows: list[tuple[Any, ...]] = []

            def emit(r: dict[str, Any], signer: Any, epoch: int | None = None, mine: bool = False) -> None:
                nonlocal prev, count
                r.setdefault("ts", stamp)
                r["prev"] = prev
                for k in ("hash", "sig", "epoch"):
                    r.pop(k, None)
                r["v"] = audit.VERSION
                r["epoch"] = signer.epoch if epoch is None else epoch
                body = audit._body(r)
                r["hash"] = hashlib.sha256(body).hexdigest()
                r["sig"] = signer.sign(body)
                count += 1
                rows.append((count, audit._canonical(r), *_derived(r), token if mine else None))
                prev = r["hash"]

            if starting:  # the first record: epoch 0, the anchor's key
                emit({"type": "epoch", "public_key": seal.b64(key.public), "anchor": True}, key)
                epoch_start = count
            if (record.get("type") in audit.ROTATE_ON and count > epoch_start) or \
                    count - epoch_start >= seal.EPOCH_RECORDS:
                rotated = seal.generate(key.epoch + 1, key.anchor, key.log)
                emit({"type": "epoch", "public_key": seal.b64(rotated.public)}, key, epoch=rotated.epoch)
                key = rotated
                epoch_start = count
                conn.execute(f"UPDATE {KEY} SET data = %s WHERE id = 1", (seal.key_bytes(key),))  # the old key: gone
            emit(record, key, mine=True)
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {RECORDS} (seq, line, hash, run, type, token) "
                                "VALUES (%s, %s, %s, %s, %s, %s)", rows)
            new_head: dict[str, Any] = {"v": 1, "records": count, "hash": prev, "epoch": key.epoch,
                                        "epoch_start": epoch_start, "anchor": key.anchor, "ts": stamp}
            if first is not None:
                new_head["first"] = first
            new_head["sig"] = key.sign(audit._canonical(new_head))
            conn.execute(f"UPDATE {HEAD} SET data = %s WHERE id = 1", (audit._canonical(new_head),))
        if rotated is not None:  # the replaced key's old row version: gone from the table's pages too
            _vacuum_key(conn)
        return record


def _lost(exc: BaseException, conn: Any) -> bool:
    """Whether ``exc`` means the connection (or the server) went away: the append may be retried."""
    if isinstance(exc, RunbookError) or conn is None or conn.broken or conn.closed:
        return True
    state = getattr(exc, "sqlstate", None)
    return state is None or state[:2] in ("08", "57")  # libpq's own errors, connection exceptions, shutdown


def _vacuum_key(conn: Any) -> None:
    import psycopg

    try:
        conn.execute(f"VACUUM {KEY}")
    except psycopg.Error:  # not the table's owner, or the connection broke: autovacuum will
        pass


class PgLock:
    """A named lock (a :class:`runbook.store.Lock`) held for a run's life by a PostgreSQL
    session advisory lock on a connection of its own; released by PostgreSQL when that
    session ends (its process died).  The holder is written in ``runbook_locks`` so that a
    refusal names it (as :class:`runbook.alert.RunLock`)."""

    def __init__(self, store: PgStore, name: str, what: str = "this alert is already being handled"):
        self.store = store
        self.name = name
        self.what = what
        self.key = _key64("runbook lock: " + name)
        self._conn: Any = None

    def acquire(self, run_id: str, who: str, started: str, force: bool = False) -> str | None:
        """Take the lock; returns a warning when ``force`` overrode a holder.
        Raises RunbookError (exit 3) naming the holder otherwise."""
        import psycopg

        from runbook.alert import held_by

        if self._conn is not None:
            return None
        conn = self.store.connect()
        try:
            self.store.ensure_schema(conn)
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]:
                row = conn.execute(f"SELECT holder FROM {LOCKS} WHERE name = %s", (self.name,)).fetchone()
                conn.close()
                try:
                    holder = json.loads(row[0]) if row is not None else {}
                except ValueError:
                    holder = {}
                return held_by(self.what, holder if isinstance(holder, dict) else {}, force)
            holder = json.dumps({"run": run_id, "who": who, "started": started, "host": audit.hostname(),
                                 "pid": os.getpid()})
            conn.execute(f"INSERT INTO {LOCKS} (name, holder) VALUES (%s, %s) "
                         "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder", (self.name, holder))
        except psycopg.Error as exc:
            conn.close()
            raise self.store.failed(exc, "lock in") from None
        self._conn = conn
        return None

    def check(self) -> None:
        """Raise :class:`runbook.errors.LockLost` when this holder no longer holds the lock: its
        session ended (PostgreSQL restarted or failed over, the connection was cut), so another
        process may hold it now.  Nothing for a lock not taken (``force``)."""
        import psycopg

        from runbook.errors import LockLost

        if self._conn is None:
            return
        unsigned = self.key & 0xFFFFFFFFFFFFFFFF
        try:
            row = self._conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid() AND classid = %s::text::oid AND objid = %s::text::oid "
                "AND objsubid = 1)", (str(unsigned >> 32), str(unsigned & 0xFFFFFFFF))).fetchone()
        except psycopg.Error as exc:
            raise LockLost(f"lost the lock {self.name} on {self.store.where}: {self.store._reason(exc)}") from None
        if not row[0]:
            raise LockLost(f"lost the lock {self.name} on {self.store.where} (its session no longer holds it)")

    def held(self) -> bool:
        """Whether a live session holds the lock now (asked on a connection of its own: a session
        that holds an advisory lock can take it again)."""
        import psycopg

        conn = self.store.connect()
        try:
            with conn:
                if not conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]:
                    return True
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
                return False
        except psycopg.Error as exc:
            raise self.store.failed(exc, "lock in") from None

    def release(self) -> None:
        """Forget the holder, unlock, close (a broken connection has lost the lock already)."""
        import psycopg

        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(f"DELETE FROM {LOCKS} WHERE name = %s", (self.name,))
            conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        except psycopg.Error:
            pass
        finally:
            conn.close()
