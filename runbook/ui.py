"""Everything that talks to the terminal: rich rendering and prompts.

The engine never prints; it calls the methods of a UI object.  Commands get
their consoles from here so that colour, width and "is this a terminal"
are decided in one place.
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from typing import Protocol

from runbook import outputs
from runbook.text import plural, visible  # noqa: F401 - the shared text rules, importable from here too


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


def esc(text, *, one_line: bool = False) -> str:
    """``text`` for rich markup: control characters made visible (:func:`visible`), then
    rich's markup escaped.  Everything interpolated into markup here goes through it."""
    from rich.markup import escape

    return escape(visible(text, one_line=one_line))


_HOST_LINES_EVERY = 0.1  # seconds: a fan-out's host lines (plain output) are printed together at most this often

STATUS_STYLE = {"ok": "green", "failed": "red", "timeout": "red", "refused": "yellow", "skipped": "dim",
                "interrupted": "red"}
EFFECT_STYLE = {"read": "cyan", "write": "bold magenta"}


def _excerpt(text: str, lines: int = 12, head: bool = False) -> str:
    """The last lines of a command's output, or the first ones of a table."""
    rows = text.rstrip("\n").splitlines()
    if len(rows) <= lines:
        return "\n".join(rows)
    if head:
        return "\n".join(rows[:lines]) + f"\n… {plural(len(rows) - lines, 'more line')} not shown"
    return f"… {plural(len(rows) - lines, 'earlier line')} not shown\n" + "\n".join(rows[-lines:])


def print_plan(rb, entries, params_shown: dict, redactor, inventory=None, examples=()) -> None:
    """The dry-run plan: every reachable step in order, rendered exactly; ``examples``:
    parameters that took the runbook's example_params (marked)."""
    c = out()
    c.print(f"[bold]Plan[/] for [bold]{esc(rb.name)}[/] — {esc(rb.title)}  [dim](dry-run: no target is contacted)[/]")
    if params_shown:
        c.print("params: " + ", ".join(f"{esc(k)}={esc(redactor.text(repr(v) if not isinstance(v, str) else v), one_line=True)}"
                                       + (" [yellow](example)[/]" if k in examples else "")
                                       for k, v in params_shown.items()))
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
        mod = s.module
        if e.action and mod.PLAN_SUMMARY:
            text = redactor.text(e.action.summary)
            if mod.COMMAND_SUMMARY:
                c.print(f"     $ {esc(text)}", soft_wrap=True)
                where = e.action.detail.get("where")
                if where:
                    more = f" and {len(where) - 10} more" if len(where) > 10 else ""
                    c.print(f"     [dim]on {esc(', '.join(where[:10]))}{more}[/]", soft_wrap=True)
            else:
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
        combined = [f"{k} = {o['aggregate']} over the hosts" for k, o in s.outputs.items() if o.get("aggregate")]
        if combined and e.action and e.action.fan_out:
            c.print(f"     [dim]outputs: {esc('; '.join(combined))} (each host's own: steps.{esc(s.id)}.hosts[HOST].outputs)[/]")
        for label, target in e.successors:
            if label == "next" and len(e.successors) == 1 and entries[n:] and entries[n].step.id == target:
                continue
            c.print(f"     [yellow]{esc(label)}[/] → {esc(target)}")
        if mod.ENDS_RUN or not e.successors:
            c.print("     [dim](the run ends here)[/]")
    writes = sum(1 for e in entries if e.step.effect == "write")
    c.print(f"\n{plural(len(entries), 'step')}, {plural(writes, 'write step')}. Nothing was run.")


def _describe_step(step) -> str:
    """A step as the details of another name it: id, kind, stage and title, then what it
    checks (its ``checks``, else the first line of its body when it has no title), what is
    ``normal`` and its ``until``."""
    lines = [f"{step.id} ({step.kind}, {step.stage})" + (f": {step.title}" if step.title else "")]
    if step.raw.get("checks"):
        lines.append(f"checks: {str(step.raw['checks']).strip()}")
    elif not step.title and step.module.outline(step.body):
        lines.append(f"{'checks' if step.stage == 'verify' else 'does'}: {step.module.outline(step.body)}")
    if step.raw.get("normal"):
        lines.append(f"normal: {str(step.raw['normal']).strip()}")
    if step.until:
        limit = f", up to {step.timeout:g}s" if step.timeout else ""
        lines.append(f"until {step.until} (every {step.every:g}s{limit})")
    return "\n".join(lines)


def clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _choice(c, question: str, options: dict[str, str], aliases: dict[str, str] | None = None) -> str:
    """Ask until one of ``options`` (first letters work) is given; Ctrl-D
    gives the last option, which must be the safe one."""
    keys = list(options)
    menu = " / ".join(f"[bold]\\[{k[0]}][/]{esc(k[1:])}" for k in keys)
    while True:
        try:
            answer = c.input(f"{question} {menu}: ").strip().lower()
        except EOFError:
            c.print()
            return options[keys[-1]]
        if aliases and answer in aliases:
            return aliases[answer]
        for k in keys:
            if answer and (answer == k or answer == k[0]):
                return options[k]
        c.print(f"  [dim]please answer {esc(', '.join(keys))}[/]")


def _fold(parts: list[tuple[str | None, str]]) -> list[tuple[str | None, str, list]]:
    """Labelled parts (``"web-1 · ok · exit 0"``) with the same ending and the same text
    folded into one (``"web-1, web-2 and 48 more · ok · exit 0"``), failures first:
    (label, text, the names folded)."""
    if len(parts) < 2 or any(label is None for label, _ in parts):
        return [(label, text, [label]) for label, text in parts]
    groups: dict[tuple[str, str], list[str]] = {}
    for label, text in parts:
        name, _, rest = label.partition(" · ")
        groups.setdefault((rest, text), []).append(name)
    out = []
    for (rest, text), names in sorted(groups.items(), key=lambda g: g[0][0].startswith("ok")):  # stable: failures first
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        out.append((f"{shown} · {rest}" if rest else shown, text, names))
    return out


class ConsoleUI:
    """The live run's view.  On a terminal (guided mode): a header, a card per
    step with its output streamed as it comes, and choices before write steps
    and after failures.  Elsewhere: plain lines, no colour, no boxes."""

    def __init__(self, redactor=None, verbose: bool = False):
        if redactor is None:
            from runbook.secrets import Redactor

            redactor = Redactor()
        self.redactor = redactor
        self.c = out()
        self.verbose = verbose
        self.n = 0
        self.stage = None
        self.fancy = self.c.is_terminal
        self.started = None
        self.clock_from = None
        self.clock_label = "since the start"
        self._streamed = False
        self._sink = None
        self._hosts = None  # a fan-out's live progress bar (guided mode), while its step runs
        self._host_lines: list = []  # a fan-out's host lines waiting to be printed (plain output)
        self._host_lines_at = 0.0  # when they were last printed
        self._host_lines_timer = None  # prints them if no other host ends soon
        self.rb = None  # the runbook, known from run_started: details say which step verifies a write

    def _r(self, text, one_line: bool = False) -> str:
        """Text from outside, masked and made visible (:func:`esc`)."""
        return esc(self.redactor.text(str(text)), one_line=one_line)

    def _elapsed(self) -> str:
        import time

        if self.clock_from is None:
            return ""
        return f"T+{clock(time.time() - self.clock_from)}"

    def run_started(self, rb, run_id: str, params_shown: dict, *, environment: str | None = None,
                    clock_from: float | None = None, clock_label: str | None = None, resumed: bool = False) -> None:
        import time

        self.rb = rb
        self.started = time.time()
        self.clock_from = clock_from if clock_from is not None else self.started
        if clock_label:
            self.clock_label = clock_label
        sev = f" [bold red]{esc(rb.severity)}[/]" if rb.severity else ""
        lines = [f"[bold]{'↻' if resumed else '▶'} {esc(rb.name)}[/] — {esc(rb.title)}{sev}"]
        meta = [f"run {run_id}"]
        if environment:
            meta.append(f"environment {esc(environment)}")
        meta.append(f"incident clock {clock(self.started - self.clock_from)} ({esc(self.clock_label)})")
        lines.append("[dim]" + " · ".join(meta) + "[/]")
        if params_shown:
            lines.append("params: " + ", ".join(f"{esc(k)}={self._r(v, one_line=True)}" for k, v in params_shown.items()))
        if rb.escalation:
            lines.append("escalation: " + ", ".join(f"{esc(to)} after {clock(after)}" for after, to, _ in rb.escalation))
        if self.fancy:
            from rich.panel import Panel

            self.c.print(Panel("\n".join(lines), border_style="blue", expand=False))
        else:
            for line in lines:
                self.c.print(line)

    def step_started(self, step, action) -> None:
        self.n += 1
        self._streamed = False
        if step.stage != self.stage:
            self.stage = step.stage
            self.c.print(f"\n[bold underline]{step.stage.upper()}[/]")
        eff = f"[{EFFECT_STYLE[step.effect]}]{step.effect}[/]"
        title = f"  {esc(step.title)}" if step.title else ""
        self.c.print(f"[bold]{esc(step.id)}[/]  {step.kind}  {eff}{title}  [dim]{self._elapsed()}[/]")
        for label, key in (("why", "description"), ("checks", "checks"), ("normal", "normal"), ("if it fails", "if_failed")):
            text = step.description if key == "description" else step.raw.get(key)
            if text:
                self.c.print(f"  [dim]{label}:[/] {esc(str(text).strip())}", soft_wrap=True)
        mod = step.module
        if action.targets and mod.CARD_TARGETS:
            self.c.print(f"  [dim]on:[/] {self._r(', '.join(action.targets))}", soft_wrap=True)
        if not mod.CARD_SUMMARY:
            return  # the kind shows itself when it runs (a prompt, a panel, the branch taken)
        if mod.COMMAND_SUMMARY:
            self.c.print(f"  $ {self._r(action.summary)}", soft_wrap=True)
        else:
            self.c.print("[dim]  " + self._r(action.summary).replace("\n", "\n  ") + "[/]", soft_wrap=True)

    def output_sink(self, step):
        """A callable(stream, bytes) printing a step's output line by line as it
        comes (redacted per whole line), or None when the kind shows no output."""
        if not step.module.SHOW_OUTPUT or step.module.SHOW_OUTPUT == "head":
            return None
        pending = {"stdout": b"", "stderr": b""}
        limit = 200  # lines; the rest is in the step's result

        def sink(stream: str, data: bytes | None) -> None:
            """``data`` None: the step is over; show what is left without a newline."""
            nonlocal limit
            if data is None:
                lines = [pending[s] for s in ("stdout", "stderr") if pending[s]]
                pending.update(stdout=b"", stderr=b"")
                if lines:
                    self._print_stream(stream, lines, limit)
                return
            buf = pending[stream] + data
            *lines, pending[stream] = buf.split(b"\n")
            limit = self._print_stream(stream, lines, limit)

        self._sink = sink
        return sink

    def _print_stream(self, stream: str, lines: list[bytes], limit: int) -> int:
        for line in lines:
            if limit <= 0:
                return 0
            limit -= 1
            self._streamed = True
            self._framed(esc(self.redactor.text(line.decode("utf-8", "replace"))), stream)
            if limit == 0:
                self.c.print("  [dim]… more output not shown (it is in the result and the audit log)[/]")
        return limit

    # One layout for every kind's output, streamed or shown when the step ends: each line
    # behind a bar (red for standard error), a labelled part (a host) under its label.

    def _framed(self, markup: str, stream: str = "stdout") -> None:
        """One line of output (already masked and escaped) behind the bar."""
        style = "red" if stream == "stderr" else "dim"
        bar = "│" if self.fancy else "|"
        self.c.print(f"  [{style}]{bar}[/] {markup}", soft_wrap=True, highlight=False)

    def _output_label(self, label: str) -> None:
        """The label of a part of the output (a host's name and how it ended)."""
        mark = "├─" if self.fancy else "+-"
        self.c.print(f"  [dim]{mark}[/] [bold]{self._r(label, one_line=True)}[/]", soft_wrap=True)

    def _show_output(self, step, result) -> None:
        """A finished step's output that was not streamed: each part under its label, the
        head (tables, bodies) or the tail (commands) of each as the kind says."""
        mod = step.module
        parts = mod.output_sections(result)
        if not any(text.strip() for _, text in parts):
            return
        parts = _fold(parts)
        lines = mod.SHOW_LINES if len(parts) == 1 else max(5, mod.SHOW_LINES // len(parts))
        budget = max(mod.SHOW_LINES, 40)  # lines for the whole step: 200 hosts must not flood the screen
        for n, (label, text, _names) in enumerate(parts):
            if budget <= 0:
                rest = sum(len(p[2]) for p in parts[n:])
                self._framed(f"… {plural(rest, 'more host')} not shown here (steps.{esc(step.id)}.hosts; all of it is in the audit log)")
                break
            if label is not None:
                self._output_label(label)
                budget -= 1
            if text.strip():
                excerpt = _excerpt(text, min(lines, max(1, budget)), head=mod.SHOW_OUTPUT == "head")
                shown = self._r(excerpt).split("\n")
                budget -= len(shown)
                for line in shown:
                    self._framed(line)

    def _details(self, step, action) -> None:
        """Everything about a step before it runs, as text: the whole command or request as
        it will be sent (the kind's ``details``, masked), its targets, its timeout, and the
        steps that follow it, the one that verifies it first."""
        self.c.print(f"[bold]{esc(step.id)}[/]  {step.kind}  [{EFFECT_STYLE[step.effect]}]{step.effect}[/]  "
                     f"[dim]stage {esc(step.stage)}[/]")
        for label, text in step.module.details(action):
            self._row(label, text)
        self._row("targets", ", ".join(action.targets) or "-")
        self._row("timeout", f"{step.timeout:g}s" if step.timeout else "none: it runs until it ends")
        if step.retries:
            self._row("retries", f"{step.retries} (every {step.retry_delay:g}s)")
        if step.until:
            self._row("until", f"{step.until} (every {step.every:g}s)")
        for label, text in self._follows(step):
            self._row(label, text)

    def _row(self, label: str, text: str) -> None:
        """``label: text`` (masked, made visible), or the label over an indented block when
        the text has several lines."""
        body = self._r(text)
        if "\n" in body.strip("\n"):
            self.c.print(f"  [dim]{esc(label)}:[/]")
            for line in body.strip("\n").split("\n"):
                self.c.print(f"    {line}", soft_wrap=True, highlight=False)
        else:
            self.c.print(f"  [dim]{esc(label)}:[/] {body}", soft_wrap=True, highlight=False)

    def _follows(self, step) -> list[tuple[str, str]]:
        """(label, text): the step that runs after this one succeeds, the first verify step
        on that path (when it is not the same), and where a failure goes."""
        rb = self.rb
        if rb is None or step.module.ENDS_RUN:
            return []

        def branches(s) -> str:
            return ", ".join(target for _, target in s.module.edges(s.body))

        def after(s):
            return None if s.module.ENDS_RUN else (rb.by_id.get(s.next) if s.next else rb.following(s))

        if step.module.BRANCHING:
            return [("then", f"the branch it takes: {branches(step)}")]
        rows = []
        nxt = after(step)
        rows.append(("then", _describe_step(nxt) if nxt is not None else "nothing: the run ends after it"))
        check, seen = nxt, set()  # the first verify step on the way success goes
        while check is not None and check.stage != "verify" and check.id not in seen and not check.module.BRANCHING:
            seen.add(check.id)
            check = after(check)
        if check is not None and check.module.BRANCHING and check.stage != "verify":
            rows.append(("verified by", f"the branch {check.id} takes: {branches(check)}"))
        elif check is not None and check.stage == "verify":
            if check is not nxt:
                rows.append(("verified by", _describe_step(check)))
        elif step.stage != "verify":
            rows.append(("verified by", "no verify step follows it on the way it goes when it succeeds"))
        if step.on_failure:
            target = rb.by_id.get(step.on_failure)
            rows.append(("if it fails", _describe_step(target) if target is not None else step.on_failure))
        return rows

    def confirm(self, step, action) -> str:
        """Before a write step: run, skip or abort (details shows everything first)."""
        body = (f"{self._r(action.summary)}\n\n[dim]targets:[/] {self._r(', '.join(action.targets) or '-')}"
                "\n[dim]details: the whole request, the timeout and the step that verifies it[/]")
        if self.fancy:
            from rich.panel import Panel

            self.c.print(Panel(body, title=f"write step [bold]{esc(step.id)}[/] ({step.kind})", border_style="magenta"))
        else:
            self.c.print(f"write step {esc(step.id)} ({step.kind}):\n{body}")
        while True:
            choice = _choice(self.c, "Run it?", {"run": "run", "skip": "skip", "details": "details", "abort": "abort"},
                             {"y": "run", "yes": "run", "n": "abort", "no": "abort"})
            if choice != "details":
                return choice
            self._details(step, action)

    def step_prompt(self, step, action) -> str:
        """--step: before every step: run, skip, continue (stop asking) or abort."""
        while True:
            choice = _choice(self.c, f"Step {step.id}?", {"run": "run", "skip": "skip", "continue": "continue",
                                                           "details": "details", "abort": "abort"},
                             {"y": "run", "yes": "run", "n": "skip", "no": "skip"})
            if choice != "details":
                return choice
            self._details(step, action)

    def after_failure(self, step, result, on_failure: str | None) -> str:
        """After a failed, timed-out or interrupted step: retry, skip, follow on_failure, or abort."""
        what = "was interrupted" if result.status == "interrupted" else result.status
        self.c.print(f"[red]step {esc(step.id)} {what}[/]" + (f": {self._r(result.error)}" if result.error else ""))
        options = {"retry": "retry", "skip": "skip"}
        if on_failure:
            options[f"follow on_failure ({on_failure})"] = "on_failure"
        question = "Stop the whole run, or go on?" if result.status == "interrupted" else "What now?"
        options["abort" if result.status != "interrupted" else "abort (stop the run)"] = "abort"
        return _choice(self.c, question, options)  # first letters: r, s, f, a

    def manual(self, step, action) -> bool:
        from rich.prompt import Confirm

        if self.fancy:
            from rich.panel import Panel

            self.c.print(Panel(self._r(action.summary), title=f"manual step [bold]{esc(step.id)}[/]", border_style="cyan"))
        else:
            self.c.print(f"manual step {esc(step.id)}:\n{self._r(action.summary)}")
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

    def branch(self, step, why: str, goto: str) -> None:
        self.c.print(f"  [yellow]→ {esc(goto)}[/] because {self._r(why)}", soft_wrap=True)

    def escalation_due(self, to: str, after: float, elapsed: float) -> None:
        self.c.print(f"[bold yellow]⚠ {clock(elapsed)} {esc(self.clock_label)} (policy: after {clock(after)}): "
                     f"escalate to {esc(to)}[/]")

    def polling(self, step, result, attempt: int, observed: str | None = None) -> None:
        """An ``until`` check that does not hold yet: what it read, which check, when the next."""
        if attempt == 1:
            limit = f", for up to {step.timeout:g}s" if step.timeout else ""
            self.c.print(f"  [dim]waiting until {esc(step.until)} (a check every {step.every:g}s{limit})[/]", soft_wrap=True)
        seen = f"{self._r(observed, one_line=True)} — " if observed else ""
        why = f"; {self._r(result.error, one_line=True)}" if result.error else ""
        self.c.print(f"  [dim]… {seen}not yet (check {attempt}, next in {step.every:g}s){why}[/]", soft_wrap=True)

    def retrying(self, step, result, attempt: int, delay: float) -> None:
        self.c.print(f"  [yellow]attempt {attempt} {result.status}[/]: {self._r(result.error or '')}; retrying in {delay:g}s")

    def host_finished(self, step, host: str, result: dict, done: int, total: int) -> None:
        """One host of a step on several hosts has answered (called from the step's worker
        threads): plain output prints a line for it; guided mode moves a progress bar of the
        hosts done and failed, gone when the step's summary is shown."""
        import threading
        import time

        from rich.text import Text

        status = str(result.get("status"))
        lock = self.__dict__.setdefault("_hosts_lock", threading.Lock())
        with lock:
            if self.fancy:
                self._host_bar(host, status, done, total)
                return
            code = result.get("exit_code")
            extra = f" · exit {code}" if code is not None else ""
            err = result.get("error") if status != "ok" else None
            extra += f" · {visible(self.redactor.text(str(err)), one_line=True)}" if err else ""
            line = Text.assemble(("  host ", "dim"), (f"{done}/{total}", "dim"), " ",
                                 (visible(self.redactor.text(host), one_line=True), "bold"), " ",
                                 (status, STATUS_STYLE.get(status, "white")), extra, " ",
                                 (f"{float(result.get('duration') or 0):.2f}s", "dim"))
            # Lines are printed together at most every _HOST_LINES_EVERY s: 50 hosts each printing its
            # own line was ~60-80 ms of CPU per step, on the cores the hosts' commands share
            # (bench/ssh_fanout.py).  A host that ends alone is shown at once.
            self._host_lines.append((done, line))
            if time.monotonic() - self._host_lines_at >= _HOST_LINES_EVERY:
                self._flush_host_lines()
            elif self._host_lines_timer is None:
                self._host_lines_timer = threading.Timer(_HOST_LINES_EVERY, self._flush_host_lines_later)
                self._host_lines_timer.daemon = True
                self._host_lines_timer.start()

    def _flush_host_lines_later(self) -> None:
        with self.__dict__["_hosts_lock"]:
            self._host_lines_timer = None
            self._flush_host_lines()

    def _flush_host_lines(self) -> None:
        """Print the hosts' lines waiting (under the hosts' lock, or after the step's threads)."""
        import time

        from rich.text import Text

        if self._host_lines_timer is not None:
            self._host_lines_timer.cancel()
            self._host_lines_timer = None
        if self._host_lines:
            lines, self._host_lines = sorted(self._host_lines, key=lambda x: x[0]), []  # made out of order
            self.c.print(Text("\n").join(line for _, line in lines), soft_wrap=True, highlight=False)
        self._host_lines_at = time.monotonic()

    def _host_bar(self, host: str, status: str, done: int, total: int) -> None:
        if self._hosts is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            bar = Progress(TextColumn("  hosts"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           TextColumn("{task.description}"), console=self.c, transient=True)
            self._hosts = {"bar": bar, "task": bar.add_task("", total=total), "failed": 0}
            bar.start()
        h = self._hosts
        h["failed"] += status != "ok"
        failed = f"[red]{h['failed']} failed[/] · " if h["failed"] else ""
        h["bar"].update(h["task"], completed=done,
                        description=f"{failed}{total - done} running · last {self._r(host, one_line=True)} {status}")

    def _end_host_bar(self) -> None:
        if self._hosts is not None:
            self._hosts["bar"].stop()
            self._hosts = None

    def step_finished(self, step, result) -> None:
        self._end_host_bar()
        lock = self.__dict__.get("_hosts_lock")
        if lock is not None:
            with lock:
                self._flush_host_lines()
        if self._sink is not None:
            self._sink("stdout", None)  # a last line without a newline
            self._sink = None
        style = STATUS_STYLE.get(result.status, "white")
        mark = "✓" if result.ok else ("↷" if result.status == "skipped" else "✗")
        extra = f"  {self._r(result.error)}" if result.error and result.status not in ("ok", "refused") else ""
        self.c.print(f"  [{style}]{mark} {result.status}[/] [dim]{result.duration:.2f}s[/]{extra}")
        if step.module.SHOW_OUTPUT and not self._streamed:
            self._show_output(step, result)
        self._streamed = False
        if result.outputs:
            how = result.data.get("aggregates") or {}  # a fan-out's: how the hosts' values combined
            self.c.print("  outputs: " + ", ".join(f"{esc(k)}={self._r(v)}{esc(outputs.note(k, how.get(k)))}"
                                                  for k, v in result.outputs.items()))

    def run_finished(self, status: str, code: int, message: str) -> None:
        self._end_host_bar()  # a step cut short (Ctrl-C) has no summary
        style = "green" if code == 0 else ("yellow" if code == 3 else "red")
        tail = f": {self._r(message)}" if message else ""
        self.c.print(f"\n[{style}]■ run {status}[/] (exit {code}){tail}  [dim]{self._elapsed()}[/]")

    # --- the run's life (runbook.session): before and around the engine ---

    def attach(self, redactor) -> None:
        """The run's redactor, known once its parameters are: every later line is masked with it."""
        self.redactor = redactor

    def notice(self, text: str) -> None:
        """A warning or a note about the run (standard error, one message)."""
        print(f"runbook: {visible(self.redactor.text(text))}", file=sys.stderr)

    def secret(self, prompt: str) -> str | None:
        """A secret parameter, not echoed; None when the input is closed."""
        import getpass

        try:
            return getpass.getpass(prompt)
        except EOFError:
            return None

    def in_doubt(self, step, step_id: str, run_id: str) -> str:
        """mark-done, rerun or abort for a write step that may or may not have run."""
        self.c.print(f"[yellow]step {esc(step_id)} is in doubt[/]: it was running when run {run_id} stopped, and no "
                     "result says it finished; it may or may not have done its work. Check its targets before you decide.")
        return _choice(self.c, "Is it done?", {"mark done": "mark-done", "run again": "rerun", "abort": "abort"})

    def output_value(self, step, name: str) -> str | None:
        """The value of an output of a step marked done (later steps read it); None: not given."""
        self.c.print(f"Later steps read [bold]steps.{esc(step.id)}.outputs.{esc(name)}[/]: give the value the step "
                     "would have found (check the system first).")
        try:
            value = self.c.input(f"{esc(step.id)}.{esc(name)} = ").strip()
        except EOFError:
            return None
        return value or None


class UI(Protocol):
    """What a run's host provides: the engine and :mod:`runbook.session` talk to
    the operator only through these methods (:class:`ConsoleUI` on a terminal
    or a pipe; a worker or a test brings its own).  Prompts are only called when
    the run is ``interactive``."""

    def attach(self, redactor) -> None: ...
    def notice(self, text: str) -> None: ...
    def secret(self, prompt: str) -> str | None: ...
    def in_doubt(self, step, step_id: str, run_id: str) -> str: ...  # mark-done | rerun | abort
    def output_value(self, step, name: str) -> str | None: ...
    def run_started(self, rb, run_id: str, params_shown: dict, *, environment: str | None = None,
                    clock_from: float | None = None, clock_label: str | None = None, resumed: bool = False) -> None: ...
    def step_started(self, step, action) -> None: ...
    def output_sink(self, step): ...  # callable(stream, bytes | None) or None
    def confirm(self, step, action) -> str: ...  # run | skip | abort
    def step_prompt(self, step, action) -> str: ...  # run | skip | continue | abort
    def after_failure(self, step, result, on_failure: str | None) -> str: ...  # retry | skip | on_failure | abort
    def manual(self, step, action) -> bool: ...
    def ask(self, step, prompt: str, choices, default) -> str | None: ...
    def branch(self, step, why: str, goto: str) -> None: ...
    def escalation_due(self, to: str, after: float, elapsed: float) -> None: ...
    def polling(self, step, result, attempt: int, observed: str | None = None) -> None: ...  # observed: what the check read
    def retrying(self, step, result, attempt: int, delay: float) -> None: ...
    def step_finished(self, step, result) -> None: ...
    # optional: one host of a fan-out answered (from the step's threads): def host_finished(self, step,
    # host: str, result: dict, done: int, total: int) -> None
    def run_finished(self, status: str, code: int, message: str) -> None: ...
