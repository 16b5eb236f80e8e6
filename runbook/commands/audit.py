"""``runbook audit``: list runs, show one run, verify the log's chain, seals and head.

Exit codes of ``verify``: 0 the log verifies (a torn write that the next append
repaired included), 1 tampered or invalid (a sealed log whose head is missing or
damaged included: records may have been cut off its end; or the log cannot be
read), 2 usage, 3 not sealed (every record was written before sealing: only the
chain was checked), 4 the last lines are a torn write (a crash, also during the
repair of an earlier one; the next write repairs it), 5 the seals cannot be
verified: the anchor key is missing, is not a key or cannot be read, or is not
this log's because the log was moved aside (its anchor, kept in
``keys/retired-*/verify.pub``, is named).
"""

from __future__ import annotations

import argparse
TYPE_CHECKING = False  # not typing's: importing typing costs `runbook --help` ~4 ms
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

_SHOWN_LINES = 10  # of a step's output excerpt, in `audit show`
_STATUS_STYLE = {"succeeded": "green", "ok": "green", "failed": "red", "in doubt": "yellow", "in progress": "yellow"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "audit",
        help="list, show and verify recorded runs",
        description="Inspect the audit log: every run, every step's intent, approval and result, chained by hash and sealed.",
    )
    parser.set_defaults(func=run)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir", metavar="DIR", help="audit log directory (default: $RUNBOOK_AUDIT_URL's store, else $RUNBOOK_AUDIT_DIR, else "
        "~/.local/state/runbook)"
    )
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    actions = parser.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)

    p = actions.add_parser("list", parents=[common, fmt], help="recorded runs, newest first")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="show at most N runs (default: 20; 0 for all)")
    p.set_defaults(audit_func=_list)

    p = actions.add_parser("show", parents=[common], help="the records of one run")
    p.add_argument("--format", choices=("text", "json", "result"), default="text",
                   help="text, json (the raw records) or result (the run's result document, as `runbook run "
                        "--format json` prints it; `runbook schema --result` is its schema) (default: text)")
    p.add_argument("run_id", metavar="RUN_ID", help="a run id or a unique prefix of one")
    p.set_defaults(audit_func=_show)

    p = actions.add_parser(
        "verify",
        parents=[common],
        help="check that no record was modified, removed, reordered, forged or cut off the end",
        description="Check every record's bytes, hash and chain, its Ed25519 seal against its epoch's key "
        "(from the anchor), and the head file (records cut off the end). Exit 0 verified, 1 tampered, "
        "2 usage, 3 not sealed (written before sealing), 4 torn last write (a crash; the next write "
        "repairs it), 5 cannot verify the seals: key missing or unusable, or the log was moved aside "
        "(verify it with the anchor named, --key keys/retired-*/verify.pub).",
    )
    p.add_argument("file", nargs="?", metavar="FILE", help="the log to check (default: the audit log)")
    p.add_argument(
        "--key",
        metavar="PUBLIC_KEY",
        help="the log's anchor: its verify.pub, copied where an attacker cannot write, or a PEM Ed25519 "
        "public key (default: verify.pub in $RUNBOOK_KEY_DIR, else in the log's keys/ directory)",
    )
    p.set_defaults(audit_func=_verify)

    p = actions.add_parser(
        "anchor",
        parents=[common],
        help="print the log's anchor (its verify.pub) to keep where nobody who writes the log can",
        description="Print the anchor, the public key of the log's epoch 0 that every seal is proven from, as a "
        "verify.pub file. Keep the copy where nobody who can write the log (or the database, with "
        "RUNBOOK_AUDIT_URL) can write, and verify with `runbook audit verify --key COPY`: an anchor kept "
        "beside the log can be replaced together with a re-sealed log.",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write it to FILE (default: standard output)")
    p.set_defaults(audit_func=_anchor)


def run(args: argparse.Namespace) -> int:
    return args.audit_func(args)


def _store(args: argparse.Namespace):
    """The store the command reads: --dir's log, else RUNBOOK_AUDIT_URL's store, else the default log."""
    from runbook.store import open_store

    return open_store(args.dir or None)


def _print_json(data: Any) -> None:
    import json
    import sys

    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _time(ts: Any) -> str:
    """``2026-11-26T12:15:00.123456Z`` as ``2026-11-26 12:15``."""
    return str(ts or "")[:16].replace("T", " ")


def _clock(ts: Any) -> str:
    """``2026-11-26T12:15:00.123456Z`` as ``12:15:00.123``."""
    return str(ts or "")[11:23]


def _list(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from runbook.ui import out, visible

    store = _store(args)
    runs = store.list_runs()[::-1]
    if args.limit > 0:
        runs = runs[: args.limit]
    if args.format == "json":
        _print_json(runs)
        return 0
    if not runs:
        out().print(Text(visible(f"no runs recorded in {store.where}")))
        return 0
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    table.add_column("run id", no_wrap=True, min_width=23)
    table.add_column("started (UTC)", no_wrap=True)
    table.add_column("runbook", no_wrap=True)
    table.add_column("who", overflow="fold")
    table.add_column("mode", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for r in runs:
        status = r["status"] + (f" ({r['exit_code']})" if r["exit_code"] is not None else "")
        table.add_row(
            Text(visible(r["run"], one_line=True)),
            Text(visible(_time(r["started"]), one_line=True)),
            Text(visible(r["runbook"] or "?", one_line=True)),
            Text(visible(r["who"] or "?", one_line=True)),
            "dry-run" if r["dry_run"] else "live",
            Text(visible(status, one_line=True), style=_STATUS_STYLE.get(r["status"], "")),
        )
    out().print(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from runbook import audit
    from runbook.report import chosen
    from runbook.ui import out, visible

    records = _store(args).run_records(args.run_id)
    if args.format == "json":
        _print_json(records)
        return 0
    if args.format == "result":
        from runbook.result import build

        _print_json(build(records))
        return 0
    summary = audit.summarize(records)
    mode = "dry-run" if summary["dry_run"] else "live"
    out().print(
        Text(visible(
            f"run {summary['run']}: {summary['runbook'] or '?'} ({mode}) by {summary['who'] or '?'} "
            f"on {summary['host'] or '?'}, {summary['status']}"
            + (f": {', '.join(summary['in_doubt'])} may or may not have run" if summary["in_doubt"] else ""),
            one_line=True,
        ))
    )
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("step", overflow="fold")
    table.add_column("status", overflow="fold")
    table.add_column("details", overflow="fold")
    for r in records:
        status = r.get("status", "")
        if r.get("type") == "decision":
            status = chosen(r)  # the choice as it was: approved, skipped, declined, retry, follow on_failure, …
        table.add_row(
            Text(visible(_clock(r.get("ts")), one_line=True)),
            Text(visible(r.get("type", ""), one_line=True)),
            Text(visible(r.get("step", ""), one_line=True)),
            Text(visible(status, one_line=True), style=_STATUS_STYLE.get(str(status), "")),
            Text(visible(_details(r))),  # its newlines are kept; every other control character is shown
        )
    out().print(table)
    return 0


def _details(r: dict[str, Any]) -> str:
    """The interesting fields of one record, in a line or a few."""
    from runbook.text import plural

    kind = r.get("type")
    if kind == "run_started":
        params = ", ".join(f"{k}={v}" for k, v in (r.get("params") or {}).items())
        source = f"{r.get('path')} sha256 {str(r.get('sha256'))[:12]}"
        if r.get("git_commit"):
            source += f" git {str(r['git_commit'])[:12]}"
        return source + (f"\nparams: {params}" if params else "")
    if kind == "step_intent":
        rendered = r.get("rendered")
        text = rendered if isinstance(rendered, str) else " ".join(f"{k}={v}" for k, v in (rendered or {}).items())
        attempt = f", attempt {r['attempt']}" if r.get("attempt", 1) != 1 else ""
        return f"{r.get('effect')} {r.get('kind')} on {', '.join(r.get('targets') or []) or '-'}{attempt}\n{text}"
    if kind == "decision":
        return f"by {r.get('by')} ({r.get('how')})"
    if kind == "step_result":
        duration = float(r.get("duration") or 0)
        lines = [f"exit {r.get('exit_code')}, {duration:.2f}s, {r.get('output_bytes')} bytes of output"]
        if r.get("error"):
            lines.append(f"error: {r['error']}")
        output = str(r.get("output_excerpt") or "").rstrip("\n").splitlines()
        if len(output) > _SHOWN_LINES:
            lines.append(f"[... {plural(len(output) - _SHOWN_LINES, 'earlier line')} of the excerpt: see --format json ...]")
        lines.extend(output[-_SHOWN_LINES:])
        return "\n".join(lines)
    if kind == "run_finished":
        return f"exit {r.get('exit_code')}"
    skip = {"type", "run", "ts", "prev", "hash", "v", "step", "status"}
    return ", ".join(f"{k}={v}" for k, v in r.items() if k not in skip)


EXIT_CODES = {"ok": 0, "tampered": 1, "unsealed": 3, "torn": 4, "key-missing": 5}


def _verify(args: argparse.Namespace) -> int:
    from runbook import audit
    from runbook.ui import out, visible

    rows = False  # the store's records are rows (record N), not lines of a file (PATH:N)
    if args.file:
        path, result = args.file, audit.verify(args.file, args.key)
    else:
        store = _store(args)
        path, result = store.where, store.verify(args.key)
        rows = not hasattr(store, "path")
    if result.status == "ok":
        text = result.message
    else:
        level = "error" if result.status in ("tampered", "key-missing") else "warning"
        where = path if result.line is None else (f"{path} record {result.line}" if rows else f"{path}:{result.line}")
        text = f"{where}: {level}: {result.problem}"
    out().print(visible(text, one_line=True), markup=False, soft_wrap=True)
    return EXIT_CODES[result.status]


def _anchor(args: argparse.Namespace) -> int:
    import sys

    from runbook.errors import RunbookError

    store = _store(args)
    data = store.anchor()
    if not args.output or args.output == "-":
        sys.stdout.write(data.decode())
        return 0
    try:
        with open(args.output, "xb") as f:
            f.write(data)
    except FileExistsError:
        raise RunbookError(f"{args.output} exists; the anchor is not written over a file (remove it first)") from None
    except OSError as exc:
        raise RunbookError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"runbook: the anchor of {store.where} written to {args.output}", file=sys.stderr)
    return 0
