"""The ``runbook`` command line.

Each subcommand is one small module in ``runbook/commands/`` exposing
``register(subparsers)`` (which must stay cheap to import: no heavy imports at
module level) and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import sys

from runbook import __version__

# Order here is the order in `runbook --help`; each line is the one its module's
# register() gives (tests/test_cli.py checks they agree): `runbook --help` shows
# them without importing a command module.
COMMANDS = {
    "run": "run a runbook (use --dry-run first)",
    "resume": "continue an interrupted run from its audit log",
    "list": "list the runbooks",
    "show": "show a runbook's parameters and steps",
    "graph": "print the step graph (Mermaid or DOT)",
    "validate": "check runbooks: schema, graph, templates, safety rules",
    "schema": "print the JSON Schema of runbook (or inventory) files",
    "audit": "list, show and verify recorded runs",
    "report": "the incident timeline of a run, in Markdown, for the post-mortem",
    "serve": "receive Alertmanager webhooks and show the runs (team mode)",
    "worker": "a Celery worker that diagnoses queued alerts (team mode)",
    "completion": "print the shell completion script (bash, zsh or fish)",
}


def build_parser(only: str | None = "*") -> argparse.ArgumentParser:
    """The parser: every command's (``only="*"``), just ``only``'s with the
    others as their one help line, or (``None``) just the help lines — enough
    for ``runbook --help`` and for a mistyped command's error."""
    parser = argparse.ArgumentParser(
        prog="runbook",
        description="Run runbooks: diagnose, mitigate, verify — with dry-run, confirmation before writes, and an audit log.",
        epilog="Start with `runbook list`, then `runbook run NAME --dry-run`.",
    )
    parser.add_argument("--version", action="version", version=f"runbook {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    for name, summary in COMMANDS.items():
        if only == "*" or only == name:
            importlib.import_module(f"runbook.commands.{name}").register(sub)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def _command(argv: list[str]) -> str | None:
    """The command named on the line (the top-level options take no value)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    import gc

    # Loading YAML creates many small objects and no reference cycles worth
    # chasing; the default thresholds made the collector a third of the time
    # of `runbook validate` (bench/validate_throughput.py).
    gc.set_threshold(50_000, 20, 100)

    if argv is None:  # the process's own command line: it ends when this returns
        try:
            return _main(sys.argv[1:])
        finally:
            # The process ends here: the interpreter's last full collection would walk every object
            # of the run for nothing (after an ssh step on 50 hosts ~48,000 objects, 20-45 ms on the
            # way out; bench/ssh_fanout.py).  Objects are still freed as the modules are cleared.
            gc.freeze()
    return _main(list(argv))


def _main(argv: list[str]) -> int:
    if argv[:1] == ["__complete"]:  # the completion scripts' helper on Tab: no parser, nothing heavy
        from runbook.complete import main as complete

        return complete(argv[1:])
    parser = build_parser(_command(argv))  # only the command that runs is imported
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("runbook: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if args.debug:
            raise
        from runbook.errors import RunbookError  # here, not at start-up: it costs `--help` ~10 ms (dataclasses)
        from runbook.ui import visible  # an error can quote text from outside (a label, an answer)

        if isinstance(exc, RunbookError):
            print(f"runbook: error: {visible(str(exc))}", file=sys.stderr)
            return exc.exit_code

        print(f"runbook: internal error: {type(exc).__name__}: {visible(str(exc))} (run again with --debug for details)",
              file=sys.stderr)
        return 1
