"""runbook graph NAME — the step graph as Mermaid (default) or Graphviz DOT."""

from __future__ import annotations

from runbook.commands.common import add_path


def register(sub) -> None:
    p = sub.add_parser("graph", help="print the step graph (Mermaid or DOT)", description=__doc__)
    p.add_argument("name", help="runbook name or file")
    p.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    add_path(p)
    p.set_defaults(func=run)


def _q(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _shape(step) -> str:
    """A step that picks its successor is a decision; one that ends the run, a terminal."""
    mod = step.module
    return "decision" if mod.BRANCHING else ("terminal" if mod.ENDS_RUN else "box")


MERMAID_SHAPES = {"decision": ('{"', '"}'), "terminal": ('(["', '"])'), "box": ('["', '"]')}
DOT_SHAPES = {"decision": "diamond", "terminal": "oval", "box": "box"}


def mermaid(rb) -> str:
    from runbook.graph import successors
    from runbook.spec import STAGES

    node = {s.id: f"s{i}" for i, s in enumerate(rb.steps)}
    lines = ["flowchart TD"]
    for stage in STAGES:
        steps = rb.stage(stage)
        if not steps:
            continue
        lines.append(f"  subgraph {stage}")
        for s in steps:
            label = _q(f"{s.id}<br/>{s.kind} · {s.effect}").replace('\\"', "#quot;")
            shape = MERMAID_SHAPES[_shape(s)]
            lines.append(f"    {node[s.id]}{shape[0]}{label}{shape[1]}")
        lines.append("  end")
    for s in rb.steps:
        for label, target in successors(rb, s):
            if target not in node:
                continue
            text = label.replace('"', "#quot;").replace("|", "#124;")
            arrow = "-.->" if label == "on failure" else "-->"
            lines.append(f"  {node[s.id]} {arrow}|\"{text}\"| {node[target]}" if label != "next" else f"  {node[s.id]} --> {node[target]}")
    return "\n".join(lines) + "\n"


def dot(rb) -> str:
    from runbook.graph import successors
    from runbook.spec import STAGES

    lines = [f'digraph "{_q(rb.name)}" {{', "  rankdir=TB;", '  node [shape=box, fontname="Helvetica"];']
    for stage in STAGES:
        steps = rb.stage(stage)
        if not steps:
            continue
        lines.append(f'  subgraph "cluster_{stage}" {{')
        lines.append(f'    label="{stage}";')
        for s in steps:
            shape = DOT_SHAPES[_shape(s)]
            color = ', color="magenta"' if s.effect == "write" else ""
            lines.append(f'    "{_q(s.id)}" [label="{_q(s.id)}\\n{s.kind} · {s.effect}", shape={shape}{color}];')
        lines.append("  }")
    for s in rb.steps:
        for label, target in successors(rb, s):
            if target not in rb.by_id:
                continue
            style = ', style="dashed"' if label == "on failure" else ""
            attr = f' [label="{_q(label)}"{style}]' if label != "next" else ""
            lines.append(f'  "{_q(s.id)}" -> "{_q(target)}"{attr};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    import sys

    from runbook import spec

    rb = spec.find(args.name, spec.search_path(args.path))
    sys.stdout.write(mermaid(rb) if args.format == "mermaid" else dot(rb))
    return 0
