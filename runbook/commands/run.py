"""runbook run NAME — run a runbook live, or --dry-run to print the plan."""

from __future__ import annotations

from runbook.commands.common import add_inventory, add_path, parse_pairs


def register(sub) -> None:
    p = sub.add_parser("run", help="run a runbook (use --dry-run first)", description=__doc__)
    p.add_argument("name", nargs="?", help="runbook name or file (optional with --alert)")
    p.add_argument("--dry-run", "-n", action="store_true", help="contact nothing: print every step as it would be sent")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="a parameter (repeatable)")
    p.add_argument("--server-dry-run", action="store_true",
                   help="run read steps for real and send write calls as server-side dry-runs (Kubernetes dryRun=All); "
                        "write steps whose server cannot do that are skipped")
    p.add_argument("--yes", "-y", action="store_true", help="approve write steps without asking (automation)")
    p.add_argument("--answer", "-a", action="append", metavar="STEP=VALUE",
                   help="answer an ask or manual step without a terminal (repeatable)")
    p.add_argument("--alert", metavar="FILE",
                   help="start from an Alertmanager webhook payload (a file, or - for standard input): the runbook is "
                        "the alert's 'runbook' annotation or the one whose alerts: list names it; labels become "
                        "parameters through its params_from_labels")
    p.add_argument("--fingerprint", metavar="FP", help="with --alert: the alert of the payload to handle")
    p.add_argument("--force", action="store_true",
                   help="with --alert: run even while another run is handling the same alert")
    p.add_argument("--step", action="store_true", dest="step_mode",
                   help="ask before every step, read steps included (run, skip, continue, abort)")
    p.add_argument("--start-at", metavar="STEP", help="start at this step (the steps before it are not run)")
    p.add_argument("--stage", choices=("diagnose", "mitigate", "verify"), help="run this stage only")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output of --dry-run")
    add_inventory(p)
    add_path(p)
    p.set_defaults(func=run)


def _git_commit(path: str) -> str | None:
    import subprocess
    from pathlib import Path

    d = Path(path).resolve().parent
    if not any((q / ".git").exists() for q in (d, *d.parents)):
        return None
    try:
        r = subprocess.run(["git", "-C", str(d), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def run_redactor(rb, params: dict, inventory):
    """A run's redactor: every secret of the inventory and of the parameters."""
    from runbook.secrets import Redactor

    redactor = Redactor()
    if inventory is not None:
        for v in inventory.secret_values():
            redactor.add(v)
    for k, v in params.items():
        if rb.params[k].secret and v is not None:
            redactor.add(v)
    return redactor


def _source(path: str) -> str | None:
    """The runbook's text as it ran, so that resume can show what changed since."""
    try:
        with open(path, "rb") as f:  # bytes: CRLF kept, as the sha256 saw it
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def _given_params(rb, given: dict[str, str], interactive: bool) -> dict[str, str]:
    """-p values, then RUNBOOK_PARAM_<NAME> from the environment, then a
    hidden prompt for a required secret when a person is at the terminal.

    Secrets belong in the environment or the prompt: an argument list can be
    read by every user of the machine (ps)."""
    import getpass
    import os
    import sys

    for name in given:
        if name in rb.params and rb.params[name].secret:
            print(f"runbook: warning: secret parameter '{name}' was given with -p, where other users of this machine "
                  f"can read it (ps); prefer RUNBOOK_PARAM_{name.upper()}=… in the environment", file=sys.stderr)
    out = dict(given)
    for name, p in rb.params.items():
        if name in out:
            continue
        env_name = f"RUNBOOK_PARAM_{name.upper()}"
        if env_name in os.environ:
            out[name] = os.environ[env_name]
        elif p.secret and p.required and not p.has_default and interactive:
            out[name] = getpass.getpass(f"{name} (secret, not echoed): ")
    return out


def _from_alert(args, given: dict[str, str]):
    """The runbook, the alert and the parameters (labels, then -p) for --alert."""
    from runbook import alert, spec, ui

    doc = alert.read_payload(args.alert)
    alerts = alert.firing(doc, args.fingerprint)
    if args.name:
        ref, why = args.name, "named on the command line"
    else:
        ref, why = alert.choose_runbook(alerts, spec.search_path(args.path))
    rb = spec.find(ref, spec.search_path(args.path))
    chosen, from_labels = alert.group_params(rb, alerts)
    mapped = ", ".join(f"{k}={v} (label {rb.params_from_labels[k]})" for k, v in from_labels.items() if k not in given)
    since = f", firing since {chosen.starts_at}" if chosen.starts_at else ""
    more = f" and {len(chosen.others)} more of its group" if chosen.others else ""
    ui.err().print(f"alert {chosen.name} ({chosen.fingerprint}{since}){more} → runbook {rb.name}: {why}"
                   + (f"; {mapped}" if mapped else ""), markup=False, highlight=False)
    return rb, chosen, {**from_labels, **given}  # -p wins over a label


def run(args) -> int:
    import json
    import sys
    import time

    from runbook import audit, spec, ui
    from runbook.engine import Engine, Options, display_params, resolve_params
    from runbook.errors import RunbookError, UsageError
    from runbook.inventory import resolve_inventory

    if args.dry_run and args.server_dry_run:
        raise UsageError("--dry-run and --server-dry-run exclude each other: --dry-run contacts nothing, "
                           "--server-dry-run asks the servers")
    given = parse_pairs(args.param, "-p")
    the_alert = None
    if args.alert:
        rb, the_alert, given = _from_alert(args, given)
    elif not args.name:
        raise UsageError("give a runbook name (runbook list shows them), or --alert FILE")
    else:
        if args.fingerprint or args.force:
            raise UsageError("--fingerprint and --force go with --alert")
        rb = spec.find(args.name, spec.search_path(args.path))
    if args.start_at and args.start_at not in rb.by_id:
        from runbook.schema import suggest

        raise UsageError(f"--start-at {args.start_at}: no such step in {rb.name}{suggest(args.start_at, list(rb.by_id))}")
    if args.stage and not rb.stage(args.stage):
        raise UsageError(f"--stage {args.stage}: {rb.name} has no {args.stage} steps")
    inventory = resolve_inventory(args.inventory, args.env)
    interactive = ui.is_interactive()
    if args.step_mode and not interactive and not args.dry_run:
        raise UsageError("--step asks before every step: it needs a terminal")
    params = resolve_params(rb, _given_params(rb, given, interactive))
    redactor = run_redactor(rb, params, inventory)
    shown = display_params(rb, params)

    log = audit.AuditLog()
    run_id = audit.new_run_id()
    journal = audit.RunJournal(log, run_id, redactor)
    who = audit.who()
    journal.run_started(runbook=rb.name, title=rb.title, severity=rb.severity, path=rb.path, sha256=rb.sha256,
                        git_commit=_git_commit(rb.path),
                        params=shown, dry_run=args.dry_run, server_dry_run=args.server_dry_run or None, who=who,
                        host=audit.hostname(), argv=sys.argv[1:],
                        inventory=str(inventory.path) if inventory is not None else None,
                        alert=the_alert.record() if the_alert else None,
                        source=None if args.dry_run else _source(rb.path),
                        stage=args.stage, start_at=args.start_at, step_mode=args.step_mode or None)

    options = Options(dry_run=args.dry_run, server_dry_run=args.server_dry_run, yes=args.yes, interactive=interactive,
                      answers=parse_pairs(args.answer, "--answer"), who=who, step_mode=args.step_mode,
                      start_at=args.start_at, stage=args.stage,
                      clock_from=incident_start(the_alert) or time.time())
    if args.dry_run:
        engine = Engine(rb, params, inventory=inventory, options=options, run_id=run_id, redactor=redactor)
        try:
            entries = engine.plan()
        except RunbookError as exc:
            journal.run_finished(status="failed", exit_code=1)
            raise RunbookError(redactor.text(str(exc))) from None
        journal.event("plan", steps=[e.step.id for e in entries])
        journal.run_finished(status="planned", exit_code=0)
        if args.format == "json":
            doc = {"runbook": rb.name, "title": rb.title, "path": rb.path, "run_id": run_id, "dry_run": True,
                   "params": shown, "inventory": getattr(inventory, "path", None),
                   "steps": [e.as_dict(redactor) for e in entries]}
            print(json.dumps(redactor.data(doc), indent=2, default=str))
        else:
            ui.print_plan(rb, entries, shown, redactor, inventory)
        return 0

    try:
        locks = hold_locks(run_id, who, the_alert, args.force, journal)
    except RunbookError:
        journal.run_finished(status="refused", exit_code=3)  # another run has this alert
        raise
    try:
        return _live(rb, params, inventory, journal, options, run_id, redactor, shown,
                     environment=args.env or (inventory.path.stem if inventory is not None else None),
                     clock_label="since the alert fired" if the_alert and the_alert.starts_at else "since the start")
    finally:
        for lock in locks:
            lock.release()


def hold_locks(run_id: str, who: str, the_alert, force: bool, journal, run_lock: bool = True) -> list:
    """The locks a live run holds: its run id (resume waits for it) and each
    alert it handles (one run per alert unless --force).  On a refusal the
    locks taken so far are released and the RunbookError goes to the caller,
    which says in the journal what that means for its run."""
    import sys

    from runbook import audit
    from runbook.alert import RunLock
    from runbook.errors import RunbookError

    started = audit._now()
    wanted = [RunLock(audit.default_dir(), f"run-{run_id}", f"run {run_id} is still going")] if run_lock else []
    if the_alert is not None:
        wanted += [RunLock(audit.default_dir(), f"alert-{fp}") for fp in [the_alert.fingerprint, *the_alert.others]]
    held = []
    for lock in wanted:
        try:
            warning = lock.acquire(run_id, who, started, force)
        except RunbookError:
            for h in held:
                h.release()
            raise
        held.append(lock)
        if warning:
            journal.event("forced", lock=lock.path.stem, warning=warning)
            print(f"runbook: {warning}", file=sys.stderr)
    return held


def incident_start(the_alert) -> float | None:
    """Epoch seconds of the alert's startsAt (the incident clock's zero), or None."""
    from runbook.audit import parse_time

    t = parse_time(the_alert.starts_at) if the_alert is not None else None
    return t.timestamp() if t is not None else None


def _live(rb, params, inventory, journal, options, run_id, redactor, shown, *, environment=None,
          clock_label="since the start", prepare=None, resumed=False) -> int:
    """The live run.  ``prepare(engine) -> (start step, visits)`` lets resume
    restore the steps already done and choose where to go on."""
    import signal

    from runbook import ui
    from runbook.engine import Engine

    console_ui = ui.ConsoleUI(redactor)
    engine = Engine(rb, params, inventory=inventory, ui=console_ui, journal=journal, options=options,
                    run_id=run_id, redactor=redactor)

    def _term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _term)
    try:
        console_ui.run_started(rb, run_id, shown, environment=environment, clock_from=options.clock_from,
                               clock_label=clock_label, resumed=resumed)
        return engine.run(prepare=prepare)
    finally:
        signal.signal(signal.SIGTERM, previous)
