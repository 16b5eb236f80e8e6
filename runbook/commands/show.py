"""runbook show NAME — parameters and steps by stage."""

from __future__ import annotations

from runbook.commands.common import add_path


def register(sub) -> None:
    p = sub.add_parser("show", help="show a runbook's parameters and steps", description=__doc__)
    p.add_argument("name", help="runbook name or file")
    add_path(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.table import Table

    from runbook import spec, ui
    from runbook.ui import esc

    rb = spec.find(args.name, spec.search_path(args.path))
    c = ui.out()
    c.print(f"[bold]{esc(rb.name)}[/] — {esc(rb.title)}")
    meta = [f"severity: {rb.severity or '-'}", f"alerts: {', '.join(rb.alerts) or '-'}", f"owner: {rb.owner or '-'}", f"file: {rb.path}"]
    c.print(esc("   ".join(meta)), style="dim")
    if rb.description:
        c.print(esc(rb.description.strip()))
    c.print("\n[bold]Parameters[/]")
    if rb.params:
        t = Table(box=None, header_style="bold", pad_edge=False)
        for col in ("NAME", "TYPE", "REQUIRED", "DEFAULT", "CONSTRAINT", "DESCRIPTION"):
            t.add_column(col)
        for p in rb.params.values():
            constraint = " ".join(x for x in (f"pattern {p.pattern}" if p.pattern else "", f"one of {', '.join(map(str, p.enum))}" if p.enum else "", "secret" if p.secret else "") if x)
            default = "***" if p.secret and p.has_default else (repr(p.default) if p.has_default else "-")
            t.add_row(esc(p.name), p.type, "yes" if p.required else "no", esc(default), esc(constraint or "-"), esc(p.description or ""))
        c.print(t)
    else:
        c.print("  (none)")
    for stage in spec.STAGES:
        steps = rb.stage(stage)
        if not steps:
            continue
        c.print(f"\n[bold]{stage.capitalize()}[/]")
        t = Table(box=None, header_style="bold", pad_edge=False)
        for col in ("ID", "KIND", "EFFECT"):
            t.add_column(col, no_wrap=True)
        t.add_column("WHAT", ratio=1)
        t.add_column("THEN", ratio=1, overflow="fold")
        from runbook.graph import successors

        for s in steps:
            what = s.title or s.module.outline(s.body)
            then = "; ".join(f"{label} → {target}" for label, target in successors(rb, s)) or "end"
            t.add_row(esc(s.id), s.kind, s.effect, esc(what), esc(then))
        c.print(t)
    return 0
