"""runbook worker — a Celery worker that diagnoses alerts queued by `runbook serve`.

Each job is one incident of the ledger: its runbook runs with nobody at a terminal
through the diagnose stage (--through a later stage to go further) and pauses before
the first write step (unless the runbook marks it auto_approve), recorded in the shared
audit store (RUNBOOK_AUDIT_URL). An engineer goes on with `runbook resume RUN_ID`.
Needs the team extra: pip install 'runbook-executor[team]'.
"""

from __future__ import annotations

from runbook.commands.common import add_inventory, add_path


def register(sub) -> None:
    p = sub.add_parser("worker", help="a Celery worker that diagnoses queued alerts (team mode)", description=__doc__)
    p.add_argument("--concurrency", type=int, default=2, metavar="N", help="diagnoses at once (default 2)")
    p.add_argument("--through", choices=("diagnose", "mitigate", "verify"), default=None,
                   help="the last stage a worker runs (default: diagnose); writes still pause unless auto_approve")
    p.add_argument("--loglevel", default="INFO", help="log level (default INFO)")
    add_path(p)
    add_inventory(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from runbook.errors import RunbookError

    try:
        from runbook.team.worker import run_worker
    except ImportError as exc:  # celery missing
        raise RunbookError(f"runbook worker needs the team extra ({exc.name} is missing): "
                           "pip install 'runbook-executor[team]'", exit_code=2) from None
    return run_worker(concurrency=args.concurrency, paths=[args.path] if args.path else None, through=args.through,
                      env=args.env, inventory=args.inventory, loglevel=args.loglevel)
