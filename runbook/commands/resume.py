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
RESUMABLE_RESULTS = ("failed", "timeout", "interrupted", "refused")


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


def _restore(records: list[dict]) -> tuple[dict, dict[str, int], list[tuple[str, dict]]]:
    """Each step's last result as the engine's context, visit counts, and the
    results in order."""
    from runbook.steps import StepResult

    ctx: dict = {}
    visits: dict[str, int] = {}
    order: list[tuple[str, dict]] = []
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
            order.append((r["step"], r))
    return ctx, visits, order


def _diff(old: str | None, new: str, path: str) -> str:
    import difflib

    if old is None:
        return "(the run's copy of the runbook was not recorded)"
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), f"{path} (when the run started)", f"{path} (now)",
                                 lineterm="", n=1)
    return "\n".join(list(lines)[:60])


def run(args) -> int:
    import hashlib
    import sys
    from pathlib import Path

    from runbook import audit, spec, ui
    from runbook.alert import Alert, RunLock
    from runbook.commands.run import _live, hold_locks
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
    text = path.read_text(encoding="utf-8")
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != started.get("sha256"):
        change = _diff(started.get("source"), text, str(path))
        if not args.force:
            ui.err().print(change, markup=False, highlight=False)
            raise RunbookError(f"the runbook {path} changed since run {run_id} started (diff above); "
                               "resume with --force to run the new version")
        ui.err().print(f"warning: --force: the runbook changed since the run started:\n{change}", markup=False,
                       highlight=False)
    rb = spec.find(str(path), [])
    last_step = next((r for r in reversed(records) if r.get("type") == "step_result"), None)
    if last_step and last_step.get("step") in rb.by_id and rb.by_id[last_step["step"]].kind == "end" \
            and last_step.get("status") == "ok":
        print(f"run {run_id} already finished at its end step '{last_step['step']}'; nothing to resume")
        return EXIT_OK

    inventory = resolve_inventory(args.inventory or started.get("inventory"), args.env)
    interactive = ui.is_interactive()
    params = resolve_params(rb, _params(rb, started.get("params") or {}, interactive))
    redactor = Redactor()
    if inventory is not None:
        for v in inventory.secret_values():
            redactor.add(v)
    for k, v in params.items():
        if rb.params[k].secret and v is not None:
            redactor.add(v)
    shown = display_params(rb, params)

    log = audit.AuditLog()
    journal = audit.RunJournal(log, run_id, redactor)
    who = audit.who()
    the_alert = None
    if started.get("alert"):
        a = started["alert"]
        the_alert = Alert(name=a.get("name", "?"), status=a.get("status", "firing"), labels=a.get("labels") or {},
                          annotations={}, starts_at=a.get("startsAt"), fingerprint=a.get("fingerprint", ""),
                          others=list(a.get("also") or []))
    # no resume while the run still goes, nor two resumes at once, nor beside another run of its alert
    lock = RunLock(audit.default_dir(), f"run-{run_id}", f"run {run_id} is still going or being resumed")
    lock.acquire(run_id, who, audit._now())
    try:
        others = hold_locks(run_id, who, the_alert, args.force, journal) if the_alert else []
    except RunbookError:
        lock.release()
        raise
    locks = [lock, *others]
    try:
        doubt = audit.in_doubt(records)
        journal.event("resumed", who=who, host=audit.hostname(), argv=sys.argv[1:], previous_status=summary["status"],
                      in_doubt=doubt or None)
        ctx, visits, order = _restore(records)

        rerun: str | None = None
        if doubt:
            step_id = doubt[-1]
            if args.mark_done:
                choice, how = "mark-done", "--mark-done"
            elif args.rerun:
                choice, how = "rerun", "--rerun"
            elif interactive:
                c = ui.out()
                c.print(f"[yellow]step {ui.esc(step_id)} is in doubt[/]: it was about to run when run {run_id} stopped, "
                        "and no result was recorded; it may or may not have run. Check its targets before you decide.")
                choice = ui._choice(c, "Is it done?", {"mark done": "mark-done", "run again": "rerun", "abort": "abort"})
                how = "prompt"
            else:
                journal.event("resume_refused", reason=f"step {step_id} in doubt")
                raise RunbookError(f"step '{step_id}' of run {run_id} is in doubt (it may or may not have run): decide "
                                   "in a terminal, or pass --mark-done or --rerun", exit_code=EXIT_REFUSED)
            journal.decision(step=step_id, approved=choice != "abort", by=who, how=choice, via=how)
            if choice == "abort":
                journal.event("resume_aborted", step=step_id)
                print(f"run {run_id} not resumed: step {step_id} is still in doubt")
                return EXIT_REFUSED
            if choice == "mark-done":
                journal.step_result(step=step_id, status="ok", exit_code=None, duration=0.0,
                                    error=f"marked done by {who} on resume (it was in doubt)")
                ctx[step_id] = StepResult("ok").as_context()
                order.append((step_id, {"status": "ok"}))
            else:
                journal.step_result(step=step_id, status="in doubt", exit_code=None, duration=0.0,
                                    error=f"in doubt; {who} chose to run it again on resume")
                rerun = step_id

        def prepare(engine):
            engine.steps_ctx.update(ctx)
            if rerun:
                return rb.by_id[rerun], visits
            if not order:
                return None, visits
            step_id, rec = order[-1]
            if step_id not in rb.by_id:
                raise RunbookError(f"the run's last step '{step_id}' is not in the runbook any more")
            step = rb.by_id[step_id]
            status = rec.get("status")
            if status in RESUMABLE_RESULTS:
                return step, visits  # the step that stopped the run: try it again
            if refused_after(records, step_id):
                return rb.by_id[refused_after(records, step_id)], visits
            res = StepResult(str(status), data=dict(rec.get("data") or {}))
            if step.kind == "choose":
                res.goto = ctx[step_id].get("goto") or _choose_goto(rb, step, engine)
            nxt, stop = engine._next(step, res)
            if stop or nxt is None:
                return DONE, visits
            return nxt, visits

        options = Options(yes=args.yes, interactive=interactive, answers=parse_pairs(args.answer, "--answer"), who=who,
                          escalation=[(a, to) for a, to, _ in rb.escalation], clock_from=_clock_from(started, the_alert))
        return _live(rb, params, inventory, journal, options, run_id, redactor, shown, environment=args.env,
                     clock_label="since the alert fired" if the_alert and the_alert.starts_at else "since the run started",
                     prepare=prepare, resumed=True)
    finally:
        for held in locks:
            held.release()


def refused_after(records: list[dict], step_id: str) -> str | None:
    """A step that was declined (or waited for approval without a terminal)
    after the last result: the run stopped before it, so it comes next."""
    seen = False
    declined = None
    for r in records:
        if r.get("type") == "step_result" and r.get("step") == step_id:
            seen, declined = True, None
        elif seen and r.get("type") == "decision" and not r.get("approved") and r.get("how") in (
                "prompt", "no-terminal", "step-mode"):
            declined = r.get("step")
    return declined


def _choose_goto(rb, step, engine):
    """A choose step's branch, evaluated again on the restored results."""
    res = step.module.run(step, None, engine.step_ctx)
    return res.goto


def _clock_from(started: dict, the_alert) -> float | None:
    from datetime import datetime

    from runbook.commands.run import incident_start

    t = incident_start(the_alert)
    if t is not None:
        return t
    try:
        return datetime.fromisoformat(str(started.get("ts")).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
