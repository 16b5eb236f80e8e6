"""The step graph: successors, reachability and loops.

Shared by the validator (unreachable steps, unbounded loops, "can this step
have run before that one?"), the engine (which steps a plan shows) and the
``graph``/``show`` commands.  What a step leads to comes from its kind's
hooks (:mod:`runbook.steps.base`), never from the kind's name:

* ``ENDS_RUN`` kinds lead nowhere;
* ``BRANCHING`` kinds lead to their ``edges`` and, when they may take none
  (``falls_through``), to the following step; ``next:`` does not apply;
* every other step leads to its ``edges``, then ``next:`` or the following
  step;
* ``on_failure: STEP`` adds an edge to that step (``continue`` goes where
  success goes; ``abort`` ends the run).
"""

from __future__ import annotations

from runbook.spec import SPECIAL_TARGETS, Runbook, Step


def successors(rb: Runbook, step: Step) -> list[tuple[str, str]]:
    """(label, step id) of every step that may run after ``step``."""
    mod = step.module
    out: list[tuple[str, str]] = []
    if mod.ENDS_RUN:
        return out
    out.extend(mod.edges(step.body))
    following = rb.following(step)
    if mod.BRANCHING:
        if following and mod.falls_through(step.body):
            out.append(("otherwise", following.id))
    elif step.next:
        out.append(("next", step.next))
    elif following:
        out.append(("next", following.id))
    if step.on_failure and step.on_failure not in SPECIAL_TARGETS:
        out.append(("on failure", step.on_failure))
    return out


def graph(rb: Runbook) -> dict[str, list[str]]:
    """Step id → the ids of the steps that may follow it (existing steps only)."""
    return {s.id: [t for _, t in successors(rb, s) if t in rb.by_id] for s in rb.steps}


def reach(graph: dict[str, list[str]], start: str) -> set[str]:
    """The ids reachable from ``start`` (``start`` included)."""
    seen = {start}
    todo = [start]
    while todo:
        for n in graph.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def sccs(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    out.append(comp)
    return out
