"""runbook resume RUN_ID — continue an interrupted run from its audit log.

Steps that finished are not run again: their results and outputs come back
from the log.  A step whose intent was logged but whose result was not (the
process died while it ran) is *in doubt*: the operator decides whether it is
done, must run again, or the run stops.  The runbook must be the one that
started the run (its sha256 is in the log) unless --force.  Secret
parameters were never stored, so they are asked for again.
"""

from __future__ import annotations

from runbook.commands.common import add_inventory, parse_pairs

FINISHED = ("completed", "resolved", "escalated")  # a run that ended where its runbook ends


def register(sub) -> None:
    p = sub.add_parser("resume", help="continue an interrupted run from its audit log", description=__doc__)
    p.add_argument("run_id", metavar="RUN_ID", help="the run id (or a unique prefix) from `runbook audit list`")
    p.add_argument("--yes", "-y", action="store_true", help="approve write steps without asking (automation)")
    p.add_argument("--answer", "-a", action="append", metavar="STEP=VALUE", help="answer an ask or manual step")
    doubt = p.add_mutually_exclusive_group()
    doubt.add_argument("--mark-done", action="store_true", help="a step in doubt did run: go on after it")
    doubt.add_argument("--rerun", action="store_true", help="a step in doubt did not run: run it again")
    p.add_argument("--force", action="store_true",
                   help="resume although the runbook changed since the run started (or another run holds its alert)")
    add_inventory(p)
    p.set_defaults(func=run)


def _records(run_id: str):
    from runbook import audit

    return audit.run_records(audit.default_dir() / audit.LOG_NAME, run_id)


def _params(rb, recorded: dict, interactive: bool) -> dict[str, str]:
    """The run's parameters as -p strings; secrets (never stored) from the
    environment or a prompt, as for a new run."""
    from runbook.commands.run import _given_params

    given = {}
    for name, value in recorded.items():
        if name not in rb.params or rb.params[name].secret:
            continue
        given[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return _given_params(rb, given, interactive)


def _restore(records: list[dict]) -> tuple[dict, dict[str, int]]:
    """Each step's last result as the engine's context, and visit counts."""
    from runbook.steps import StepResult

    ctx: dict = {}
    visits: dict[str, int] = {}
    for r in records:
        if r.get("type") == "step_intent":
            visits[r["step"]] = visits.get(r["step"], 0) + 1
        elif r.get("type") == "step_result" and r.get("status") != "in doubt":
            data = dict(r.get("data") or {})
            data.pop("_truncated", None)
            res = StepResult(str(r.get("status")), exit_code=r.get("exit_code"), stdout=r.get("output_excerpt") or "",
                             error=r.get("error"), data=data, outputs=dict(r.get("outputs") or {}),
                             duration=float(r.get("duration") or 0), attempts=int(r.get("attempts") or 1))
            ctx[r["step"]] = res.as_context()
    return ctx, visits


def _diff(old: str | None, new: str, path: str) -> str:
    import difflib

    if old is None:
        return "(the run's copy of the runbook was not recorded)"
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), f"{path} (when the run started)", f"{path} (now)",
                                 lineterm="", n=1)
    return "\n".join(list(lines)[:60])


def position(records: list[dict]) -> tuple[str, str | None, dict | None, str | None]:
    """Where the run stopped, from its records: ``(what, step, result record,
    choice)`` with what = "start" (nothing ran), "declined" (the step was not
    approved: it comes next), or "result" (the step's last result and the
    operator's choice after it, if any)."""
    from runbook.audit import AFTER_FAILURE_HOW, BEFORE_STEP_HOW

    last: tuple[str, str | None, dict | None, str | None] = ("start", None, None, None)
    for r in records:
        t, step = r.get("type"), r.get("step")
        if t == "step_result" and r.get("status") != "in doubt":
            last = ("result", step, r, None)
        elif t == "decision" and last[0] == "result" and last[1] == step and r.get("how") in AFTER_FAILURE_HOW:
            last = ("result", step, last[2], r["how"])
        elif t == "decision" and r.get("how") in BEFORE_STEP_HOW and not r.get("approved") and r.get("choice") != "skip":
            last = ("declined", step, None, None)
    return last


def run(args) -> int:
    import hashlib
    import sys
    from pathlib import Path

    from runbook import audit, spec, ui
    from runbook.alert import Alert, RunLock
    from runbook.commands.run import _live, hold_locks, run_redactor
    from runbook.engine import DONE, EXIT_OK, EXIT_REFUSED, Options, display_params, resolve_params
    from runbook.errors import RunbookError
    from runbook.inventory import resolve_inventory
    from runbook.secrets import Redactor
    from runbook.steps import StepResult

    records = _records(args.run_id)
    run_id = str(records[0]["run"])
    started = next((r for r in records if r.get("type") == "run_started"), None)
    if started is None:
        raise RunbookError(f"run {run_id}: its run_started record is missing from the audit log; cannot resume it")
    if started.get("dry_run"):
        raise RunbookError(f"run {run_id} was a dry-run: nothing ran, so there is nothing to resume")
    summary = audit.summarize(records)
    if summary["status"] in FINISHED or summary["status"] == "planned":
        print(f"run {run_id} already finished: {summary['status']} at {summary['finished']} (exit {summary['exit_code']}); "
              "nothing to resume")
        return EXIT_OK

    # the same runbook, or --force
    path = Path(started["path"])
    if not path.is_file():
        raise RunbookError(f"run {run_id} ran {path}, which is no longer there")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != started.get("sha256"):
        change = _diff(started.get("source"), raw.decode("utf-8", "replace"), str(path))
        if not args.force:
            ui.err().print(change, markup=False, highlight=False)
            raise RunbookError(f"the runbook {path} changed since run {run_id} started (diff above); "
                               "resume with --force to run the new version")
        ui.err().print(f"warning: --force: the runbook changed since the run started:\n{change}", markup=False,
                       highlight=False)
    rb = spec.find(str(path), [])

    log = audit.AuditLog()
    who = audit.who()
    what, step_id, rec, choice = position(records)
    if what == "result" and step_id in rb.by_id and rb.by_id[step_id].kind == "end" and rec.get("status") == "ok":
        # it reached its end; only its last record was lost
        end_status = rb.by_id[step_id].body["status"]
        journal = audit.RunJournal(log, run_id, Redactor())
        journal.run_finished(status=end_status, exit_code=EXIT_OK if end_status == "resolved" else 1)
        print(f"run {run_id} already finished at its end step '{step_id}' ({end_status}); nothing to resume")
        return EXIT_OK

    inventory = resolve_inventory(args.inventory or started.get("inventory"), args.env)
    interactive = ui.is_interactive()
    params = resolve_params(rb, _params(rb, started.get("params") or {}, interactive))
    redactor = run_redactor(rb, params, inventory)
    shown = display_params(rb, params)
    journal = audit.RunJournal(log, run_id, redactor)
    the_alert = None
    if started.get("alert"):
        a = started["alert"]
        the_alert = Alert(name=a.get("name", "?"), status=a.get("status", "firing"), labels=a.get("labels") or {},
                          annotations={}, starts_at=a.get("startsAt"), fingerprint=a.get("fingerprint", ""),
                          others=list(a.get("also") or []))
    # no resume while the run still goes, nor two resumes at once, nor beside another run of its alert
    lock = RunLock(audit.default_dir(), f"run-{run_id}", f"run {run_id} is still going or being resumed")
    lock.acquire(run_id, who, audit._now())
    locks = [lock]
    try:
        if the_alert:
            try:
                locks += hold_locks(run_id, who, the_alert, False, journal, run_lock=False)
            except RunbookError as exc:  # the run itself stays as it was: not finished, resumable later
                journal.event("resume_refused", who=who, reason=str(exc))
                raise
        ctx, visits = _restore(records)

        # a step that may or may not have run: the operator decides
        doubt = audit.in_doubt(records)
        doubtful = doubt[-1] if doubt else None
        if doubtful is None and what == "result" and choice in (None, "abort") \
                and rec.get("status") in ("interrupted", "timeout") \
                and step_id in rb.by_id and rb.by_id[step_id].effect == "write":
            doubtful = step_id  # a write stopped half-way: it may have done part of its work
        if doubtful:
            decision = _decide(args, interactive, doubtful, run_id, ui)
            if decision == "abort":
                journal.event("resume_declined", step=doubtful, who=who)
                print(f"run {run_id} not resumed: step {doubtful} is still in doubt")
                return EXIT_REFUSED
            journal.decision(step=doubtful, approved=True, by=who, how=decision)
            if decision == "mark-done":
                journal.step_result(step=doubtful, status="ok", exit_code=None, duration=0.0,
                                    error=f"marked done by {who} on resume (it was in doubt)")
                ctx[doubtful] = StepResult("ok").as_context()
                what, step_id, rec, choice = "result", doubtful, {"status": "ok"}, None
            else:
                if doubtful in doubt:  # settle the old intent: it is being run again
                    journal.step_result(step=doubtful, status="in doubt", exit_code=None, duration=0.0,
                                        error=f"in doubt; {who} chose to run it again on resume")
                what, step_id = "rerun", doubtful

        def prepare(engine):
            journal.event("resumed", who=who, host=audit.hostname(), argv=sys.argv[1:], previous_status=summary["status"])
            engine.steps_ctx.update(ctx)
            if what == "start":
                return None, visits, None
            if step_id not in rb.by_id:
                raise RunbookError(f"the run's last step '{step_id}' is not in the runbook any more")
            step = rb.by_id[step_id]
            if what in ("rerun", "declined"):
                return step, visits, (step_id if what == "rerun" else None)
            status = str(rec.get("status"))
            if status in ("ok", "skipped") or choice in ("skip", "on_failure"):
                data = dict(rec.get("data") or {})
                res = StepResult("skipped" if choice == "skip" else status, data=data, goto=data.get("goto"))
                nxt, stop = engine._next(step, res)
                return (DONE if stop or nxt is None else nxt), visits, None
            if choice is None and status != "interrupted" and step.on_failure not in (None, "abort"):
                nxt, _ = engine._next(step, StepResult(status))  # it died before following on_failure
                return nxt, visits, None
            return step, visits, step_id  # the step that stopped the run: offered again

        stage = started.get("stage")
        options = Options(yes=args.yes, interactive=interactive, answers=parse_pairs(args.answer, "--answer"), who=who,
                          server_dry_run=bool(started.get("server_dry_run")), stage=stage,
                          step_mode=bool(started.get("step_mode")) and interactive,
                          clock_from=_clock_from(started, the_alert))
        if what == "start" and started.get("start_at") in rb.by_id:
            options.start_at = started["start_at"]
        return _live(rb, params, inventory, journal, options, run_id, redactor, shown, environment=args.env,
                     clock_label="since the alert fired" if the_alert and the_alert.starts_at else "since the run started",
                     prepare=prepare, resumed=True)
    finally:
        for held in locks:
            held.release()


def _decide(args, interactive: bool, step_id: str, run_id: str, ui) -> str:
    """mark-done, rerun or abort for a step in doubt."""
    from runbook.engine import EXIT_REFUSED
    from runbook.errors import RunbookError

    if args.mark_done:
        return "mark-done"
    if args.rerun:
        return "rerun"
    if not interactive:
        raise RunbookError(f"step '{step_id}' of run {run_id} is in doubt (it may or may not have run): decide "
                           "in a terminal, or pass --mark-done or --rerun", exit_code=EXIT_REFUSED)
    c = ui.out()
    c.print(f"[yellow]step {ui.esc(step_id)} is in doubt[/]: it was running when run {run_id} stopped, and no "
            "result says it finished; it may or may not have done its work. Check its targets before you decide.")
    return ui._choice(c, "Is it done?", {"mark done": "mark-done", "run again": "rerun", "abort": "abort"})


def _clock_from(started: dict, the_alert) -> float | None:
    """The incident clock's zero: the alert's startsAt, else the run's start."""
    from runbook.audit import parse_time
    from runbook.commands.run import incident_start

    t = parse_time(started.get("ts"))
    return incident_start(the_alert) or (t.timestamp() if t is not None else None)
