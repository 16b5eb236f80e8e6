"""The incident timeline of one run, in Markdown, for the post-mortem (``runbook report``).

Everything comes from the audit log: the run's records in order, with
``T+`` offsets from the alert's ``startsAt`` when the run came from an alert,
else from the run's start.  The sections after the timeline follow the
post-mortem template (impact, root cause, resolution, action items, lessons
learned); what only people can say is left as a visible placeholder.

Values from the log are data, not Markdown: commands, ids and labels go in
code spans or fenced blocks whose fences are longer than any backtick run in
them, other text is backslash-escaped, and ``|`` is escaped in table cells, so
the document stays well formed whatever the log holds.  Record types this
module does not know (newer versions of the engine write more) are listed as
events with all their fields.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from runbook import audit
from runbook.audit import parse_time
from runbook.errors import RunbookError
from runbook.text import plural

TODO = "_to be filled in_"
SHOWN_LINES = 10  # of a failed step's output excerpt

# Fields shown by the specific wording of each record type; any other field is appended as is.
_COMMON = {"type", "run", "ts", "prev", "hash", "v"}
_KNOWN = {
    "run_started": {"runbook", "path", "sha256", "git_commit", "params", "dry_run", "server_dry_run", "who", "host",
                    "argv", "inventory", "alert", "source", "title", "severity"},  # source: the runbook's text (read for the title)
    "step_intent": {"step", "kind", "stage", "effect", "targets", "rendered", "attempt", "runner"},
    "decision": {"step", "approved", "by", "how", "choice", "to"},
    "step_result": {"step", "status", "exit_code", "duration", "output_sha256", "output_bytes", "output_excerpt",
                    "error", "outputs", "attempt", "attempts", "data", "marked_done_by", "observed"},  # data: the engine's state for a resume
    "run_finished": {"status", "exit_code", "signal"},
    "retry": {"step", "attempt", "status", "error"},
    "interrupted": {"step", "signal"},
    "paused": {"step", "reason"},
    "resumed": {"who", "host", "argv", "previous_status"},
    "step_process": {"step", "pid", "pgid", "start_ticks", "boot_id", "host", "hosts", "deadline"},
    "resume_refused": {"who", "reason", "step"},
    "resume_declined": {"who", "step"},
    "error": {"step", "error"},
    "plan": {"steps"},
    "alert_resolved": {"alertname", "fingerprint", "startsAt", "endsAt", "labels", "who", "host"},
}
# Ways of deciding before a step runs (a decision with another ``how`` right after a failure is about the failure).
_BEFORE_STEP = audit.BEFORE_STEP_HOW
# What a decision's ``how`` means, where it is known; any other value is shown as it is.
_HOW = {
    "prompt": "at the prompt",
    "--yes": "on the command line",
    "no-terminal": "no terminal to ask, and no --yes",
    "answer-flag": "with --answer",
    "worker": "a team worker paused for a person",
    "auto-approved": "auto-approved by the runbook (auto_approve), run by a team worker",
}
# Decisions on resume about a write step that was in doubt.
_SETTLE_HOW = ("mark-done", "rerun")
# The choice a decision records, as the report says it: before a step (what became of it) ...
_CHOSEN_BEFORE = {"run": "approved", "continue": "approved", "skip": "skipped", "abort": "declined",
                  "pause": "paused for a person"}
# ... and after it failed (what the operator chose at the prompt, in the prompt's words).
_CHOSEN_AFTER = {"retry": "retry", "skip": "skip", "on_failure": "follow on_failure", "abort": "abort"}


def choice_of(d: dict[str, Any]) -> str:
    """The choice a decision records: its ``choice``; in a log written before every decision
    had one, what ``how`` says (a choice after a failure), else ``approved`` (run or abort)."""
    choice = d.get("choice")
    if isinstance(choice, str) and choice:
        return choice
    how = d.get("how")
    if how in audit.AFTER_FAILURE_HOW or how in _SETTLE_HOW:
        return str(how)
    return "run" if d.get("approved") else "abort"


def chosen(d: dict[str, Any]) -> str:
    """A decision in a word or two: "approved", "skipped", "declined" before a step; the
    operator's choice after a failure ("retry", "follow on_failure", …)."""
    choice = choice_of(d)
    if d.get("how") in _BEFORE_STEP:
        return _CHOSEN_BEFORE.get(choice, choice)
    return _CHOSEN_AFTER.get(choice, choice)
_OUTCOME = {
    "resolved": "resolved",
    "completed": "completed (the last step ran; no end step)",
    "escalated": "escalated",
    "failed": "failed",
    "refused": "refused (a write step was not approved, or a question had no operator)",
    "interrupted": "interrupted (Ctrl-C or SIGTERM)",
    "planned": "planned (dry-run: nothing was contacted)",
    "aborted": "aborted by the operator",
    "paused": "paused for a person (a team worker diagnosed it; runbook resume goes on)",
    "rehearsed": "rehearsed (--server-dry-run: writes validated by their servers, not stored; verify not run)",
}


# --- Markdown ------------------------------------------------------------------

_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~&])")


def _printable(s: str) -> str:
    """Control characters (terminal escapes, NULs, CRs) shown, never sent: the one rule of :func:`runbook.ui.visible`."""
    from runbook.ui import visible

    return visible(s)


def text(value: Any) -> str:
    """Plain text on one line, with Markdown's special characters escaped."""
    s = _printable(" ".join(str(value).split()))
    return _SPECIAL.sub(r"\\\1", s)


def code(value: Any) -> str:
    """``value`` as one inline code span (on one line: newlines shown as ⏎)."""
    s = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    s = _printable(s.replace("\r\n", "\n").replace("\n", " ⏎ ").replace("\t", " "))
    if not s:
        return '""'
    longest = max((len(run) for run in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    if s.startswith("`") or s.endswith("`") or (s.startswith(" ") and s.endswith(" ") and s.strip()):
        s = f" {s} "
    return f"{fence}{s}{fence}"


def block(value: str, indent: str = "", info: str = "") -> list[str]:
    """A fenced code block (as lines), indented to sit inside a list item."""
    s = _printable(value.replace("\r\n", "\n").rstrip("\n"))
    longest = max((len(run) for run in re.findall(r"`+", s)), default=0)
    fence = "`" * max(3, longest + 1)
    lines = [indent + fence + info]
    lines += [(indent + line) if line.strip() else "" for line in s.split("\n")]
    lines.append(indent + fence)
    return lines


def _cell(value: str) -> str:
    """Formatted Markdown made fit for a table cell: every ``|`` escaped, inside code spans too
    (GFM removes one backslash before each ``|`` of a row before it reads the inlines)."""
    return value.replace("|", "\\|")


# --- Times -------------------------------------------------------------------------


def offset(t: datetime | None, origin: datetime | None) -> str:
    """``T+01:02:03`` (``T+1d 01:02:03`` beyond a day, ``T-…`` before the origin)."""
    if t is None or origin is None:
        return "T+?"
    seconds = int((t - origin).total_seconds())  # towards zero
    sign = "-" if seconds < 0 else "+"
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"T{sign}" + (f"{days}d " if days else "") + f"{h:02d}:{m:02d}:{s:02d}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.2f}s"
    days, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    if days:
        return f"{days}d {h:02d}h {m:02d}m {s:02d}s"
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _utc(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "?"


def _clock(t: datetime | None) -> str:
    return t.strftime("%H:%M:%S") if t else "?"


# --- Reading the log -------------------------------------------------------------------


@dataclass
class Problem:
    """Why the log does not verify."""

    path: str
    line: int | None
    problem: str
    this_run: bool = False  # the first bad line is a record of the reported run
    crash: bool = False  # only the last line is torn: a crash while writing, repaired by the next write


def resolve_run(store, run_id: str) -> list[dict[str, Any]]:
    """The records of ``run_id`` (a run id, a unique prefix, or ``last``) in ``store``
    (a :class:`runbook.store.Store`, or a log's path)."""
    store = _as_store(store)
    if run_id == "last":
        runs = store.list_runs()
        if not runs:
            raise RunbookError(f"no runs recorded in {store.where}")
        run_id = runs[-1]["run"]
    return store.run_records(run_id)


def _as_store(store):
    from runbook.store import FileStore

    if isinstance(store, (str, os.PathLike)):
        return FileStore(path=store)
    return store


def check_chain(store, run_id: str, result: audit.VerifyResult | None = None) -> Problem | None:
    """None when the log verifies (like ``runbook audit verify``), else where it does not."""
    store = _as_store(store)
    result = result or store.verify()
    if result.ok:
        return None
    if result.status == "torn":  # a crash, not tampering: the next write keeps the bytes
        return Problem(store.where, result.line, result.problem or result.message, False, crash=True)
    this_run = False
    if result.line is not None:
        record = store.record_at(result.line)
        this_run = record is not None and str(record.get("run")) == run_id
    return Problem(store.where, result.line, result.problem or result.message, this_run)


def runbook_meta(started: dict[str, Any]) -> dict[str, Any]:
    """Title and severity of the runbook that ran: from its text in the log (``source``) when
    recorded, else from its file when that still has the sha256 the run recorded."""
    recorded = {k: started[k] for k in ("title", "severity") if isinstance(started.get(k), str) and started[k]}
    if "title" in recorded:
        return recorded
    source = started.get("source")
    if not isinstance(source, str):
        source = None
        path, sha = started.get("path"), started.get("sha256")
        if isinstance(path, str) and isinstance(sha, str):
            try:
                data = Path(path).read_text(encoding="utf-8")
                if hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest() == sha:
                    source = data
            except (OSError, UnicodeError):
                pass
    if source is None:
        return {}
    try:
        import yaml

        doc = yaml.safe_load(source)
    except Exception:  # noqa: BLE001 - the title is a nicety; the report must not fail for it
        return {}
    if not isinstance(doc, dict):
        return {}
    return {k: doc[k] for k in ("title", "severity") if isinstance(doc.get(k), str) and doc[k]}


# --- The report ---------------------------------------------------------------------------


@dataclass
class _Step:
    """One execution of a step: its intent and, if recorded, its result."""

    id: str
    intent: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    next_step: str | None = None  # the step that ran after this one
    settled: bool = False  # an open intent closed by a later declined decision
    after: dict[str, Any] | None = None  # the operator's decision after the step failed
    settlement: dict[str, Any] | None = None  # on resume: the step was in doubt; marked done or run again
    marked: dict[str, Any] | None = None  # the result written when it was marked done (not observed)

    @property
    def stage(self) -> str:
        return str((self.intent or {}).get("stage") or "")

    @property
    def reads(self) -> bool:
        return (self.intent or {}).get("effect") == "read"

    @property
    def in_doubt(self) -> bool:
        """A write step announced with no result: it may or may not have changed something."""
        return self.intent is not None and self.result is None and not self.settled and not self.reads

    @property
    def cut_short(self) -> bool:
        """A read step announced with no result: resume runs it again."""
        return self.intent is not None and self.result is None and not self.settled and self.reads

    @property
    def marked_by(self) -> str | None:
        """Who marked this in-doubt step done on resume, without anyone observing it run."""
        for r in (self.marked, self.result):
            if r is not None and r.get("marked_done_by"):
                return str(r["marked_done_by"])
        return None


@dataclass
class _Run:
    records: list[dict[str, Any]]
    started: dict[str, Any]
    finished: dict[str, Any] | None
    executions: list[_Step] = field(default_factory=list)
    by_record: dict[int, _Step] = field(default_factory=dict)  # id(record) -> its execution

    @classmethod
    def of(cls, records: list[dict[str, Any]]) -> _Run:
        """Pair intents with results as :func:`runbook.audit.in_doubt` does: by step and attempt,
        a declined decision settling any open intent of its step.  A decision is paired with
        the intent (or result) of its step that follows it, except one that comes right after a
        step's failure (an operator's choice on how to go on): that one stays with the failure."""
        started = next((r for r in records if r.get("type") == "run_started"), {})
        run = cls(records, started, audit.last_finish(records))
        pending: dict[tuple[str, Any], _Step] = {}  # intents waiting for their result
        decided: dict[str, _Step] = {}  # decisions waiting for their step to start
        settling: dict[str, _Step] = {}  # steps in doubt settled on resume, waiting for the result that says how
        last: _Step | None = None  # the execution of the previous step record
        for r in records:
            rtype, step = r.get("type"), str(r.get("step"))
            if rtype not in ("decision", "step_intent", "step_result") or "step" not in r:
                continue
            if rtype == "decision" and r.get("how") in _SETTLE_HOW:
                ex = next((pending[k] for k in reversed(list(pending)) if k[0] == step), None) or next(
                    (e for e in reversed(run.executions) if e.id == step), None)
                if ex is None:
                    ex = _Step(step)
                    run._add(ex, r)
                ex.settlement = r
                run.by_record[id(r)] = ex
                settling[step] = ex
                continue
            if rtype == "decision":
                if (last is not None and last.id == step and last.result is not None and last.after is None
                        and last.result.get("status") != "ok" and r.get("how") not in _BEFORE_STEP):
                    last.after = r
                    run.by_record[id(r)] = last
                    continue
                ex = _Step(step, decision=r)
                run._add(ex, r)
                decided[step] = ex
                if not r.get("approved"):
                    for key in [k for k in pending if k[0] == step]:
                        pending.pop(key).settled = True
            elif rtype == "step_intent":
                ex = decided.pop(step, None)
                if ex is None:
                    ex = _Step(step)
                    run._add(ex, r)
                ex.intent = r
                run.by_record[id(r)] = ex
                pending[(step, r.get("attempt", 1))] = ex
            elif step in settling:  # the result that settles a step in doubt (marked done, or closed to run again)
                ex = settling.pop(step)
                pending.pop((step, r.get("attempt", 1)), None)
                if ex.result is None:
                    ex.result = r
                else:
                    ex.marked = r
                run.by_record[id(r)] = ex
            else:
                ex = pending.pop((step, r.get("attempt", 1)), None) or decided.pop(step, None)
                if ex is None:  # a result without an intent: a step stopped before it started
                    ex = _Step(step)
                    run._add(ex, r)
                ex.result = r
                run.by_record[id(r)] = ex
            last = run.by_record[id(r)]
        ran = [ex for ex in run.executions if ex.intent is not None or ex.result is not None]
        for a, b in zip(ran, ran[1:]):
            a.next_step = b.id
        return run

    def _add(self, ex: _Step, record: dict[str, Any]) -> None:
        self.executions.append(ex)
        self.by_record[id(record)] = ex


def render(records: list[dict[str, Any]], *, problem: Problem | None = None,
           meta: dict[str, Any] | None = None) -> str:
    """The Markdown report of one run from its records (in log order)."""
    run = _Run.of(records)
    s = run.started
    meta = meta or {}
    run_id = str(records[0].get("run")) if records else "?"
    started_at = parse_time(s.get("ts") or (records[0].get("ts") if records else None))
    finished_at = parse_time(run.finished.get("ts")) if run.finished else None
    alert = s.get("alert") if isinstance(s.get("alert"), dict) else None
    fired_at = parse_time(alert.get("startsAt")) if alert else None
    origin = fired_at or started_at
    name = s.get("runbook")

    out: list[str] = []
    title = meta.get("title")
    heading = text(title) if title else (f"runbook {code(name)}" if name else "unknown runbook")
    out += [f"# Incident report: {heading}", "", f"Run {code(run_id)}, from the audit log.", ""]
    if problem is not None and problem.crash:
        where = f"{problem.path}:{problem.line}" if problem.line else problem.path
        out += [f"> **Note: the audit log ends with a torn write** at {code(where)}: a crash while a record was "
                "written (not tampering); the next write to the log keeps its bytes in a `torn_tail` record.", ""]
    elif problem is not None:
        where = f"{problem.path}:{problem.line}" if problem.line else problem.path
        scope = " (a record of this run)" if problem.this_run else ""
        out += [f"> **Warning: the audit log does not verify** at {code(where)}{scope}: {text(problem.problem)}. "
                "Records may have been modified, removed or reordered; this report rests on them as they are "
                "(`runbook audit verify` gives the details).", ""]

    out += ["## Summary", "", f"{TODO}: two or three sentences on what happened.", ""]
    out += _summary_table(run, run_id, meta, started_at, finished_at, alert, fired_at)

    out += ["## Timeline", ""]
    if fired_at:
        out.append(f"Offsets are from the alert's `startsAt` ({_utc(fired_at)}); clock times are UTC.")
    elif alert:
        out.append("Offsets are from the start of the run (the alert has no usable `startsAt`); clock times are UTC.")
    else:
        out.append("Offsets are from the start of the run (it did not come from an alert); clock times are UTC.")
    out.append("")
    if fired_at:
        out.append(f"- **{offset(fired_at, origin)}** ({_clock(fired_at)}) — alert {code(alert.get('name'))} fired")
    previous: dict[str, Any] | None = None  # the run's own last record (not one another process added to it)
    others_since = 0  # records of other processes since
    open_writes: dict[tuple[str, Any], str] = {}  # write steps announced and not yet settled, at each point
    for r in records:
        if r.get("type") in _RESUME_RECORDS and previous is not None and previous.get("type") not in _CLEAN_STOPS:
            out += _stopped_entry(previous, list(dict.fromkeys(open_writes.values())), origin, others_since)
        out += _timeline_entry(r, run, origin)
        if r.get("type") in _OTHER_PROCESS:
            others_since += 1
            continue
        step = str(r.get("step"))
        if r.get("type") == "step_intent" and r.get("effect") != "read":
            open_writes[(step, r.get("attempt", 1))] = step
        elif r.get("type") == "step_result" or (r.get("type") == "decision" and not r.get("approved")):
            for key in [k for k in open_writes if k[0] == step]:
                del open_writes[key]
        previous, others_since = r, 0
    if run.finished is None:
        last = parse_time(records[-1].get("ts")) if records else None
        doubt = [ex.id for ex in run.executions if ex.in_doubt]
        out.append(f"- **{offset(last, origin)}** ({_clock(last)}) — **end of the log**: no record of the run "
                   "finishing (it was killed, crashed, lost its machine, or is still running)"
                   + (f"; {_names(doubt)} may or may not have run" if doubt else ""))
    out.append("")

    out += _impact(run, alert, fired_at, started_at, finished_at, origin)
    out += _root_cause(run)
    out += _resolution(run)
    out += _action_items(run)
    out += ["## Lessons learned", "", f"- What went well: {TODO}", f"- What went wrong: {TODO}",
            f"- Where we got lucky: {TODO}", f"- Was the runbook right? {TODO}", ""]
    return "\n".join(out)


# Records after which a run has stopped on purpose (not a crash) before a resume.
_CLEAN_STOPS = ("run_finished", "resume_refused", "resume_declined")
_RESUME_RECORDS = ("resumed", "resume_refused", "resume_declined")  # an operator came back to the run
# Records another process writes into a run (``run --alert`` with a resolved alert): they say
# nothing of how the run's own process stopped, so they are never "its last record".
_OTHER_PROCESS = ("alert_resolved",)


def _stopped_entry(last: dict[str, Any], doubt: list[str], origin: datetime | None,
                   others_since: int = 0) -> list[str]:
    """The crash before a resume: the run's process ended with no record of it (killed, crashed, machine lost)."""
    t = parse_time(last.get("ts"))
    which = (f"the record before the {'alert resolutions' if others_since > 1 else 'alert resolution'} above is its last"
             if others_since else "the record above is its last")
    line = (f"- **{offset(t, origin)}** ({_clock(t)}) — **the run stopped without finishing**: {which} "
            "before anyone came back to it (its process was killed, crashed, or lost its machine)")
    if doubt:
        line += f"; {_names(doubt)} may or may not have run"
    return [line]


def _outcome(finished: dict[str, Any]) -> str:
    status = str(finished.get("status"))
    if status == "interrupted" and finished.get("signal"):
        sig = str(finished["signal"])
        return f"interrupted ({'Ctrl-C' if sig == 'SIGINT' else sig})"
    return _OUTCOME.get(status, status)


def _summary_table(run: _Run, run_id: str, meta: dict[str, Any], started_at: datetime | None,
                   finished_at: datetime | None, alert: dict[str, Any] | None,
                   fired_at: datetime | None) -> list[str]:
    s = run.started
    rows: list[tuple[str, str]] = []
    rows.append(("Run", code(run_id)))
    book = code(s.get("runbook")) if s.get("runbook") else "?"
    if meta.get("title"):
        book += f" — {text(meta['title'])}"
    rows.append(("Runbook", book))
    rows.append(("Runbook file", code(s.get("path")) if s.get("path") else "?"))
    rows.append(("Runbook sha256", code(str(s.get("sha256"))[:12]) if s.get("sha256") else "?"))
    rows.append(("Git commit", code(str(s.get("git_commit"))[:12]) if s.get("git_commit") else "not recorded (not in a git checkout)"))
    if meta.get("severity"):
        rows.append(("Severity (runbook)", text(meta["severity"])))
    mode = "dry-run (nothing was contacted)" if s.get("dry_run") else (
        "live, server-side dry-run for write steps" if s.get("server_dry_run") else "live")
    rows.append(("Mode", mode))
    rows.append(("Run by", f"{text(s.get('who') or '?')} on host {code(s.get('host') or '?')}"))
    rows.append(("Environment (inventory)", code(s.get("inventory")) if s.get("inventory") else "none"))
    params = s.get("params") if isinstance(s.get("params"), dict) else {}
    rows.append(("Parameters", ", ".join(code(f"{k}={_plain(v)}") for k, v in params.items()) or "none"))
    if isinstance(s.get("argv"), list):
        rows.append(("Command", code("runbook " + shlex.join(str(a) for a in s["argv"]))))
    if alert:
        rows.append(("Alert", code(alert.get("name") or "?") + (f" ({text(alert['status'])})" if alert.get("status") else "")))
        labels = alert.get("labels") if isinstance(alert.get("labels"), dict) else {}
        rows.append(("Alert labels", ", ".join(code(f"{k}={_plain(v)}") for k, v in labels.items()) or "none"))
        rows.append(("Alert fingerprint", code(alert.get("fingerprint") or "?")))
        if alert.get("also"):
            rows.append(("Also handled", ", ".join(code(fp) for fp in alert["also"]) if isinstance(alert["also"], list) else code(alert["also"])))
        rows.append(("Alert fired at", _utc(fired_at) if fired_at else f"unknown ({code(alert.get('startsAt'))})" if alert.get("startsAt") else "unknown"))
        if alert.get("generatorURL"):
            rows.append(("Alert source", code(alert["generatorURL"])))
    origin = fired_at or started_at
    rows.append(("Started", _utc(started_at) + (f" ({offset(started_at, origin)})" if fired_at else "")))
    if run.finished is not None:
        rows.append(("Finished", _utc(finished_at) + (f" ({offset(finished_at, origin)})" if fired_at else "")))
        spent = (finished_at - started_at).total_seconds() if finished_at and started_at else None
        rows.append(("Duration", duration(spent)))
        if fired_at and finished_at:
            rows.append(("Alert to end of run", duration((finished_at - fired_at).total_seconds())))
        rows.append(("Outcome", f"**{text(_outcome(run.finished))}** (exit {text(run.finished.get('exit_code'))})"))
    else:
        rows.append(("Finished", "no record: the run did not finish cleanly, or is still running"))
        rows.append(("Duration", "unknown"))
        doubt = [ex.id for ex in run.executions if ex.in_doubt]
        rows.append(("Outcome", "**in doubt**" if doubt else "**unknown** (in progress, or stopped between steps)"))
    doubt = [ex.id for ex in run.executions if ex.in_doubt]
    if doubt:
        rows.append(("Steps in doubt", f"{_names(doubt)}: started, no result recorded — may or may not have run"))
    lines = ["| | |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows]
    return lines + [""]


def _data(r: dict[str, Any]) -> dict[str, Any]:
    """A result's ``data`` (the engine's kind-specific fields: goto, why, end, …), or {} when it is not a mapping."""
    return r["data"] if isinstance(r.get("data"), dict) else {}


def _plain(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)


def _names(steps: list[str]) -> str:
    return ", ".join(code(s) for s in dict.fromkeys(steps))


def _extras(r: dict[str, Any], known: set[str]) -> str:
    """The record's fields this module does not know, as ``; key: `value```."""
    extra = [(k, v) for k, v in r.items() if k not in _COMMON and k not in known]
    return "".join(f"; {text(k)}: {code(_short(_plain(v)))}" for k, v in extra if v is not None)


def _short(s: str, limit: int = 300) -> str:
    return s if len(s) <= limit else s[:limit] + f"… ({plural(len(s) - limit, 'more character')})"


def _rendered(value: Any, indent: str) -> tuple[str, list[str]]:
    """The rendered command: an inline code span, or a block below the line."""
    if isinstance(value, str) and "\n" not in value and len(value) <= 200:
        return f": {code(value)}", []
    if not isinstance(value, str):
        value = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return ":", block(value, indent)


def _timeline_entry(r: dict[str, Any], run: _Run, origin: datetime | None) -> list[str]:
    t = parse_time(r.get("ts"))
    head = f"- **{offset(t, origin)}** ({_clock(t)}) — "
    rtype = r.get("type")
    step = code(r.get("step")) if "step" in r else None
    known = _KNOWN.get(str(rtype), set())
    if rtype == "run_started":
        mode = " (dry-run)" if r.get("dry_run") else ""
        line = f"run started{mode} by {text(r.get('who') or '?')} on {code(r.get('host') or '?')}"
        if isinstance(r.get("argv"), list):
            line += f": {code('runbook ' + shlex.join(str(a) for a in r['argv']))}"
        return [head + line + _extras(r, known)]
    if rtype == "step_intent":
        ex = run.by_record.get(id(r))
        targets = r.get("targets") if isinstance(r.get("targets"), list) else []
        attempt = f", attempt {text(r['attempt'])}" if r.get("attempt", 1) != 1 else ""
        line = (f"{text(r.get('stage') or '?')} · step {step} started ({text(r.get('kind'))}, "
                f"{text(r.get('effect'))}{attempt})" + (f" on {', '.join(code(x) for x in targets)}" if targets else ""))
        tail, body = _rendered(r.get("rendered"), "  ")
        lines = [head + line + _extras(r, known) + tail, *body]
        if ex is not None and ex.in_doubt:
            lines.append(f"  - **In doubt:** no result was recorded for {step}: it may or may not have run. "
                         "Check the system before running it again.")
        elif ex is not None and ex.cut_short:
            lines.append(f"  - **Cut short:** no result was recorded for {step}; it only reads, so a resume runs it again.")
        return lines
    if rtype == "decision" and r.get("how") in _SETTLE_HOW:
        what = "marked done" if r.get("how") == "mark-done" else "to be run again"
        return [head + f"step {step or '?'} was in doubt: **{what}** by {text(r.get('by') or '?')} on resume"
                + _extras(r, known)]
    if rtype == "decision":
        step = step or "?"
        how = str(r.get("how"))
        who = text(r.get("by") or "?")
        if how not in _BEFORE_STEP:  # the operator's choice after the step failed
            ex = run.by_record.get(id(r))
            status = (ex.result or {}).get("status") if ex is not None and ex.after is r else None
            line = (f"after step {step} {text(status or 'failed')}, {who} chose **{text(chosen(r))}**"
                    + (f" (to {code(r['to'])})" if r.get("to") else ""))
            return [head + line + _extras(r, known)]
        gloss = _HOW.get(how)
        choice = choice_of(r)
        line = f"step {step} **{text(chosen(r))}** by {who} ({code(how)}" + (f": {text(gloss)}" if gloss else "") + ")"
        if choice == "continue":
            line += f"; choice {code(choice)}: stop asking before read steps"
        elif choice != "run":
            line += "; it did not run"
        return [head + line + _extras(r, known)]
    if rtype == "step_result":
        return _result_entry(head, r, run, step or "?", known)
    if rtype == "run_finished":
        return [head + f"**run {text(r.get('status') or '?')}** (exit {text(r.get('exit_code'))})" + _extras(r, known)]
    if rtype == "retry":
        line = (f"step {step} attempt {text(r.get('attempt'))} {text(r.get('status') or 'failed')}"
                + (f": {text(r['error'])}" if r.get("error") else "") + "; retrying")
        return [head + line + _extras(r, known)]
    if rtype == "interrupted":
        sig = str(r.get("signal") or "")
        how = "Ctrl-C" if sig == "SIGINT" else (sig or "Ctrl-C or SIGTERM")
        return [head + f"**run interrupted** ({text(how)})" + (f" during step {step}" if step else "") + _extras(r, known)]
    if rtype == "paused":  # a team worker's run: nobody at a terminal
        return [head + f"**run paused for a person** before step {step or '?'}: {text(r.get('reason') or '?')}"
                + _extras(r, known)]
    if rtype == "resumed":
        line = f"**run resumed** by {text(r.get('who') or '?')} on {code(r.get('host') or '?')}"
        if isinstance(r.get("argv"), list):
            line += f": {code('runbook ' + shlex.join(str(a) for a in r['argv']))}"
        if r.get("previous_status"):
            line += f" (it was {text(r['previous_status'])})"
        return [head + line + _extras(r, known)]
    if rtype == "step_process":
        if isinstance(r.get("hosts"), list):
            until = r.get("deadline")
            when = (f", stopped by its timeout by {_clock(datetime.fromtimestamp(until, timezone.utc))}"
                    if isinstance(until, (int, float)) else "")
            line = f"step {step or '?'} sent its command to {', '.join(code(h) for h in r['hosts'])}{when}"
        else:
            line = (f"step {step or '?'} runs as pid {text(r.get('pid'))} (process group {text(r.get('pgid'))}) "
                    f"on {code(r.get('host') or '?')}")
        return [head + line + _extras(r, known)]
    if rtype == "resume_refused":
        return [head + f"**resume refused** (asked by {text(r.get('who') or '?')}): {text(r.get('reason') or '?')}"
                + _extras(r, known)]
    if rtype == "resume_declined":
        return [head + f"resume declined by {text(r.get('who') or '?')}: step {step or '?'} is still in doubt"
                + _extras(r, known)]
    if rtype == "error":
        return [head + "**error**" + (f" in step {step}" if step else "") + f": {text(r.get('error'))}" + _extras(r, known)]
    if rtype == "alert_resolved":  # recorded by another process: run --alert with the resolved alert
        line = (f"alert {code(r.get('alertname') or '?')} resolved at {text(r.get('endsAt') or '? (no endsAt)')}"
                + (f" ({code(r['fingerprint'])})" if r.get("fingerprint") else "")
                + f"; recorded by {text(r.get('who') or '?')} on {code(r.get('host') or '?')}")
        return [head + line + _extras(r, known)]
    if rtype == "plan":
        steps = r.get("steps") if isinstance(r.get("steps"), list) else []
        return [head + f"dry-run plan: {_names([str(x) for x in steps]) or 'no steps'}" + _extras(r, known)]
    # any other record: an event, with all its fields
    line = f"event {code(rtype if rtype is not None else '?')}" + (f" (step {step})" if step else "")
    rest = _extras(r, {"step"})
    return [head + line + (":" + rest[1:] if rest else "")]


def _result_entry(head: str, r: dict[str, Any], run: _Run, step: str | None, known: set[str]) -> list[str]:
    ex = run.by_record.get(id(r))
    status = str(r.get("status"))
    if r.get("marked_done_by"):
        outputs = r.get("outputs") if isinstance(r.get("outputs"), dict) else {}
        line = f"step {step} **marked done by {text(r['marked_done_by'])} (not observed)**"
        if outputs:
            line += "; outputs given: " + ", ".join(f"{code(k)} = {code(_plain(v))}" for k, v in outputs.items())
        return [head + line + _extras(r, known | {"error"})]
    if status == "in doubt":
        return [head + f"step {step} **in doubt**: its earlier run is closed unobserved, to be run again"
                + _extras(r, known | {"error"})]
    ok = status == "ok"
    facts = []
    if r.get("duration") is not None:
        try:
            facts.append(f"in {duration(float(r['duration']))}")
        except (TypeError, ValueError):
            facts.append(f"in {text(r['duration'])}")
    attempts = r.get("attempts")
    if isinstance(attempts, int) and attempts > 1:
        facts.append(f"after {attempts} attempts")
    if r.get("exit_code") is not None:
        facts.append(f"exit code {text(r['exit_code'])}")
    line = f"step {step} **{text(status)}**" + (" " + ", ".join(facts) if facts else "")
    if r.get("error") and r["error"] != f"exit code {r.get('exit_code')}":
        line += f": {text(r['error'])}"
    outputs = r.get("outputs") if isinstance(r.get("outputs"), dict) else {}
    if outputs:
        line += "; outputs: " + ", ".join(f"{code(k)} = {code(_plain(v))}" for k, v in outputs.items())
    excerpt = str(r.get("output_excerpt") or "")
    data = _data(r)
    if ok and data.get("goto"):  # a branch taken
        line += f"; went to {code(str(data['goto']))}"
        why = data.get("why")
        if why:
            line += f" because {code(str(why))}"
    elif ok and data.get("end") and excerpt.strip():  # the run's end, with its message
        line += f": {text(excerpt)}"
    if not ok and ex is not None and ex.next_step and ex.next_step != ex.id:
        line += f"; the run went on to {code(ex.next_step)}"
    lines = [head + line + _extras(r, known)]
    if not ok and excerpt.strip():
        all_lines = excerpt.rstrip("\n").split("\n")
        shown = all_lines[-SHOWN_LINES:]
        what = "output" if len(shown) == len(all_lines) else f"last {plural(len(shown), 'line')} of the output"
        lines.append(f"  {what} ({text(r.get('output_bytes'))} bytes in all):" if r.get("output_bytes") is not None else f"  {what}:")
        lines += block("\n".join(shown), "  ")
    return lines


def _impact(run: _Run, alert: dict[str, Any] | None, fired_at: datetime | None, started_at: datetime | None,
            finished_at: datetime | None, origin: datetime | None) -> list[str]:
    out = ["## Impact", "", f"- Users affected: {TODO}", f"- Data lost: {TODO}", f"- Revenue impact: {TODO}"]
    facts = []
    if fired_at:
        facts.append(f"the alert fired at {_utc(fired_at)}")
    facts.append(f"the runbook started at {_utc(started_at)}" + (f" ({offset(started_at, origin)})" if fired_at else ""))
    if run.finished is not None and finished_at:
        facts.append(f"and ended {text(run.finished.get('status'))} at {_utc(finished_at)}"
                     + (f" ({offset(finished_at, origin)})" if fired_at else ""))
    else:
        facts.append("and has no recorded end")
    out.append("- From the audit log: " + ", ".join(facts[:-1]) + " " + facts[-1] + ".")
    return out + [""]


def _root_cause(run: _Run) -> list[str]:
    out = ["## Root cause", "", f"{TODO}: what broke, why, and how we missed it.", ""]
    found = []
    for ex in run.executions:
        if ex.stage != "diagnose" or ex.result is None:
            continue
        r = ex.result
        outputs = r.get("outputs") if isinstance(r.get("outputs"), dict) else {}
        data = _data(r)
        bits = []
        if outputs:
            bits.append(", ".join(f"{code(k)} = {code(_plain(v))}" for k, v in outputs.items()))
        if data.get("goto"):
            bits.append(f"went to {code(str(data['goto']))}")
        if r.get("status") != "ok":
            bits.append(f"**{text(r.get('status'))}**" + (f": {text(r['error'])}" if r.get("error") else ""))
        if bits:
            found.append(f"- {code(ex.id)}: " + "; ".join(bits))
    if found:
        out += ["What the diagnose stage found:", "", *found, ""]
    else:
        out += ["The diagnose stage recorded no outputs.", ""]
    return out


def _resolution(run: _Run) -> list[str]:
    out = ["## Resolution", "", f"{TODO}: how it was fixed.", ""]
    done = ["- " + _step_summary(ex) for ex in run.executions if ex.stage == "mitigate"]
    if done:
        out += ["What the runbook's mitigate stage did:", "", *done, ""]
    else:
        out += ["No step of the mitigate stage ran.", ""]
    declined = ["- " + _step_summary(ex) for ex in run.executions
                if ex.intent is None and ex.result is None and ex.decision is not None and not ex.decision.get("approved")]
    if declined:
        out += ["Declined, so not run:", "", *declined, ""]
    checks = [ex for ex in run.executions if ex.stage == "verify" and ex.result is not None
              and not _data(ex.result).get("end")]
    if checks:
        out += ["Verification:", "", *("- " + _step_summary(ex) for ex in checks), ""]
    if run.finished is not None:
        out += [f"Outcome: **{text(_outcome(run.finished))}** (exit {text(run.finished.get('exit_code'))}).", ""]
    else:
        out += ["Outcome: **unknown**: the log has no record of the run finishing.", ""]
    return out


def _step_summary(ex: _Step) -> str:
    intent, result, decision = ex.intent or {}, ex.result or {}, ex.decision
    parts = [code(ex.id)]
    if ex.in_doubt:
        parts.append("**in doubt** (started, no result recorded)")
    elif ex.marked_by:
        parts.append(f"**in doubt, marked done by {text(ex.marked_by)} (not observed)**")
    elif result:
        attempts = result.get("attempts")
        parts.append(f"**{text(result.get('status'))}**" + (f" after {attempts} attempts" if isinstance(attempts, int) and attempts > 1 else ""))
    elif decision is not None and not decision.get("approved"):
        parts.append("**not run**")
    if decision is not None:
        parts[-1] += ","
        parts.append(_decided(decision))
    if ex.after is not None:
        parts[-1] += ";"
        parts.append(f"then {_decided(ex.after)}")
    rendered = intent.get("rendered")
    if isinstance(rendered, str) and "\n" not in rendered:
        parts[-1] += ":"
        parts.append(code(rendered))
    return " ".join(parts)


def _decided(d: dict[str, Any]) -> str:
    """``approved by alice (`prompt`)``, ``skipped by alice (`step-mode`)``; after a failure
    ``alice chose **follow on_failure**``."""
    who = text(d.get("by") or "?")
    if d.get("how") not in _BEFORE_STEP:
        return f"{who} chose **{text(chosen(d))}**" + (f" (to {code(d['to'])})" if d.get("to") else "")
    choice = f", choice {code('continue')}" if choice_of(d) == "continue" else ""
    return f"{text(chosen(d))} by {who} ({code(d.get('how'))}{choice})"


def _action_items(run: _Run) -> list[str]:
    out = ["## Action items", "", f"Owner and due date of each: {TODO}.", ""]
    items = []
    for ex in run.executions:
        result, decision = ex.result, ex.decision
        if ex.in_doubt:
            items.append(f"{code(ex.id)} is in doubt: it was started but no result was recorded, so it may or may not "
                         "have run. Check its effect on the system, and why the run stopped.")
        elif ex.marked_by:
            items.append(f"{code(ex.id)} was in doubt (the run stopped while it ran) and was marked done by "
                         f"{text(ex.marked_by)} on resume, not observed: check that it did its work, and only once; "
                         "find out why the run stopped.")
        elif result is not None and result.get("status") == "in doubt":
            items.append(f"{code(ex.id)} was in doubt (the run stopped while it ran) and was run again on resume: "
                         "check that running it twice did no harm; find out why the run stopped.")
        elif result is not None and result.get("status") != "ok":
            status = str(result.get("status"))
            what = "was skipped" if status == "skipped" else f"ended **{text(status)}**"
            why = f" ({text(result['error'])})" if result.get("error") else ""
            if decision is not None and not decision.get("approved"):
                why += f", {_decided(decision)}"
            then = f"; then {_decided(ex.after)}" if ex.after is not None else ""
            then += f"; the run went on to {code(ex.next_step)}" if ex.next_step and ex.next_step != ex.id else ""
            if (status in ("interrupted", "timeout") and not ex.reads and ex.after is None and ex.settlement is None
                    and not ex.next_step):
                then += "; a write step stopped half-way is in doubt: it may have done part of its work"
            items.append(f"{code(ex.id)} {what}{why}{then}. Find out why, and fix the step, the runbook or the system.")
        elif decision is not None and not decision.get("approved") and result is None:
            items.append(f"{code(ex.id)} was {_decided(decision)} and did not run: decide whether it should have, "
                         "and fix the runbook or the process.")
    if items:
        out += [f"- [ ] {item}" for item in items]
    else:
        out.append(f"- [ ] {TODO} (no step failed, was skipped or declined, or was left in doubt)")
    return out + [""]


# --- Entry point -----------------------------------------------------------------------------


def report(store, run_id: str,
           meta: Callable[[dict[str, Any]], dict[str, Any]] = runbook_meta,
           checked: audit.VerifyResult | None = None) -> str:
    """The Markdown report of run ``run_id`` (an id, a unique prefix or ``last``) in ``store``
    (a :class:`runbook.store.Store`, or the path of a log file)."""
    store = _as_store(store)
    records = resolve_run(store, run_id)
    problem = check_chain(store, str(records[0].get("run")), checked)
    started = next((r for r in records if r.get("type") == "run_started"), {})
    return render(records, problem=problem, meta=meta(started))
