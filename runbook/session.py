"""A run's life: start it (a plan or a live run), resume it, settle the steps
left in doubt, finish it.

This is the one path that ``runbook run``, ``runbook resume`` and any other
host of a run (a worker, a test) take; ``runbook/commands/`` only turns
arguments into a :class:`RunRequest` or :class:`ResumeRequest`.  Nothing
here assumes a terminal or a command line: whatever a person is asked (a
secret, whether a step in doubt is done, an output) goes through the UI
object (:class:`runbook.ui.UI`), and ``interactive`` says whether anybody is
there to answer.

The promises kept here:

* one run per alert, across crashes: a live run holds a lock per alert
  fingerprint, and a new run for an alert whose last run stopped without
  finishing is refused (exit 3) until that run is resumed, unless ``force``;
* the journal is written ahead and finished in every case (the engine);
* resume never runs a step twice by surprise: a *write* step that may or
  may not have run is in doubt and the operator settles it (mark done, with
  the outputs later steps read, or run again); a step whose recorded process
  is still running is never run again; a read step is simply run again;
* every refusal to resume is recorded in the run's journal.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook import audit
from runbook.errors import RunbookError
from runbook.secrets import Redactor
from runbook.store import open_store

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 3, 130
FINISHED = ("completed", "resolved", "escalated", "rehearsed")  # a run that ended where its runbook ends (or its rehearsal)


@dataclass
class RunRequest:
    """What starts a run.  ``params`` are strings as given (-p, alert labels);
    missing ones come from ``RUNBOOK_PARAM_<NAME>`` or, for a required secret
    with a person at hand, from the UI."""

    runbook: Any  # runbook.spec.Runbook
    params: dict[str, str] = field(default_factory=dict)
    inventory_file: str | None = None
    env: str | None = None
    dry_run: bool = False
    server_dry_run: bool = False
    yes: bool = False
    answers: dict[str, str] = field(default_factory=dict)
    step_mode: bool = False
    start_at: str | None = None
    stage: str | None = None
    alert: Any = None  # runbook.alert.Alert
    force: bool = False
    interactive: bool = False
    argv: list[str] = field(default_factory=list)
    who: str | None = None
    audit_dir: Path | None = None
    store: Any = None  # a runbook.store.Store; default: open_store(audit_dir)
    run_id: str | None = None  # given by a host that named the run before it started (the team ledger)
    pause_after: str | None = None  # a team worker: pause when the walk leaves this stage (engine.Options)
    pause_before_writes: bool = False  # a team worker: pause before a write step not marked auto_approve
    fence: Any = None  # called before every step, with the run's own locks' checks (engine.Options.fence)
    auto_ok: Any = None  # engine.Options.auto_ok
    locks_held: list = field(default_factory=list)  # lock names the caller took already (not taken again)


@dataclass
class ResumeRequest:
    run_id: str  # or a unique prefix
    yes: bool = False
    answers: dict[str, str] = field(default_factory=dict)
    mark_done: bool = False
    rerun: bool = False
    outputs: dict[str, str] = field(default_factory=dict)  # "STEP.NAME" -> value, for --mark-done
    force: bool = False
    inventory_file: str | None = None
    env: str | None = None
    interactive: bool = False
    argv: list[str] = field(default_factory=list)
    who: str | None = None
    audit_dir: Path | None = None
    store: Any = None  # a runbook.store.Store; default: open_store(audit_dir)
    pause_after: str | None = None  # as RunRequest's: a team worker going on with a run a worker started
    pause_before_writes: bool = False
    path: list | None = None  # where to find the runbook when the file the run recorded is not on this machine
    fence: Any = None  # as RunRequest's
    auto_ok: Any = None
    locks_held: list = field(default_factory=list)


@dataclass
class Outcome:
    run_id: str
    status: str
    exit_code: int
    message: str = ""
    note: str = ""  # why nothing ran (a run already finished), for the operator
    plan: list | None = None  # a dry-run's PlanEntry list
    params_shown: dict[str, Any] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # a dry-run's parameters taken from example_params
    redactor: Redactor = field(default_factory=Redactor)
    inventory: Any = None


# --- parameters and secrets ------------------------------------------------------------------


def given_params(rb, given: dict[str, str], interactive: bool, ui) -> dict[str, str]:
    """``given`` (-p), then ``RUNBOOK_PARAM_<NAME>``, then the UI's secret prompt
    for a required secret when a person is there.  Secrets belong in the
    environment or the prompt: an argument list can be read by every user of
    the machine (ps)."""
    for name in given:
        if name in rb.params and rb.params[name].secret:
            ui.notice(f"warning: secret parameter '{name}' was given with -p, where other users of this machine "
                      f"can read it (ps); prefer RUNBOOK_PARAM_{name.upper()}=… in the environment")
    out = dict(given)
    for name, p in rb.params.items():
        if name in out:
            continue
        env_name = f"RUNBOOK_PARAM_{name.upper()}"
        if env_name in os.environ:
            out[name] = os.environ[env_name]
        elif p.secret and p.required and not p.has_default and interactive:
            value = ui.secret(f"{name} (secret, not echoed): ")
            if value is not None:
                out[name] = value
    return out


def example_params(rb) -> dict[str, str]:
    """The runbook's ``example_params`` as -p strings (what a plan of it as shipped uses)."""
    return {k: ("true" if v else "false") if isinstance(v, bool) else str(v) for k, v in rb.example_params.items()}


def run_redactor(rb, params: dict, inventory) -> Redactor:
    """A run's redactor: the secret parameters given to the run are revealed
    (masked from the start); the inventory's secrets are only watched until a
    step of the run uses one (``StepContext.reveal`` masks it then), so that a
    secret of a database the run never touches masks nothing."""
    redactor = Redactor()
    if inventory is not None:
        for v in inventory.secret_values():
            redactor.watch(v)
    for k, v in params.items():
        if rb.params[k].secret and v is not None:
            redactor.add(v, name=getattr(v, "name", k))
    return redactor


def _git_commit(path: str) -> str | None:
    import subprocess

    d = Path(path).resolve().parent
    if not any((q / ".git").exists() for q in (d, *d.parents)):
        return None
    try:
        r = subprocess.run(["git", "-C", str(d), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def _source(path: str) -> str | None:
    """The runbook's text as it ran, so that resume can show what changed since."""
    try:
        with open(path, "rb") as f:  # bytes: CRLF kept, as the sha256 saw it
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def incident_start(the_alert) -> float | None:
    """Epoch seconds of the alert's startsAt (the incident clock's zero), or None."""
    t = audit.parse_time(the_alert.starts_at) if the_alert is not None else None
    return t.timestamp() if t is not None else None


# --- alerts ------------------------------------------------------------------------------------


@dataclass
class AlertStart:
    """What ``run --alert`` makes of a webhook payload."""

    runbook: Any = None  # runbook.spec.Runbook; None when no alert of the payload is firing
    alert: Any = None  # the runbook.alert.Alert the run is for
    params: dict[str, str] = field(default_factory=dict)  # labels, then the given ones
    line: str = ""  # how the runbook and the parameters were chosen
    resolved: list[str] = field(default_factory=list)  # one line per resolved alert, saying where it was recorded


def from_alert(doc: dict, fingerprint: str | None, name: str | None, path: list[Path], given: dict[str, str], *,
               dry_run: bool = False, audit_dir: Path | None = None, who: str | None = None,
               store=None) -> AlertStart:
    """The runbook, the alert and the parameters (labels, then ``given``) for a
    webhook payload, and one line saying how they were chosen.  Each resolved
    alert of the payload is recorded (:func:`record_resolved`; not in a
    dry-run) and starts nothing; with only resolved alerts there is no runbook."""
    from runbook import alert, spec

    firing, resolved = alert.alerts_of(doc, fingerprint)
    out = AlertStart()
    for a in resolved:
        what, where = record_resolved(a, dry_run=dry_run, audit_dir=audit_dir, who=who, store=store)
        out.resolved.append(f"resolved: {'' if firing else 'nothing to run — '}{what}; {where}")
    if not firing:
        return out
    if name:
        ref, why = name, "named on the command line"
    else:
        ref, why = alert.choose_runbook(firing, path)
    rb = spec.find(ref, path)
    chosen, from_labels = alert.group_params(rb, firing)
    mapped = [f"{k}={v} (label {rb.params_from_labels[k]})" for k, v in from_labels.items() if k not in given]
    mapped += [s.describe() for s in alert.label_sources(rb, chosen) if s.param not in given]
    since = f", firing since {chosen.starts_at}" if chosen.starts_at else ""
    more = f" and {len(chosen.others)} more of its group" if chosen.others else ""
    out.line = (f"alert {chosen.name} ({chosen.fingerprint}{since}){more} → runbook {rb.name}: {why}"
                + (f"; {', '.join(mapped)}" if mapped else ""))
    out.runbook, out.alert, out.params = rb, chosen, {**from_labels, **given}  # a given value wins over a label
    return out


def record_resolved(the_alert, *, dry_run: bool = False, audit_dir: Path | None = None,
                    who: str | None = None, store=None) -> tuple[str, str]:
    """Record that ``the_alert`` resolved: an ``alert_resolved`` record in the run
    handling it when one is open or paused (:func:`open_alert_run`; its next
    resume says so), else in the audit log on its own.  A dry-run records
    nothing.  Returns (what resolved, where it was recorded), for the operator."""
    store = store or open_store(audit_dir)
    when = the_alert.ends_at or "an unknown time (the payload has no endsAt)"
    what = f"alert {the_alert.name} ({the_alert.fingerprint}) resolved at {when}"
    found = open_alert_run(store, the_alert)
    if dry_run:
        return what, "not recorded (--dry-run)" + (f"; run {found[0]['run']} handles it" if found else "")
    fields = {"alertname": the_alert.name, "fingerprint": the_alert.fingerprint, "startsAt": the_alert.starts_at,
              "endsAt": the_alert.ends_at, "labels": the_alert.labels, "who": who or audit.who(),
              "host": audit.hostname()}
    fields = {k: v for k, v in fields.items() if v is not None}
    with store.log() as log:
        if found is None:
            log.append({"type": "alert_resolved", **fields})
            return what, "recorded in the audit log"
        summary, going = found
        audit.RunJournal(log, summary["run"], Redactor()).event("alert_resolved", **fields)
    if going:
        return what, f"recorded in run {summary['run']}, which is still going"
    return what, (f"recorded in run {summary['run']} ({summary['status']}, not finished): "
                  f"runbook resume {summary['run']} shows it")


def _alert_of(started: dict):
    from runbook.alert import Alert

    a = started.get("alert")
    if not isinstance(a, dict):
        return None
    return Alert(name=a.get("name", "?"), status=a.get("status", "firing"), labels=a.get("labels") or {},
                 annotations={}, starts_at=a.get("startsAt"), fingerprint=a.get("fingerprint", ""),
                 others=list(a.get("also") or []),
                 others_starts=dict(a["also_startsAt"]) if isinstance(a.get("also_startsAt"), dict) else {})


def _alert_runs(store, fingerprints: list[str], this_run: str | None = None) -> list[list[dict]]:
    """The records of every live run started for any of ``fingerprints`` (its
    alert or one of its group), in the order they started."""
    runs: dict[str, list[dict]] = {}
    wanted = set(fingerprints)
    for r in store.records():
        rid = str(r.get("run"))
        if "run" not in r or rid == this_run:
            continue
        if r.get("type") == "run_started":
            a = r.get("alert") if isinstance(r.get("alert"), dict) else {}
            fps = {a.get("fingerprint"), *(a.get("also") or [])}
            if not r.get("dry_run") and fps & wanted:
                runs.pop(rid, None)
                runs[rid] = [r]  # insertion order: the last started run comes last
        elif rid in runs:
            runs[rid].append(r)
    return list(runs.values())


def unfinished_alert_run(store, fingerprints: list[str], this_run: str) -> dict | None:
    """The summary of the last live run for any of ``fingerprints`` when it
    stopped without finishing (a crash, a kill): a new run for the alert must
    not start beside it.  A run still going (its process holds its run lock)
    has not stopped."""
    for records in reversed(_alert_runs(store, fingerprints, this_run)):
        summary = audit.summarize(records)
        if summary["finished"] is None:
            if store.lock(f"run-{summary['run']}").held():
                return None  # still going: the alert lock (or --force) decides
            return summary
        if summary["steps"]:  # a later run finished after doing something: the alert was handled since
            return None
        # a run refused before its first step (another run had the alert) says nothing: look further back
    return None


def _same_time(a, b) -> bool:
    ta, tb = audit.parse_time(a), audit.parse_time(b)
    return ta == tb if ta is not None and tb is not None else str(a) == str(b)


def _started_at(recorded: dict, fingerprint: str) -> str | None:
    """The startsAt a run recorded for one of its alerts (its own, or one of ``also``;
    runs recorded before ``also_startsAt`` existed know only their own)."""
    if recorded.get("fingerprint") == fingerprint:
        return recorded.get("startsAt")
    starts = recorded.get("also_startsAt")
    return starts.get(fingerprint) if isinstance(starts, dict) else None


def open_alert_run(store, the_alert, this_run: str | None = None) -> tuple[dict, bool] | None:
    """(summary, still going) of the run handling ``the_alert`` while it is open
    or paused: still going, stopped without finishing (a crash), or stopped
    where a resume goes on (a write not approved, a failed or interrupted
    step).  The newest run for its fingerprint (the run's alert, or one of
    its group: ``also``) counts, and for the same incident only: when both
    say, the startsAt the run recorded for that alert is the alert's (a new
    startsAt is a new incident).  None when that run finished (completed,
    resolved, escalated) or there is none."""
    for records in reversed(_alert_runs(store, [the_alert.fingerprint], this_run)):
        started = _started_at(records[0].get("alert") or {}, the_alert.fingerprint)
        if started and the_alert.starts_at and not _same_time(started, the_alert.starts_at):
            continue  # another incident of the same alert
        summary = audit.summarize(records)
        if summary["status"] in FINISHED:
            return None
        if summary["status"] == "refused" and not summary["steps"]:
            continue  # refused before its first step (another run had the alert): look further back
        going = summary["finished"] is None and store.lock(f"run-{summary['run']}").held()
        return summary, going
    return None


def alert_resolution(records: list[dict]) -> str | None:
    """What a resume tells the operator when the run's alert resolved meanwhile.  A run
    for a group of alerts (``also``) hears which of them resolved, and is told it may
    stop only when every one of them did."""
    done = [r for r in records if r.get("type") == "alert_resolved"]
    if not done:
        return None
    r = done[-1]
    recorded = next((x.get("alert") for x in records if x.get("type") == "run_started"), None)
    recorded = recorded if isinstance(recorded, dict) else {}
    fps = [fp for fp in [recorded.get("fingerprint"), *(recorded.get("also") or [])] if fp]
    when = r.get("endsAt") or "? (no endsAt)"
    said = f"recorded {r.get('ts', '?')} by {r.get('who', '?')}"
    still = [fp for fp in fps if fp not in {x.get("fingerprint") for x in done}]
    if len(fps) <= 1:
        return (f"the alert resolved at {when}: {r.get('alertname', '?')} ({r.get('fingerprint', '?')}), {said}; "
                "the run goes on from where it stopped (its verify steps say whether all is well): stop it if "
                "nothing is left to do")
    gone, last = len(fps) - len(still), f"{r.get('alertname', '?')}, {r.get('fingerprint', '?')}"
    if still:
        which = (f"one of the run's {len(fps)} alerts ({last}) resolved at {when}" if gone <= 1 else
                 f"{gone} of the run's {len(fps)} alerts resolved, the last ({last}) at {when}")
        return (f"{which}, {said}; the run goes on from where it stopped: its other alerts "
                f"({', '.join(still)}) have not resolved, as far as the audit log knows")
    return (f"all {len(fps)} of the run's alerts resolved, the last ({last}) at {when}, {said}; the run goes on from "
            "where it stopped (its verify steps say whether all is well): stop it if nothing is left to do")


def resolve_label_params(rb, the_alert, given: dict[str, str], inventory, dry_run: bool, ui) -> dict[str, dict]:
    """Parameters a step kind finds from the alert's labels (``deployment: {from_pod:
    pod}``), unless given (-p): in a live run they are looked up now and added to
    ``given``; a dry-run contacts nothing, so it only says what will be looked up
    (the runbook's example value stands in, as for any missing parameter).
    Returns what each became, for the run's audit record."""
    from runbook import alert

    if the_alert is None:
        return {}
    forms = alert.label_forms()
    found: dict[str, dict] = {}
    for src in alert.label_sources(rb, the_alert):
        if src.param in given:
            continue  # -p wins
        known = {n: given.get(n, str(p.default) if p.has_default and p.default is not None else None)
                 for n, p in rb.params.items()}
        value, record, text = forms[src.form].label_value(src.form, src.spec, src.value, known, inventory, not dry_run)
        found[src.param] = {"label": src.label, **record}
        if dry_run:
            example = rb.example_params.get(src.param)
            ui.notice(f"dry-run: {src.param} {text}; this plan uses "
                      + (f"the example value {src.param}={example}" if example is not None else "no value for it"))
            continue
        given[src.param] = value
        found[src.param]["value"] = value
        ui.notice(f"{src.param}={value} ({text})")
    return found


# --- locks -------------------------------------------------------------------------------------


def hold_locks(store, run_id: str, who: str, the_alert, force: bool, journal, ui,
               run_lock: bool = True, skip: list | tuple = ()) -> list:
    """The locks a live run holds: its run id (resume waits for it) and each
    alert it handles (one run per alert unless ``force``).  On a refusal the
    locks taken so far are released and the RunbookError goes to the caller,
    which says in the journal what that means for its run."""
    started = audit.now()
    wanted = [store.lock(f"run-{run_id}", f"run {run_id} is still going")] if run_lock else []
    if the_alert is not None:
        wanted += [store.lock(f"alert-{fp}") for fp in [the_alert.fingerprint, *the_alert.others]]
    wanted = [lock for lock in wanted if lock.name not in skip]
    held = []
    for lock in wanted:
        try:
            warning = lock.acquire(run_id, who, started, force)
        except RunbookError:
            release(held)
            raise
        held.append(lock)
        if warning:
            journal.event("forced", lock=lock.name, warning=warning)
            ui.notice(warning)
    return held


def release(locks: list) -> None:
    for lock in locks:
        lock.release()


def fence(locks: list, also=None):
    """The check the engine makes before every step: each lock still held (a PostgreSQL session
    lock is lost with its session), and the caller's own check (a worker's claim)."""
    def check() -> None:
        for lock in locks:
            lock.check()
        if also is not None:
            also()
    return check


def _guard_alert(store, run_id: str, the_alert, force: bool, journal, ui) -> None:
    """Refuse a new run for an alert whose last run stopped without finishing."""
    fps = [the_alert.fingerprint, *the_alert.others]
    last = unfinished_alert_run(store, fps, run_id)
    if last is None:
        _guard_paused(store, run_id, the_alert, force, journal, ui)
        return
    what = (f"with step {', '.join(last['in_doubt'])} in doubt" if last["in_doubt"]
            else "between steps")
    desc = (f"the last run for alert {the_alert.name} ({the_alert.fingerprint}), run {last['run']} started by "
            f"{last['who']} at {last['started']}, stopped without finishing ({what})")
    _refuse_unless_forced(desc, f"settle it first: runbook resume {last['run']}", force, journal, ui,
                          unfinished_run=last["run"])


def _guard_paused(store, run_id: str, the_alert, force: bool, journal, ui) -> None:
    """Refuse a new run for an incident (fingerprint and startsAt) whose run is paused for a
    person (a team worker diagnosed it): that run goes on with resume, not beside a new one."""
    found = open_alert_run(store, the_alert, this_run=run_id)
    if found is None or found[0]["status"] != "paused":
        return
    paused = found[0]
    desc = (f"alert {the_alert.name} ({the_alert.fingerprint}) is handled by run {paused['run']} "
            f"({paused['runbook']}, started by {paused['who']}), paused for a person")
    _refuse_unless_forced(desc, f"go on with it: runbook resume {paused['run']}", force, journal, ui,
                          paused_run=paused["run"])


def _refuse_unless_forced(desc: str, hint: str, force: bool, journal, ui, **recorded) -> None:
    """Another run of this alert stands in the way: refused (exit 3) saying what to do, or with
    ``force`` a warning, shown and recorded."""
    if not force:
        raise RunbookError(f"{desc}; {hint} (or pass --force to start another run anyway)", exit_code=EXIT_REFUSED)
    warning = f"warning: --force: {desc}; starting another run anyway"
    journal.event("forced", **recorded, warning=warning)
    ui.notice(warning)


# --- interruptions -----------------------------------------------------------------------------


class _Signals:
    """SIGTERM and SIGHUP raise :class:`runbook.engine.Interrupt` while a live run goes
    (in the main thread only: elsewhere the host handles signals)."""

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self.previous[sig] = signal.signal(sig, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        from runbook.engine import Interrupt

        raise Interrupt(signal.Signals(signum).name)

    def ignore(self) -> None:
        for sig in self.previous:
            signal.signal(sig, signal.SIG_IGN)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# --- starting a run ----------------------------------------------------------------------------


def start(req: RunRequest, ui) -> Outcome:
    """Start a run: a plan (``dry_run``) or a live run.  Returns its outcome;
    raises RunbookError for bad input (parameters, inventory, locks)."""
    from runbook.engine import Engine, Options, display_params, resolve_params
    from runbook.errors import UsageError
    from runbook.inventory import resolve_inventory
    from runbook.schema import suggest

    rb = req.runbook
    if req.dry_run and req.server_dry_run:
        raise UsageError("--dry-run and --server-dry-run exclude each other: --dry-run contacts nothing, "
                         "--server-dry-run asks the servers")
    if req.start_at and req.start_at not in rb.by_id:
        raise UsageError(f"--start-at {req.start_at}: no such step in {rb.name}{suggest(req.start_at, list(rb.by_id))}")
    if req.stage and not rb.stage(req.stage):
        raise UsageError(f"--stage {req.stage}: {rb.name} has no {req.stage} steps")
    if req.step_mode and not req.interactive and not req.dry_run:
        raise UsageError("--step asks before every step: it needs a terminal")
    inventory = resolve_inventory(req.inventory_file, req.env)
    given = given_params(rb, req.params, req.interactive, ui)
    from_labels = resolve_label_params(rb, req.alert, given, inventory, req.dry_run, ui)
    examples: dict[str, Any] = {}
    if req.dry_run:  # a plan of a runbook as shipped: its example_params fill what was not given
        examples = {k: v for k, v in example_params(rb).items() if k not in given and not rb.params[k].has_default}
        if examples:
            ui.notice("dry-run: example_params for " + ", ".join(f"{k}={v}" for k, v in examples.items())
                      + " (pass -p NAME=VALUE for your own)")
            given.update(examples)
    params = resolve_params(rb, given)
    redactor = run_redactor(rb, params, inventory)
    ui.attach(redactor)
    shown = display_params(rb, params)

    store = req.store or open_store(req.audit_dir)
    log = store.log()
    run_id = req.run_id or audit.new_run_id()
    journal = audit.RunJournal(log, run_id, redactor)
    who = req.who or audit.who()
    the_alert = req.alert
    try:
        journal.run_started(runbook=rb.name, title=rb.title, severity=rb.severity, path=rb.path, sha256=rb.sha256,
                            git_commit=_git_commit(rb.path), params=shown, dry_run=req.dry_run,
                            server_dry_run=req.server_dry_run or None, who=who, host=audit.hostname(),
                            argv=list(req.argv), inventory=str(inventory.path) if inventory is not None else None,
                            alert=the_alert.record() if the_alert else None, params_from=from_labels or None,
                            source=None if req.dry_run else _source(rb.path),
                            stage=req.stage, start_at=req.start_at, step_mode=req.step_mode or None)
        options = Options(dry_run=req.dry_run, server_dry_run=req.server_dry_run, yes=req.yes,
                          interactive=req.interactive, answers=dict(req.answers), who=who, step_mode=req.step_mode,
                          start_at=req.start_at, stage=req.stage, pause_after=req.pause_after,
                          pause_before_writes=req.pause_before_writes, auto_ok=req.auto_ok,
                          fingerprint=the_alert.fingerprint if the_alert else None,
                          clock_from=incident_start(the_alert) or time.time())
        outcome = Outcome(run_id, "failed", EXIT_FAILED, params_shown=shown, redactor=redactor, inventory=inventory,
                          examples=list(examples))
        if req.dry_run:
            return _plan(rb, params, inventory, journal, options, outcome)

        try:
            locks = hold_locks(store, run_id, who, the_alert, req.force, journal, ui, skip=req.locks_held)
        except RunbookError:
            journal.run_finished(status="refused", exit_code=EXIT_REFUSED)  # another run has this alert
            raise
        try:
            if the_alert is not None:
                try:
                    _guard_alert(store, run_id, the_alert, req.force, journal, ui)
                except RunbookError:
                    journal.run_finished(status="refused", exit_code=EXIT_REFUSED)
                    raise
            options.fence = fence(locks, req.fence)
            engine = Engine(rb, params, inventory=inventory, ui=ui, journal=journal, options=options, run_id=run_id,
                            redactor=redactor)
            return _drive(engine, outcome, ui, environment=_environment(req.env, inventory),
                          clock_label="since the alert fired" if the_alert and the_alert.starts_at else "since the start")
        finally:
            release(locks)
    finally:
        log.close()


def _environment(env: str | None, inventory) -> str | None:
    """The header's environment: the inventory's ``env:`` (its file's stem when it has none), not the
    ``--env`` name that found the file."""
    if inventory is None:
        return env
    return getattr(inventory, "env", None) or inventory.path.stem


def _plan(rb, params, inventory, journal, options, outcome: Outcome) -> Outcome:
    from runbook.engine import Engine

    engine = Engine(rb, params, inventory=inventory, options=options, run_id=outcome.run_id,
                    redactor=outcome.redactor)
    try:
        entries = engine.plan()
    except RunbookError as exc:
        journal.run_finished(status="failed", exit_code=EXIT_FAILED)
        raise RunbookError(outcome.redactor.text(str(exc))) from None
    journal.event("plan", steps=[e.step.id for e in entries])
    journal.run_finished(status="planned", exit_code=EXIT_OK)
    outcome.status, outcome.exit_code, outcome.plan = "planned", EXIT_OK, entries
    return outcome


def _drive(engine, outcome: Outcome, ui, *, environment: str | None, clock_label: str, start=None,
           visits: dict | None = None, again: str | None = None, resumed: bool = False) -> Outcome:
    """The live run, from the operator's header to its recorded end, signals included."""
    with _Signals() as signals:
        try:
            ui.run_started(engine.rb, outcome.run_id, outcome.params_shown, environment=environment,
                           clock_from=engine.options.clock_from, clock_label=clock_label, resumed=resumed)
        except KeyboardInterrupt as exc:  # before the first step: the run stops, and its log says so
            status, code, message = engine.stopped_before_start(exc)
        else:
            status, code, message = engine.run(start=start, visits=visits, again=again)
        signals.ignore()  # the run is recorded as finished: a late signal changes nothing now
    outcome.status, outcome.exit_code, outcome.message = status, code, message
    return outcome


# --- resuming a run ----------------------------------------------------------------------------


def position(records: list[dict]) -> tuple[str, str | None, dict | None, str | None]:
    """Where the run stopped, from its records: ``(what, step, result record,
    choice)`` with what = "start" (nothing ran), "declined" (the step was not
    approved: it comes next), or "result" (the step's last result and the
    operator's choice after it, if any)."""
    last: tuple[str, str | None, dict | None, str | None] = ("start", None, None, None)
    for r in records:
        t, step = r.get("type"), r.get("step")
        if t == "step_result" and r.get("status") != "in doubt":
            last = ("result", step, r, None)
        elif t == "decision" and last[0] == "result" and last[1] == step and r.get("how") in audit.AFTER_FAILURE_HOW:
            last = ("result", step, last[2], r["how"])
        elif (t == "decision" and r.get("how") in audit.BEFORE_STEP_HOW and not r.get("approved")
              and r.get("choice") != "skip"):
            last = ("declined", step, None, None)
    return last


def restore(records: list[dict]) -> tuple[dict, dict[str, int]]:
    """Each step's last result as the engine's context, and how often each step
    ran, counted as the engine counts (for max_visits): a retry on the
    operator's word is not a visit, and a read step cut short (no result) is
    not one either, since it simply runs again."""
    from runbook.steps import StepResult

    ctx: dict = {}
    visits: dict[str, int] = {}
    retried: set = set()
    open_reads: dict[str, int] = {}
    for r in records:
        step, rtype = r.get("step"), r.get("type")
        if rtype == "decision" and r.get("how") == "retry":
            retried.add(step)
        elif rtype == "step_intent":
            counted = step not in retried
            retried.discard(step)
            if counted:
                visits[step] = visits.get(step, 0) + 1
            if r.get("effect") == "read" and counted:
                open_reads[step] = open_reads.get(step, 0) + 1
        elif rtype == "step_result" and r.get("status") != "in doubt":
            if open_reads.get(step):
                open_reads[step] -= 1
            data = dict(r.get("data") or {})
            data.pop("_truncated", None)
            res = StepResult(str(r.get("status")), exit_code=r.get("exit_code"), stdout=r.get("output_excerpt") or "",
                             error=r.get("error"), data=data, outputs=dict(r.get("outputs") or {}),
                             duration=float(r.get("duration") or 0), attempts=int(r.get("attempts") or 1))
            ctx[step] = res.as_context()
    for step, n in open_reads.items():
        visits[step] -= n
    return ctx, visits


def doubtful_step(records: list[dict], rb) -> str | None:
    """The write step that may or may not have done its work: announced with
    no result (the process died), or stopped half-way (interrupted, timed
    out) with no choice after it.  Read steps are never in doubt: they run
    again."""
    doubt = audit.in_doubt(records)
    if doubt:
        return doubt[-1]
    what, step_id, rec, choice = position(records)
    if (what == "result" and choice in (None, "abort") and rec.get("status") in ("interrupted", "timeout")
            and step_id in rb.by_id and rb.by_id[step_id].effect == "write"):
        return step_id
    return None


def outputs_read_later(rb, step_id: str) -> tuple[list[str], list[str]]:
    """(outputs, other result fields) of ``step_id`` that other steps' templates read."""
    from runbook import expr
    from runbook.validate import step_templates

    step = rb.by_id[step_id]
    declared = list(step.outputs) + list(step.module.IMPLICIT_OUTPUTS)
    outputs: list[str] = []
    others: list[str] = []
    for s in rb.steps:
        for _field, source, mode in step_templates(s):
            if mode not in ("expr", "until") and not expr.is_template(source):
                continue
            refs, err = expr.references(source, is_expression=mode in ("expr", "until"))
            for ref in refs if not err else []:
                if ref.root != "steps" or ref.key != step_id or s.id == step_id or len(ref.path) < 2:
                    continue
                fld = ref.path[1]
                if fld == "outputs" and len(ref.path) > 2 and ref.path[2] in declared:
                    if ref.path[2] not in outputs:
                        outputs.append(ref.path[2])
                elif fld not in ("outputs", "status", "ok", "error", "attempts", "duration") and fld not in others:
                    others.append(str(fld))
    return outputs, others


def _refuse(journal, who: str, reason: str, exit_code: int = EXIT_REFUSED, **extra) -> RunbookError:
    """The refusal to resume, recorded in the run's log when the log takes it (a log the writer
    refuses to append to — cut, unsealed after sealing — is the reason itself then)."""
    try:
        journal.event("resume_refused", who=who, reason=reason, **extra)
    except RunbookError as exc:
        reason += f" (this refusal could not be recorded: {exc})"
    return RunbookError(reason, exit_code=exit_code)


def resume(req: ResumeRequest, ui) -> Outcome:
    """Go on with an interrupted run from its audit log (see the module's doc).
    Every check comes before the first record of the resume: a refusal leaves
    the run as it was (and says so in its log)."""
    from runbook.engine import Engine, Options, display_params, resolve_params
    from runbook.inventory import resolve_inventory
    from runbook.steps import StepResult

    store = req.store or open_store(req.audit_dir)
    records = store.run_records(req.run_id)
    run_id = str(records[0]["run"])
    started = next((r for r in records if r.get("type") == "run_started"), None)
    if started is None:
        raise RunbookError(f"run {run_id}: its run_started record is missing from the audit log; cannot resume it")
    if started.get("dry_run"):
        raise RunbookError(f"run {run_id} was a dry-run: nothing ran, so there is nothing to resume")
    summary = audit.summarize(records)
    if summary["status"] in FINISHED or summary["status"] == "planned":
        return Outcome(run_id, summary["status"], EXIT_OK,
                       note=f"run {run_id} already finished: {summary['status']} at {summary['finished']} "
                            f"(exit {summary['exit_code']}); nothing to resume")
    who = req.who or audit.who()
    log = store.log()
    plain = audit.RunJournal(log, run_id, Redactor())  # for refusals before the parameters are known
    locks: list = []
    try:
        _trust_log(store, run_id, req.force, plain, who, ui)
        # no resume while the run still goes, nor two resumes at once
        lock = store.lock(f"run-{run_id}", f"run {run_id} is still going or being resumed")
        try:
            lock.acquire(run_id, who, audit.now())
        except RunbookError as exc:
            reason = str(exc).split("; follow that run")[0]
            raise _refuse(plain, who, f"{reason}; wait for it to end (runbook audit show {run_id})") from None
        locks.append(lock)
        rb = _same_runbook(started, run_id, req.force, plain, who, ui, req.path)
        what, step_id, rec, choice = position(records)
        if what == "result" and step_id in rb.by_id and rb.by_id[step_id].module.ENDS_RUN and rec.get("status") == "ok":
            # it reached its end; only its last record was lost
            end_status = rb.by_id[step_id].module.end_status(rb.by_id[step_id].body)
            plain.run_finished(status=end_status, exit_code=EXIT_OK if end_status == "resolved" else EXIT_FAILED)
            return Outcome(run_id, end_status, EXIT_OK,
                           note=f"run {run_id} already finished at its end step '{step_id}' ({end_status}); "
                                "nothing to resume")
        the_alert = _alert_of(started)
        resolution = alert_resolution(records)
        if resolution:  # the alert resolved since the run stopped: the operator hears it before deciding anything
            ui.notice(resolution)
        if the_alert:
            try:
                locks += hold_locks(store, run_id, who, the_alert, False, plain, ui, run_lock=False,
                                    skip=req.locks_held)
            except RunbookError as exc:  # the run stays as it was: not finished, resumable later
                raise _refuse(plain, who, str(exc)) from None

        inventory = resolve_inventory(req.inventory_file or started.get("inventory"), req.env)
        recorded = started.get("params") or {}
        given = {name: (("true" if v else "false") if isinstance(v, bool) else str(v))
                 for name, v in recorded.items() if name in rb.params and not rb.params[name].secret}
        params = resolve_params(rb, given_params(rb, given, req.interactive, ui))
        redactor = run_redactor(rb, params, inventory)
        ui.attach(redactor)
        journal = audit.RunJournal(log, run_id, redactor)
        ctx, visits = restore(records)
        options = Options(yes=req.yes, interactive=req.interactive, answers=dict(req.answers), who=who,
                          server_dry_run=bool(started.get("server_dry_run")), stage=started.get("stage"),
                          step_mode=bool(started.get("step_mode")) and req.interactive,
                          pause_after=req.pause_after, pause_before_writes=req.pause_before_writes,
                          auto_ok=req.auto_ok, fence=fence(locks, req.fence),
                          fingerprint=the_alert.fingerprint if the_alert else None,
                          clock_from=_clock_from(started, the_alert))
        engine = Engine(rb, params, inventory=inventory, ui=ui, journal=journal, options=options, run_id=run_id,
                        redactor=redactor)

        # a write step that may or may not have run: the operator settles it
        settle = None
        doubtful = doubtful_step(records, rb)
        if doubtful:
            if doubtful not in rb.by_id:
                raise _refuse(journal, who, f"step '{doubtful}' of run {run_id} is in doubt, but the runbook no longer "
                              "has it; put the step back (as it was when the run started) to settle it", step=doubtful)
            _check_running(records, run_id, doubtful, req.force, journal, who, ui)
            settle = _settle(req, ui, journal, who, rb, run_id, doubtful)
            if settle[0] == "rerun" and not (req.yes or req.interactive):
                raise _refuse(journal, who, f"step '{doubtful}' would run again, and it changes things: approve it "
                              "with --yes, or resume in a terminal", step=doubtful)
            if settle[0] == "mark-done":
                what, step_id, rec, choice = "result", doubtful, {"status": "ok"}, None
            else:
                what, step_id = "rerun", doubtful
        if what == "start" and started.get("start_at") in rb.by_id:
            options.start_at = started["start_at"]
        try:
            start_step, again = _where(engine, rb, what, step_id, rec, choice)
        except RunbookError as exc:
            raise _refuse(journal, who, str(exc)) from None

        # from here on the resume is recorded
        journal.event("resumed", who=who, host=audit.hostname(), argv=list(req.argv),
                      previous_status=summary["status"], **({"notice": resolution} if resolution else {}))
        if settle is not None:
            decision, values = settle
            journal.decision(step=doubtful, approved=True, by=who, how=decision)
            if decision == "mark-done":
                journal.step_result(step=doubtful, status="ok", exit_code=None, duration=0.0,
                                    outputs=values or None, marked_done_by=who, observed=False,
                                    error=f"in doubt; marked done by {who} on resume (not observed)")
                ctx[doubtful] = StepResult("ok", outputs=values).as_context()
            elif doubtful in audit.in_doubt(records):  # settle the old intent: it runs again
                journal.step_result(step=doubtful, status="in doubt", exit_code=None, duration=0.0,
                                    error=f"in doubt; {who} chose to run it again on resume")
        found = found_so_far(records)
        if found:  # e.g. a worker's diagnosis, for the person who goes on with it
            ui.notice(found)
        outcome = Outcome(run_id, "failed", EXIT_FAILED, params_shown=display_params(rb, params),
                          redactor=redactor, inventory=inventory)
        engine.restore(ctx)
        return _drive(engine, outcome, ui, environment=_environment(req.env, inventory),
                      clock_label="since the alert fired" if the_alert and the_alert.starts_at else "since the run started",
                      start=start_step, visits=visits, again=again, resumed=True)
    finally:
        release(locks)
        log.close()


def found_so_far(records: list[dict], limit: int = 20) -> str:
    """What the run found before this resume, for the person going on with it: each step's
    last result and outputs, and where and why it paused (a team worker's diagnosis)."""
    from runbook.text import plural

    started = next((r for r in records if r.get("type") == "run_started"), {})
    last: dict[str, dict] = {}
    for r in records:
        if r.get("type") == "step_result" and r.get("status") != "in doubt":
            last.pop(str(r.get("step")), None)
            last[str(r.get("step"))] = r
    if not last:
        return ""
    lines = [f"so far (run started by {started.get('who', '?')} at {started.get('ts', '?')}): "
             f"{plural(len(last), 'step')} recorded"]
    for step, r in list(last.items())[-limit:]:
        outputs = r.get("outputs") if isinstance(r.get("outputs"), dict) else {}
        shown = ", ".join(f"{k}={str(v)[:80]}" for k, v in outputs.items())
        line = f"  {step}: {r.get('status')}" + (f" — {shown}" if shown else "")
        if r.get("error") and r.get("status") != "ok":
            line += f" ({str(r['error'])[:160]})"
        lines.append(line)
    paused = next((r for r in reversed(records) if r.get("type") in ("paused", "resumed")), None)
    if paused is not None and paused.get("type") == "paused":
        lines.append(f"  paused before {paused.get('step')}: {paused.get('reason')}")
    return "\n".join(lines)


def _check_running(records: list[dict], run_id: str, step_id: str, force: bool, journal, who: str, ui) -> None:
    """Refuse to settle a step whose last execution may still be running: for sure
    (its process group lives here, or its remote command before its timeout) always;
    where this machine cannot tell (another host, a remote command without a timeout)
    unless ``force``, recorded."""
    import socket

    from runbook import procs

    last_intent = max((i for i, r in enumerate(records) if r.get("type") == "step_intent" and r.get("step") == step_id),
                      default=len(records))
    sure, unsure = [], []
    for r in records[last_intent + 1:]:
        if r.get("type") != "step_process" or r.get("step") != step_id or not procs.still_running(r):
            continue
        remote = "hosts" in r
        cannot_tell = (remote and r.get("deadline") is None) or (not remote and r.get("host") != socket.gethostname())
        (unsure if cannot_tell else sure).append(r)
    if sure:
        lines = "; ".join(line.split(": ", 1)[1] for line in procs.running_lines(sure))
        raise _refuse(journal, who, f"step '{step_id}' of run {run_id} may still be running: {lines}; wait for it "
                      "to end (or stop it), then resume", step=step_id)
    if unsure:
        lines = "; ".join(line.split(": ", 1)[1] for line in procs.running_lines(unsure))
        if not force:
            raise _refuse(journal, who, f"step '{step_id}' of run {run_id} may still be running, and this machine "
                          f"cannot tell: {lines}; check it there, then resume with --force", step=step_id)
        warning = f"warning: --force: step '{step_id}' may still be running ({lines}); settling it anyway"
        journal.event("forced", who=who, step=step_id, warning=warning)
        ui.notice(warning)


def log_trust(store) -> tuple[str, str, Any]:
    """(status, message, the VerifyResult or None) of the audit store's verification: "ok", "torn"
    (a crash; the next write repairs it), "unsealed" (written before sealing), "tampered" or
    "key-missing"; ("ok", "no log yet", None) when there is none."""
    if not store.exists():
        return "ok", "no log yet", None
    check = store.verify()
    return check.status, check.message, check


def _trust_log(store, run_id: str, force: bool, journal, who: str, ui) -> None:
    """Resume rests on the log: refuse one that does not verify, unless ``force`` (recorded)."""
    path = store.where
    status, message, _ = log_trust(store)
    if status in ("ok", "torn"):
        return
    if status == "unsealed":
        ui.notice(f"warning: the audit log {path} is not sealed ({message}); its records cannot be proven unchanged")
        return
    what = "cannot be verified" if status == "key-missing" else "does not verify"
    if not force:
        raise _refuse(journal, who, f"the audit log {path} {what}: {message}; resume rests on it, so it is refused "
                      f"(check it with runbook audit verify; resume --force to go on anyway)", exit_code=EXIT_FAILED)
    warning = f"warning: --force: resuming run {run_id} although the audit log {what}: {message}"
    journal.event("forced", who=who, warning=warning)
    ui.notice(warning)


def _same_runbook(started: dict, run_id: str, force: bool, journal, who: str, ui, search: list | None = None):
    """The runbook the run started with, or with ``force`` its new version: the file it
    recorded, else (another machine: a worker's run resumed on a laptop) the runbook of the
    same name in ``search`` (--path, RUNBOOK_PATH, ./playbooks), the one with the recorded
    sha256 first."""
    import difflib

    from runbook import spec

    path = Path(started["path"])
    if not path.is_file():
        found = _runbook_named(str(started.get("runbook") or ""), started.get("sha256"), search)
        if found is None:
            where = ", ".join(str(p) for p in (search or spec.search_path(None)))
            raise _refuse(journal, who, f"run {run_id} ran {path}, which is not on this machine, and no runbook "
                          f"named '{started.get('runbook')}' is in {where} (give its folder with --path DIR or "
                          "RUNBOOK_PATH)", exit_code=EXIT_FAILED)
        path = found
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != started.get("sha256"):
        old = started.get("source")
        if old is None:
            change = "(the run's copy of the runbook was not recorded)"
        else:
            lines = difflib.unified_diff(old.splitlines(), raw.decode("utf-8", "replace").splitlines(),
                                         f"{path} (when the run started)", f"{path} (now)", lineterm="", n=1)
            change = "\n".join(list(lines)[:60])
        if not force:
            ui.notice(change)
            raise _refuse(journal, who, f"the runbook {path} changed since run {run_id} started (diff above); "
                          "resume with --force to run the new version", exit_code=EXIT_FAILED)
        ui.notice(f"warning: --force: the runbook changed since the run started:\n{change}")
        journal.event("forced", who=who, warning="the runbook changed since the run started")
    return spec.find(str(path), [])


def _runbook_named(name: str, sha256: str | None, search: list | None) -> Path | None:
    """The file of the runbook called ``name`` in ``search``: one whose bytes have ``sha256``,
    else the first of that name."""
    from runbook import spec

    named = []
    for f in spec.runbook_files(search or spec.search_path(None)):
        rb, _ = spec.load_runbook(f)
        if rb is not None and rb.name == name:
            if rb.sha256 == sha256:
                return f
            named.append(f)
    return named[0] if named else None


def _settle(req: ResumeRequest, ui, journal, who: str, rb, run_id: str, step_id: str):
    """("mark-done", outputs) or ("rerun", {}) for a step in doubt; raises
    (recorded) when nobody decides or the operator stops.  Writes nothing else."""
    if req.mark_done:
        decision = "mark-done"
    elif req.rerun:
        decision = "rerun"
    elif not req.interactive:
        raise _refuse(journal, who, f"step '{step_id}' of run {run_id} is in doubt (it may or may not have run): "
                      "decide in a terminal, or pass --mark-done or --rerun", step=step_id)
    else:
        decision = ui.in_doubt(rb.by_id.get(step_id), step_id, run_id)
    if decision == "abort":
        journal.event("resume_declined", step=step_id, who=who)
        raise RunbookError(f"run {run_id} not resumed: step {step_id} is still in doubt", exit_code=EXIT_REFUSED)
    if decision != "mark-done":
        return decision, {}
    step = rb.by_id[step_id]
    names, others = outputs_read_later(rb, step_id)
    if others:
        raise _refuse(journal, who, f"step '{step_id}' cannot be marked done: later steps read its "
                      f"{', '.join(others)}, which only running it gives; run it again (--rerun) once you have "
                      "checked its targets", step=step_id)
    values: dict[str, Any] = {}
    missing = []
    for name in names:
        text = req.outputs.get(f"{step_id}.{name}")
        if text is None and req.interactive:
            text = ui.output_value(step, name)
        if text is None:
            missing.append(name)
            continue
        try:
            values[name] = _typed(step, name, text)
        except ValueError as exc:
            raise _refuse(journal, who, f"--output {step_id}.{name}: {exc}", step=step_id) from None
    if missing:
        given = " ".join(f"--output {step_id}.{n}=VALUE" for n in missing)
        raise _refuse(journal, who, f"step '{step_id}' is marked done, but later steps read its "
                      f"output{'s' if len(missing) > 1 else ''} {', '.join(repr(n) for n in missing)}: give "
                      f"{'them' if len(missing) > 1 else 'it'} with {given} (what the step would have found), "
                      "or run it again (--rerun)", step=step_id)
    return decision, values


def _typed(step, name: str, text: str):
    """An output given by hand, as its declared type (ValueError when it is not one)."""
    import json

    from runbook.outputs import convert

    type_ = (step.outputs.get(name) or {}).get("type")
    if type_ == "json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not JSON ({exc})") from None
    try:
        return convert(text, type_)
    except ValueError:
        article = "an" if type_ == "integer" else "a"
        raise ValueError(f"expected {article} {type_}, got {text!r}") from None


def _where(engine, rb, what, step_id, rec, choice):
    """(the step to go on with, a step run again on the operator's word)."""
    from runbook.engine import DONE
    from runbook.steps import StepResult

    if what == "start":
        return None, None
    if step_id not in rb.by_id:
        raise RunbookError(f"the run's last step '{step_id}' is not in the runbook any more")
    step = rb.by_id[step_id]
    if what in ("rerun", "declined"):
        return step, (step_id if what == "rerun" else None)
    status = str(rec.get("status"))
    if status in ("ok", "skipped") or choice in ("skip", "on_failure"):
        data = dict(rec.get("data") or {})
        res = StepResult("skipped" if choice == "skip" else status, data=data, goto=data.get("goto"))
        nxt, stop = engine.successor(step, res)
        return (DONE if stop or nxt is None else nxt), None
    if choice is None and status != "interrupted" and step.on_failure not in (None, "abort"):
        nxt, _ = engine.successor(step, StepResult(status))  # it died before following on_failure
        return nxt, None
    return step, step_id  # the step that stopped the run: offered again


def _clock_from(started: dict, the_alert) -> float | None:
    """The incident clock's zero: the alert's startsAt, else the run's start."""
    t = audit.parse_time(started.get("ts"))
    return incident_start(the_alert) or (t.timestamp() if t is not None else None)


def parse_outputs(pairs: dict[str, str]) -> dict[str, str]:
    """``--output STEP.NAME=VALUE`` pairs checked for their shape."""
    from runbook.errors import UsageError

    for key in pairs:
        if "." not in key or key.startswith(".") or key.endswith("."):
            raise UsageError(f"--output takes STEP.NAME=VALUE, got {key!r}")
    return pairs

