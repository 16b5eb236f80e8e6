"""Step kinds: one module per kind, each satisfying :class:`StepKind`.

Adding a kind is one module here and one line in ``KINDS``.  The module
defines the required hooks (``SCHEMA``, ``normalize``, ``templates``,
``action``, ``run``) and whichever optional ones it needs; every optional
hook and its default is documented in :mod:`runbook.steps.base`, and
:func:`get` fills in the defaults.  Nothing outside this package compares a
kind's name: it asks the kind's hooks.

Kind modules are imported when a runbook uses them; a module that needs a
heavy client library (paramiko, kubernetes, psycopg, boto3) imports it inside ``run``
only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

# kind name -> module
KINDS: dict[str, str] = {
    "shell": "runbook.steps.shell",
    "manual": "runbook.steps.manual",
    "ask": "runbook.steps.ask",
    "choose": "runbook.steps.choose",
    "wait": "runbook.steps.wait",
    "end": "runbook.steps.end",
    "sql": "runbook.steps.sql",
    "ssh": "runbook.steps.ssh",
    "k8s": "runbook.steps.k8s",
    "http": "runbook.steps.http",
    "prometheus": "runbook.steps.prometheus",
    "notify": "runbook.steps.notify",
    "aws": "runbook.steps.aws",
}

# Fields every step result has, whatever its kind (see StepResult.as_context).
BASE_RESULT_FIELDS = ("status", "ok", "exit_code", "stdout", "stderr", "outputs", "duration", "attempts", "error")


@dataclass
class Action:
    """What a step would do, fully rendered: shown in the plan and the
    confirmation prompt, written to the audit log, then executed."""

    summary: str  # one line, e.g. the rendered command
    targets: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)  # kind-specific rendered data
    env: dict[str, str] = field(default_factory=dict)  # secret environment (never shown)
    # what it fans out over ("2 hosts", "every host of group web"), "" for one target:
    # its outputs then need an aggregate (runbook.outputs)
    fan_out: str = ""


@dataclass
class StepResult:
    status: str  # ok | failed | timeout | skipped | refused
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # kind-specific fields (answer, rows, …)
    outputs: dict[str, Any] = field(default_factory=dict)
    duration: float = 0.0
    attempts: int = 1
    goto: str | None = None  # set by branching kinds (choose)
    end: bool = False  # set by `end`

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_context(self) -> dict[str, Any]:
        ctx = dict(self.data)
        ctx.update(
            status=self.status, ok=self.ok, exit_code=self.exit_code, stdout=self.stdout, stderr=self.stderr,
            outputs=self.outputs, duration=self.duration, attempts=self.attempts, error=self.error,
        )
        return ctx


class StepKind(Protocol):
    """What a step-kind module provides (module-level names).  The first five
    are required; :func:`get` fills every other one a module does not define
    with its default from :mod:`runbook.steps.base`, which documents them all."""

    # required
    SCHEMA: Any  # runbook.schema.Node for the value under the kind's key

    def normalize(self, value: Any) -> dict: ...  # shorthand -> mapping

    # (field, source, mode); mode: "shell" (a command), "text" (shown to people),
    # "env"/"value" (handed to a process or bound as a value, masked when shown), "expr" (a condition)
    def templates(self, body: dict) -> list[tuple[str, str, str]]: ...

    def action(self, step, render) -> Action: ...  # render the step (no side effects)

    def run(self, step, action: Action, ctx) -> StepResult: ...

    # effect and result (defaults in base)
    DEFAULT_READONLY: bool  # the effect when the author does not say: True = read
    FIXED_EFFECT: str | None  # "read"/"write" when the kind knows its effect for sure
    RESULT_FIELDS: tuple[str, ...]  # kind-specific fields of its result
    IMPLICIT_OUTPUTS: tuple[str, ...]  # outputs it has without declaring them (ask: answer)
    WRITE_NEEDS_TIMEOUT: bool  # rule RB103 applies to its write steps
    SERVER_DRY_RUN: bool  # --server-dry-run can send its writes as server-side dry-runs

    def effect_of(self, body: dict) -> str | None: ...  # the effect when the body tells

    def static_problems(self, step) -> list[tuple[str, str, str]]: ...  # (key, message, rule)

    def inventory_problems(self, step, inventory) -> list[tuple[str, str, str]]: ...  # (key, message, rule)

    def fanout(self, body: dict) -> bool | None: ...  # False: several hosts, no forks (RB104)

    def fans_out(self, body: dict, inventory) -> str: ...  # "2 hosts", "every host of group web": outputs need an aggregate

    def per_host(self, result: StepResult) -> dict[str, dict] | None: ...  # each target's result, for outputs per host

    def inventory_targets(self, body: dict) -> list[tuple[str, str, str]]: ...  # (inventory kind, name, key)

    # the step graph (runbook.graph)
    def edges(self, body: dict) -> list[tuple[str, str]]: ...  # (label, step id) branches

    BRANCHING: bool  # picks its successor itself (edges), else the following step; next: does not apply
    ENDS_RUN: bool  # the run ends at this step

    def falls_through(self, body: dict) -> bool: ...  # BRANCHING: may take none of its edges

    def end_status(self, body: dict) -> str: ...  # ENDS_RUN: the run's status

    # display (runbook.ui, runbook graph, runbook show)
    SHOW_OUTPUT: bool | str  # True: stream the output; "head": its first SHOW_LINES lines at the end
    SHOW_LINES: int
    COMMAND_SUMMARY: bool  # the summary is a command line ($ …)
    PLAN_SUMMARY: bool  # the plan shows the summary
    CARD_SUMMARY: bool  # the live step card shows the summary
    CARD_TARGETS: bool  # the live step card shows the targets

    def details(self, action: Action) -> list[tuple[str, str]]: ...  # (label, text): the whole request, at a prompt

    def observed(self, step, result: StepResult) -> str | None: ...  # what one until-check read

    def output_sections(self, result: StepResult) -> list[tuple[str | None, str]]: ...  # (label, text) parts of the output

    def outline(self, body: dict) -> str: ...  # one line for `runbook show` when the step has no title

    # alerts (runbook.alert): params_from_labels forms the kind resolves (deployment: {from_pod: pod})
    LABEL_FORMS: dict  # form key -> runbook.schema.Obj of the mapping

    def label_value(self, form: str, spec: dict, value: str, params: dict, inventory, live: bool) -> tuple: ...


_loaded: dict[str, ModuleType] = {}
_FILLED = "_hooks_from_base"  # module attribute: the names fill() gave the module


def get(kind: str) -> ModuleType:
    """The module of a step kind, every optional hook filled in (see :mod:`runbook.steps.base`)."""
    mod = _loaded.get(kind)
    if mod is None:
        mod = fill(importlib.import_module(KINDS[kind]))
        _loaded[kind] = mod
    return mod


def fill(mod: ModuleType) -> ModuleType:
    """Give a kind module the default of every hook it does not define;
    a module without a required hook is a programming error."""
    from runbook.steps import base

    missing = [h for h in base.REQUIRED if not hasattr(mod, h)]
    if missing:
        raise TypeError(f"step kind module {mod.__name__} does not define {', '.join(missing)} "
                        "(the required hooks: see runbook/steps/base.py)")
    if not hasattr(mod, _FILLED):
        filled = []
        for name, default in base.defaults().items():
            if not hasattr(mod, name):
                setattr(mod, name, default)
                filled.append(name)
        setattr(mod, _FILLED, frozenset(filled))
    return mod


def defines(mod: ModuleType, hook: str) -> bool:
    """True when the kind module defines ``hook`` itself (not the default from base)."""
    return hasattr(mod, hook) and hook not in getattr(mod, _FILLED, frozenset())
