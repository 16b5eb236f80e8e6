"""Everything that talks to the terminal: rich rendering and prompts.

The engine never prints; it calls the methods of a UI object.  Commands get
their consoles from here so that colour, width and "is this a terminal"
are decided in one place.
"""

from __future__ import annotations

import sys
from functools import lru_cache


def _width() -> int | None:
    """Rich wraps piped output at 80 columns; logs and pipes read better wider."""
    import os

    if os.environ.get("COLUMNS") or sys.stdout.isatty():
        return None
    return 160


@lru_cache(maxsize=None)
def out():
    """The rich Console for standard output."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False, width=_width())


@lru_cache(maxsize=None)
def err():
    """The rich Console for standard error."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def is_interactive() -> bool:
    """True when a human can answer prompts (stdin and stdout are terminals)."""
    try:
        return sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def esc(text: str) -> str:
    from rich.markup import escape

    return escape(str(text))


STATUS_STYLE = {"ok": "green", "failed": "red", "timeout": "red", "refused": "yellow", "skipped": "dim"}
EFFECT_STYLE = {"read": "cyan", "write": "bold magenta"}


def _excerpt(text: str, lines: int = 12, head: bool = False) -> str:
    """The last lines of a command's output, or the first ones of a table."""
    rows = text.rstrip("\n").splitlines()
    if len(rows) <= lines:
        return "\n".join(rows)
    if head:
        return "\n".join(rows[:lines]) + f"\n… {len(rows) - lines} more lines not shown"
    return f"… {len(rows) - lines} earlier lines not shown\n" + "\n".join(rows[-lines:])


def print_plan(rb, entries, params_shown: dict, redactor, inventory=None) -> None:
    """The dry-run plan: every reachable step in order, rendered exactly."""
    c = out()
    c.print(f"[bold]Plan[/] for [bold]{esc(rb.name)}[/] — {esc(rb.title)}  [dim](dry-run: no target is contacted)[/]")
    if params_shown:
        c.print("params: " + ", ".join(f"{esc(k)}={esc(redactor.text(repr(v) if not isinstance(v, str) else v))}" for k, v in params_shown.items()))
    if inventory is not None:
        c.print(f"inventory: {esc(inventory.path)}")
    stage = None
    for n, e in enumerate(entries, 1):
        s = e.step
        if s.stage != stage:
            stage = s.stage
            c.print(f"\n[bold underline]{stage.upper()}[/]")
        eff = f"[{EFFECT_STYLE[s.effect]}]{s.effect}[/]"
        targets = f" → {esc(', '.join(e.action.targets))}" if e.action and e.action.targets else ""
        title = f"  [dim]{esc(s.title)}[/]" if s.title else ""
        c.print(f"{n:>3}. [bold]{esc(s.id)}[/]  {s.kind}  {eff}{targets}{title}")
        if e.action:
            text = redactor.text(e.action.summary)
            if s.kind in ("shell", "ssh"):
                c.print(f"     $ {esc(text)}", soft_wrap=True)
                where = e.action.detail.get("where") if s.kind == "ssh" else None
                if where:
                    more = f" and {len(where) - 10} more" if len(where) > 10 else ""
                    c.print(f"     [dim]on {esc(', '.join(where[:10]))}{more}[/]", soft_wrap=True)
            elif s.kind != "choose":
                c.print("     " + esc(text.strip()).replace("\n", "\n     "), soft_wrap=True)
        extras = []
        if s.timeout:
            extras.append(f"timeout {s.timeout:g}s")
        if s.retries:
            extras.append(f"retries {s.retries} (every {s.retry_delay:g}s)")
        if s.until:
            extras.append(f"until {s.until} (every {s.every:g}s)")
        if s.max_visits:
            extras.append(f"max_visits {s.max_visits}")
        if extras:
            c.print(f"     [dim]{esc('; '.join(extras))}[/]")
        for label, target in e.successors:
            if label == "next" and len(e.successors) == 1 and entries[n:] and entries[n].step.id == target:
                continue
            c.print(f"     [yellow]{esc(label)}[/] → {esc(target)}")
        if s.kind == "end" or (not e.successors):
            c.print("     [dim](the run ends here)[/]")
    c.print(f"\n{len(entries)} steps, {sum(1 for e in entries if e.step.effect == 'write')} write steps. Nothing was run.")


class ConsoleUI:
    """The live run's view: progress, confirmations, prompts."""

    def __init__(self, redactor, verbose: bool = False):
        self.redactor = redactor
        self.c = out()
        self.verbose = verbose
        self.n = 0
        self.stage = None

    def _r(self, text) -> str:
        return esc(self.redactor.text(str(text)))

    def run_started(self, rb, run_id: str, params_shown: dict) -> None:
        self.c.print(f"[bold]▶ {esc(rb.name)}[/] — {esc(rb.title)}  [dim]run {run_id}[/]")
        if params_shown:
            self.c.print("params: " + ", ".join(f"{esc(k)}={self._r(v)}" for k, v in params_shown.items()))

    def step_started(self, step, action) -> None:
        self.n += 1
        if step.stage != self.stage:
            self.stage = step.stage
            self.c.print(f"\n[bold underline]{step.stage.upper()}[/]")
        eff = f"[{EFFECT_STYLE[step.effect]}]{step.effect}[/]"
        title = f"  [dim]{esc(step.title)}[/]" if step.title else ""
        self.c.print(f"[bold]{esc(step.id)}[/]  {step.kind}  {eff}{title}")
        if step.kind in ("shell", "ssh"):
            self.c.print(f"  $ {self._r(action.summary)}", soft_wrap=True)
        elif step.kind == "sql":
            self.c.print("[dim]  " + self._r(action.summary).replace("\n", "\n  ") + "[/]", soft_wrap=True)

    def confirm(self, step, action) -> bool:
        from rich.panel import Panel
        from rich.prompt import Confirm

        body = f"{self._r(action.summary)}\n\n[dim]targets:[/] {self._r(', '.join(action.targets) or '-')}"
        self.c.print(Panel(body, title=f"write step [bold]{esc(step.id)}[/] ({step.kind})", border_style="magenta"))
        try:
            return Confirm.ask("Run it?", default=False, console=self.c)
        except EOFError:  # Ctrl-D: no is the safe answer
            return False

    def manual(self, step, action) -> bool:
        from rich.panel import Panel
        from rich.prompt import Confirm

        self.c.print(Panel(self._r(action.summary), title=f"manual step [bold]{esc(step.id)}[/]", border_style="cyan"))
        try:
            return Confirm.ask(self._r(action.detail.get("confirm", "Done?")), default=False, console=self.c)
        except EOFError:
            return False

    def ask(self, step, prompt: str, choices, default) -> str | None:
        """The answer, or None when the operator closed the input (Ctrl-D)."""
        from rich.prompt import Prompt

        try:
            return Prompt.ask(self._r(prompt), choices=list(choices) if choices else None, default=default, console=self.c)
        except EOFError:
            return None

    def polling(self, step, result, attempt: int) -> None:
        self.c.print(f"  [dim]… not yet ({attempt} checks); next check in {step.every:g}s[/]")

    def retrying(self, step, result, attempt: int, delay: float) -> None:
        self.c.print(f"  [yellow]attempt {attempt} {result.status}[/]: {self._r(result.error or '')}; retrying in {delay:g}s")

    def step_finished(self, step, result) -> None:
        style = STATUS_STYLE.get(result.status, "white")
        mark = "✓" if result.ok else "✗"
        extra = f"  {self._r(result.error)}" if result.error and result.status not in ("ok", "refused") else ""
        if result.goto:
            extra += f"  → {esc(result.goto)}"
        self.c.print(f"  [{style}]{mark} {result.status}[/] [dim]{result.duration:.2f}s[/]{extra}")
        text = result.stdout if result.ok else (result.stdout + result.stderr)
        show = getattr(step.module, "SHOW_OUTPUT", False)
        if text.strip() and show:
            lines = getattr(step.module, "SHOW_LINES", 25)
            excerpt = _excerpt(text, lines, head=True) if show == "head" else _excerpt(text)
            self.c.print("[dim]" + self._r(excerpt) + "[/]", soft_wrap=True)
        if result.outputs:
            self.c.print("  outputs: " + ", ".join(f"{esc(k)}={self._r(v)}" for k, v in result.outputs.items()))

    def run_finished(self, status: str, code: int, message: str) -> None:
        style = "green" if code == 0 else ("yellow" if code == 3 else "red")
        tail = f": {self._r(message)}" if message else ""
        self.c.print(f"\n[{style}]■ run {status}[/] (exit {code}){tail}")
