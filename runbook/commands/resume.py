"""runbook resume RUN_ID — continue an interrupted run from its audit log.

Steps that finished are not run again: their results and outputs come back
from the log.  A write step whose intent was logged but whose result was not
(the process died while it ran), or that was stopped half-way, is *in doubt*:
the operator decides whether it is done (--mark-done, giving with --output the
outputs later steps read), must run again (--rerun), or the run stops; a step
whose recorded process is still running is never run again.  A read step that
was cut short simply runs again.  The runbook must be the one that
started the run (its sha256 is in the log) unless --force.  Secret
parameters were never stored, so they are asked for again.
"""

from __future__ import annotations

from runbook.commands.common import add_inventory, add_path, parse_pairs


def register(sub) -> None:
    p = sub.add_parser("resume", help="continue an interrupted run from its audit log", description=__doc__)
    p.add_argument("run_id", metavar="RUN_ID", help="the run id (or a unique prefix) from `runbook audit list`")
    p.add_argument("--yes", "-y", action="store_true", help="approve write steps without asking (automation)")
    p.add_argument("--answer", "-a", action="append", metavar="STEP=VALUE", help="answer an ask or manual step")
    doubt = p.add_mutually_exclusive_group()
    doubt.add_argument("--mark-done", action="store_true", help="a step in doubt did run: go on after it")
    doubt.add_argument("--rerun", action="store_true", help="a step in doubt did not run: run it again")
    p.add_argument("--output", "-o", action="append", metavar="STEP.NAME=VALUE",
                   help="with --mark-done: an output of the step in doubt that later steps read (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="resume although the runbook changed since the run started (or another run holds its alert)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="json: the run's result from its audit log as one JSON document on standard output at the "
                        "end (progress goes to standard error; `runbook schema --result` is its schema)")
    add_path(p)
    add_inventory(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import sys
    from pathlib import Path

    from runbook import session, ui

    req = session.ResumeRequest(
        run_id=args.run_id, yes=args.yes, answers=parse_pairs(args.answer, "--answer"), mark_done=args.mark_done,
        rerun=args.rerun, outputs=session.parse_outputs(parse_pairs(args.output, "--output")), force=args.force,
        inventory_file=args.inventory, env=args.env, interactive=ui.is_interactive(), argv=sys.argv[1:],
        path=[Path(args.path)] if args.path else None)
    console = ui.ConsoleUI()
    if args.format == "json":
        console.c = ui.err()  # standard output carries only the result document
    out = session.resume(req, console)
    if out.note:
        print(out.note, file=sys.stderr if args.format == "json" else sys.stdout)
    if args.format == "json":
        from runbook.commands.run import print_result

        print_result(out.run_id)
    return out.exit_code
