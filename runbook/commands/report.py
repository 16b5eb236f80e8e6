"""``runbook report RUN_ID``: the incident timeline of one run, in Markdown, for the post-mortem."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        help="the incident timeline of a run, in Markdown, for the post-mortem",
        description="Write the timeline of one recorded run (T+ from the alert, or from the start), every step's "
        "command, approval and result, and post-mortem sections to fill in, as Markdown. "
        "The audit log is verified first: a log that does not verify (or whose seals cannot be checked) is "
        "refused, unless --force, which writes the report with a warning at the top.",
    )
    p.add_argument("run_id", metavar="RUN_ID", help="a run id, a unique prefix of one, or 'last' for the most recent run")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE (default: standard output)")
    p.add_argument("--dir", metavar="DIR", help="audit log directory (default: $RUNBOOK_AUDIT_URL's store, else $RUNBOOK_AUDIT_DIR, else "
                   "~/.local/state/runbook)")
    p.add_argument("--force", action="store_true",
                   help="write the report although the audit log does not verify (it says so at the top)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from runbook.commands.audit import _store
    from runbook.errors import RunbookError
    from runbook.report import report
    from runbook.session import log_trust

    store = _store(args)
    path = store.where
    status, message, checked = log_trust(store)  # verified once: the report reuses the result
    if status in ("tampered", "key-missing") and not args.force:
        what = "cannot be verified" if status == "key-missing" else "does not verify"
        raise RunbookError(f"the audit log {path} {what}: {message}; a report would rest on records that may have "
                           "been changed (runbook audit verify gives the details; --force writes it with a warning)")
    text = report(store, args.run_id, checked=checked)
    if not args.output or args.output == "-":
        sys.stdout.write(text)
        return 0
    tmp = f"{args.output}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.output)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise RunbookError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"runbook: report written to {args.output}", file=sys.stderr)
    return 0
