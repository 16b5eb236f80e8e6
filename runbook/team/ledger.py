"""The alert ledger in PostgreSQL: which webhooks came, which incident each named,
and which run each incident became.

Alertmanager re-sends a firing alert on every group update and from each HA peer,
and retries on 5xx only.  So the server commits every alert here before it answers
2xx, and an incident is one row per (runbook, fingerprint, startsAt) — a unique
key, not a cache: a new ``startsAt`` is a new incident, a repeat only counts.

* ``runbook_incidents``: one row per incident; ``run_id`` is given at insert
  (the run the worker will record under that id), ``enqueued`` is set once its
  job is on the broker (NULL: not yet — :func:`unqueued` finds it again);
* ``runbook_webhooks``: one row per alert of every webhook, with what became of
  it (``outcome``), so the ledger explains itself: "7 webhooks → 1 run".

psycopg is imported when a function runs, never at start-up.  Connections are
autocommit; every change is its own transaction, committed before the function
returns (or part of the caller's ``conn.transaction()`` when one is open).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runbook.errors import RunbookError

_LOCK_KEY = 0x72756E626B6C6467  # "runbkldg": serialises the first CREATE TABLE of concurrent processes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runbook_incidents (
    id bigserial PRIMARY KEY,
    runbook text NOT NULL,
    alertname text NOT NULL,
    fingerprint text NOT NULL,
    starts_at text NOT NULL,
    run_id text UNIQUE NOT NULL,
    doc jsonb NOT NULL,
    received timestamptz NOT NULL DEFAULT now(),
    enqueued timestamptz NULL,
    webhooks int NOT NULL DEFAULT 1,
    resolved_at text NULL,
    refused text NULL,
    UNIQUE (runbook, fingerprint, starts_at)
);
CREATE TABLE IF NOT EXISTS runbook_webhooks (
    id bigserial PRIMARY KEY,
    received timestamptz NOT NULL DEFAULT now(),
    peer text,
    alertname text,
    fingerprint text,
    status text,
    incident bigint NULL REFERENCES runbook_incidents(id),
    outcome text NOT NULL
);
CREATE INDEX IF NOT EXISTS runbook_webhooks_incident ON runbook_webhooks (incident);
CREATE INDEX IF NOT EXISTS runbook_incidents_alert ON runbook_incidents (fingerprint, starts_at);
"""

_COLUMNS = ("id, runbook, alertname, fingerprint, starts_at, run_id, doc, received, enqueued, webhooks, resolved_at, "
            "refused")


@dataclass
class Incident:
    id: int
    runbook: str
    alertname: str
    fingerprint: str
    starts_at: str  # '' when the alert had no startsAt
    run_id: str
    doc: dict
    received: Any  # datetime
    enqueued: Any  # datetime | None
    webhooks: int
    resolved_at: str | None
    refused: str | None = None  # why a worker could not start its run (a runbook that does not load, a parameter)


def _incident(row) -> Incident | None:
    return Incident(*row) if row is not None else None


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from urllib.parse import urlsplit, urlunsplit

        u = urlsplit(url)
        if u.password is not None:
            host = u.hostname or ""
            if u.port:
                host += f":{u.port}"
            user = u.username or ""
            return urlunsplit((u.scheme, f"{user}:***@{host}", u.path, "", ""))
        return urlunsplit((u.scheme, u.netloc, u.path, "", ""))
    except ValueError:
        return "the database URL"


def connect(url: str, timeout: int = 5):
    """An autocommit connection to the ledger's database; a one-line RunbookError
    (its password never shown) when it cannot be reached."""
    import psycopg

    if not url.startswith(("postgresql://", "postgres://")):
        raise RunbookError(f"the alert ledger needs a postgresql:// URL, not {_safe_url(url)!r}", exit_code=2)
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=timeout, application_name="runbook")
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or ["?"])[-1].strip()
        password = None
        try:
            from urllib.parse import unquote, urlsplit

            password = urlsplit(url).password
            password = unquote(password) if password else None
        except ValueError:
            pass
        if password:
            first = first.replace(password, "***")
        raise RunbookError(f"cannot reach the alert ledger at {_safe_url(url)}: {first}") from None


_ENSURED: set[tuple] = set()


def ensure(conn) -> None:
    """Create the tables when they are missing (once per process and database)."""
    key = (conn.info.host, conn.info.port, conn.info.dbname)
    if key in _ENSURED:
        return
    # DDL on tables that exist is not free: CREATE INDEX IF NOT EXISTS takes a SHARE lock on its table
    # before it looks, which deadlocks with the webhook's inserts in flight (seen with 2 workers under a
    # burst): look first, and run the DDL only when the ledger's last object is missing
    exists = "SELECT to_regclass('runbook_incidents_alert') IS NOT NULL"
    if not conn.execute(exists).fetchone()[0]:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            if not conn.execute(exists).fetchone()[0]:
                conn.execute(_SCHEMA)
    _ENSURED.add(key)


def _narrow(doc: dict, fingerprint: str) -> dict:
    """The payload with ``alerts`` holding only the alert with ``fingerprint``."""
    from runbook.alert import _fingerprint

    alerts = doc.get("alerts") if isinstance(doc.get("alerts"), list) else []
    mine = [a for a in alerts if isinstance(a, dict) and _fingerprint(a) == fingerprint]
    return {**doc, "alerts": mine[:1]}


def record_firing(conn, runbook: str, alert, doc: dict, peer: str) -> tuple[Incident, bool]:
    """The incident of a firing ``alert`` answered by ``runbook`` (new, or an
    existing one counted once more), and whether it is new; with its webhook's
    row.  Committed before it returns."""
    import psycopg

    from runbook.audit import new_run_id

    ensure(conn)
    starts = _text(alert.starts_at or "")
    # PostgreSQL's text and jsonb hold no NUL character, which JSON (and a label value) may: one such
    # alert must not make every retry of its whole notification fail; U+FFFD stands for it
    body = json.dumps(_narrow(doc, alert.fingerprint)).replace("\\u0000", "\\ufffd")
    for attempt in range(5):
        try:
            with conn.transaction():
                row = conn.execute(
                    f"INSERT INTO runbook_incidents (runbook, alertname, fingerprint, starts_at, run_id, doc) "
                    f"VALUES (%s, %s, %s, %s, %s, %s::jsonb) "
                    f"ON CONFLICT (runbook, fingerprint, starts_at) "
                    f"DO UPDATE SET webhooks = runbook_incidents.webhooks + 1 "
                    f"RETURNING {_COLUMNS}, (xmax = 0) AS inserted",
                    (runbook, _text(alert.name), _text(alert.fingerprint), starts, new_run_id(), body)).fetchone()
                incident, new = _incident(row[:-1]), bool(row[-1])
                outcome = ("new incident" if new
                           else f"same incident (fingerprint, startsAt): webhook {incident.webhooks}")
                _webhook(conn, peer, alert, "firing", outcome, incident.id)
            return incident, new
        except psycopg.errors.UniqueViolation as exc:  # two new incidents drew the same run id: draw again
            if "run_id" not in str(exc) or attempt == 4:
                raise
    raise AssertionError("unreachable")


def _text(value):
    """A string as PostgreSQL's text can hold it (no NUL: U+FFFD stands for it)."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def _webhook(conn, peer, alert, status, outcome, incident_id) -> None:
    conn.execute("INSERT INTO runbook_webhooks (peer, alertname, fingerprint, status, incident, outcome) "
                 "VALUES (%s, %s, %s, %s, %s, %s)",
                 (peer, _text(getattr(alert, "name", None)), _text(getattr(alert, "fingerprint", None)), status,
                  incident_id, _text(outcome)))


def record_webhook(conn, peer: str, alert, status: str, outcome: str, incident_id: int | None = None) -> None:
    """One webhook row (an alert with no runbook, a resolution, …); committed."""
    ensure(conn)
    with conn.transaction():
        _webhook(conn, peer, alert, status, outcome, incident_id)


def mark_refused(conn, incident_id: int, reason: str) -> None:
    """A worker could not start the incident's run (before anything was recorded in the audit):
    the page says why instead of "waiting for a worker"; committed."""
    with conn.transaction():
        conn.execute("UPDATE runbook_incidents SET refused = %s WHERE id = %s", (reason[:2000], incident_id))


def queue_once(conn, incident: Incident, send) -> bool | str:
    """Send the incident's job (``send(incident_id, run_id)``) unless it was sent already: True
    when sent now, "before" when another request, server or worker sent it, False when the
    incident resolved meanwhile (nothing to diagnose).  The row lock makes the check and the send
    one step; a ``send`` that raises (the broker is down) leaves the incident unqueued."""
    with conn.transaction():
        row = conn.execute("SELECT enqueued, resolved_at FROM runbook_incidents WHERE id = %s FOR UPDATE",
                           (incident.id,)).fetchone()
        if row is None or row[0] is not None:
            return "before"
        if row[1] is not None:
            return False
        send(incident.id, incident.run_id)
        mark_enqueued(conn, incident.id)
    return True


def mark_enqueued(conn, incident_id: int) -> None:
    """The incident's job is on the broker (committed, or with the caller's transaction)."""
    with conn.transaction():
        conn.execute("UPDATE runbook_incidents SET enqueued = now() WHERE id = %s AND enqueued IS NULL",
                     (incident_id,))


def mark_resolved(conn, alert) -> list[Incident]:
    """The open incidents of ``alert`` (its fingerprint and startsAt, any runbook)
    marked resolved at its endsAt; committed."""
    ensure(conn)
    with conn.transaction():
        rows = conn.execute(
            f"UPDATE runbook_incidents SET resolved_at = %s "
            f"WHERE fingerprint = %s AND starts_at = %s AND resolved_at IS NULL RETURNING {_COLUMNS}",
            (alert.ends_at or "", alert.fingerprint, alert.starts_at or "")).fetchall()
    return [_incident(r) for r in rows]


def get(conn, incident_id: int) -> Incident | None:
    ensure(conn)
    return _incident(conn.execute(f"SELECT {_COLUMNS} FROM runbook_incidents WHERE id = %s",
                                  (incident_id,)).fetchone())


def by_run(conn, run_id: str) -> Incident | None:
    ensure(conn)
    return _incident(conn.execute(f"SELECT {_COLUMNS} FROM runbook_incidents WHERE run_id = %s",
                                  (run_id,)).fetchone())


def incidents(conn, limit: int = 200) -> list[Incident]:
    """The newest incidents first."""
    ensure(conn)
    return [_incident(r) for r in conn.execute(
        f"SELECT {_COLUMNS} FROM runbook_incidents ORDER BY id DESC LIMIT %s", (limit,)).fetchall()]


def webhooks(conn, incident_id: int) -> list[dict]:
    """The webhooks that named the incident, oldest first."""
    ensure(conn)
    cur = conn.execute("SELECT id, received, peer, alertname, fingerprint, status, incident, outcome "
                       "FROM runbook_webhooks WHERE incident = %s ORDER BY id", (incident_id,))
    names = [c.name for c in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def unqueued(conn) -> list[Incident]:
    """Incidents whose job never reached the broker (it was down), oldest first."""
    ensure(conn)
    return [_incident(r) for r in conn.execute(
        f"SELECT {_COLUMNS} FROM runbook_incidents WHERE enqueued IS NULL ORDER BY id").fetchall()]
