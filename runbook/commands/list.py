"""runbook list — the runbooks found in ./playbooks (or --path, or $RUNBOOK_PATH)."""

from __future__ import annotations

from runbook.commands.common import add_path


def register(sub) -> None:
    p = sub.add_parser("list", help="list the runbooks", description=__doc__)
    add_path(p)
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from runbook import spec, ui
    from runbook.errors import RunbookError

    paths = spec.search_path(args.path)
    files = spec.runbook_files(paths)
    if not files:
        raise RunbookError(f"no runbooks found in {', '.join(map(str, paths))} (use --path DIR or set RUNBOOK_PATH)")
    rows, broken = [], []
    for f in files:
        rb, problems = spec.load_runbook(f)
        if rb is None:
            broken.append((f, next((p for p in problems if p.severity == "error"), None)))
            continue
        rows.append({"name": rb.name, "title": rb.title, "severity": rb.severity, "alerts": rb.alerts, "path": str(f)})
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        from rich.table import Table

        t = Table(box=None, header_style="bold", pad_edge=False)
        t.add_column("NAME", no_wrap=True)
        t.add_column("SEVERITY", no_wrap=True)
        t.add_column("TITLE", ratio=2)
        t.add_column("ALERTS", ratio=1)
        for r in rows:
            t.add_row(ui.esc(r["name"]), ui.esc(r["severity"] or "-"), ui.esc(r["title"]), ui.esc(", ".join(r["alerts"]) or "-"))
        ui.out().print(t)
    for f, problem in broken:
        ui.err().print(f"[yellow]skipped[/] {ui.esc(problem.format() if problem else str(f))}")
    return 0
