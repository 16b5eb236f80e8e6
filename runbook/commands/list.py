"""runbook list — the runbooks found in ./playbooks (or --path, or $RUNBOOK_PATH)."""

from __future__ import annotations

from runbook.commands.common import add_path


def register(sub) -> None:
    p = sub.add_parser("list", help="list the runbooks", description=__doc__)
    add_path(p)
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def run(args) -> int:
    """Fast at 3am: names, titles, severities and alerts come from runbook.catalog
    (a cache keyed by path, size and mtime), printed as plain columns, no rich."""
    import json
    import sys

    from runbook import catalog
    from runbook.text import visible

    paths = catalog.search_path(args.path)
    files = catalog.runbook_files(paths)
    if not files:
        from runbook.errors import UsageError

        raise UsageError(f"no runbooks found in {', '.join(map(str, paths))} (use --path DIR or set RUNBOOK_PATH)")
    rows, broken = [], []
    for f, entry in catalog.entries(files):
        if "broken" in entry:
            broken.append(entry["broken"])
            continue
        rows.append({"name": entry["name"], "title": entry["title"], "severity": entry["severity"],
                     "alerts": entry["alerts"], "path": str(f)})
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        table = [("NAME", "SEVERITY", "TITLE", "ALERTS")] + [
            (r["name"], r["severity"] or "-", r["title"], ", ".join(r["alerts"]) or "-") for r in rows]
        table = [tuple(visible(c, one_line=True) for c in row) for row in table]
        w = [max(len(row[i]) for row in table) for i in range(3)]
        print("\n".join(f"{a.ljust(w[0])}  {b.ljust(w[1])}  {c.ljust(w[2])}  {d}".rstrip() for a, b, c, d in table))
    for problem in broken:
        print(f"skipped {visible(problem, one_line=True)}", file=sys.stderr)
    return 0
