"""``runbook serve``: the Alertmanager webhook and a read-only page of the runs.

* ``POST /alertmanager`` (bearer token): every firing alert is committed to the
  alert ledger (:mod:`runbook.team.ledger`) before anything is answered, then its
  incident's job goes to the broker once (under a row lock on the incident);
  2xx only when both held, 503 when PostgreSQL or the broker did not (Alertmanager
  retries 5xx and drops 4xx, so a 4xx is only for what a retry cannot fix: a
  wrong token, a body too large, a payload that is not one).
* ``GET /`` and ``GET /runs/ID`` (read token): server-rendered HTML, no script,
  refreshed by the browser every few seconds; every value escaped.
* ``GET /healthz``: ``ok``.

Starlette and uvicorn are imported here only, when ``runbook serve`` runs.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from runbook.errors import RunbookError, UsageError
from runbook.team import ledger

BODY_LIMIT = 1024 * 1024  # bytes of a webhook's body; Alertmanager's are far smaller (truncated at max_alerts)
COOKIE = "runbook_read"
REFRESH_SECONDS = 5
RUNS_SHOWN = 200
POOL_SIZE = 8  # ledger connections kept (and requests talking to PostgreSQL at once)
IDLE_CHECK = 0.5  # seconds: a ledger connection idle longer is checked (SELECT 1) before use


@dataclass
class Config:
    webhook_token: str
    read_token: str | None
    audit_url: str | None  # the ledger's (and the shared audit's) database; None only in page tests
    broker_url: str | None
    paths: list[Path]
    store: Callable[[], Any] | None = None  # the audit store (default runbook.store.open_store)
    body_limit: int = BODY_LIMIT
    enqueue: Callable[[int, str], None] | None = None  # default runbook.team.worker.enqueue
    refresh: int = REFRESH_SECONDS  # the page reloads itself this often (seconds)


# --------------------------------------------------------------------------- configuration

def _token_from(file: str | None, env: str, what: str) -> str | None:
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"{what} file {file}: cannot read it ({exc.strerror or exc})") from None
        if not text:
            raise UsageError(f"{what} file {file} is empty")
        return text
    return os.environ.get(env) or None


def config_from(args) -> Config:
    """The server's configuration from the command line and the environment;
    UsageError (exit 2, one line) for what it cannot start without."""
    from runbook.catalog import search_path

    token = _token_from(args.token_file, "RUNBOOK_WEBHOOK_TOKEN", "--token-file")
    if not token:
        raise UsageError("runbook serve needs the webhook token Alertmanager sends (Authorization: Bearer …): "
                         "set RUNBOOK_WEBHOOK_TOKEN or pass --token-file FILE")
    read = _token_from(args.read_token_file, "RUNBOOK_READ_TOKEN", "--read-token-file")
    url = os.environ.get("RUNBOOK_AUDIT_URL") or ""
    if not url.startswith(("postgresql://", "postgres://")):
        raise UsageError("runbook serve needs RUNBOOK_AUDIT_URL=postgresql://… (the alert ledger and the shared "
                         "audit live there)" + (f"; it is set to a {url.split(':', 1)[0]!r} URL" if url else ""))
    broker = os.environ.get("RUNBOOK_BROKER_URL") or ""
    if not broker.startswith(("redis://", "rediss://", "amqp://", "amqps://", "pyamqp://")):
        raise UsageError("runbook serve needs RUNBOOK_BROKER_URL=redis://… or amqp://… (where the jobs go)")
    paths = [Path(p) for p in args.path] if args.path else search_path(None)
    return Config(webhook_token=token, read_token=read, audit_url=url, broker_url=broker, paths=paths)


# --------------------------------------------------------------------------- the ledger's connections

class Pool:
    """A few autocommit connections to the ledger, shared by the request threads."""

    def __init__(self, url: str, size: int = POOL_SIZE):
        self.url = url
        self.idle: list = []
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(size)

    def take(self):
        self.slots.acquire()
        try:
            with self.lock:
                conn, since = self.idle.pop() if self.idle else (None, 0.0)
            if conn is not None and not (conn.closed or conn.broken) and time.monotonic() - since > IDLE_CHECK:
                try:  # idle a while: PostgreSQL may have restarted since (one stale connection, one 503)
                    conn.execute("SELECT 1")
                except Exception:  # noqa: BLE001 - any failure: a new connection
                    conn.close()
            if conn is not None and (conn.closed or conn.broken):
                conn = None
            if conn is None:
                conn = ledger.connect(self.url, timeout=3)
                ledger.ensure(conn)
            return conn
        except BaseException:
            self.slots.release()
            raise

    def give(self, conn, ok: bool = True) -> None:
        try:
            if ok and not conn.closed and not conn.broken and conn.info.transaction_status == 0:  # IDLE
                with self.lock:
                    self.idle.append((conn, time.monotonic()))
                    return
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection closes as it can
                pass
        finally:
            self.slots.release()

    def close(self) -> None:
        with self.lock:
            for conn, _ in self.idle:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
            self.idle.clear()


# --------------------------------------------------------------------------- the webhook

class _TooLarge(Exception):
    pass


def bearer(headers) -> str | None:
    value = headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


def parse_payload(body: bytes) -> tuple[dict, list, list]:
    """(document, firing alerts, resolved alerts) of a webhook body; UsageError with the reason."""
    from runbook.alert import alerts_of

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"the body is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                         "expected an Alertmanager webhook payload") from None
    except RecursionError:
        raise UsageError("nested too deeply to read; expected an Alertmanager webhook payload") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits (Python's int limit)
        raise UsageError(f"not readable JSON ({str(exc).splitlines()[0][:120]}); expected an Alertmanager webhook "
                         "payload") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("alerts"), list):
        raise UsageError("not an Alertmanager webhook payload (no 'alerts' list)")
    version = doc.get("version")
    if version is not None and str(version) != "4":
        raise UsageError(f"webhook payload version {str(version)[:20]!r}: only version 4 (Alertmanager's) is read")
    if any(not isinstance(a, dict) for a in doc["alerts"]):
        raise UsageError("an entry of 'alerts' is not an object")
    firing, resolved = alerts_of(doc)
    return doc, firing, resolved


def _brief(alert) -> dict:
    return {"alertname": alert.name, "fingerprint": alert.fingerprint, "startsAt": alert.starts_at or "",
            "status": alert.status}


class Webhook:
    """What one webhook does (in a worker thread: every call here blocks)."""

    def __init__(self, cfg: Config, pool: Pool):
        self.cfg = cfg
        self.pool = pool
        self.index_lock = threading.Lock()
        self._index: tuple | None = None
        self._broken: list[str] = []  # runbook files that did not load, at the last index

    def enqueue(self, incident_id: int, run_id: str) -> None:
        if self.cfg.enqueue is not None:
            return self.cfg.enqueue(incident_id, run_id)
        from runbook.team.worker import enqueue

        return enqueue(incident_id, run_id)

    def choose(self, alert) -> tuple[str, str]:
        """(runbook, why) for one alert, as :func:`runbook.alert.choose_runbook` chooses, from an
        index of the runbook path kept while its files are unchanged (loading every runbook for
        every alert was most of a webhook's time)."""
        from runbook.alert import choose_for

        index, answers = self.index()
        try:
            return choose_for(alert, index, answers)
        except UsageError as exc:  # no runbook answers it: perhaps the one that does cannot be loaded now
            if self._broken:
                raise Unloadable(f"{exc}; but {len(self._broken)} runbook file(s) do not load "
                                 f"({', '.join(self._broken[:3])}): the alert waits for them (503, Alertmanager "
                                 "retries); fix them (runbook validate)") from None
            raise

    def index(self) -> tuple[dict[str, str], dict[str, list[str]]]:
        """(runbook name or file stem -> path, alert name -> runbook names), rebuilt when a file
        of the runbook path is added, removed or changed."""
        from runbook import spec

        files = spec.runbook_files(self.cfg.paths)
        signature = []
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            signature.append((str(f), st.st_mtime_ns, st.st_size))
        with self.index_lock:
            if self._index is not None and self._index[0] == signature:
                return self._index[1], self._index[2]
            from runbook.alert import runbook_index

            broken: list[str] = []
            index, answers = runbook_index(files, broken)
            self._broken = broken
            self._index = (signature, index, answers)
            return index, answers

    def handle(self, doc: dict, firing: list, resolved: list, peer: str) -> tuple[int, dict]:
        import psycopg

        try:
            conn = self.pool.take()
        except RunbookError as exc:
            return 503, {"error": str(exc), "queued": 0}
        ok = True
        out: list[dict] = []
        broker_down: str | None = None
        try:
            for a in firing:
                item = _brief(a)
                out.append(item)
                try:
                    ref, why = self.choose(a)
                except Unloadable:
                    raise
                except RunbookError as exc:
                    reason = str(exc)
                    ledger.record_webhook(conn, peer, a, "firing", f"no runbook: {reason}")
                    item.update(outcome="no runbook", detail=reason)
                    continue
                incident, new = ledger.record_firing(conn, ref, a, doc, peer)
                item.update(outcome="new incident" if new else "duplicate", incident=incident.id,
                            run_id=incident.run_id, runbook=ref, webhooks=incident.webhooks)
                if new:
                    item["why"] = why
                if incident.enqueued is not None:
                    item["queued"] = "before"
                    continue
                if incident.resolved_at is not None:  # a late retry of a firing webhook after its resolution
                    item.update(queued=False, detail=f"resolved at {incident.resolved_at}: nothing to diagnose")
                    continue
                if broker_down is not None:
                    item["queued"] = False
                    continue
                try:
                    item["queued"] = ledger.queue_once(conn, incident, self.enqueue)
                except RunbookError as exc:  # BrokerDown: the row stays unqueued, the retry queues it
                    broker_down = str(exc)
                    item["queued"] = False
            for a in resolved:
                item = _brief(a)
                out.append(item)
                item.update(self._resolved(conn, a, peer))
        except psycopg.Error as exc:
            ok = False
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return 503, {"error": f"the alert ledger failed: {first}; nothing is lost if Alertmanager retries",
                         "alerts": out}
        except RunbookError as exc:  # recording a resolution in the audit failed
            return 503, {"error": str(exc), "alerts": out}
        finally:
            self.pool.give(conn, ok)
        if broker_down is not None:
            return 503, {"error": f"{broker_down}; the alerts are in the ledger and will be queued when "
                                  "Alertmanager retries", "alerts": out}
        return 200, {"alerts": out}

    def _resolved(self, conn, alert, peer: str) -> dict:
        """A resolution: the ledger's incidents marked, and (once) recorded in the audit."""
        with conn.transaction():  # the audit record and the ledger's mark stand or fall together
            marked = ledger.mark_resolved(conn, alert)
            seen = None
            if not marked:
                seen = conn.execute(
                    "SELECT id FROM runbook_incidents WHERE fingerprint = %s AND starts_at = %s "
                    "AND resolved_at IS NOT NULL ORDER BY id DESC LIMIT 1",
                    (alert.fingerprint, alert.starts_at or "")).fetchone()
            if seen is not None:
                where = "already recorded"
                incident_id = seen[0]
            else:
                where = record_resolved(alert)
                incident_id = marked[0].id if marked else None
            ledger._webhook(conn, peer, alert, "resolved", f"resolved: {where}", incident_id)
        return {"outcome": "resolved", "detail": where, "incident": incident_id}


class Unloadable(RunbookError):
    """No runbook answers an alert while some runbook files do not load: the answer is 503, so
    that Alertmanager sends the alert again once they are fixed, instead of dropping it."""


def _log(code: int, peer: str, answer: dict) -> None:
    """One line per webhook on standard error: what became of each alert."""
    import sys

    from runbook.text import visible

    parts = []
    for a in answer.get("alerts") or []:
        what = a.get("outcome", "not handled")
        if a.get("run_id"):
            what += f" {a['run_id']}" + (" queued" if a.get("queued") is True else "")
        parts.append(f"{a.get('alertname')} ({a.get('fingerprint')}): {what}")
    line = f"webhook from {peer}: {code}" + (f" {answer['error']}" if answer.get("error") else "")
    print(visible(line + ("; " + "; ".join(parts) if parts else ""), one_line=True)[:2000], file=sys.stderr, flush=True)


def record_resolved(alert) -> str:
    """The one place that records a resolution in the audit (the run lifecycle's)."""
    from runbook import session

    what, where = session.record_resolved(alert, who="runbook serve")
    return where


# --------------------------------------------------------------------------- the page

def esc(value: Any, one_line: bool = True) -> str:
    """Text from the audit or an alert, shown as text: control characters made
    visible (ESC as \\x1b), then HTML-escaped."""
    from runbook.text import visible

    return html.escape(visible("" if value is None else str(value), one_line=one_line), quote=True)


def _when(ts: Any) -> str:
    from runbook.audit import parse_time

    t = parse_time(ts) if isinstance(ts, str) else None
    if t is None:
        return esc(ts or "")
    return esc(t.strftime("%Y-%m-%d %H:%M:%S UTC"))


def _time(ts: Any) -> str:
    from runbook.audit import parse_time

    t = parse_time(ts) if isinstance(ts, str) else None
    return esc(t.strftime("%H:%M:%S")) if t else ""


STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,sans-serif;font-size:18px;line-height:1.45;margin:0;padding:12px;
 max-width:52rem;color:#111;background:#fff;overflow-wrap:anywhere;word-break:break-word}
h1{font-size:1.4rem;margin:.2rem 0 .6rem}h2{font-size:1.15rem;margin:1.2rem 0 .4rem}
a{color:#0645ad}
.card{border:1px solid #ccc;border-radius:8px;padding:10px 12px;margin:0 0 10px}
.runs{list-style:none;padding:0;margin:0}
.st{display:inline-block;font-weight:700;padding:0 .4em;border-radius:4px;background:#eee}
.ok{background:#d5f5d5}.bad{background:#fbd5d5}.warn{background:#ffe7b3}.live{background:#d6e6ff}
.meta{color:#444;font-size:.95rem}
pre{white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word;background:#f6f6f6;padding:8px;
 border-radius:6px;font-size:.9rem;max-width:100%;overflow-x:auto;margin:.3rem 0}
code{font-size:.95rem;overflow-wrap:anywhere}
dl{margin:.3rem 0}dt{font-weight:600}dd{margin:0 0 .3rem 0}
.banner{border:2px solid #c60;background:#fff4e5;border-radius:8px;padding:10px 12px;margin:0 0 12px}
.tl{list-style:none;padding:0;margin:0}.tl li{padding:4px 0;border-bottom:1px solid #eee}
"""

OK_STATUSES = {"ok", "completed", "resolved", "planned", "rehearsed", "queued"}
BAD_STATUSES = {"failed", "aborted", "refused", "interrupted", "error", "not queued", "timeout"}
WARN_STATUSES = {"in doubt", "paused", "skipped"}


def _status(status: Any) -> str:
    s = str(status or "?")
    cls = "ok" if s in OK_STATUSES else "bad" if s in BAD_STATUSES else "warn" if s in WARN_STATUSES else "live"
    return f'<span class="st {cls}" data-status="{esc(s)}">{esc(s)}</span>'


def _page(title: str, body: str, refresh: int | None = REFRESH_SECONDS) -> str:
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"{meta}<title>{esc(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>")


def _alert_text(alert: Any) -> str:
    if not isinstance(alert, dict):
        return ""
    labels = alert.get("labels") if isinstance(alert.get("labels"), dict) else {}
    name = alert.get("name") or labels.get("alertname") or "?"
    return str(name)


def runs_of(store) -> list[dict]:
    """One summary per run, newest first, with its alert (from run_started)."""
    from runbook import audit

    by_run: dict[str, list[dict]] = {}
    for r in store.records():
        if "run" in r:
            by_run.setdefault(str(r["run"]), []).append(r)
    out = []
    for records in by_run.values():
        s = audit.summarize(records)
        started = next((r for r in records if r.get("type") == "run_started"), {})
        s["alert"] = _alert_text(started.get("alert"))
        s["fingerprint"] = (started.get("alert") or {}).get("fingerprint") if isinstance(started.get("alert"), dict) else None
        s["stage"] = started.get("stage")
        s["paused"] = paused_before(records)
        out.append(s)
    out.sort(key=lambda s: str(s.get("started") or ""), reverse=True)
    return out


def paused_before(records: list[dict]) -> str | None:
    """The write step a run stopped before, waiting for a person; None otherwise."""
    from runbook import audit

    segment = records
    for i in range(len(records) - 1, -1, -1):
        if records[i].get("type") == "resumed":
            segment = records[i:]
            break
    finished = audit.last_finish(records)
    if finished is None:
        for r in reversed(segment):
            if r.get("type") == "paused":
                return str(r.get("step") or r.get("before") or "?")
        return None
    for key in ("paused_before", "next_write"):
        if finished.get(key):
            return str(finished[key])
    if finished.get("status") not in ("refused", "paused"):
        return None
    for r in reversed(segment):
        if r.get("type") == "step_intent":
            return None
        if r.get("type") == "decision" and not r.get("approved") and r.get("how") in ("no-terminal", "prompt",
                                                                                       "step-mode"):
            return str(r.get("step"))
    return None


def resumable(s: dict) -> bool:
    if s.get("dry_run"):
        return False
    return s.get("paused") is not None or s.get("finished") is None or s.get("status") not in ("resolved", "completed")


def render_index(runs: list[dict], queued: list, notice: str | None = None, refresh: int = REFRESH_SECONDS) -> str:
    items = []
    for inc in queued:
        status = "refused" if inc.refused else "queued" if inc.enqueued is not None else "not queued"
        why = f"the worker could not start it: {esc(inc.refused)}" if inc.refused else "waiting for a worker"
        items.append(
            f'<li class="card" data-run="{esc(inc.run_id)}"><div>{_status(status)} '
            f'<b>{esc(inc.alertname)}</b> → {esc(inc.runbook)}</div>'
            f'<div class="meta">run {esc(inc.run_id)} · received {_when(inc.received.isoformat() if inc.received else "")}'
            f' · {esc(inc.webhooks)} webhook{"s" if inc.webhooks != 1 else ""} · {why}</div></li>')
    for s in runs[:RUNS_SHOWN]:
        status = "paused" if s.get("paused") else s.get("status")
        rid = str(s["run"])
        alert = f'<b>{esc(s["alert"])}</b> → ' if s.get("alert") else ""
        extra = f' · before write step <b>{esc(s["paused"])}</b>' if s.get("paused") else ""
        dry = " · dry-run" if s.get("dry_run") else ""
        items.append(
            f'<li class="card" data-run="{esc(rid)}"><div>{_status(status)} '
            f'<a href="/runs/{esc(rid)}">{alert}{esc(s.get("runbook") or "?")}</a>{extra}</div>'
            f'<div class="meta">started {_when(s.get("started"))} by {esc(s.get("who") or "?")}'
            f' on {esc(s.get("host") or "?")}{dry}</div>'
            f'<div class="meta">run <code>{esc(rid)}</code></div></li>')
    if not items:
        items.append('<li class="card">No runs yet.</li>')
    note = f'<p class="banner">{esc(notice)}</p>' if notice else ""
    return _page("runbook: runs", f"<h1>Runs</h1>{note}<ul class=runs>{''.join(items)}</ul>", refresh)


def _kv(d: Any) -> str:
    if not isinstance(d, dict) or not d:
        return ""
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{_value(v)}</dd>" for k, v in d.items())
    return f"<dl>{rows}</dl>"


def _value(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return f"<pre>{esc(json.dumps(v, indent=2, ensure_ascii=False, default=str), one_line=False)}</pre>"
    text = "" if v is None else str(v)
    if "\n" in text:
        return f"<pre>{esc(text, one_line=False)}</pre>"
    return f"<code>{esc(text)}</code>"


def _decision_text(d: dict) -> str:
    if d.get("how") == "no-terminal" and not d.get("approved"):
        return f"not approved: nobody was there to approve it ({d.get('by') or '?'}, no terminal, no --yes)"
    verdict = "approved" if d.get("approved") else "declined"
    choice = d.get("choice")
    how = d.get("how")
    return (f"{verdict}{' (' + str(choice) + ')' if choice and choice not in ('run',) else ''} by "
            f"{d.get('by') or '?'} via {how or '?'}")


def render_run(records: list[dict], hooks: list[dict], incident=None, refresh: int = REFRESH_SECONDS) -> str:
    from runbook import audit

    s = audit.summarize(records)
    rid = s["run"]
    started = next((r for r in records if r.get("type") == "run_started"), {})
    paused = paused_before(records)
    s["paused"] = paused
    doubt = s.get("in_doubt") or []
    steps: dict[str, dict] = {}
    for r in records:
        t = r.get("type")
        if t not in ("step_intent", "step_result", "decision") or r.get("step") is None:
            continue
        st = steps.setdefault(str(r["step"]), {"intent": None, "result": None, "decisions": [], "attempts": 0})
        if t == "step_intent":
            st["intent"] = r
            st["attempts"] += 1
            st["result"] = None
        elif t == "step_result":
            st["result"] = r
        else:
            st["decisions"].append(r)

    head = [f"<h1>{esc(started.get('title') or s.get('runbook') or 'run')}</h1>"]
    status = "paused" if paused else s["status"]
    alert = started.get("alert") if isinstance(started.get("alert"), dict) else None
    head.append(f'<div class="card"><div>{_status(status)} runbook <b>{esc(s.get("runbook") or "?")}</b></div>')
    if alert:
        head.append(f'<div>alert <b>{esc(_alert_text(alert))}</b> <span class="meta">fingerprint '
                    f'{esc(alert.get("fingerprint") or "?")} · started {_when(alert.get("startsAt"))}</span></div>')
    head.append(f'<div class="meta">run <code>{esc(rid)}</code> · started {_when(s.get("started"))} by '
                f'{esc(s.get("who") or "?")} on {esc(s.get("host") or "?")}'
                f'{" · finished " + _when(s.get("finished")) if s.get("finished") else ""}'
                f'{" · stage " + esc(started.get("stage")) if started.get("stage") else ""}'
                f'{" · dry-run" if s.get("dry_run") else ""}</div></div>')
    if paused:
        head.append(f'<div class="banner" id="paused">Paused before write step <b>{esc(paused)}</b>: it needs a person. '
                    f'Resume on your machine: <code>runbook resume {esc(rid)}</code></div>')
    if doubt:
        head.append(f'<div class="banner" id="in-doubt">In doubt: {", ".join(f"<b>{esc(d)}</b>" for d in doubt)} '
                    f'started and may have changed something; its result was never recorded. '
                    f'<code>runbook resume {esc(rid)}</code> asks what happened.</div>')
    if not paused and resumable(s):
        head.append(f'<p>Continue it: <code id="resume">runbook resume {esc(rid)}</code></p>')
    if started.get("params"):
        head.append(f"<h2>Parameters</h2><div class=card>{_kv(started.get('params'))}</div>")

    cards = []
    for sid, st in steps.items():
        intent, result = st["intent"] or {}, st["result"]
        if result is not None:
            state = str(result.get("status"))
        elif sid in doubt:
            state = "in doubt"
        elif paused == sid:
            state = "paused"
        elif intent:
            state = "running" if s.get("finished") is None else "no result"
        else:
            declined = [d for d in st["decisions"] if not d.get("approved")]
            state = "not run" if declined else "waiting"
        parts = [f'<div class="card step" id="step-{esc(sid)}" data-step="{esc(sid)}" data-status="{esc(state)}">',
                 f"<div>{_status(state)} <b>{esc(sid)}</b></div>"]
        if intent:
            parts.append(f'<div class="meta">{esc(intent.get("stage") or "")} · {esc(intent.get("kind") or "")} · '
                         f'<b>{esc(intent.get("effect") or "")}</b>'
                         f'{" · attempt " + esc(st["attempts"]) if st["attempts"] > 1 else ""}'
                         f' · {_time(intent.get("ts"))}</div>')
            if intent.get("targets"):
                parts.append(f'<div>targets: {", ".join(f"<code>{esc(t)}</code>" for t in intent["targets"])}</div>')
            if intent.get("rendered"):
                parts.append(_value(intent["rendered"]) if not isinstance(intent["rendered"], str)
                             else f"<pre>{esc(intent['rendered'], one_line=False)}</pre>")
        for d in st["decisions"]:
            parts.append(f'<div class="decision">decision: {esc(_decision_text(d))} at {_time(d.get("ts"))}</div>')
        if result is not None:
            bits = []
            if result.get("exit_code") is not None:
                bits.append(f"exit {esc(result['exit_code'])}")
            if result.get("duration") is not None:
                bits.append(f"{float(result['duration']):.1f} s")
            if bits:
                parts.append(f'<div class="meta">{" · ".join(bits)}</div>')
            if result.get("error"):
                parts.append(f'<div>error: <span class="error">{esc(result["error"])}</span></div>')
            if result.get("outputs"):
                parts.append(f'<div class="outputs">outputs:{_kv(result["outputs"])}</div>')
            if result.get("output_excerpt"):
                parts.append(f'<pre class="output">{esc(result["output_excerpt"], one_line=False)}</pre>')
        parts.append("</div>")
        cards.append("".join(parts))

    timeline = []
    for r in records:
        timeline.append(f'<li><span class="meta">{_time(r.get("ts"))}</span> {esc(_event(r))}</li>')
    hook_items = []
    for h in hooks:
        when = h.get("received")
        when = when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(when, datetime) else when
        hook_items.append(f'<li>{esc(when)} · {esc(h.get("status"))} from {esc(h.get("peer") or "?")}: '
                          f'{esc(h.get("outcome"))}</li>')
    body = "".join(head)
    body += f"<h2>Steps</h2>{''.join(cards) or '<p>No step yet.</p>'}"
    body += f'<h2>Timeline</h2><ul class="tl">{"".join(timeline)}</ul>'
    if incident is not None or hook_items:
        body += (f'<h2>Webhooks</h2><ul class="tl" id="webhooks">{"".join(hook_items)}</ul>')
    body += '<p><a href="/">All runs</a></p>'
    return _page(f"runbook: {s.get('runbook') or rid} {status}", body, refresh)


def _event(r: dict) -> str:
    t = r.get("type")
    step = r.get("step")
    if t == "run_started":
        return f"started by {r.get('who')} on {r.get('host')}" + (f" (stage {r['stage']})" if r.get("stage") else "")
    if t == "step_intent":
        return f"{step}: {r.get('effect')} step starts ({r.get('kind')})"
    if t == "step_result":
        return f"{step}: {r.get('status')}" + (f" — {r['error']}" if r.get("error") else "")
    if t == "decision":
        return f"{step}: {_decision_text(r)}"
    if t == "run_finished":
        return f"finished: {r.get('status')} (exit {r.get('exit_code')})"
    if t == "resumed":
        return f"resumed by {r.get('who', '?')}"
    if t == "alert_resolved":
        return f"alert {r.get('alertname')} resolved at {r.get('endsAt') or '?'} (recorded by {r.get('who') or '?'})"
    if t == "interrupted":
        return f"interrupted at {step} ({r.get('signal')})"
    if t == "error":
        return f"error at {step}: {r.get('error')}"
    return f"{t}" + (f" ({step})" if step else "")


# --------------------------------------------------------------------------- the app

def create_app(cfg: Config):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
    from starlette.routing import Route

    pool = Pool(cfg.audit_url) if cfg.audit_url else None
    hook = Webhook(cfg, pool) if pool else None
    page_key = (hmac.new(cfg.read_token.encode(), b"runbook page cookie", hashlib.sha256).hexdigest()
                if cfg.read_token else None)
    headers = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; "
                                          "frame-ancestors 'none'; base-uri 'none'",
               "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
               "X-Frame-Options": "DENY"}

    def html_response(text: str, status: int = 200) -> Response:
        return HTMLResponse(text, status_code=status, headers=headers)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.body_limit:
            raise _TooLarge
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.body_limit:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def alertmanager(request: Request) -> Response:
        if not same(bearer(request.headers), cfg.webhook_token):
            return JSONResponse({"error": "unauthorized: send Authorization: Bearer TOKEN (http_config.authorization "
                                          "in the Alertmanager receiver)"}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="runbook"'})
        try:
            body = await read_body(request)
        except _TooLarge:
            return JSONResponse({"error": f"the body is larger than {cfg.body_limit} bytes"}, status_code=413,
                                headers={"Connection": "close"})
        try:
            doc, firing, resolved = parse_payload(body)
        except RunbookError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        client = request.client
        peer = f"{client.host}:{client.port}" if client else "?"
        code, answer = await run_in_threadpool(hook.handle, doc, firing, resolved, peer)
        _log(code, peer, answer)
        return JSONResponse(answer, status_code=code)

    def authorized(request: Request) -> Response | None:
        """None when the reader may see the page, else the response to send."""
        if not cfg.read_token:
            return html_response(_page("runbook: page off", "<h1>The page is off</h1><p>Start runbook serve with "
                                       "RUNBOOK_READ_TOKEN or --read-token-file to show it.</p>", refresh=None), 403)
        if same(bearer(request.headers), cfg.read_token) or same(request.cookies.get(COOKIE), page_key):
            return None
        given = request.query_params.get("token")
        if given is not None and same(given, cfg.read_token):
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            from urllib.parse import urlencode

            clean = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            resp = RedirectResponse(clean, status_code=303, headers=headers)
            resp.set_cookie(COOKIE, page_key, max_age=30 * 24 * 3600, path="/", httponly=True, samesite="lax",
                            secure=request.url.scheme == "https")
            return resp
        return html_response(_page("runbook: unauthorized", "<h1>Unauthorized</h1><p>Open the link with "
                                   "<code>?token=…</code> (the read token) once; the browser keeps it.</p>",
                                   refresh=None), 401)

    def open_store():
        if cfg.store is not None:
            return cfg.store()
        from runbook.store import open_store as default

        return default()

    def _with_ledger(fn):
        if pool is None:
            return None, None
        try:
            conn = pool.take()
        except RunbookError as exc:
            return None, str(exc)
        ok = True
        try:
            return fn(conn), None
        except Exception as exc:  # noqa: BLE001 - the page shows the runs without the ledger
            ok = False
            return None, f"the alert ledger failed: {(str(exc).splitlines() or [type(exc).__name__])[0]}"
        finally:
            pool.give(conn, ok)

    def index_page() -> tuple[str, int]:
        store = open_store()
        try:
            runs = runs_of(store)
        finally:
            getattr(store, "close", lambda: None)()
        known = {str(s["run"]) for s in runs}
        incs, notice = _with_ledger(lambda conn: ledger.incidents(conn, RUNS_SHOWN))
        waiting = [i for i in incs or [] if i.run_id not in known and i.resolved_at is None]
        return render_index(runs, waiting, notice, cfg.refresh), 200

    def run_page(run_id: str) -> tuple[str, int]:
        store = open_store()
        try:
            records = store.run_records(run_id)
        except UsageError as exc:
            inc, _ = _with_ledger(lambda conn: ledger.by_run(conn, run_id))
            if inc is not None:
                hooks, _ = _with_ledger(lambda conn: ledger.webhooks(conn, inc.id))
                status = "refused" if inc.refused else "queued" if inc.enqueued is not None else "not queued"
                why = (f"the worker could not start it: {esc(inc.refused)}" if inc.refused
                       else "waiting for a worker")
                body = (f"<h1>{esc(inc.alertname)} → {esc(inc.runbook)}</h1><div class=card>{_status(status)} "
                        f"run <code>{esc(inc.run_id)}</code> has not started: {why}.</div>"
                        f'<h2>Webhooks</h2><ul class="tl" id="webhooks">'
                        + "".join(f"<li>{esc(h.get('status'))}: {esc(h.get('outcome'))}</li>" for h in hooks or [])
                        + '</ul><p><a href="/">All runs</a></p>')
                return _page("runbook: queued", body, cfg.refresh), 200
            return _page("runbook: no such run", f"<h1>No such run</h1><p>{esc(str(exc))}</p>"
                         '<p><a href="/">All runs</a></p>', refresh=None), 404
        finally:
            getattr(store, "close", lambda: None)()
        full = str(records[0].get("run"))
        inc, _ = _with_ledger(lambda conn: ledger.by_run(conn, full))
        hooks = []
        if inc is not None:
            hooks, _ = _with_ledger(lambda conn: ledger.webhooks(conn, inc.id))
        return render_run(records, hooks or [], inc, cfg.refresh), 200

    def unavailable(fn, *args) -> tuple[str, int]:
        """The page, or 503 saying why the audit could not be read (the store's database is down…)."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - a page, never a traceback
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return _page("runbook: audit unavailable", f"<h1>The audit cannot be read now</h1><p>{esc(first)}</p>"
                         "<p>This page tries again by itself.</p>", cfg.refresh), 503

    async def index(request: Request) -> Response:
        if (denied := authorized(request)) is not None:
            return denied
        text, code = await run_in_threadpool(unavailable, index_page)
        return html_response(text, code)

    async def run(request: Request) -> Response:
        if (denied := authorized(request)) is not None:
            return denied
        text, code = await run_in_threadpool(unavailable, run_page, request.path_params["run_id"])
        return html_response(text, code)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    routes = [Route("/healthz", healthz), Route("/", index), Route("/runs/{run_id}", run)]
    if hook is not None:
        routes.append(Route("/alertmanager", alertmanager, methods=["POST"]))
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            if pool is not None:
                pool.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.pool = pool
    return app


def serve(cfg: Config, host: str, port: int) -> int:
    """Run until SIGTERM or SIGINT (uvicorn finishes the requests in flight, then stops)."""
    import uvicorn

    import sys

    try:  # the tables now, when PostgreSQL answers; when it does not, webhooks get 503 until it does
        conn = ledger.connect(cfg.audit_url, timeout=3)
        try:
            ledger.ensure(conn)
        finally:
            conn.close()
    except RunbookError as exc:
        print(f"runbook serve: warning: {exc}; webhooks are answered 503 until it is back", file=sys.stderr, flush=True)
    import socket

    try:  # bound here, so that a port in use is one clean line (uvicorn would log and exit 3)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise RunbookError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", exit_code=2) from None
    app = create_app(cfg)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=10))

    print(f"runbook serve: listening on http://{host}:{port} (POST /alertmanager, GET / for the page)",
          file=sys.stderr, flush=True)
    import signal

    # uvicorn catches SIGTERM/SIGINT, finishes the requests in flight, then raises the signal again with the
    # handlers it found: these make that last step a clean exit (0) instead of death by the signal
    stopped: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopped.append(signum))
    server.run(sockets=[sock])
    print("runbook serve: stopped", file=sys.stderr, flush=True)
    return 0
