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
                        "parameters through its params_from_labels; a resolved alert runs nothing and is recorded "
                        "(in its open run, if one is)")
    p.add_argument("--fingerprint", metavar="FP", help="with --alert: the alert of the payload to handle")
    p.add_argument("--force", action="store_true",
                   help="with --alert: run even while another run is handling the same alert")
    p.add_argument("--step", action="store_true", dest="step_mode",
                   help="ask before every step, read steps included (run, skip, continue, abort)")
    p.add_argument("--start-at", metavar="STEP", help="start at this step (the steps before it are not run)")
    p.add_argument("--stage", choices=("diagnose", "mitigate", "verify"), help="run this stage only")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="json: the plan (--dry-run) or, for a live run, the run's result from its audit log as one "
                        "JSON document on standard output at the end (progress goes to standard error; "
                        "`runbook schema --result` is its schema)")
    add_inventory(p)
    add_path(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys

    from runbook import session, spec, ui
    from runbook.errors import UsageError

    given = parse_pairs(args.param, "-p")
    the_alert = None
    console = ui.ConsoleUI()
    if args.format == "json" and not args.dry_run:
        console.c = ui.err()  # standard output carries only the result document
    if args.alert:
        from runbook import alert

        got = session.from_alert(alert.read_payload(args.alert), args.fingerprint, args.name,
                                 spec.search_path(args.path), given, dry_run=args.dry_run)
        for line in got.resolved + ([got.line] if got.line else []):  # labels come from outside
            ui.err().print(ui.visible(line, one_line=True), markup=False, highlight=False, soft_wrap=True)
        if got.runbook is None:  # every alert of the payload resolved: nothing to run
            return 0
        rb, the_alert, given = got.runbook, got.alert, got.params
    elif not args.name:
        raise UsageError("give a runbook name (runbook list shows them), or --alert FILE")
    else:
        if args.fingerprint or args.force:
            raise UsageError("--fingerprint and --force go with --alert")
        rb = spec.find(args.name, spec.search_path(args.path))
    req = session.RunRequest(
        runbook=rb, params=given, inventory_file=args.inventory, env=args.env, dry_run=args.dry_run,
        server_dry_run=args.server_dry_run, yes=args.yes, answers=parse_pairs(args.answer, "--answer"),
        step_mode=args.step_mode, start_at=args.start_at, stage=args.stage, alert=the_alert, force=args.force,
        interactive=ui.is_interactive(), argv=sys.argv[1:])
    out = session.start(req, console)
    if not args.dry_run:
        if args.format == "json":
            print_result(out.run_id)
        return out.exit_code
    if args.format == "json":
        doc = {"runbook": rb.name, "title": rb.title, "path": rb.path, "run_id": out.run_id, "dry_run": True,
               "params": out.params_shown, "example_params": out.examples, "inventory": getattr(out.inventory, "path", None),
               "steps": [e.as_dict(out.redactor) for e in out.plan]}
        print(json.dumps(out.redactor.data(doc), indent=2, default=str))
    else:
        ui.print_plan(rb, out.plan, out.params_shown, out.redactor, out.inventory, examples=out.examples)
    return out.exit_code


def print_result(run_id: str | None) -> None:
    """The run's result document (runbook/result.py), read back from the audit log."""
    import json
    import sys

    from runbook import result
    from runbook.store import open_store

    if not run_id:  # nothing was recorded (the run was refused before it started)
        return
    doc = result.build(open_store().run_records(run_id))
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()
